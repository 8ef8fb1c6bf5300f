"""A synthetic audio-visual task posed at the LLM-embedding level (what is synthetic is said here exactly).

Nothing is real media. Each sample is a "video" of ``frames`` LLM frames of ``n_p`` tokens and an audio
track of ``audio_per_chunk`` tokens per 2-s chunk, laid out with the real Qwen2.5-Omni placeholder
interleave and TMRoPE ids (``use_audio_in_video=True``); the features that the encoders would produce are
drawn directly in the D-dimensional embedding space (the encoders are bypassed, ``inputs_embeds`` is
passed to the thinker). With the defaults: 4 frames of 16 tokens and 4 audio tokens per chunk, 2 chunks,
72 audio-visual tokens.

* time codes: every token of chunk ``c``, video and audio alike, carries a fixed vector ``τ_c`` (a
  content-level clock, one per chunk; the TMRoPE ids are there too);
* video: a static random background per sample (a scene vector plus a smaller per-patch vector, repeated
  in every frame with small noise: redundant frames); in one random *event chunk* an object of identity
  ``s*`` (one of ``sources``) covers ``object_patches`` patches of F1 and, moved by one patch, of F2. Its
  tokens are ``obj[s*] + event + τ_event`` (a fixed "event" signature). So the event is what spatial
  saliency and temporal change (STVP) single out;
* audio: each chunk holds ``sounds_per_chunk`` sound tokens, one from each of as many distinct sources
  (always including ``s*``; with the defaults every source sounds once in every chunk, so the sources heard
  say nothing), and ``audio_per_chunk − sounds_per_chunk`` background-noise tokens (none with the defaults).
  A sound is ``src_a[s] + cls[k] + τ_c + noise``, where ``src_a[s] = M·obj[s]`` (a fixed random rotation of
  the source's look, so sight and sound agree only through a learnable map);
* classes: every sound's class is drawn independently and uniformly from all ``classes`` classes (8 with the
  defaults, more than the 4 sounds of a chunk). The answer is ``c*``, the class of ``s*``'s sound in the
  event chunk. The same source also sounds in the other chunk, with an independently drawn class (a
  distractor that only the timing rules out; it equals ``c*`` with probability 1/classes).
  Because nothing else depends on ``c*``, the input *without the answer sound* is the same whatever the
  answer is (``sample(..., answer=k)`` changes only that token; the tests check this on every sample): a
  compressor that drops the answer sound leaves chance (1/classes), and no elimination shortcut exists.
  From the audio alone the posterior of the answer is proportional to how often each class is heard in the
  clip (all source/chunk pairs are equally likely without the video): the best audio-only guess is right
  about 0.32 of the time with 8 classes (chance 0.125); finding the answer needs the video (which source,
  which chunk) and the time codes.

History: an earlier version used a Latin layout (every class of a per-sample set Q of 4 classes sounded
exactly once per chunk, 4 classes = 4 sounds). Audio-only was then exactly chance, but a chunk missing one
sound gave the answer away by elimination (the class not heard), which compression-trained models learned.

The question and answer are two text tokens; the answer is one of ``classes`` class tokens.

``hint`` is a curriculum ("training wheels"): in that fraction of samples the answer sound also carries
the event signature, which gives the otherwise all-or-nothing 2-hop lookup a gradient. The study uses it
only while pretraining on full tokens; fine-tuning and evaluation never see hints. With ``hint_graded`` the
signature is scaled by a strength drawn uniformly from [0, 1] per hinted sample: a binary hint (strength 1)
lets a model solve the hinted samples by the 1-hop shortcut alone and sit at loss ½·ln(classes) with the
unhinted ones at chance (measured in ``docs/results/omnisift.md`` §2f); graded strengths keep the attention
partly on the answer sound for every level of difficulty, so the 2-hop content match gets a gradient.

The task is built around OmniSIFT's hypothesis: the relevant audio token can only be picked out by
looking at the video of the same chunk, and the relevant visual tokens are the salient/changed ones.
A win here shows that the implementation exploits that structure; it does not confirm the paper's
benchmark numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Qwen2_5OmniThinkerConfig

from leanlm.omnisift.tiny import AVPrompt, av_prompt

QUESTION_TOKEN = 16
FIRST_CLASS_TOKEN = 32
PREFIX = [10, 11]


@dataclass
class TaskConfig:
    frames: int = 4  # 2 chunks
    grid_hw: tuple[int, int] = (8, 8)  # patches before the 2×2 merge: 16 tokens per LLM frame
    audio_per_chunk: int = 4  # 2 audio tokens per second (position_id_per_seconds = 2)
    sources: int = 4
    classes: int = 8  # each sound's class is drawn uniformly and independently (more classes than sounds)
    sounds_per_chunk: int = 4  # sounds per chunk, from distinct sources (always including the object's)
    loud_per_chunk: int = 0  # of the other audio tokens, this many are loud and irrelevant (random, large norm)
    loud_scale: float = 3.0  # their scale: loud_scale · N(0, I), louder than any sound token
    object_patches: int = 2
    frame_noise: float = 0.1
    token_noise: float = 0.1
    time_code: float = 1.0  # scale of the per-chunk time code shared by the chunk's video and audio tokens
    hint: float = 0.0  # training wheels: fraction of samples whose answer sound also carries the event signature
    hint_graded: bool = False  # hinted samples carry the signature at a strength ~ U(0, 1) instead of 1
    hidden_size: int = 64
    task_seed: int = 1234  # fixes the dictionaries (object / source / class / time-code vectors): the "world"


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    inputs_embeds: torch.Tensor  # [B, L, D] text embeddings are filled in by the model's table
    labels: torch.Tensor  # [B, L]
    answer: torch.Tensor  # [B] class index
    event_chunk: torch.Tensor  # [B]
    object_index: list[torch.Tensor]  # per sample, sequence indices of the object tokens
    target_audio_index: torch.Tensor  # [B] sequence index of the answer's sound token
    sound_class: torch.Tensor  # [B, C, A] class of each audio token, -1 for background noise tokens
    sound_source: torch.Tensor  # [B, C, A] source of each audio token, -1 for background noise tokens


class AVTask:
    """Draws batches of the synthetic task for a given thinker config (``position_id_per_seconds`` sets the
    audio rate: with 5, a 2-s chunk has 10 audio tokens)."""

    def __init__(self, cfg: TaskConfig, model_config: Qwen2_5OmniThinkerConfig) -> None:
        if cfg.sounds_per_chunk > cfg.audio_per_chunk:
            raise ValueError("sounds_per_chunk cannot exceed audio_per_chunk")
        if cfg.loud_per_chunk < 0 or cfg.sounds_per_chunk + cfg.loud_per_chunk > cfg.audio_per_chunk:
            raise ValueError("loud_per_chunk must be >= 0 and sounds_per_chunk + loud_per_chunk <= audio_per_chunk")
        if not 1 <= cfg.sounds_per_chunk <= cfg.sources:
            raise ValueError("sounds_per_chunk must be between 1 and sources: one sound per source in each chunk")
        if cfg.classes < 2:
            raise ValueError("the task needs at least 2 classes")
        if cfg.frames % 2:
            raise ValueError("the synthetic task uses an even number of frames (whole chunks)")
        self.cfg = cfg
        self.config = model_config
        seconds = cfg.frames  # one LLM frame per second
        pps = model_config.position_id_per_seconds
        if cfg.audio_per_chunk != pps * model_config.seconds_per_chunk:
            raise ValueError(
                f"audio_per_chunk={cfg.audio_per_chunk} must equal position_id_per_seconds × seconds_per_chunk "
                f"= {pps * model_config.seconds_per_chunk}"
            )
        self.prompt: AVPrompt = av_prompt(
            model_config, cfg.frames, cfg.grid_hw, pps * seconds, PREFIX, [QUESTION_TOKEN, FIRST_CLASS_TOKEN]
        )
        ids = self.prompt.input_ids[0]
        self.video_index = torch.nonzero(ids == model_config.video_token_id, as_tuple=True)[0]
        self.audio_index = torch.nonzero(ids == model_config.audio_token_id, as_tuple=True)[0]
        self.n_p = self.prompt.n_video // cfg.frames
        self.chunks = cfg.frames // 2
        g = torch.Generator().manual_seed(cfg.task_seed)
        d = cfg.hidden_size
        self.obj = torch.randn(cfg.sources, d, generator=g)
        mix = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
        self.src_audio = self.obj @ mix
        self.cls = torch.randn(cfg.classes, d, generator=g)
        self.audio_bg = torch.randn(d, generator=g) * 0.5
        self.event_sig = torch.randn(d, generator=g)
        self.time_codes = cfg.time_code * torch.randn(self.chunks, d, generator=g)

    @property
    def class_tokens(self) -> torch.Tensor:
        return torch.arange(FIRST_CLASS_TOKEN, FIRST_CLASS_TOKEN + self.cfg.classes)

    def sample(self, batch: int, generator: torch.Generator, answer: int | torch.Tensor | None = None) -> Batch:
        """Draws ``batch`` samples. ``answer`` (tests only) forces the answer class and changes nothing else:
        every other random draw, and so every other token, is the same as without it."""
        cfg, g = self.cfg, generator
        d, n_p, T, C, A, S = cfg.hidden_size, self.n_p, cfg.frames, self.chunks, cfg.audio_per_chunk, cfg.sounds_per_chunk
        side_w = cfg.grid_hw[1] // self.config.vision_config.spatial_merge_size
        ar = torch.arange(batch)
        # video [B, T, n_p, D]: a static background (redundant frames) + the chunk's time code + small noise
        scene = torch.randn(batch, 1, 1, d, generator=g)
        bg = scene + 0.5 * torch.randn(batch, 1, n_p, d, generator=g)
        codes = self.time_codes.repeat_interleave(2, dim=0)  # [T, D]: both frames of a chunk share its code
        video = bg + codes.view(1, T, 1, d) + cfg.frame_noise * torch.randn(batch, T, n_p, d, generator=g)
        event = torch.randint(0, C, (batch,), generator=g)
        source = torch.randint(0, cfg.sources, (batch,), generator=g)
        start = torch.randint(0, n_p - cfg.object_patches - 1, (batch,), generator=g)
        object_index = []
        for b in range(batch):
            f1, f2 = 2 * int(event[b]), 2 * int(event[b]) + 1
            p1 = torch.arange(cfg.object_patches) + int(start[b])
            p2 = p1 + 1 if (int(p1[-1]) + 1) % side_w else p1 - 1  # moves one patch (right, or left at the edge)
            o = self.obj[source[b]] + self.event_sig + self.time_codes[event[b]]
            video[b, f1, p1] = o + cfg.token_noise * torch.randn(len(p1), d, generator=g)
            video[b, f2, p2] = o + cfg.token_noise * torch.randn(len(p2), d, generator=g)
            object_index.append(torch.cat([self.video_index[f1 * n_p + p1], self.video_index[f2 * n_p + p2]]))
        # audio [B, C, A, D]: every chunk holds S sounds, one from each of S distinct sources (always including
        # the object's source s*), plus A - S background noise tokens; every audio token carries its chunk's
        # time code. Every sound's class is drawn independently and uniformly from all classes; the answer
        # c* = class(s*, event chunk). Nothing else depends on c*, so without the answer sound the input is the
        # same whatever the answer (no elimination shortcut when that sound is dropped).
        audio = self.audio_bg + 0.3 * torch.randn(batch, C, A, d, generator=g)
        slots = torch.argsort(torch.rand(batch, C, A, generator=g), dim=-1)[..., :S]
        others = torch.argsort(torch.rand(batch, C, cfg.sources - 1, generator=g), dim=-1)[..., : S - 1]
        others = others + (others >= source.view(-1, 1, 1)).long()  # S - 1 distinct sources other than s*
        src = torch.cat([source.view(-1, 1, 1).expand(-1, C, 1), others], dim=-1)  # [B, C, S]; slot 0 is s*
        classes = torch.randint(0, cfg.classes, (batch, C, S), generator=g)
        if answer is not None:
            classes[ar, event, 0] = torch.as_tensor(answer, dtype=torch.long).expand(batch)
        answer = classes[ar, event, 0]
        sound = self.src_audio[src] + self.cls[classes] + self.time_codes.view(1, C, 1, d)
        sound = sound + cfg.token_noise * torch.randn(sound.shape, generator=g)
        audio = audio + self.time_codes.view(1, C, 1, d)
        if cfg.loud_per_chunk:  # loud, irrelevant tokens in non-sound slots: an energy ranking keeps them first
            free = torch.ones(batch, C, A, dtype=torch.bool).scatter_(2, slots, False)
            order = torch.argsort((~free).float() * 2 + torch.rand(batch, C, A, generator=g), dim=-1)
            loud_slots = order[..., : cfg.loud_per_chunk]  # random free (non-sound) slots
            loud = cfg.loud_scale * torch.randn(batch, C, cfg.loud_per_chunk, d, generator=g)
            audio.scatter_(2, loud_slots.unsqueeze(-1).expand(-1, -1, -1, d), loud + self.time_codes.view(1, C, 1, d))
        if cfg.hint > 0:  # curriculum only (study: pretraining stage); evaluation never uses hints
            hinted = (torch.rand(batch, generator=g) < cfg.hint).float().view(-1, 1)
            if cfg.hint_graded:
                hinted = hinted * torch.rand(batch, 1, generator=g)
            sound[ar, event, 0] = sound[ar, event, 0] + hinted * self.event_sig
        audio.scatter_(2, slots.unsqueeze(-1).expand(-1, -1, -1, d), sound)
        sound_class = torch.full((batch, C, A), -1, dtype=torch.long).scatter_(2, slots, classes)
        sound_source = torch.full((batch, C, A), -1, dtype=torch.long).scatter_(2, slots, src)
        target_slot = slots[ar, event, 0]
        target = self.audio_index[event * A + target_slot]
        # assemble
        ids = self.prompt.input_ids.repeat(batch, 1)
        ids[:, -1] = FIRST_CLASS_TOKEN + answer
        embeds = torch.zeros(batch, ids.shape[1], d)
        embeds[:, self.video_index] = video.reshape(batch, T * n_p, d)
        embeds[:, self.audio_index] = audio.reshape(batch, C * A, d)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]
        return Batch(ids, embeds, labels, answer, event, object_index, target, sound_class, sound_source)

    def model_inputs(self, model, batch: Batch) -> dict:
        """Thinker kwargs: text embeddings from the model's table, synthetic AV features at placeholders."""
        text = model.get_input_embeddings()(batch.input_ids)
        av = torch.zeros(batch.input_ids.shape[1], dtype=torch.bool)
        av[self.video_index] = True
        av[self.audio_index] = True
        embeds = torch.where(av.view(1, -1, 1), batch.inputs_embeds.to(text.dtype), text)
        n = batch.input_ids.shape[0]
        return dict(
            input_ids=batch.input_ids, inputs_embeds=embeds, attention_mask=torch.ones_like(batch.input_ids),
            video_grid_thw=self.prompt.video_grid_thw.repeat(n, 1),
            audio_feature_lengths=self.prompt.audio_feature_lengths.repeat(n),
            video_second_per_grid=self.prompt.video_second_per_grid.repeat(n), use_audio_in_video=True,
            labels=batch.labels, logits_to_keep=2,
        )

    def frame_sizes(self) -> tuple[list[list[int]], list[int]]:
        """Per-chunk frame sizes and audio counts, for :func:`~leanlm.omnisift.presets.solve_rho_v`."""
        return [[self.n_p, self.n_p]] * self.chunks, [self.cfg.audio_per_chunk] * self.chunks
