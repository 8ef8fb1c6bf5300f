"""OmniSIFT (arXiv 2602.04804): STVP on video, then VGAS on audio, chunk by chunk (§3, Fig. 2).

``OmniSIFT(rho_v, rho_a, hidden_size)`` is the method; its constructor flags give the paper's ablations
(§4.4): ``spatial=False`` ("w/o spatial"), ``temporal=False`` ("w/o temporal"), ``audio="self"`` (the
audio-only self-attention selector), ``audio="random"`` (VGAS → random), ``video="random"`` (STVP → random).

``ste`` chooses how the hard audio mask enters a *training* forward (§3.4; inference always removes the
dropped tokens):

* ``"remove"`` (default; the paper's description and the official ``similarity_pruning``): the chunk's audio
  embeddings are multiplied by ``g = (h − s).detach() + s`` and the dropped tokens are then removed, so
  only the kept tokens' scores get a gradient, ``∂L/∂s_j = ⟨∂L/∂e'_j, e_j⟩``;
* ``"mask"`` (our option): the dropped audio tokens stay in the training sequence, multiplied by their
  gate, whose value is 0; the gradient reaches every score, the dropped ones' included (for a dropped
  token it is the loss's first-order change if the token were faded back in). The backbone then sees
  zero vectors at the dropped positions while training, and nothing there at inference;
* ``"mean"`` (our option): as ``"mask"``, but a dropped token's training value is the mean of its chunk's
  *kept* audio (detached), ``e'_j = m_c + g_j (e_j − m_c)``: the gradient ``⟨∂L/∂e'_j, e_j − m_c⟩`` is
  the first-order effect of swapping the real token in for an uninformative one, away from the zero vector
  where the thinker's RMSNorm has a ``1/√eps`` gain (measured in the results page).
"""

from __future__ import annotations

import torch

from leanlm.omnisift.base import AVCompressor, CompressionResult, group_chunks, stacked_indices
from leanlm.omnisift.layout import AVLayout
from leanlm.omnisift.stvp import drop_count, random_keep, stvp_masks
from leanlm.omnisift.vgas import VGAS, straight_through, topk_mask


