"""The #16 study driver: budgets x selectors x seeds, each a PRM trained on the selected subset and evaluated.

Every cell selects a subset of ``train/`` with :func:`leanlm.bis.select.select` (the production selector,
per-source ratio, budgets matched in rollouts), trains one epoch (:func:`leanlm.bis.prm.train.train`) and
evaluates on ``test/`` with the threshold chosen on ``val/`` (:mod:`leanlm.bis.prm.metrics`). Results are
appended to ``cells.jsonl`` after each cell, so an interrupted study resumes where it stopped. Comparisons are
paired by seed (the same seed draws the random subset and initialises/orders the training), with Student-t 95%
intervals (small n: 1.96 would be too narrow).

``match="steps"`` is the control the brief asks for (BIS may favour long rollouts): each source keeps its
highest-scored rollouts until their steps reach ``budget`` x the source's steps, instead of ``budget`` x its
rollouts. ``train_steps="equal"`` trains a subset round(1/budget) epochs (about full data's optimizer steps). The
model-based baselines ``uncertainty`` / ``loss`` rank rollouts by a proxy PRM trained on a random 5%
(:func:`proxy_scores`). Results of record: docs/results/bis.md, "PRM evidence (issue #16)".
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: selector name -> (scorer name, alpha); "full" trains on everything (budget ignored).
SELECTORS: dict[str, tuple[str, float]] = {
    "random": ("random", 0.0), "bis-0": ("bis", 0.0), "bis-0.05": ("bis", 0.05), "bis-0.1": ("bis", 0.1),
    "bis-0.2": ("bis", 0.2), "mixture-only": ("mixture", 0.0), "reliability-only": ("reliability", 0.0),
    "mixed-only": ("mixed", 0.0), "low-mc": ("low-mc", 0.0),
    "uncertainty": ("proxy", 0.0), "loss": ("proxy", 0.0),
}
PROXY_BUDGET = 0.05
#: what each per-cell metric is (report headings)
METRIC_LABELS = {"f1_val_tuned": "overall micro-F1, threshold chosen on val",
                 "f1_fixed": "overall micro-F1 at threshold 0.5", "auc": "pooled ROC-AUC",
                 "f1_test_tuned_optimistic": "overall micro-F1, threshold tuned on test (optimistic)"}


@dataclass
class StudyConfig:
    corpus: Path
    out: Path
    budgets: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5)
    selectors: tuple[str, ...] = ("random", "bis-0.2", "mixed-only", "low-mc")
    seeds: int = 3
    first_seed: int = 0  # seeds first_seed .. seeds-1 run; split a study across processes, then merge the cells
    with_full: bool = True  # False: no full-data cell (an extra seed of the subset comparison when full is costly)
    hidden: int = 64
    layers: int = 2
    tokenizer: str = "step"  # tiny backbone: "step" (one token per step), "word" or "char" (see prm/model.py)
    backbone: str = "tiny"  # or "embedded" (SmolLM2-135M) / a local LM, as in ``leanlm bis train``
    lora: bool = False  # non-tiny backbones: train LoRA adapters (and the <prm> row) instead of all weights
    device: str = "cpu"
    lr: float = 3e-3
    batch: int = 32
    threads: int = 1  # torch threads per cell; 0 = torch's default
    match: str = "rollouts"  # or "steps": budgets matched in annotated steps per source
    train_steps: str = "epoch"  # one epoch per subset (the paper), or "equal": a subset trains round(1/budget)
    # epochs, about as many optimizer steps as full data (a control: is a small subset short of data or of steps?)
    checkpoint_every: int = 0  # optimizer steps between mid-cell checkpoints (0: none); an interrupted cell resumes
    keep_checkpoints: bool = False  # each cell's PRM is deleted once evaluated (about 27 MB each with its optimizer)
    extra: dict[str, Any] = field(default_factory=dict)


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of a - b over paired seeds with a Student-t interval (:func:`leanlm.common.stats.paired_interval`);
    NaN half-width for n < 2."""
    from leanlm.common.stats import paired_interval

    if len(a) == 0:
        raise ValueError("paired_ci needs at least one pair")
    d = paired_interval(a, b, level)
    return {"n": d.n, "mean": d.mean, "half": d.half, "lo": d.lo, "hi": d.hi}


def _cell_key(selector: str, budget: float, seed: int) -> str:
    return f"{selector}|{budget:g}|{seed}"


