"""Merge per-seed runs of the synthetic study (:mod:`leanlm.omnisift.study`) into one report.

The study is run one process per seed (``leanlm omnisift study --config seedN.json``); this module reads
their ``results.json`` files and writes what the results page needs: the mean ± sd table, every seed's
numbers, and **paired differences per seed with Student-t 95% intervals** (every method is evaluated on
the same samples of a seed, so differences are paired by seed). No seed is dropped: a seed whose
full-token backbone stayed near chance is flagged, and its differences enter the intervals as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leanlm.omnisift.curves import t_interval
from leanlm.omnisift.study import summarize

#: (a, b, metric): the paired differences a − b reported by default, in this order. Accuracy first: the
#: like-for-like comparisons; then "answer sound kept", which isolates the audio selector.
DEFAULT_PAIRS: list[tuple[str, str, str]] = [
    ("OmniSIFT", "Random", "accuracy"),
    ("OmniSIFT", "Random (fine-tuned)", "accuracy"),
    ("OmniSIFT", "OmniZip-style", "accuracy"),
    ("OmniSIFT", "DyCoke-style", "accuracy"),
    ("OmniSIFT", "VGAS→random", "accuracy"),
    ("VGAS→random", "Random (fine-tuned)", "accuracy"),
    ("VGAS→random", "Random", "accuracy"),
    ("Random (fine-tuned)", "Random", "accuracy"),
    ("OmniSIFT", "OmniSIFT (untrained selector)", "accuracy"),
    ("OmniSIFT", "Random", "target_audio_kept"),
    ("OmniSIFT", "VGAS→random", "target_audio_kept"),
    ("OmniSIFT", "OmniSIFT (untrained selector)", "target_audio_kept"),
    ("OmniSIFT (untrained selector)", "VGAS→random", "target_audio_kept"),
]
METRIC_NAMES = {"accuracy": "accuracy", "target_audio_kept": "answer sound kept", "object_kept": "object kept"}
#: the settings that must agree between merged runs (everything that changes a trained model or the task)
_SAME = ("pretrain_steps", "finetune_steps", "batch_size", "lr", "finetune_lr", "eval_samples", "hidden_size",
         "layers", "heads", "selector_dim", "selector_lr", "selector_eps", "selector_clip", "pretrain_hint", "task")


def load_runs(paths: list[Path]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records of every run (a run directory holding ``results.json``, or the file itself), checked: the
    runs' settings agree and no (seed, method, target) appears twice. Returns (records, shared settings)."""
    records: list[dict[str, Any]] = []
    settings: dict[str, Any] | None = None
    first = None
    seen: dict[tuple[int, str, float], Path] = {}
    for path in paths:
        file = path / "results.json" if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"{file}: no results.json (has `leanlm omnisift study --out {path}` finished?)")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        if "records" not in data or "config" not in data:
            raise ValueError(f"{file}: not a study result (fields 'records' and 'config' expected)")
        cfg = {k: data["config"].get(k) for k in _SAME}
        if settings is None:
            settings, first = cfg, file
        else:
            diff = [k for k in _SAME if cfg[k] != settings[k]]
            if diff:
                raise ValueError(f"{file}: settings differ from {first} in {', '.join(diff)} "
                                 f"({', '.join(f'{k}={cfg[k]!r} vs {settings[k]!r}' for k in diff)})")
        for rec in data["records"]:
            key = (rec["seed"], rec["method"], rec["target"])
            if key in seen:
                raise ValueError(f"{file}: seed {key[0]} {key[1]} at {key[2]:.0%} is also in {seen[key]}")
            seen[key] = file
            records.append(rec)
    if not records:
        raise ValueError("no records in the given runs")
    return records, settings or {}


def paired(records: list[dict[str, Any]], a: str, b: str, metric: str, target: float) -> dict[str, Any] | None:
    """a − b in ``metric`` at ``target``, per seed that has both, with the mean and a 95% t interval."""
    by = {(r["method"], r["seed"]): r for r in records if r["target"] == target}
    seeds = sorted(s for (m, s) in by if m == a and (b, s) in by)
    if not seeds:
        return None
    diffs = [by[(a, s)][metric] - by[(b, s)][metric] for s in seeds]
    m, lo, hi = t_interval(diffs)
    return {"a": a, "b": b, "metric": metric, "target": target, "seeds": seeds, "per_seed": diffs,
            "mean": m, "low": lo, "high": hi}


