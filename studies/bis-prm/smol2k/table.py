"""The SmolLM2-135M run of issue #16 (2k corpus, 10% and 100%), as a Markdown table, from its cells.

    .venv/bin/python studies/bis-prm/smol2k/table.py [CELLS_JSONL ...]   (default: this folder's cells.jsonl)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from leanlm.bis.prm.study import paired_ci

METRICS = [("f1_val_tuned", "micro-F1 (val threshold)"), ("f1_fixed", "micro-F1 @ 0.5"), ("auc", "AUC")]


def main(paths: list[Path]) -> str:
    rows = [json.loads(x) for p in paths for x in p.read_text().splitlines() if x.strip()]
    by = {(r["selector"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out = ["| seed | training data | rollouts | optimizer steps | " + " | ".join(m for _, m in METRICS)
           + " | cell CPU s |", "|---|---|---|---|" + "---|" * len(METRICS) + "---|"]
    for s in seeds:
        for sel, lab in (("full", "full data"), ("bis-0.2", "BIS α=0.2, 10%"), ("random", "random, 10%")):
            r = by.get((sel, s))
            if r:
                out.append(f"| {s} | {lab} | {r['rollouts']:,} | {r['optimizer_steps']} | "
                           + " | ".join(f"{r[k]:.4f}" for k, _ in METRICS) + f" | {r.get('cpu_s', float('nan')):.0f} |")
    out += ["", "| paired difference (n seeds) | " + " | ".join(m for _, m in METRICS) + " |",
            "|---|" + "---|" * len(METRICS)]
    for a, b, lab in (("bis-0.2", "random", "BIS-10% minus random-10%"), ("bis-0.2", "full", "BIS-10% minus full"),
                      ("random", "full", "random-10% minus full")):
        ss = [s for s in seeds if (a, s) in by and (b, s) in by]
        if not ss:
            continue
        cells = []
        for k, _ in METRICS:
            c = paired_ci([by[a, s][k] for s in ss], [by[b, s][k] for s in ss])
            cells.append(f"{c['mean']:+.4f}" + ("" if len(ss) < 2 else f" [{c['lo']:+.4f}, {c['hi']:+.4f}]"))
        out.append(f"| {lab} ({len(ss)}) | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(main([Path(p) for p in sys.argv[1:]] or [Path(__file__).parent / "cells.jsonl"]))
