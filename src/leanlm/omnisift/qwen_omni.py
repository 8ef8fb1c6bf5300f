"""OmniSIFT inside transformers' ``Qwen2_5OmniThinkerForConditionalGeneration`` (transformers 5.x).

:class:`OmniSIFTThinker` subclasses the thinker and changes only the prefill of an audio-visual input
(``use_audio_in_video=True`` with both video and audio present), in the paper's order (§3.1, reference
``modeling_qwen2_5_omni.py``): (1) the encoders and their projectors run and their outputs are scattered
into ``inputs_embeds`` at the placeholder ids; (2) ``get_rope_index`` computes TMRoPE ids on the
*uncompressed* sequence; (3) the compressor returns a keep-mask (text is never pruned); (4) embeddings
(times the STE gate when training), attention mask, position ids and labels are gathered before
``self.model``. Kept tokens keep their original TMRoPE ids.

Decoding after pruning (the transformers-5 divergence): 5.x computes decode positions as
``past_key_values.get_seq_length() + rope_deltas``, and the cache now holds fewer tokens than the prompt, so
``rope_deltas`` is recomputed from the gathered positions (``max kept id + 1 − compressed length``; for one
sequence this is the original delta plus the number of pruned tokens). ``generate()`` keeps extending the
*uncompressed* attention mask and cache positions, so each decode step replaces the prompt part of the mask
with the compressed one and recomputes ``cache_position`` from the cache. Batches whose rows keep different
numbers of tokens are left-padded after gathering (attention mask 0, label −100).

Works with real Qwen2.5-Omni-3B/7B weights (``OmniSIFTThinker.from_pretrained(path, compressor=...)`` or
:func:`attach` on a loaded thinker): nothing here depends on sizes, and the selector's hidden size is
taken from the text config.
"""

from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerCausalLMOutputWithPast

from leanlm.omnisift.base import AVCompressor, CompressionResult
from leanlm.omnisift.layout import AVLayout, build_layouts


@dataclass
class CompressionStats:
    """What the last compressed prefill did: the keep-mask over the original sequence and kept counts."""

    keep: torch.Tensor
    layouts: list[AVLayout]
    video_kept: int
    video_total: int
    audio_kept: int
    audio_total: int

    @property
    def retention(self) -> float:
        total = self.video_total + self.audio_total
        return (self.video_kept + self.audio_kept) / total if total else 1.0


def gather_rows(
    keep: torch.Tensor, tensors: dict[str, torch.Tensor | None], pad: dict[str, Any], seq_dim: dict[str, int]
) -> tuple[dict[str, torch.Tensor | None], int]:
    """Gather each tensor's kept sequence positions per row, left-padding rows to the longest one."""
    batch = keep.shape[0]
    counts = keep.sum(dim=1)
    new_len = int(counts.max())
    out: dict[str, torch.Tensor | None] = {}
    for name, tensor in tensors.items():
        if tensor is None:
            out[name] = None
            continue
        dim = seq_dim[name]
        shape = list(tensor.shape)
        shape[dim] = new_len
        result = torch.full(shape, pad[name], dtype=tensor.dtype, device=tensor.device)
        for b in range(batch):
            n = int(counts[b])
            idx = torch.nonzero(keep[b], as_tuple=True)[0]
            if dim == 1:
                result[b, new_len - n :] = tensor[b, idx]
            else:  # position ids [3, B, L]
                result[:, b, new_len - n :] = tensor[:, b, idx]
        out[name] = result
    return out, new_len


