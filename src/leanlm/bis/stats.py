"""Per-rollout score files and per-source distributions of p (mixture), R (reliability) and BIS.

Both stream the corpus once with the pass-1 scanner, so they share its typed decoding, its errors and its
``skip_invalid`` handling. Distributions are kept as fixed-bin histograms (bounded memory whatever the corpus
size): p and R on [0, 1], BIS on [0, 0.25 + α] (the bound of brief §1.1 for scores in [0, 1]).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leanlm.bis.config import source_name
from leanlm.bis.inputs import discover_inputs
from leanlm.bis.scan import scanner
from leanlm.bis.schema import Fields
from leanlm.bis.score import BIS, External, Scorer
from leanlm.common.atomic import atomic_write
from leanlm.common.progress import progress

BINS = 50


def score_corpus(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *,
                 scorer: Scorer | None = None, fields: Fields | None = None, skip_invalid: bool = False) -> int:
    """Write one row per rollout (``file, source, row, n_scored, n_pos, p_pos, reliability, score``).

    ``output`` ends in ``.parquet``, ``.csv`` or ``.jsonl``; ``score`` is NaN (``null`` in JSONL) for rollouts
    without a scored step. ``row`` counts non-blank lines from 0, the key :func:`load_external` reads back.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    scorer = scorer or BIS()
    fields = fields or Fields()
    files = discover_inputs(inputs)
    out = Path(output)
    kind = out.suffix.lower()
    if kind not in (".parquet", ".csv", ".jsonl"):
        raise ValueError(f"{out}: score file must end in .parquet, .csv or .jsonl")
    total = 0
    with atomic_write(out, "wb") as fh:
        writer: Any = None
        for i, path in enumerate(progress(files, desc="bis score", unit="file")):
            for chunk in scanner(path, i, fields, skip_invalid=skip_invalid):
                s = chunk.stats
                score = np.asarray(scorer.scores(s), dtype=np.float64)
                score = np.where(s.candidate & ~chunk.rejected, score, np.nan)
                table = pa.table({
                    "file": pa.array([path.name] * len(s), pa.string()),
                    "source": pa.array([source_name(path)] * len(s), pa.string()),
                    "row": s.row, "n_scored": s.n, "n_pos": s.n_pos,
                    "p_pos": np.where(s.candidate, s.p_pos(), np.nan),
                    "reliability": np.where(s.candidate, s.reliability(), np.nan), "score": score,
                })
                total += len(s)
                if kind == ".parquet":
                    writer = writer or pq.ParquetWriter(fh, table.schema)
                    writer.write_table(table)
                elif kind == ".csv":
                    pcsv.write_csv(table, fh, pcsv.WriteOptions(include_header=writer is None))
                    writer = True
                else:
                    import msgspec

                    rows = table.to_pylist()
                    for r in rows:
                        for key in ("p_pos", "reliability", "score"):
                            if r[key] != r[key]:
                                r[key] = None
                    fh.write(b"".join(msgspec.json.encode(r) + b"\n" for r in rows))
        if kind == ".parquet" and writer is not None:
            writer.close()
    return total


def load_external(path: str | os.PathLike[str], column: str = "score") -> External:
    """An :class:`External` scorer from a score file (``file``, ``row`` and ``column`` columns)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    p = Path(path)
    kind = p.suffix.lower()
    table = pq.read_table(p) if kind == ".parquet" else pcsv.read_csv(p) if kind == ".csv" else pj.read_json(p)
    for col in ("file", "row", column):
        if col not in table.column_names:
            raise ValueError(f"{p}: score file has no column {col!r} (columns: {', '.join(table.column_names)})")
    files = np.array(table.column("file").to_pylist(), dtype=object)
    rows = table.column("row").to_numpy().astype(np.int64)
    values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(files.tolist()):
        sel = files == name
        arr = np.full(int(rows[sel].max()) + 1, np.nan)
        arr[rows[sel]] = values[sel]
        out[str(name)] = arr
    return External(table=out)


@dataclass
class SourceStats:
    """Histogram summary of one source."""

    rows: int = 0
    candidates: int = 0
    all_negative: int = 0
    all_positive: int = 0
    mixed: int = 0
    p_hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    r_hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    bis_hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    sums: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def summary(self, bis_edges: np.ndarray) -> dict[str, Any]:
        c = max(self.candidates, 1)
        return {
            "rows": self.rows, "candidates": self.candidates,
            "all_negative": self.all_negative, "all_positive": self.all_positive, "mixed": self.mixed,
            "mixed_share": round(self.mixed / c, 4), "mean_p": round(self.sums[0] / c, 4),
            "mean_R": round(self.sums[1] / c, 4), "mean_bis": round(self.sums[2] / c, 5),
            "median_bis": float(_hist_quantile(self.bis_hist, bis_edges, 0.5)),
            "p90_bis": float(_hist_quantile(self.bis_hist, bis_edges, 0.9)),
        }


def _hist_quantile(hist: np.ndarray, edges: np.ndarray, q: float) -> float:
    total = hist.sum()
    if total == 0:
        return float("nan")
    idx = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(edges[min(idx + 1, len(edges) - 1)])  # upper edge of the bin holding the quantile


def corpus_stats(inputs: Sequence[str | os.PathLike[str]], *, alpha: float = 0.05, fields: Fields | None = None,
                 skip_invalid: bool = False) -> tuple[dict[str, SourceStats], np.ndarray]:
    """Per-source histograms of p, R and BIS (and label-mixture counts); returns them and the BIS bin edges."""
    fields = fields or Fields()
    files = discover_inputs(inputs)
    unit = np.linspace(0.0, 1.0, BINS + 1)
    bis_edges = np.linspace(0.0, 0.25 + alpha, BINS + 1)
    scorer = BIS(alpha)
    out: dict[str, SourceStats] = {}
    for i, path in enumerate(progress(files, desc="bis stats", unit="file")):
        st = out.setdefault(source_name(path), SourceStats())
        for chunk in scanner(path, i, fields, skip_invalid=skip_invalid):
            s = chunk.stats
            st.rows += len(s)
            c = s.candidate & ~chunk.rejected
            p, r, b = s.p_pos()[c], s.reliability()[c], scorer.scores(s)[c]
            st.candidates += int(c.sum())
            st.all_negative += int((s.n_pos[c] == 0).sum())
            st.all_positive += int((s.n_pos[c] == s.n[c]).sum())
            st.mixed += int(((s.n_pos[c] > 0) & (s.n_pos[c] < s.n[c])).sum())
            st.p_hist += np.histogram(p, unit)[0]
            st.r_hist += np.histogram(np.clip(r, 0, 1), unit)[0]
            st.bis_hist += np.histogram(np.clip(b, 0, bis_edges[-1]), bis_edges)[0]
            st.sums += [p.sum(), r.sum(), b.sum()]
    return out, bis_edges


def stats_figure(stats: dict[str, SourceStats], bis_edges: np.ndarray, title: str = "") -> Any:
    """A three-panel matplotlib figure: histograms of p, R and BIS over all sources (log counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = np.linspace(0.0, 1.0, BINS + 1)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, key, edges, label in ((axes[0], "p_hist", unit, "label mixture p (share of positive steps)"),
                                  (axes[1], "r_hist", unit, "reliability R (mean positive MC)"),
                                  (axes[2], "bis_hist", bis_edges, "BIS")):
        total = sum(getattr(s, key) for s in stats.values())
        ax.bar(edges[:-1], total, width=np.diff(edges), align="edge", color="#3465a4")
        ax.set_yscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel("rollouts")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