def _fmt(x: float | None, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def report(records: list[dict[str, Any]], pairs: list[tuple[str, str, str]] | None = None,
           chance: float | None = None) -> tuple[str, dict[str, Any]]:
    """Markdown tables (summary, per seed, paired differences) and the same numbers as a JSON-able dict."""
    pairs = DEFAULT_PAIRS if pairs is None else pairs
    seeds = sorted({r["seed"] for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    targets = sorted({r["target"] for r in records if r["target"] < 1.0}, reverse=True)
    rows = summarize(records)
    rows.sort(key=lambda r: (-r["target"], methods.index(r["method"])))
    n = len(seeds)
    lines = [f"Seeds: {', '.join(map(str, seeds))} (none dropped).", ""]
    full = {r["seed"]: r["accuracy"] for r in records if r["method"] == "full tokens"}
    flagged = []
    if full:
        lines.append("Full-token accuracy per seed: " + ", ".join(f"seed {s} {full[s]:.3f}" for s in sorted(full))
                     + (f" (chance {chance:.3f})" if chance else "") + ".")
        if chance:
            flagged = [s for s in sorted(full) if full[s] < 2 * chance]
            for s in flagged:
                lines.append(f"**Seed {s}'s backbone did not learn the task** (full tokens {full[s]:.3f}, under twice "
                             f"chance): its methods sit near chance and its differences are near 0 by construction; "
                             f"it is kept in the intervals.")
        lines.append("")
    lines += [f"| method | target | kept | ρv / ρa | accuracy (mean ± sd, {n} seeds) | answer sound kept | object kept "
              "| acc. when answer sound dropped |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['target']:.0%} | {r['retention']:.3f} | "
                     + ("– | " if r["target"] == 1.0 else f"{r['rho_v']:.3f} / {r['rho_a']:.2f} | ")
                     + f"{r['accuracy']:.3f} ± {r['std']:.3f} | {r['target_audio_kept']:.2f} | {r['object_kept']:.2f} | "
                     f"{_fmt(r['accuracy_sound_dropped'], 2)} |")
    lines += ["", "Per seed (" + " / ".join(f"seed {s}" for s in seeds) + "): accuracy, and answer sound kept in brackets.", "",
              "| method | " + " | ".join(["100%"] if not targets else [f"{t:.0%}" for t in targets]) + " |",
              "|---|" + "---|" * max(1, len(targets))]
    by = {(r["method"], r["target"], r["seed"]): r for r in records}
    for m in methods:
        cells = []
        for t in ([1.0] if m == "full tokens" else targets):
            acc = " / ".join(_fmt(by[(m, t, s)]["accuracy"]) if (m, t, s) in by else "–" for s in seeds)
            kept = " / ".join(f"{by[(m, t, s)]['target_audio_kept']:.2f}" if (m, t, s) in by else "–" for s in seeds)
            cells.append(f"{acc} ({kept})" if m != "full tokens" else acc)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    diffs = []
    lines += ["", f"Paired differences a − b per seed, mean and Student-t 95% interval over the {n} seeds "
              f"(df = {n - 1}):", "",
              "| a − b | metric | target | mean | 95% t interval | per seed |", "|---|---|---|---|---|---|"]
    for a, b, metric in pairs:
        for t in targets:
            d = paired(records, a, b, metric, t)
            if d is None:
                continue
            diffs.append(d)
            excl = " **(excludes 0)**" if d["low"] > 0 or d["high"] < 0 else ""
            lines.append(f"| {a} − {b} | {METRIC_NAMES.get(metric, metric)} | {t:.0%} | {d['mean']:+.3f} | "
                         f"[{d['low']:+.3f}, {d['high']:+.3f}]{excl} | {', '.join(f'{x:+.3f}' for x in d['per_seed'])} |")
    return "\n".join(lines) + "\n", {"seeds": seeds, "full_token_accuracy": full, "not_learned": flagged,
                                     "summary": rows, "paired": diffs}