class OmniSIFTThinker(Qwen2_5OmniThinkerForConditionalGeneration):
    """The thinker with a token compressor between the TMRoPE computation and the language model."""

    def __init__(self, config: Qwen2_5OmniThinkerConfig, compressor: AVCompressor | None = None) -> None:
        super().__init__(config)
        if compressor is None and getattr(config, "omnisift", None):
            from leanlm.omnisift.registry import compressor_from_spec

            compressor = compressor_from_spec(config.omnisift)
        self.compressor = None
        self.set_compressor(compressor)
        self._reset_compression_state()

    def _reset_compression_state(self) -> None:
        self.last_compression: CompressionStats | None = None
        self._prompt_len: int | None = None
        self._compressed_mask: torch.Tensor | None = None

    def set_compressor(self, compressor: AVCompressor | None) -> None:
        """Use ``compressor`` (None: no compression). Learnable selectors are sized from the text config
        (D = ``config.get_text_config().hidden_size``) and moved to the model's device."""
        if compressor is not None:
            compressor.bind(self.config.get_text_config().hidden_size)
            compressor.to(self.get_input_embeddings().weight.device)
        self.compressor = compressor

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``save_pretrained``, with the compressor's spec (method, ratios, selector width)
        in ``config.omnisift`` so that ``from_pretrained`` rebuilds it; its weights are ``compressor.*``."""
        if self.compressor is not None:
            self.config.omnisift = self.compressor.spec()
        elif hasattr(self.config, "omnisift"):
            del self.config.omnisift
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> OmniSIFTThinker:
        """Load a thinker, or the thinker of a full Qwen2.5-Omni / OmniSIFT-7B checkpoint (``thinker.*`` keys).

        The compressor is ``compressor=...`` if given, else the one saved in ``config.omnisift``, else, when
        the checkpoint holds the official selector (``thinker.compressor.*``), ``OmniSIFT()`` with the
        reference defaults. Official selector names are mapped to ours (``compressor.selector.*``). When
        the model ends up with a learnable selector whose weights are not in the checkpoint, a warning
        says that it is randomly initialised.
        """
        path = Path(str(pretrained_model_name_or_path))
        keys = checkpoint_keys(path)
        full = any(k.startswith("thinker.") for k in keys)
        thinker_keys = {k.removeprefix("thinker.") for k in keys if k.startswith("thinker.") or not full}
        official = any(k.startswith("compressor.") and not k.startswith("compressor.selector.") for k in thinker_keys)
        ours = any(k.startswith("compressor.selector.") for k in thinker_keys)
        if "config" not in kwargs:
            from transformers import Qwen2_5OmniConfig

            raw, _ = Qwen2_5OmniThinkerConfig.get_config_dict(pretrained_model_name_or_path)
            if raw.get("model_type") == "qwen2_5_omni":
                config = Qwen2_5OmniConfig.from_pretrained(pretrained_model_name_or_path).thinker_config
            else:
                config = Qwen2_5OmniThinkerConfig.from_pretrained(pretrained_model_name_or_path)
            kwargs["config"] = config
        if kwargs.get("compressor") is None and not getattr(kwargs["config"], "omnisift", None) and official:
            from leanlm.omnisift.omnisift import OmniSIFT

            kwargs["compressor"] = OmniSIFT()
        mapping = dict(kwargs.pop("key_mapping", None) or {})
        if full:
            mapping[r"^thinker\."] = ""
        if official:
            mapping[r"^(thinker\.)?compressor\.(?!selector\.)"] = "compressor.selector."
        if mapping:
            kwargs["key_mapping"] = mapping
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if mapping:
            # transformers reverts load-time renamings on save; ours only undo the checkpoint's layout, so a
            # saved model keeps our own names (a plain thinker with compressor.selector.*)
            ours_patterns = set(mapping)
            model._weight_conversions = [
                c for c in (getattr(model, "_weight_conversions", None) or [])
                if not set([c.source_patterns] if isinstance(c.source_patterns, str) else c.source_patterns) & ours_patterns
            ]
        selector = getattr(model.compressor, "selector", None)
        if selector is not None and not (official or ours):
            message = (
                f"OmniSIFT: no selector weights (compressor.selector.* or thinker.compressor.*) in {path}; "
                f"the audio selector is RANDOMLY INITIALISED and its choice of audio tokens is arbitrary until "
                f"it is trained (`leanlm omnisift train`)"
            )
            warnings.warn(message, UserWarning, stacklevel=2)
            from leanlm.common.progress import get_logger

            get_logger("leanlm.omnisift").warning(message)
        return model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        audio_feature_lengths: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        rope_deltas: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        use_audio_in_video: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        video_second_per_grid: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        av_layouts: list[AVLayout] | None = None,
        **kwargs: Any,
    ) -> Qwen2_5OmniThinkerCausalLMOutputWithPast:
        """The parent's forward with compression in the prefill. Extra arguments: ``logits_to_keep`` (compute
        logits for the last n positions only) and ``av_layouts`` (precomputed chunk layouts, one per row)."""
        past_len = 0 if past_key_values is None else past_key_values.get_seq_length()
        if past_len > 0:
            media = [name for name, value in (("pixel_values", pixel_values), ("pixel_values_videos", pixel_values_videos),
                     ("input_features", input_features)) if value is not None]
            if media:
                raise ValueError(
                    f"OmniSIFTThinker got media ({', '.join(media)}) with a non-empty cache ({past_len} cached "
                    f"tokens): media can only be compressed in a prefill; start a new cache for a new video"
                )
            return self._decode_step(
                input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                inputs_embeds=inputs_embeds, position_ids=position_ids, labels=labels, use_cache=use_cache,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                logits_to_keep=logits_to_keep, **kwargs,
            )
        self._reset_compression_state()
        compress = (
            self.compressor is not None and bool(use_audio_in_video) and input_ids is not None
            and (pixel_values_videos is not None or inputs_embeds is not None)
            and bool((input_ids == self.config.video_token_id).any()) and bool((input_ids == self.config.audio_token_id).any())
        )
        # 1-2. encoders + scatter into the embeddings (as the parent does)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        attention_capture: list[tuple[torch.Tensor, torch.Tensor]] = []
        want_attention = compress and input_features is not None and getattr(self.compressor, "uses_audio_attention", False)
        handle = None
        if want_attention:
            handle = self.audio_tower.layers[-1].self_attn.register_forward_pre_hook(
                lambda mod, args, kw: attention_capture.append((args[0] if args else kw["hidden_states"], kw["cu_seqlens"])),
                with_kwargs=True,
            )
        if input_features is not None:
            audio_features = self.get_audio_features(
                input_features, feature_attention_mask=feature_attention_mask,
                audio_feature_lengths=audio_feature_lengths, return_dict=True,
            ).last_hidden_state.to(inputs_embeds.device, inputs_embeds.dtype)
            _, _, audio_mask = self.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(audio_mask, audio_features)
        if handle is not None:
            handle.remove()
        if pixel_values is not None:
            image_embeds = self.get_image_features(pixel_values, image_grid_thw, return_dict=True).pooler_output
            image_embeds = image_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
            image_mask, _, _ = self.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=image_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask, image_embeds)
        if pixel_values_videos is not None:
            video_embeds = self.get_video_features(pixel_values_videos, video_grid_thw, return_dict=True).pooler_output
            video_embeds = video_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
            _, video_mask, _ = self.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, video_features=video_embeds)
            inputs_embeds = inputs_embeds.masked_scatter(video_mask, video_embeds)
        if feature_attention_mask is not None:
            audio_feature_lengths = torch.sum(feature_attention_mask, dim=1)

        # 3. TMRoPE on the uncompressed sequence
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        if position_ids is None:
            position_ids, _ = self.get_rope_index(
                input_ids, image_grid_thw, video_grid_thw, attention_mask, use_audio_in_video,
                audio_feature_lengths, video_second_per_grid,
            )

        # 4. compress, apply the STE gate, gather
        if not compress:
            new_len = inputs_embeds.shape[1]
            new_mask, new_pos, new_embeds, new_labels = attention_mask, position_ids, inputs_embeds, labels
        else:
            layouts = av_layouts or build_layouts(
                input_ids, position_ids, self.config.video_token_id, self.config.audio_token_id
            )
            if attention_capture:
                lengths = (feature_attention_mask.sum(-1) if feature_attention_mask is not None else audio_feature_lengths)
                self.compressor.audio_scores = received_attention_per_row(
                    self.audio_tower.layers[-1].self_attn, *attention_capture[0], lengths, layouts
                )
            try:
                result: CompressionResult = self.compressor(inputs_embeds, layouts)
            finally:
                if attention_capture:
                    self.compressor.audio_scores = None
            keep = result.keep & attention_mask.bool()
            inputs_embeds = result.apply_gate(inputs_embeds)
            # OmniSIFT(ste="mask"/"mean") in training: the dropped audio stays in the sequence (gated)
            gather = keep if result.train_keep is None else result.train_keep & attention_mask.bool()
            gathered, new_len = gather_rows(
                gather,
                {"embeds": inputs_embeds, "mask": attention_mask, "pos": position_ids.to(inputs_embeds.device),
                 "labels": labels},
                pad={"embeds": 0.0, "mask": 0, "pos": 1, "labels": -100},
                seq_dim={"embeds": 1, "mask": 1, "pos": 2, "labels": 1},
            )
            vk, vt, ak, at = result.kept_counts(layouts)
            self.last_compression = CompressionStats(keep, layouts, vk, vt, ak, at)
            new_mask, new_pos, new_embeds, new_labels = gathered["mask"], gathered["pos"], gathered["embeds"], gathered["labels"]
            self._prompt_len = input_ids.shape[1]
            self._compressed_mask = new_mask
        valid = new_mask.bool().unsqueeze(0).to(new_pos.device)
        max_pos = torch.where(valid, new_pos, torch.zeros_like(new_pos)).amax(dim=(0, 2))
        self.rope_deltas = (max_pos + 1 - new_len).unsqueeze(1)

        outputs = self.model(
            attention_mask=new_mask, position_ids=new_pos, past_key_values=past_key_values,
            inputs_embeds=new_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
            cache_position=torch.arange(new_len, device=inputs_embeds.device), **kwargs,
        )
        return self._head(outputs, new_labels, logits_to_keep)

    def _head(self, outputs: Any, labels: torch.Tensor | None, logits_to_keep: int) -> Qwen2_5OmniThinkerCausalLMOutputWithPast:
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
            if labels is not None:
                labels = labels[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.get_text_config().vocab_size)
        return Qwen2_5OmniThinkerCausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions, rope_deltas=self.rope_deltas,
        )

    def _decode_step(
        self, *, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, past_key_values: Any,
        inputs_embeds: torch.Tensor | None, position_ids: torch.Tensor | None, labels: torch.Tensor | None,
        use_cache: bool | None, output_attentions: bool | None, output_hidden_states: bool | None,
        logits_to_keep: int, **kwargs: Any,
    ) -> Qwen2_5OmniThinkerCausalLMOutputWithPast:
        """A step after the prefill: positions ``past_len + rope_deltas``, compressed prompt mask."""
        kwargs.pop("cache_position", None)
        for name in ("pixel_values", "pixel_values_videos", "input_features", "image_grid_thw", "video_grid_thw",
                     "feature_attention_mask", "audio_feature_lengths", "use_audio_in_video", "video_second_per_grid",
                     "return_dict", "rope_deltas"):
            kwargs.pop(name, None)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        _batch, q_len = inputs_embeds.shape[:2]
        past_len = past_key_values.get_seq_length()
        compressed = self._compressed_mask
        if (
            attention_mask is not None and compressed is not None and self._prompt_len is not None
            and attention_mask.shape[1] == self._prompt_len + (past_len - compressed.shape[1]) + q_len
        ):
            attention_mask = torch.cat([compressed, attention_mask[:, self._prompt_len :]], dim=1)
        if position_ids is None:
            if self.rope_deltas is None:
                raise ValueError("decode step without a prefill: rope_deltas is unset")
            steps = torch.arange(q_len, device=inputs_embeds.device).view(1, -1) + past_len
            position_ids = (steps + self.rope_deltas.to(inputs_embeds.device)).unsqueeze(0).expand(3, -1, -1)
        cache_position = torch.arange(past_len, past_len + q_len, device=inputs_embeds.device)
        outputs = self.model(
            attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, cache_position=cache_position, **kwargs,
        )
        return self._head(outputs, labels, logits_to_keep)


def attach(thinker: Qwen2_5OmniThinkerForConditionalGeneration, compressor: AVCompressor | None) -> OmniSIFTThinker:
    """Turn a loaded thinker (e.g. real Qwen2.5-Omni weights) into an :class:`OmniSIFTThinker` in place."""
    if not isinstance(thinker, Qwen2_5OmniThinkerForConditionalGeneration):
        raise TypeError(f"attach needs a Qwen2_5OmniThinkerForConditionalGeneration, got {type(thinker).__name__}")
    thinker.__class__ = OmniSIFTThinker
    thinker.compressor = None  # type: ignore[attr-defined]
    thinker.set_compressor(compressor)  # type: ignore[attr-defined]
    thinker._reset_compression_state()  # type: ignore[attr-defined]
    return thinker  # type: ignore[return-value]


@torch.no_grad()
def received_attention_per_row(attn: Any, hidden: torch.Tensor, cu_seqlens: torch.Tensor, mel_lengths: torch.Tensor,
                               layouts: list[AVLayout]) -> list[torch.Tensor]:
    """OmniZip's audio score: the mean attention each frame *receives* in the audio encoder's last layer
    (softmax(q kᵀ·scale) recomputed from that layer's input, within its attention windows, averaged over
    heads and queries), then averaged over the 2 frames that the encoder pools into one LLM audio token.
    Returns one score tensor per batch row, in the order of that row's audio tokens."""
    n, heads = hidden.shape[0], attn.num_heads
    q = (attn.q_proj(hidden) * attn.scaling).reshape(n, heads, -1).transpose(0, 1).float()
    k = attn.k_proj(hidden).reshape(n, heads, -1).transpose(0, 1).float()
    received = torch.zeros(n, device=hidden.device)
    bounds = cu_seqlens.tolist()
    for lo, hi in itertools.pairwise(bounds):
        probs = torch.softmax(q[:, lo:hi] @ k[:, lo:hi].transpose(1, 2), dim=-1)  # [heads, queries, keys]
        received[lo:hi] = probs.mean(dim=(0, 1))
    frames = ((mel_lengths.to(torch.long) - 1) // 2 + 1).tolist()  # frames after the stride-2 convolution
    per_audio, start = [], 0
    for count in frames:
        seg = received[start : start + count]
        start += count
        pooled = seg[: 2 * (count // 2)].reshape(-1, 2).mean(dim=1)
        per_audio.append(pooled.cpu())
    flat = torch.cat(per_audio) if per_audio else torch.zeros(0)
    out, offset = [], 0
    for layout in layouts:
        m = int(layout.audio.numel())
        out.append(flat[offset : offset + m])
        offset += m
    if offset != flat.numel():
        raise ValueError(f"audio attention scores for {flat.numel()} tokens, but the sequences hold {offset}")
    return out


def checkpoint_keys(path: Path) -> set[str]:
    """Tensor names of a local safetensors checkpoint (sharded or not); empty when none is found."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    single = path / "model.safetensors"
    if single.exists():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as handle:
            return set(handle.keys())
    return set()