class OmniSIFT(AVCompressor):
    """STVP + VGAS. Defaults ``rho_v=0.7, rho_a=0.3`` are the reference code's training defaults.

    ``hidden_size=None`` (the default) builds the selector when the compressor is given to a thinker, with
    D = ``config.get_text_config().hidden_size`` (3584 for Qwen2.5-Omni-7B, 2048 for 3B); an explicit
    ``hidden_size`` is checked against the thinker's."""

    name = "omnisift"

    def __init__(
        self,
        rho_v: float = 0.7,
        rho_a: float = 0.3,
        hidden_size: int | None = None,
        *,
        spatial: bool = True,
        temporal: bool = True,
        video: str = "stvp",
        audio: str = "vgas",
        selector_dim: int = 512,
        selector_heads: int = 8,
        ste: str = "remove",
        seed: int = 0,
    ) -> None:
        super().__init__(rho_v, rho_a, seed)
        if ste not in ("remove", "mask", "mean"):
            raise ValueError(f"ste must be 'remove' (the paper's), 'mask' or 'mean', got {ste!r}")
        self.ste = ste
        if video not in ("stvp", "random"):
            raise ValueError(f"video must be 'stvp' or 'random', got {video!r}")
        if audio not in ("vgas", "self", "random"):
            raise ValueError(f"audio must be 'vgas', 'self' or 'random', got {audio!r}")
        self.spatial, self.temporal, self.video, self.audio = spatial, temporal, video, audio
        self.selector_dim, self.selector_heads = selector_dim, selector_heads
        self.selector: VGAS | None = None
        if hidden_size is not None:
            self.bind(hidden_size)

    def bind(self, hidden_size: int) -> None:
        """Build the selector for LLM width ``hidden_size`` (D), or check that an existing one matches it."""
        if self.audio == "random":
            return
        if self.selector is None:
            context = "video" if self.audio == "vgas" else "audio"
            self.selector = VGAS(hidden_size, self.selector_dim, self.selector_heads, context=context)
        elif self.selector.a_proj.in_features != hidden_size:
            raise ValueError(
                f"the OmniSIFT selector was built for hidden size {self.selector.a_proj.in_features}, but the "
                f"thinker's text hidden size is {hidden_size}; build OmniSIFT(hidden_size=None) and let the "
                f"thinker size it"
            )

    def spec(self) -> dict:
        return {**super().spec(), "spatial": self.spatial, "temporal": self.temporal, "video": self.video,
                "audio": self.audio, "selector_dim": self.selector_dim, "selector_heads": self.selector_heads,
                "ste": self.ste}

    def compress(self, embeds: torch.Tensor, layouts: list[AVLayout]) -> CompressionResult:
        batch, seq_len, dim = embeds.shape
        if self.audio != "random" and self.selector is None:
            raise ValueError("OmniSIFT(hidden_size=None) has no selector yet: give it to a thinker "
                             "(OmniSIFTThinker / attach / set_compressor) or call bind(hidden_size)")
        if self.selector is not None and self.selector.a_proj.in_features != dim:
            raise ValueError(f"the OmniSIFT selector expects embeddings of size {self.selector.a_proj.in_features}, "
                             f"got {dim}")
        flat = embeds.reshape(batch * seq_len, dim)
        keep = torch.ones(batch * seq_len, dtype=torch.bool, device=embeds.device)
        want_gate = self.selector is not None and torch.is_grad_enabled() and any(
            p.requires_grad for p in self.selector.parameters()
        )
        gate_idx: list[torch.Tensor] = []
        gate_val: list[torch.Tensor] = []
        fill_val: list[torch.Tensor] = []
        for signature, items in group_chunks(layouts, seq_len).items():
            n_frames = len(signature) - 1
            f1_idx = stacked_indices(items, seq_len, 0).to(embeds.device)
            f1 = flat[f1_idx].detach()
            f2_idx = stacked_indices(items, seq_len, 1).to(embeds.device) if n_frames > 1 else None
            f2 = flat[f2_idx].detach() if f2_idx is not None else None
            k = drop_count(signature[0], self.rho_v)
            if self.video == "stvp":
                keep1, keep2 = stvp_masks(
                    f1, f2, self.rho_v, spatial=self.spatial, temporal=self.temporal, generator=self._generator
                )
            else:
                keep1 = random_keep(f1.shape[:-1], k, embeds.device, self._generator)
                keep2 = None
                if f2 is not None:
                    same = f2.shape[-2] == f1.shape[-2]
                    keep2 = random_keep(f2.shape[:-1], k if same else 0, embeds.device, self._generator)
            keep[f1_idx[~keep1]] = False
            if f2_idx is not None and keep2 is not None:
                keep[f2_idx[~keep2]] = False
            n_a = signature[-1]
            if n_a <= 1:
                continue
            a_idx = stacked_indices(items, seq_len, "audio").to(embeds.device)
            n_keep = n_a - drop_count(n_a, self.rho_a)
            if self.selector is None:
                hard = random_keep(a_idx.shape, n_a - n_keep, embeds.device, self._generator).to(flat.dtype)
                keep[a_idx[hard == 0]] = False
                continue
            video_idx = f1_idx if f2_idx is None else torch.cat([f1_idx, f2_idx], dim=1)
            valid = keep1 if keep2 is None else torch.cat([keep1, keep2], dim=1)
            has_video = valid.any(dim=1)
            valid = valid | ~has_video.unsqueeze(1)  # avoid all-masked attention rows; those chunks keep all audio
            scores = self.selector(flat[a_idx], flat[video_idx], valid)
            hard = topk_mask(scores, n_keep)
            hard[~has_video] = 1.0
            keep[a_idx[hard == 0]] = False
            if want_gate:
                gate_idx.append(a_idx.reshape(-1))
                ste = straight_through(hard, scores)
                gate_val.append(torch.where(has_video.unsqueeze(1), ste, torch.ones_like(ste)).reshape(-1))
                if self.ste == "mean":  # a dropped token's training value: the mean of its chunk's kept audio
                    a_emb = flat[a_idx].detach()
                    mean = (hard.unsqueeze(-1) * a_emb).sum(1) / hard.sum(1, keepdim=True).clamp(min=1)
                    fill_val.append(mean.unsqueeze(1).expand_as(a_emb).reshape(-1, dim))
        gate = train_keep = fill = None
        if gate_idx:
            ones = torch.ones(batch * seq_len, dtype=gate_val[0].dtype, device=embeds.device)
            gate = ones.index_put((torch.cat(gate_idx),), torch.cat(gate_val)).reshape(batch, seq_len)
            if self.ste != "remove":  # gated audio stays in the training sequence (dropped: value 0, or the fill)
                train_keep = keep.index_put((torch.cat(gate_idx),), torch.tensor(True, device=embeds.device))
                train_keep = train_keep.reshape(batch, seq_len)
            if fill_val:
                fill = torch.zeros_like(flat).index_put((torch.cat(gate_idx),), torch.cat(fill_val))
                fill = fill.reshape(batch, seq_len, dim)
        return CompressionResult(keep=keep.reshape(batch, seq_len), gate=gate, train_keep=train_keep, fill=fill)
