"""Removal ratios per retention target (OmniSIFT Table 6) and token-count calibration for other geometries.

The paper's settings assume Qwen2.5-Omni's geometry (up to 320 video tokens per frame, 25 audio tokens per
second, so ~640 video vs ~50 audio tokens per 2-s chunk). :func:`solve_rho_v` finds, for another geometry,
the video ratio that keeps a target fraction of the audio-visual tokens at a method's audio ratio: the
paper's own protocol of calibrating every method to the same number of kept tokens.
"""

from __future__ import annotations

from leanlm.omnisift.stvp import keep_count

#: (rho_a, rho_v) per method and retained fraction, paper Table 6.
PAPER_RATIOS: dict[str, dict[float, tuple[float, float]]] = {
    "omnisift": {0.35: (0.4, 0.67), 0.25: (0.5, 0.77)},
    "random": {0.35: (0.4, 0.67), 0.25: (0.5, 0.77)},
    "omnizip": {0.35: (0.4, 0.7), 0.25: (0.6, 0.98)},
    "dycoke": {0.35: (0.4, 0.9), 0.25: (0.6, 0.99)},
}

#: The reference code's defaults (README and training when no config is given).
DEFAULT_RHO_A, DEFAULT_RHO_V = 0.3, 0.7


def paper_ratios(method: str, retention: float) -> tuple[float, float]:
    """(rho_v, rho_a) for ``method`` at ``retention`` (0.35 or 0.25) from Table 6."""
    table = PAPER_RATIOS.get(method, PAPER_RATIOS["omnisift"])
    if retention not in table:
        raise KeyError(f"Table 6 has retention {sorted(table)} for {method!r}, not {retention}")
    rho_a, rho_v = table[retention]
    return rho_v, rho_a


def kept_tokens(frame_sizes: list[list[int]], chunk_audio: list[int], rho_v: float, rho_a: float) -> int:
    """Audio-visual tokens kept by OmniSIFT's budget: per chunk, frames ``[n1, n2?]`` and ``n_a`` audio."""
    total = 0
    for frames, n_a in zip(frame_sizes, chunk_audio, strict=True):
        total += keep_count(frames[0], rho_v)
        if len(frames) > 1:
            total += keep_count(frames[1], rho_v) if frames[1] == frames[0] else frames[1]
        total += n_a if n_a <= 1 else keep_count(n_a, rho_a)
    return total


def solve_rho_v(frame_sizes: list[list[int]], chunk_audio: list[int], rho_a: float, retention: float) -> float:
    """The smallest ``rho_v`` in steps of 1/n_p whose kept count is closest to ``retention`` of all tokens."""
    total = sum(sum(f) for f in frame_sizes) + sum(chunk_audio)
    target = retention * total
    n_p = max(f[0] for f in frame_sizes)
    best, best_gap = 0.0, float("inf")
    for j in range(n_p):
        rho_v = (j + 0.5) / n_p  # mid-step: int(n·rho) is then unambiguous in floating point
        gap = abs(kept_tokens(frame_sizes, chunk_audio, rho_v, rho_a) - target)
        if gap < best_gap - 1e-9:
            best, best_gap = rho_v, gap
    return round(best, 6)