def step_matched_subset(train_dir: Path, scorer: Any, budget: float, out: Path) -> int:
    """Per source file, the best-scored rollouts (stable, file order on ties, unscored last) until their scored
    steps reach ``budget`` x the file's scored steps (at least one rollout); kept lines written in file order."""
    import pyarrow.parquet as pq

    from leanlm.bis.inputs import discover_inputs
    from leanlm.bis.stats import score_corpus

    scores = out.with_suffix(".scores.parquet")
    score_corpus([train_dir], scores, scorer=scorer)
    table = pq.read_table(scores).to_pydict()
    kept_lines: list[str] = []
    for path in discover_inputs([train_dir]):
        sel = [i for i, f in enumerate(table["file"]) if f == path.name]
        rows = sorted(sel, key=lambda i: (-(table["score"][i] if table["score"][i] == table["score"][i] else -1e300),
                                          table["row"][i]))
        target = budget * sum(table["n_scored"][i] for i in sel)
        take, steps = [], 0
        for i in rows:
            if take and steps >= target:
                break
            take.append(table["row"][i])
            steps += table["n_scored"][i]
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        kept_lines += [lines[r] for r in sorted(take)]
    out.write_text("".join(ln + "\n" for ln in kept_lines), encoding="utf-8")
    scores.unlink()
    return len(kept_lines)


