"""The compressor interface shared by OmniSIFT, its ablations and the baselines (kvpress-like presses).

A compressor is an ``nn.Module`` with two removal ratios, ``rho_v`` (video) and ``rho_a`` (audio), and one
method, :meth:`AVCompressor.compress`, mapping the LLM input embeddings of a batch and each sequence's
:class:`~leanlm.omnisift.layout.AVLayout` to a :class:`CompressionResult`: a boolean keep-mask over the
sequence and, for learnable selectors, straight-through multipliers for the embeddings. Text and any token
outside the video/audio chunks are always kept.

Every method spends the same budget as OmniSIFT at the same ratios (paper Table 6 note: "the number of
retained tokens is calibrated to be equal"): ``int(n_f·ρv)`` video tokens removed per frame and
``int(n_c·ρa)`` audio tokens per chunk (:meth:`AVCompressor.budget`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from leanlm.omnisift.layout import AVLayout, Chunk
from leanlm.omnisift.stvp import drop_count


@dataclass
class CompressionResult:
    """``keep`` [B, L] bool: the selection. ``gate`` [B, L] float multipliers (STE: the hard 0/1 mask in value,
    the scores' gradient backward) or ``None``. ``train_keep`` [B, L] bool or ``None``: the tokens the thinker
    actually gathers in a training forward when it differs from ``keep`` (``OmniSIFT(ste="mask")`` keeps the
    dropped audio tokens in the sequence, multiplied by their gate, whose value is 0 there). ``fill`` [B, L, D]
    or ``None``: the embeddings become ``fill + gate · (embeds − fill)`` instead of ``gate · embeds``
    (``OmniSIFT(ste="mean")``: a dropped token's training value is its chunk's mean kept audio)."""

    keep: torch.Tensor
    gate: torch.Tensor | None = None
    train_keep: torch.Tensor | None = None
    fill: torch.Tensor | None = None

    def apply_gate(self, embeds: torch.Tensor) -> torch.Tensor:
        """The training-time embeddings: ``gate · embeds`` or ``fill + gate · (embeds − fill)``."""
        if self.gate is None:
            return embeds
        gate = self.gate.unsqueeze(-1).to(embeds.dtype)
        if self.fill is None:
            return embeds * gate
        fill = self.fill.to(embeds.dtype)
        return fill + gate * (embeds - fill)

    def kept_counts(self, layouts: list[AVLayout]) -> tuple[int, int, int, int]:
        """(video kept, video total, audio kept, audio total) over the batch."""
        vk = vt = ak = at = 0
        for b, layout in enumerate(layouts):
            vk += int(self.keep[b, layout.video].sum())
            vt += int(layout.video.numel())
            ak += int(self.keep[b, layout.audio].sum())
            at += int(layout.audio.numel())
        return vk, vt, ak, at


class AVCompressor(nn.Module, ABC):
    """Base class: holds ``rho_v`` / ``rho_a`` and the budget arithmetic; subclasses implement ``compress``."""

    name = "base"

    def __init__(self, rho_v: float, rho_a: float, seed: int = 0) -> None:
        super().__init__()
        drop_count(1, rho_v)
        drop_count(1, rho_a)
        self.rho_v = float(rho_v)
        self.rho_a = float(rho_a)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def set_ratios(self, rho_v: float, rho_a: float) -> None:
        drop_count(1, rho_v)
        drop_count(1, rho_a)
        self.rho_v, self.rho_a = float(rho_v), float(rho_a)

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def bind(self, hidden_size: int) -> None:
        """Called by the thinker with its text hidden size (``config.get_text_config().hidden_size``).
        Compressors with parameters build or check them here; parameter-free ones ignore it."""

    def spec(self) -> dict:
        """JSON-able description saved in the model config, so ``from_pretrained`` rebuilds the same
        compressor (:func:`leanlm.omnisift.registry.compressor_from_spec`)."""
        return {"method": self.name, "rho_v": self.rho_v, "rho_a": self.rho_a, "seed": self.seed}

    def budget(self, layout: AVLayout) -> tuple[int, int]:
        """(video tokens removed, audio tokens removed) for one sequence at the current ratios.

        Video: ``int(|F1|·ρv)`` from each frame (F2 only when ``|F2| = |F1|``, else it is kept whole);
        audio: ``int(n_c·ρa)`` per chunk, none from a chunk with at most one audio token.
        """
        video = audio = 0
        for chunk in layout.chunks:
            k = drop_count(int(chunk.frames[0].numel()), self.rho_v)
            video += k
            if len(chunk.frames) > 1 and chunk.frames[1].numel() == chunk.frames[0].numel():
                video += k
            n_a = int(chunk.audio.numel())
            if n_a > 1:
                audio += drop_count(n_a, self.rho_a)
        return video, audio

    @abstractmethod
    def compress(self, embeds: torch.Tensor, layouts: list[AVLayout]) -> CompressionResult:
        """Keep-mask (and optional STE gate) for ``embeds`` [B, L, D] given each sequence's layout."""

    def forward(self, embeds: torch.Tensor, layouts: list[AVLayout]) -> CompressionResult:
        if embeds.dim() != 3 or len(layouts) != embeds.shape[0]:
            raise ValueError(f"compress needs embeds [B, L, D] and B layouts, got {tuple(embeds.shape)} and {len(layouts)}")
        return self.compress(embeds, layouts)


def group_chunks(layouts: list[AVLayout], seq_len: int) -> dict[tuple[int, ...], list[tuple[int, Chunk]]]:
    """Chunks of the whole batch grouped by signature, so that each group runs as one stacked computation."""
    groups: dict[tuple[int, ...], list[tuple[int, Chunk]]] = defaultdict(list)
    for b, layout in enumerate(layouts):
        if not layout.has_audio_visual:
            continue
        for chunk in layout.chunks:
            groups[chunk.signature].append((b, chunk))
    return groups


def stacked_indices(items: list[tuple[int, Chunk]], seq_len: int, part: str | int) -> torch.Tensor:
    """Flat (b·L + i) indices [N, n] of frame ``part`` (0 or 1) or ``"audio"`` of each chunk in ``items``."""
    rows = []
    for b, chunk in items:
        idx = chunk.audio if part == "audio" else chunk.frames[int(part)]
        rows.append(idx + b * seq_len)
    return torch.stack(rows)
