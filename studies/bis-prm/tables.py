"""Pivot tables of the issue #16 grid for docs/results/bis.md, from the study's cells (no training).

    .venv/bin/python studies/bis-prm/tables.py [CELLS_DIR [CELLS_FILE]] > block.md

Reads CELLS_DIR/CELLS_FILE (default: this folder's cells.jsonl; e.g. cells-steps.jsonl for the step-matched
control, whose full-data cells are those of cells.jsonl): mean ± sd per selector x budget, paired differences
(selector minus random at the same budget, selector minus full data) with Student-t 95% intervals, per metric.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from leanlm.bis.prm.study import paired_ci

ORDER = ["random", "bis-0", "bis-0.05", "bis-0.1", "bis-0.2", "mixture-only", "reliability-only", "mixed-only",
         "low-mc", "uncertainty", "loss"]
METRICS = {"f1_val_tuned": "overall micro-F1, threshold chosen on val", "f1_fixed": "overall micro-F1 at 0.5",
           "auc": "pooled AUC"}


def main(d: Path, name: str = "cells.jsonl") -> str:
    rows = [json.loads(x) for x in (d / name).read_text().splitlines() if x.strip()]
    if not any(r["selector"] == "full" for r in rows):  # a control's log: full data is shared with cells.jsonl
        rows += [r for r in (json.loads(x) for x in (d / "cells.jsonl").read_text().splitlines() if x.strip())
                 if r["selector"] == "full"]
    by: dict[tuple[str, float], dict[int, dict]] = {}
    for r in rows:
        by.setdefault((r["selector"], r["budget"]), {})[r["seed"]] = r
    budgets = sorted({b for s, b in by if s != "full"})
    sels = [s for s in ORDER if any((s, b) in by for b in budgets)]
    full = by[("full", 1.0)]
    out = []
    for m, label in METRICS.items():
        f = [full[s][m] for s in sorted(full)]
        out += [f"**{label}**: mean ± sd over seeds (n seeds in brackets when fewer than 10); full data (100%): "
                f"{np.mean(f):.4f} ± {np.std(f, ddof=1):.4f} ({len(f)} seeds)", "",
                "| selector | " + " | ".join(f"{b:.0%}" for b in budgets) + " |",
                "|---|" + "---|" * len(budgets)]
        for s in sels:
            cells = []
            for b in budgets:
                v = [c[m] for c in by.get((s, b), {}).values()]
                cells.append("" if not v else f"{np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.4f}"
                             + ("" if len(v) == 10 else f" ({len(v)})"))
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("")
        refs = [("random", "minus random at the same budget")] + ([("full", "minus full data")] if m == "f1_val_tuned" else [])
        for ref, title in refs:
            out += [f"Paired difference, {label}, selector {title}: mean [Student-t 95% interval] (n)", "",
                    "| selector | " + " | ".join(f"{b:.0%}" for b in budgets) + " |",
                    "|---|" + "---|" * len(budgets)]
            for s in sels:
                if s == "random" and ref == "random":
                    continue
                cells = []
                for b in budgets:
                    a, r_ = by.get((s, b), {}), (by.get(("random", b), {}) if ref == "random" else full)
                    seeds = sorted(set(a) & set(r_))
                    if len(seeds) < 2:
                        cells.append("")
                        continue
                    c = paired_ci([a[k][m] for k in seeds], [r_[k][m] for k in seeds])
                    mark = "**" if c["lo"] > 0 or c["hi"] < 0 else ""
                    cells.append(f"{mark}{c['mean']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]{mark}"
                                 + ("" if c["n"] == 10 else f" ({c['n']})"))
                out.append(f"| {s} | " + " | ".join(cells) + " |")
            out.append("")
    cpu = sum(r.get("cpu_s", 0) for r in rows)
    out.append(f"{len(rows)} cells; {sum('cpu_s' in r for r in rows)} of them record their CPU time, "
               f"{cpu / 60:.1f} CPU-minutes in all (bold: the interval excludes 0).")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent,
                          *(sys.argv[2:3] or ["cells.jsonl"])))
