"""Chunk assignment from TMRoPE temporal ids (OmniSIFT §3.1, "chunk" = the 2-s TMRoPE interleave unit).

A chunk holds two consecutive LLM frames F1, F2 (one temporal grid each) and the audio tokens of the same
time span. Like the paper's reference implementation we never slice the sequence by position: we take the
sorted unique temporal ids of the video tokens, group them in pairs, and give a chunk every audio token
whose temporal id lies in ``[t(F1), t(next chunk's F1))``; the last chunk's upper bound is ``max(t) + 1`` of
the whole sequence, so trailing audio joins the last chunk. With an odd number of frames the last chunk has
one frame only (it gets spatial pruning only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Chunk:
    """Sequence indices of one chunk: ``frames`` (1 or 2 LongTensors, spatial order) and ``audio``."""

    frames: list[torch.Tensor]
    audio: torch.Tensor

    @property
    def signature(self) -> tuple[int, ...]:
        """(frame sizes..., audio count): chunks with equal signatures are processed together."""
        return (*(int(f.numel()) for f in self.frames), int(self.audio.numel()))


@dataclass
class AVLayout:
    """The audio-visual structure of one sequence: its chunks, and all video / audio token indices."""

    chunks: list[Chunk] = field(default_factory=list)
    video: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    audio: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    @property
    def has_audio_visual(self) -> bool:
        return self.video.numel() > 0 and self.audio.numel() > 0


def build_layout(
    input_ids: torch.Tensor,
    temporal_ids: torch.Tensor,
    video_token_id: int,
    audio_token_id: int,
    frames_per_chunk: int = 2,
) -> AVLayout:
    """Group one sequence's video frames in chunks of ``frames_per_chunk`` by temporal id and attach audio.

    ``input_ids`` and ``temporal_ids`` are 1-D of equal length (row 0 of the 3×B×L TMRoPE position ids).
    Index tensors live on the CPU. Frames are the video tokens sharing a temporal id; a frame's tokens keep their sequence order, which
    is the spatial (row-major) order of the merged patches, so F1[i] and F2[i] are the same patch position.
    """
    if input_ids.dim() != 1 or temporal_ids.shape != input_ids.shape:
        raise ValueError(
            f"build_layout needs 1-D input_ids and temporal_ids of equal shape, got {tuple(input_ids.shape)} "
            f"and {tuple(temporal_ids.shape)}"
        )
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
    video_mask = input_ids == video_token_id
    audio_mask = input_ids == audio_token_id
    video = torch.nonzero(video_mask, as_tuple=True)[0]
    audio = torch.nonzero(audio_mask, as_tuple=True)[0]
    layout = AVLayout(video=video, audio=audio)
    if video.numel() == 0:
        return layout
    frame_ids = sorted(temporal_ids[video].unique().tolist())
    t_max = int(temporal_ids.max().item())
    for start in range(0, len(frame_ids), frames_per_chunk):
        group = frame_ids[start : start + frames_per_chunk]
        t_lo = group[0]
        t_hi = frame_ids[start + frames_per_chunk] if start + frames_per_chunk < len(frame_ids) else t_max + 1
        frames = [torch.nonzero(video_mask & (temporal_ids == t), as_tuple=True)[0] for t in group]
        in_span = (temporal_ids >= t_lo) & (temporal_ids < t_hi) & audio_mask
        layout.chunks.append(Chunk(frames=frames, audio=torch.nonzero(in_span, as_tuple=True)[0]))
    return layout


def build_layouts(
    input_ids: torch.Tensor, position_ids: torch.Tensor, video_token_id: int, audio_token_id: int
) -> list[AVLayout]:
    """:func:`build_layout` for each row of a batch; ``position_ids`` is the 3×B×L TMRoPE tensor."""
    if position_ids.dim() != 3 or position_ids.shape[1:] != input_ids.shape:
        raise ValueError(
            f"position_ids must be 3×B×L matching input_ids {tuple(input_ids.shape)}, got {tuple(position_ids.shape)}"
        )
    ids, temporal = input_ids.detach().cpu(), position_ids[0].detach().cpu()
    return [build_layout(ids[b], temporal[b], video_token_id, audio_token_id) for b in range(ids.shape[0])]
