"""What pass 1 leaves on disk for one file, and the one place that writes and reads it.

A spill is a file of fixed-size records (float64 score, NaN for a non-candidate; int32 local group code), one
per row in file order: 12 bytes per row whatever the engine that produced it. Rejected lines (under
``skip_invalid``) go to a per-file rejects file through :class:`RejectSink`, the only reject writer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from leanlm.bis.cut import chunk_scores, local_groups, tally
from leanlm.bis.scan import FileCounts, Reject
from leanlm.bis.score import RolloutStats, Scorer

SPILL_DTYPE = np.dtype([("score", "<f8"), ("group", "<i4")])


@dataclass
class FileScores:
    """Pass 1's result for one file: counts, its local group names and candidates, and its spill/rejects."""

    path: str
    counts: FileCounts
    group_names: list[str]
    group_candidates: list[int]
    spill: str
    rejects: str | None = None
    engine: str = "stream"


class RejectSink:
    """Writes the ``--skip-invalid`` rejects of one file as JSONL, opening the file on the first reject."""

    def __init__(self, path: str):
        self.path = path
        self.count = 0
        self._fh: IO[str] | None = None

    def __call__(self, r: Reject) -> None:
        if self._fh is None:
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._fh.write(json.dumps({"file": r.path, "line": r.line, "error": r.error, "raw": r.raw},
                                  ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> str | None:
        """Close; the path if anything was written, else ``None``."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        return self.path if self.count else None


@dataclass
class SpillWriter:
    """Scores chunks of one file and appends them to its spill; tracks the local groups and their candidates.

    Every engine feeds it the same per-rollout statistics, so the spills (and the cut) are the same."""

    path: str
    scorer: Scorer
    names: dict[Any, int]
    candidates: dict[int, int] = field(default_factory=dict)
    rows: int = 0

    def __post_init__(self) -> None:
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, stats: RolloutStats, groups: list[Any] | None) -> int:
        score = chunk_scores(self.scorer, stats)
        local = local_groups(groups, len(score), self.names)
        tally(self.candidates, local, score)
        rec = np.empty(len(score), dtype=SPILL_DTYPE)
        rec["score"], rec["group"] = score, local
        self._fh.write(rec.tobytes())
        self.rows += len(score)
        return len(score)

    def close(self) -> None:
        self._fh.close()

    def result(self, path: str, counts: FileCounts, rejects: str | None, engine: str) -> FileScores:
        names = [str(k) for k in self.names]
        return FileScores(path=path, counts=counts, group_names=names,
                          group_candidates=[self.candidates.get(i, 0) for i in range(len(names))],
                          spill=self.path, rejects=rejects, engine=engine)


def spill_path(spill_dir: str, file_index: int, suffix: str = ".spill") -> str:
    return os.path.join(spill_dir, f"{file_index:06d}{suffix}")


def iter_spill(path: str, block: int = 1 << 20) -> Iterator[np.ndarray]:
    """Read a spill file back in blocks of ``block`` rows."""
    with open(path, "rb") as fh:
        while True:
            arr = np.fromfile(fh, dtype=SPILL_DTYPE, count=block)
            if not len(arr):
                return
            yield arr
