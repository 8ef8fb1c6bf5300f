"""The Balanced-Information Score and the comparison scorers, on compact per-rollout statistics.

Paper: Li et al., "Training Data Efficiency in Multimodal Process Reward Models", arXiv 2602.04145; the
formula as the official ``scripts/build_bis_subset.py`` computes it (brief §1.1):

* hard label of step j: y_j = 1 iff s_j > 0 (strict threshold, VisualPRM's "+" label);
* label mixture p = n_pos / n over the steps that have a score;
* label reliability R = mean of the positive steps' scores, or 1.0 when there is none;
* BIS = (p·(1−p) + α)·R.

Every scorer sees a rollout only through :class:`RolloutStats` (steps with a score, positive steps, the
left-to-right sum of positive scores), which is all the formula needs and is 20 bytes per rollout. The sum is
accumulated left to right in float64 exactly as Python's ``sum`` does, so the scores are bit-identical to the
official script's and ties at the cut fall the same way.

Scorers are small classes behind one interface, :class:`Scorer` (``scores(stats) -> float64 array``; higher is
kept first). Besides :class:`BIS` the studies' baselines are here: mixture only, reliability only, seeded
random, "mixed only" (rollouts with both labels first, random within), "low-MC" (the negative control keeping
low-MC pseudo-positives first) and user-supplied scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np


@dataclass
class RolloutStats:
    """Per-rollout MC statistics of one chunk of rows (rows without a scored step have ``n == 0``).

    ``file_index`` and ``row`` (0-based among the file's non-blank lines) identify a rollout independently of
    how the corpus was chunked, which lets the seeded random scorer give the same draw on every engine.
    """

    n: np.ndarray  # int32: steps with a score
    n_pos: np.ndarray  # int32: steps with score > 0
    sum_pos: np.ndarray  # float64: left-to-right sum of the positive scores
    row: np.ndarray  # int64
    file_index: int = 0

    def __len__(self) -> int:
        return len(self.n)

    @property
    def candidate(self) -> np.ndarray:
        """Rollouts with at least one scored step (the official script's ``if not step_scores: continue``)."""
        return self.n > 0

    def p_pos(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.n_pos / self.n.astype(np.float64)

    def reliability(self) -> np.ndarray:
        """R: mean positive MC score, 1.0 for a rollout without positive steps."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum_pos / self.n_pos.astype(np.float64)
        return np.where(self.n_pos > 0, mean, 1.0)


def step_stats(scores: list[float]) -> tuple[int, int, float]:
    """(n, n_pos, sum_pos) of one rollout's scored steps, the left-to-right sum as Python computes it."""
    total = 0.0
    n_pos = 0
    for s in scores:
        if s > 0.0:
            total += s
            n_pos += 1
    return len(scores), n_pos, total


def bis_value(scores: list[float], alpha: float) -> float:
    """BIS of one rollout from its scored steps (Eq. of brief §1.1); raises on an empty list."""
    if not scores:
        raise ValueError("BIS is undefined for a rollout without a scored step")
    n, n_pos, total = step_stats(scores)
    p = n_pos / n
    r = total / n_pos if n_pos else 1.0
    return (p * (1.0 - p) + alpha) * r


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised over uint64."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def seeded_uniform(seed: int, file_index: int, rows: np.ndarray) -> np.ndarray:
    """A uniform [0, 1) draw per (seed, file, row): the same on every engine and chunking."""
    with np.errstate(over="ignore"):
        key = (np.uint64(seed & 0xFFFFFFFF) << np.uint64(40)) ^ (np.uint64(file_index) << np.uint64(48))
        x = _mix64(rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key + np.uint64(0x632BE59BD9B4E019))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


class Scorer:
    """Scores rollouts from their MC statistics; the selector keeps the highest first (stable on ties)."""

    name: ClassVar[str] = "scorer"

    def scores(self, stats: RolloutStats) -> np.ndarray:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} does not implement scores()")

    def params(self) -> dict:
        return {}


@dataclass
class BIS(Scorer):
    """Balanced-Information Score (p(1−p) + α)·R, arXiv 2602.04145 §1.1 of the brief; α = 0.05 default
    (the official CLI default, used with ratio 0.25; the paper's 10% subset used α = 0.2)."""

    alpha: float = 0.05
    name: ClassVar[str] = "bis"

    def __post_init__(self) -> None:
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")

    def scores(self, stats: RolloutStats) -> np.ndarray:
        p = stats.p_pos()
        return (p * (1.0 - p) + self.alpha) * stats.reliability()

    def params(self) -> dict:
        return {"alpha": self.alpha}


@dataclass
class MixtureOnly(Scorer):
    """Label mixture alone, p(1−p): the paper's first factor (ablation)."""

    name: ClassVar[str] = "mixture"

    def scores(self, stats: RolloutStats) -> np.ndarray:
        p = stats.p_pos()
        return p * (1.0 - p)


@dataclass
class ReliabilityOnly(Scorer):
    """Label reliability alone, R (the "reliable" heuristic baseline)."""

    name: ClassVar[str] = "reliability"

    def scores(self, stats: RolloutStats) -> np.ndarray:
        return stats.reliability()


@dataclass
class RandomScorer(Scorer):
    """Seeded random subsampling (Random-x%): a uniform draw per rollout, reproducible across engines."""

    seed: int = 0
    name: ClassVar[str] = "random"

    def scores(self, stats: RolloutStats) -> np.ndarray:
        return seeded_uniform(self.seed, stats.file_index, stats.row)


@dataclass
class MixedOnly(Scorer):
    """The "mixed" heuristic: rollouts holding both labels (0 < n_pos < n) first, random order within."""

    seed: int = 0
    name: ClassVar[str] = "mixed"

    def scores(self, stats: RolloutStats) -> np.ndarray:
        mixed = (stats.n_pos > 0) & (stats.n_pos < stats.n)
        return mixed.astype(np.float64) + seeded_uniform(self.seed, stats.file_index, stats.row)


@dataclass
class LowMC(Scorer):
    """The "low-MC" negative control: rollouts whose positive steps have the lowest mean MC first (1 − R)."""

    name: ClassVar[str] = "low-mc"

    def scores(self, stats: RolloutStats) -> np.ndarray:
        return 1.0 - stats.reliability()


@dataclass
class External(Scorer):
    """User-supplied per-rollout scores: ``table[file_name][row]`` (as written by ``leanlm bis score``)."""

    table: dict[str, np.ndarray] = field(default_factory=dict)
    file_names: list[str] = field(default_factory=list)
    name: ClassVar[str] = "external"

    def scores(self, stats: RolloutStats) -> np.ndarray:
        name = self.file_names[stats.file_index]
        values = self.table.get(name)
        if values is None:
            raise ValueError(f"external scores have no entry for file {name!r}")
        if len(stats.row) and int(stats.row.max()) >= len(values):
            raise ValueError(f"external scores for {name!r} cover {len(values)} rows, the file has more")
        return values[stats.row]


SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls for cls in (BIS, MixtureOnly, ReliabilityOnly, RandomScorer, MixedOnly, LowMC, External)
}


def make_scorer(name: str, *, alpha: float = 0.05, seed: int = 0) -> Scorer:
    """Build a scorer by name (``bis``, ``mixture``, ``reliability``, ``random``, ``mixed``, ``low-mc``)."""
    if name == "bis":
        return BIS(alpha=alpha)
    if name in ("random", "mixed"):
        return SCORERS[name](seed=seed)  # type: ignore[call-arg]
    if name in ("mixture", "reliability", "low-mc"):
        return SCORERS[name]()
    raise ValueError(f"unknown scorer {name!r}; choose from {', '.join(sorted(SCORERS))} (external via a scores file)")