def proxy_scores(cfg: StudyConfig, seed: int) -> Path:
    """Train (once per seed, cached) a proxy PRM on a random 5% and write per-rollout ``uncertainty`` and
    ``loss`` columns for every training rollout (``file``, ``row`` keys, read by :func:`load_external`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from leanlm.bis.inputs import discover_inputs
    from leanlm.bis.prm.model import ModelSpec
    from leanlm.bis.prm.train import TrainConfig, load_examples, load_prm, score_steps, train
    from leanlm.bis.score import make_scorer
    from leanlm.bis.select import SelectConfig, select

    d = cfg.out / f"proxy-seed{seed}"
    path = d / "scores.parquet"
    if path.exists():
        return path
    d.mkdir(parents=True, exist_ok=True)
    subset = d / "subset.jsonl"
    select([cfg.corpus / "train"], subset, SelectConfig(ratio=PROXY_BUDGET, scorer=make_scorer("random", seed=seed),
                                                         hash_input=False, workers=1))
    spec = ModelSpec(backbone=cfg.backbone, hidden=cfg.hidden, layers=cfg.layers, tokenizer=cfg.tokenizer,
                     lora=cfg.lora, seed=seed)
    res = train(load_examples([subset]), d / "ckpt", TrainConfig(model=spec, lr=cfg.lr, batch=cfg.batch, seed=seed,
                                                                 device=cfg.device))
    model = load_prm(res["checkpoint"], device=cfg.device)
    cols: dict[str, list[Any]] = {"file": [], "row": [], "uncertainty": [], "loss": []}
    for f in discover_inputs([cfg.corpus / "train"]):
        exs = load_examples([f])
        probs = score_steps(model, exs)
        k = 0
        for row, e in enumerate(exs):
            p = np.clip(probs[k:k + len(e.steps)], 1e-6, 1 - 1e-6)
            k += len(e.steps)
            y = np.array([np.nan if sc is None else float(sc > 0) for sc in e.scores])
            ok = ~np.isnan(p) & ~np.isnan(y)
            ent = -(p * np.log(p) + (1 - p) * np.log(1 - p))
            ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
            cols["file"].append(f.name)
            cols["row"].append(row)
            cols["uncertainty"].append(float(ent[ok].mean()) if ok.any() else float("nan"))
            cols["loss"].append(float(ce[ok].mean()) if ok.any() else float("nan"))
    pq.write_table(pa.table(cols), path)
    return path


def run_cell(cfg: StudyConfig, selector: str, budget: float, seed: int) -> dict[str, Any]:
    """Select (unless ``full``), train (one epoch, or ``train_steps="equal"``: 1/budget epochs), evaluate."""
    import torch

    from leanlm.bis.prm.metrics import evaluate
    from leanlm.bis.prm.model import ModelSpec
    from leanlm.bis.prm.train import (
        TrainConfig,
        load_examples,
        load_prm,
        step_checkpoints,
        train,
        truth_arrays,
    )
    from leanlm.bis.score import make_scorer
    from leanlm.bis.select import SelectConfig, select

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.process_time()
    epochs = 1 if selector == "full" or cfg.train_steps == "epoch" else max(1, round(1 / budget))
    cell = cfg.out / "cells" / (_cell_key(selector, budget, seed).replace("|", "_") + f"_{cfg.match}"
                                + ("" if epochs == 1 else f"_x{epochs}"))
    cell.mkdir(parents=True, exist_ok=True)
    if selector == "full":
        data = cfg.corpus / "train"
    else:
        name, alpha = SELECTORS[selector]
        data = cell / "subset.jsonl"
        if name == "proxy":
            from leanlm.bis.stats import load_external

            scorer: Any = load_external(proxy_scores(cfg, seed), column=selector)
        else:
            scorer = make_scorer(name, alpha=alpha, seed=seed)
        if cfg.match == "steps":
            step_matched_subset(cfg.corpus / "train", scorer, budget, data)
        else:
            select([cfg.corpus / "train"], data, SelectConfig(ratio=budget, scorer=scorer, hash_input=False,
                                                              workers=1))
    examples = load_examples([data])
    spec = ModelSpec(backbone=cfg.backbone, hidden=cfg.hidden, layers=cfg.layers, tokenizer=cfg.tokenizer,
                     lora=cfg.lora, seed=seed)
    tcfg = TrainConfig(model=spec, lr=cfg.lr, batch=cfg.batch, seed=seed, device=cfg.device, epochs=epochs,
                       checkpoint_every=cfg.checkpoint_every, keep_last_checkpoint=True)
    final = cell / "ckpt" / "final"
    if (final / "train.json").exists():  # trained before an interruption during evaluation
        res = {"steps": json.loads((final / "train.json").read_text())["step"]}
        resumed_from = res["steps"]
    else:
        earlier = step_checkpoints(cell / "ckpt")
        resumed_from = int(earlier[-1].name[5:]) if earlier else 0
        res = train(examples, cell / "ckpt", tcfg, resume=earlier[-1] if earlier else None)
    model = load_prm(final, device=cfg.device)
    m = evaluate(truth_arrays(model, load_examples([cfg.corpus / "test"])),
                 truth_arrays(model, load_examples([cfg.corpus / "val"])))
    if not cfg.keep_checkpoints:
        import shutil

        shutil.rmtree(cell / "ckpt")
    return {"key": _cell_key(selector, budget, seed), "selector": selector, "budget": budget, "seed": seed,
            "match": cfg.match, "epochs": epochs, "optimizer_steps": res["steps"],
            "rollouts": len(examples), "steps": sum(len(e.steps) for e in examples), "auc": m["auc"],
            "f1_val_tuned": m["val_tuned"]["overall_micro_f1"], "f1_fixed": m["fixed_0.5"]["overall_micro_f1"],
            "f1_test_tuned_optimistic": m["test_tuned_optimistic"]["overall_micro_f1"],
            "per_source_val_tuned": {s: v["macro_f1"] for s, v in m["val_tuned"]["per_source"].items()},
            "cpu_s": round(time.process_time() - t0, 2),  # this process's CPU time for the cell (proxy PRM included)
            **({"resumed_from_step": resumed_from} if resumed_from else {})}  # cpu_s then covers only the rest


def run_study(cfg: StudyConfig, train_missing: bool = True) -> list[dict[str, Any]]:
    """Every (selector, budget, seed) cell plus full data per seed, seed by seed; resumes from ``out/cells.jsonl``.

    ``train_missing=False`` trains nothing: it returns the planned cells already recorded (a report of a study
    still running, or of a grid whose parts were run by separate invocations)."""
    from leanlm.common.progress import progress

    cfg.out.mkdir(parents=True, exist_ok=True)
    base = cfg.out / ("cells.jsonl" if cfg.match == "rollouts" else f"cells-{cfg.match}.jsonl")
    log = base if cfg.train_steps == "epoch" else base.with_name(base.stem + f"-{cfg.train_steps}steps.jsonl")
    done = {}
    # full data is the same cell whatever the matching or the subsets' epochs: reuse it from any log
    for path in {base, log, cfg.out / "cells.jsonl"}:
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if path == log or row["selector"] == "full":  # full data trains one epoch in both modes
                    done[row["key"]] = row
    # seed by seed, so that a study stopped early has complete paired comparisons for its first seeds
    plan = [c for s in range(cfg.first_seed, cfg.seeds)
            for c in [("full", 1.0, s)] * cfg.with_full + [(sel, b, s) for b in cfg.budgets for sel in cfg.selectors]]
    rows = []
    for sel, b, s in progress(plan, desc="bis study", unit="cell"):
        key = _cell_key(sel, b, s)
        if key not in done and not train_missing:
            continue
        if key not in done:
            done[key] = run_cell(cfg, sel, b, s)
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(done[key]) + "\n")
        rows.append(done[key])
    return rows


def summarize(rows: list[dict[str, Any]], metric: str = "f1_val_tuned") -> dict[str, Any]:
    """Mean per (selector, budget), and paired differences: each selector minus random, and minus full data."""
    by: dict[tuple[str, float], dict[int, float]] = {}
    for r in rows:
        by.setdefault((r["selector"], r["budget"]), {})[r["seed"]] = r[metric]
    full = by.get(("full", 1.0), {})
    out: dict[str, Any] = {"metric": metric, "cells": [], "vs_random": [], "vs_full": []}
    for (sel, b), vals in sorted(by.items()):
        v = list(vals.values())
        out["cells"].append({"selector": sel, "budget": b, "n": len(v), "mean": float(np.mean(v)),
                             "sd": float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")})
        if sel == "full":
            continue
        rnd = by.get(("random", b), {})
        for name, ref in (("vs_random", rnd), ("vs_full", full)):
            seeds = sorted(set(vals) & set(ref))
            if seeds and not (name == "vs_random" and sel == "random"):
                ci = paired_ci([vals[s] for s in seeds], [ref[s] for s in seeds])
                out[name].append({"selector": sel, "budget": b, **ci})
    return out


def to_markdown(summary: dict[str, Any]) -> str:
    label = METRIC_LABELS.get(summary["metric"], summary["metric"])
    lines = [f"metric: {summary['metric']} ({label})", "",
             "| selector | budget | seeds | mean |", "|---|---|---|---|"]
    lines += [f"| {c['selector']} | {c['budget']:.0%} | {c['n']} | {c['mean']:.4f} |" for c in summary["cells"]]
    for name, title in (("vs_random", "minus random (same budget)"), ("vs_full", "minus full data")):
        lines += ["", f"Paired differences, {title}, mean and Student-t 95% interval:", "",
                  "| selector | budget | n | mean | 95% CI |", "|---|---|---|---|---|"]
        lines += [f"| {d['selector']} | {d['budget']:.0%} | {d['n']} | {d['mean']:+.4f} | "
                  f"[{d['lo']:+.4f}, {d['hi']:+.4f}] |" for d in summary[name]]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """F1 vs budget, one line per selector, bars = Student-t 95% interval of the mean over seeds; full data as a
    horizontal line with its interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leanlm.common.stats import t_quantile

    def half(c: dict[str, Any]) -> float:
        sd = c.get("sd", float("nan"))
        return t_quantile(c["n"] - 1) * sd / math.sqrt(c["n"]) if c["n"] > 1 and sd == sd else 0.0

    fig, ax = plt.subplots(figsize=(8, 5))
    sels = [s for s in SELECTORS if any(c["selector"] == s for c in summary["cells"])]
    sels += sorted({c["selector"] for c in summary["cells"]} - {"full"} - set(sels))
    markers = "osD^v<>phX*8"
    palette = [plt.get_cmap("tab10")(k) for k in range(10)] + ["#555555", "#b8860b"]
    for sel in sels:
        i = list(SELECTORS).index(sel) if sel in SELECTORS else len(SELECTORS)  # same colour in every plot
        pts = sorted((c["budget"], c["mean"], half(c)) for c in summary["cells"] if c["selector"] == sel)
        ax.errorbar([p[0] * 100 for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker=markers[i % 12],
                    ms=4, capsize=2, lw=1, label=sel, color=palette[i % len(palette)])
    for c in summary["cells"]:
        if c["selector"] == "full":
            ax.axhline(c["mean"], color="k", ls="--", lw=1, label=f"full data ({c['n']} seeds)")
            ax.axhspan(c["mean"] - half(c), c["mean"] + half(c), color="k", alpha=0.1)
    ax.set_xscale("log")
    ticks = sorted({c["budget"] * 100 for c in summary["cells"]})
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel("budget (% of rollouts per source; full data = 100)")
    ax.set_ylabel(METRIC_LABELS.get(summary["metric"], summary["metric"]))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
