"""Baselines behind the same interface, each spending OmniSIFT's budget (:meth:`AVCompressor.budget`).

* :class:`RandomPruning` — the paper's "Random": uniform random video tokens per frame and audio per chunk.
* :class:`DyCokeTTM` — DyCoke's temporal token merging (Tao et al., CVPR 2025, stage 1) adapted per modality as
  in OmniSIFT §4.1: in windows of 4 frames, frame 1 is compared with frame 0, frame 2 with frame 0 and frame 3
  with frame 2 (cosine, same position); frame 0 is the anchor and is **never pruned**; every non-anchor frame
  loses the **same number** of tokens (its most redundant ones). Audio gets the same windows over single
  tokens. DyCoke's stage 2 (KV-cache pruning while decoding) is not part of OmniSIFT's comparison and is not
  implemented. Remaining difference: DyCoke merges (averages) redundant tokens into the anchor; this
  interface keeps or drops, so they are dropped.
* :class:`OmniZipStyle` — OmniZip (Tao et al., CVPR 2026): audio tokens ranked by the attention they receive
  in the audio encoder's last layer (``audio_scores``, filled by the thinker from the encoder; without an
  encoder, e.g. in the synthetic study, a parameter-free softmax self-attention over the audio embeddings
  is the proxy); the top ones are kept over the whole stream; each chunk's audio retention r sets
  its video removal ratio ``clip(0.75 − 0.4 r, 0.35, 0.75)``, rescaled to the global budget; in each chunk
  F1 (even frame) is pruned by DPC-kNN density-peak scores on cosine distance with ρ = exp(−mean kNN d)
  and F2 (odd frame) keeps the tokens least similar to F1. OmniZip's anchor merging of dropped audio is
  left out (this interface keeps or drops tokens; merging would change embeddings).


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


def ttm_references(n_frames: int, window: int = 4) -> list[int | None]:
    """DyCoke TTM reference frame of each frame: ``None`` for the window's anchor (frame 0 of each window of
    4), else 1→0, 2→0, 3→2 (DyCoke Alg. 1: odd frames against their predecessor, frame 2 against frame 0)."""
    refs: list[int | None] = []
    for i in range(n_frames):
        pos = i % window
        refs.append(None if pos == 0 else (i - 1 if pos in (1, 3) else i - 2))
    return refs


def fixed_per_frame(total: int, caps: list[int]) -> list[int]:
    """``total`` drops spread as evenly as possible over frames (DyCoke prunes a fixed number of tokens in
    every non-anchor frame), each capped at its frame's size; earlier frames take the remainder first."""
    out = [0] * len(caps)
    left = min(total, sum(caps))
    open_ = [i for i, c in enumerate(caps) if c > 0]
    while left > 0 and open_:
        share, extra = divmod(left, len(open_))
        for rank, i in enumerate(open_):
            add = min(caps[i] - out[i], share + (1 if rank < extra else 0))
            out[i] += add
            left -= add
        open_ = [i for i in open_ if out[i] < caps[i]]
    return out


class DyCokeTTM(AVCompressor):
    """DyCoke's temporal token merging, stage 1, applied to video frames and to audio (see module doc).

    Video: anchor frames (frame 0 of every window of 4) are never pruned; every other frame loses the same
    number of tokens (:func:`fixed_per_frame`), the ones most similar (cosine, same position) to its
    reference frame. When the budget exceeds what the non-anchor frames hold, the rest is not spent (the
    method then keeps more tokens than the others; the study reports each method's kept fraction).
    Audio: the same windows over single audio tokens; anchors are never pruned and the most redundant
    non-anchor tokens go first.
    """

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
            refs = ttm_references(len(frame_idx), self.window)
            comparable = [r is not None and frame_idx[r].numel() == f.numel() for f, r in zip(frame_idx, refs, strict=True)]
            caps = [int(f.numel()) if ok else 0 for f, ok in zip(frame_idx, comparable, strict=True)]
            for f, r, n_drop in zip(frame_idx, refs, fixed_per_frame(video_drop, caps), strict=True):
                if n_drop:
                    sim = temporal_similarity(embeds[b, frame_idx[r]].detach(), embeds[b, f].detach()).cpu()
                    keep[b, f[~keep_least_similar(sim, n_drop)]] = False
            audio = embeds[b, layout.audio].detach()
            a_refs = ttm_references(audio.shape[0], self.window)
            scores = torch.full((audio.shape[0],), -3.0)  # anchors: below every cosine, never reached
            for i, r in enumerate(a_refs):
                if r is not None:
                    scores[i] = torch.nn.functional.cosine_similarity(audio[i], audio[r], dim=0).cpu()
            n_drop = min(audio_drop, sum(r is not None for r in a_refs))
            keep[b, layout.audio[~keep_least_similar(scores, n_drop)]] = False
        return CompressionResult(keep=keep)


def attention_received(tokens: torch.Tensor) -> torch.Tensor:
    """Mean softmax attention each token receives in one parameter-free self-attention (Q = K = tokens)."""
    x = tokens.float()
    attn = torch.softmax(x @ x.T / x.shape[-1] ** 0.5, dim=-1)
    return attn.mean(dim=0)


def dpc_knn_scores(tokens: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Density-peak clustering scores ρ_i·δ_i (DPC-kNN as in OmniZip's ISTC): cosine distance
    d = 1 − cos, ρ_i = exp(−mean of the k nearest d), δ_i = d to the nearest denser token (the largest d for
    the densest). High = a cluster centre, kept first."""
    x = torch.nn.functional.normalize(tokens.float(), dim=-1)
    n = x.shape[0]
    if n == 1:
        return torch.ones(1)
    dist = (1.0 - x @ x.T).clamp_min(0.0)
    dist.fill_diagonal_(0.0)
    kk = min(k, n - 1)
    knn = dist.topk(kk + 1, largest=False).values[:, 1:]
    density = torch.exp(-knn.mean(dim=-1))
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
    #: inside :class:`~leanlm.omnisift.qwen_omni.OmniSIFTThinker`, the audio encoder's last-layer attention
    #: received per token is computed and passed as ``audio_scores`` (OmniZip's score)
    uses_audio_attention = True

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
