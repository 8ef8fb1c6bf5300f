"""Baselines behind the same interface, each spending OmniSIFT's budget (:meth:`AVCompressor.budget`).

* :class:`RandomPruning` — the paper's "Random": uniform random video tokens per frame and audio per chunk.
* :class:`DyCokeTTM` — DyCoke's temporal token merging (Tao et al., CVPR 2025, stage 1) adapted per modality as
  in OmniSIFT §4.1: in windows of 4 frames, frame 1 is compared with frame 0, frame 2 with frame 0 and frame 3
  with frame 2 (cosine, same position); frame 0 is the anchor. The most redundant tokens of the whole video
  are removed. Audio gets the same rule on windows of 4 consecutive audio tokens. DyCoke's stage 2 (KV-cache
  pruning while decoding) is not part of OmniSIFT's comparison and is not implemented.
* :class:`OmniZipStyle` — OmniZip (Tao et al., CVPR 2026): audio tokens ranked by the attention they receive
  (the audio encoder's last layer in OmniZip; here, when no encoder scores are given, one parameter-free
  softmax self-attention over the audio embeddings, a documented proxy); the top ones are kept over the
  whole stream; each chunk's audio retention r sets its video removal ratio ``clip(0.75 − 0.4 r, 0.35, 0.75)``,
  rescaled to the global budget; in each chunk F1 (even frame) is pruned by DPC-kNN density-peak scores and
  F2 (odd frame) keeps the tokens least similar to F1. OmniZip's anchor merging of dropped audio is left out
  (this interface keeps or drops tokens; merging would change embeddings).

Ties between anchor-frame tokens (DyCoke) are broken uniformly at random with the compressor's seed.
"""

from __future__ import annotations

import torch

from leanlm.omnisift.base import AVCompressor, CompressionResult
from leanlm.omnisift.layout import AVLayout
from leanlm.omnisift.stvp import drop_count, keep_least_similar, random_keep, temporal_similarity


class RandomPruning(AVCompressor):
    """Uniform random pruning with OmniSIFT's per-frame and per-chunk counts (paper Table 1 "Random")."""

    name = "random"

    def compress(self, embeds: torch.Tensor, layouts: list[AVLayout]) -> CompressionResult:
        keep = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        for b, layout in enumerate(layouts):
            if not layout.has_audio_visual:
                continue
            for chunk in layout.chunks:
                n1 = int(chunk.frames[0].numel())
                k = drop_count(n1, self.rho_v)
                for j, frame in enumerate(chunk.frames):
                    kk = k if j == 0 or frame.numel() == n1 else 0
                    keep[b, frame[~random_keep((frame.numel(),), kk, "cpu", self._generator)]] = False
                n_a = int(chunk.audio.numel())
                if n_a > 1:
                    dropped = ~random_keep((n_a,), drop_count(n_a, self.rho_a), "cpu", self._generator)
                    keep[b, chunk.audio[dropped]] = False
        return CompressionResult(keep=keep)


def ttm_redundancy(frames: list[torch.Tensor], generator: torch.Generator, window: int = 4) -> list[torch.Tensor]:
    """DyCoke TTM redundancy per token: cosine to its reference frame (1→0, 2→0, 3→2 in each window of 4).

    Anchor-frame tokens get a score below every cosine (−2 − U[0,1)), so they go last, in random order.
    Frames of unequal size cannot be compared position by position; they are treated as anchors.
    """
    scores = []
    for i, frame in enumerate(frames):
        pos = i % window
        ref = None if pos == 0 else (i - 1 if pos in (1, 3) else i - 2)
        if ref is None or frames[ref].shape != frame.shape:
            scores.append(-2.0 - torch.rand(frame.shape[0], generator=generator))
        else:
            scores.append(temporal_similarity(frames[ref], frame).cpu())
    return scores


class DyCokeTTM(AVCompressor):
    """DyCoke's temporal token merging, stage 1, applied to video frames and to audio (see module doc)."""

    name = "dycoke"

    def __init__(self, rho_v: float, rho_a: float, seed: int = 0, window: int = 4) -> None:
        super().__init__(rho_v, rho_a, seed)
        self.window = window

    def spec(self) -> dict:
        return {**super().spec(), "window": self.window}

    def compress(self, embeds: torch.Tensor, layouts: list[AVLayout]) -> CompressionResult:
        keep = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        for b, layout in enumerate(layouts):
            if not layout.has_audio_visual:
                continue
            video_drop, audio_drop = self.budget(layout)
            frame_idx = [f for chunk in layout.chunks for f in chunk.frames]
            frames = [embeds[b, f].detach() for f in frame_idx]
            scores = torch.cat(ttm_redundancy(frames, self._generator, self.window))
            all_video = torch.cat(frame_idx)
            keep[b, all_video[~keep_least_similar(scores, video_drop)]] = False
            audio = embeds[b, layout.audio].detach()
            # audio "frames" are single tokens: redundancy of token i against its reference token in the window
            tokens = [audio[i : i + 1] for i in range(audio.shape[0])]
            a_scores = torch.cat(ttm_redundancy(tokens, self._generator, self.window))
            keep[b, layout.audio[~keep_least_similar(a_scores, audio_drop)]] = False
        return CompressionResult(keep=keep)


def attention_received(tokens: torch.Tensor) -> torch.Tensor:
    """Mean softmax attention each token receives in one parameter-free self-attention (Q = K = tokens)."""
    x = tokens.float()
    attn = torch.softmax(x @ x.T / x.shape[-1] ** 0.5, dim=-1)
    return attn.mean(dim=0)


def dpc_knn_scores(tokens: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Density-peak clustering scores ρ_i·δ_i (DPC-kNN): ρ_i = exp(−mean kNN squared distance), δ_i = distance
    to the nearest denser token (the largest distance for the densest). High = a cluster centre, kept first."""
    x = tokens.float()
    n = x.shape[0]
    if n == 1:
        return torch.ones(1)
    dist = torch.cdist(x, x)
    kk = min(k, n - 1)
    knn = dist.topk(kk + 1, largest=False).values[:, 1:]
    density = torch.exp(-(knn**2).mean(dim=-1))
    denser = density.unsqueeze(0) > density.unsqueeze(1)  # [i, j]: j denser than i
    masked = torch.where(denser, dist, torch.full_like(dist, float("inf")))
    delta = masked.min(dim=-1).values
    top = torch.isinf(delta)
    delta[top] = dist[top].max(dim=-1).values
    return density * delta


def spread_budget(weights: list[float], sizes: list[int], total: int) -> list[int]:
    """Integer drops per window ∝ weight·size, capped at size−1, summing to ``total`` (largest remainder)."""
    caps = [max(s - 1, 0) for s in sizes]
    total = min(total, sum(caps))
    raw = [w * s for w, s in zip(weights, sizes, strict=True)]
    norm = sum(raw) or 1.0
    want = [total * r / norm for r in raw]
    out = [min(int(w), c) for w, c in zip(want, caps, strict=True)]
    while sum(out) < total:
        gaps = [(w - o if o < c else -1.0) for w, o, c in zip(want, out, caps, strict=True)]
        j = max(range(len(gaps)), key=lambda i: gaps[i])
        if gaps[j] < 0:
            break
        out[j] += 1
        want[j] = out[j]  # once topped up, a window competes again only after the others
    return out


class OmniZipStyle(AVCompressor):
    """OmniZip-style audio-guided video pruning (see module doc). ``audio_scores`` may be set per call by
    the integration to real audio-encoder attention scores (one tensor per sequence); otherwise the proxy
    :func:`attention_received` over the audio embeddings is used."""

    name = "omnizip"

    def __init__(self, rho_v: float, rho_a: float, seed: int = 0, knn: int = 5) -> None:
        super().__init__(rho_v, rho_a, seed)
        self.knn = knn
        self.audio_scores: list[torch.Tensor] | None = None

    def spec(self) -> dict:
        return {**super().spec(), "knn": self.knn}

    def compress(self, embeds: torch.Tensor, layouts: list[AVLayout]) -> CompressionResult:
        keep = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        for b, layout in enumerate(layouts):
            if not layout.has_audio_visual:
                continue
            video_drop, audio_drop = self.budget(layout)
            audio = embeds[b, layout.audio].detach()
            scores = self.audio_scores[b] if self.audio_scores is not None else attention_received(audio)
            audio_keep = keep_least_similar(-scores.cpu().float(), audio_drop)
            keep[b, layout.audio[~audio_keep]] = False
            position = {int(i): j for j, i in enumerate(layout.audio.tolist())}
            ratios, sizes = [], []
            for chunk in layout.chunks:
                kept = [bool(audio_keep[position[int(i)]]) for i in chunk.audio.tolist()]
                r = sum(kept) / len(kept) if kept else 1.0
                ratios.append(min(max(0.75 - 0.4 * r, 0.35), 0.75))
                sizes.append(sum(int(f.numel()) for f in chunk.frames))
            drops = spread_budget(ratios, sizes, video_drop)
            for chunk, n_drop in zip(layout.chunks, drops, strict=True):
                self._prune_chunk(keep, b, embeds, chunk.frames, n_drop)
        return CompressionResult(keep=keep)

    def _prune_chunk(self, keep: torch.Tensor, b: int, embeds: torch.Tensor, frames: list[torch.Tensor], n_drop: int) -> None:
        sizes = [int(f.numel()) for f in frames]
        per = spread_budget([1.0] * len(frames), sizes, n_drop)
        f1 = embeds[b, frames[0]].detach()
        keep[b, frames[0][~keep_least_similar(-dpc_knn_scores(f1, self.knn), per[0])]] = False
        if len(frames) > 1:
            f2 = embeds[b, frames[1]].detach()
            sim = temporal_similarity(f1, f2).cpu() if f2.shape == f1.shape else -dpc_knn_scores(f2, self.knn)
            keep[b, frames[1][~keep_least_similar(sim, per[1])]] = False
