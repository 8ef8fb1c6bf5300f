"""Does VGAS learn through the straight-through estimator? Answer-sound retention per training step.

For one seed of the synthetic study (:mod:`leanlm.omnisift.study`): from the stage-A thinker (trained on
full tokens), fine-tune backbone + OmniSIFT at the reference training ratios (ρv = 0.7, ρa = 0.3) with the
selector in its own optimizer group (:mod:`leanlm.omnisift.training`), and every ``eval_every`` steps
measure on a fixed evaluation set, at 35% and 25% retention (Table 6 ratios, ρv solved for equal counts):
how often the answer's sound survives the selection, and the accuracy. Three training modes:

* ``ste`` — the paper's signal only: the LM loss through the STE (no auxiliary loss), dropped tokens removed
  (``OmniSIFT(ste="remove")``, the paper's and the official code's formulation);
* ``mask`` — the same loss, but the dropped audio tokens stay in the training sequence multiplied by their
  STE gate (value 0), so the scores of dropped tokens get a gradient too (``OmniSIFT(ste="mask")``);
* ``mean`` — as ``mask``, with a dropped token's training value the mean of its chunk's kept audio
  (``OmniSIFT(ste="mean")``);
* ``direct`` — the same plus a binary cross-entropy on the selector's scores with the answer sound as
  target: a diagnostic upper bound showing what the selector can learn when told (not the paper's method);
* ``random`` — no training: uniform random audio selection at the same budget (the reference rate).

Results are written atomically to ``<out>/curves-seed<k>.json`` after every evaluation, and a finished
mode is skipped when the run is repeated (resume at mode granularity; the stage-A checkpoint is shared
with ``leanlm omnisift study``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write_json
from leanlm.common.progress import get_logger
from leanlm.omnisift.baselines import RandomPruning
from leanlm.omnisift.presets import DEFAULT_RHO_A, DEFAULT_RHO_V, paper_ratios, solve_rho_v
from leanlm.omnisift.study import StudyConfig, Trainer, _save, build_model, make_compressor
from leanlm.omnisift.synth import AVTask, TaskConfig

log = get_logger("leanlm.omnisift.curves")

MODES = ("ste", "mask", "mean", "direct")
#: OmniSIFT constructor flags per mode
MODE_FLAGS: dict[str, dict[str, Any]] = {"ste": {}, "mask": {"ste": "mask"}, "mean": {"ste": "mean"}, "direct": {}}


def pretrained(cfg: StudyConfig, seed: int, ckpt_dir: Path):
    """Stage A (full tokens, hint curriculum), loaded from ``ckpt_dir`` when present."""
    base = build_model(cfg, seed)
    path = ckpt_dir / f"seed{seed}-pretrain-{cfg.fingerprint('pretrain')}.pt"
    if path.exists():
        base.load_state_dict(torch.load(path, weights_only=True))
        return base
    hinted = AVTask(TaskConfig(hidden_size=cfg.hidden_size, **{**cfg.task, "hint": cfg.pretrain_hint}), base.config)
    losses = Trainer(cfg, hinted, base, seed).train(cfg.pretrain_steps, cfg.lr, f"seed {seed} pretrain (full tokens)")
    _save(base, path, losses)
    return base


def _ratios(task: AVTask, retention: float) -> tuple[float, float]:
    sizes, audio = task.frame_sizes()
    rho_a = paper_ratios("omnisift", retention)[1]
    return solve_rho_v(sizes, audio, rho_a, retention), rho_a


def run_curves(cfg: StudyConfig, seed: int, out_dir: Path, steps: int, eval_every: int, direct_weight: float = 1.0,
               modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"curves-seed{seed}.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    result.setdefault("config", asdict(cfg) | {"steps": steps, "eval_every": eval_every, "direct_weight": direct_weight})
    result.setdefault("modes", {})
    base = pretrained(cfg, seed, ckpt_dir)
    base_state = base.state_dict()
    task = AVTask(TaskConfig(hidden_size=cfg.hidden_size, **cfg.task), base.config)
    eval_seed = 99_000 + seed
    retentions = cfg.retentions

    if "random" not in result["modes"]:
        rows = {}
        for r in retentions:
            comp = RandomPruning(*_ratios(task, r), seed=seed)
            metrics = Trainer(cfg, task, base, seed).evaluate(comp, eval_seed)
            rows[str(r)] = {"target_audio_kept": metrics["target_audio_kept"], "accuracy": metrics["accuracy"]}
        result["modes"]["random"] = rows
        atomic_write_json(path, result)

    for mode in modes:
        if result["modes"].get(mode, {}).get("done"):
            log.info("seed %d %s: done earlier, skipped", seed, mode)
            continue
        model = build_model(cfg, seed)
        model.set_compressor(make_compressor(cfg, MODE_FLAGS[mode], seed))
        model.load_state_dict(base_state, strict=False)
        trainer = Trainer(cfg, task, model, seed)
        record: dict[str, Any] = {"steps": [], "grad_norm_selector": [], "grad_norm_backbone": [], "done": False}
        for r in retentions:
            record[str(r)] = {"target_audio_kept": [], "accuracy": []}
        started = time.perf_counter()

        def evaluate(step: int, tr: Trainer, record: dict[str, Any] = record, mode: str = mode,
                     started: float = started) -> None:
            norms = getattr(tr, "last_norms", {})
            if step % eval_every and step != 0:
                return
            comp = tr.model.compressor
            record["steps"].append(step)
            record["grad_norm_selector"].append(norms.get("selector"))
            record["grad_norm_backbone"].append(norms.get("backbone"))
            for r in retentions:
                comp.set_ratios(*_ratios(task, r))
                comp.reseed(seed)
                m = tr.evaluate(comp, eval_seed)
                record[str(r)]["target_audio_kept"].append(m["target_audio_kept"])
                record[str(r)]["accuracy"].append(m["accuracy"])
            comp.set_ratios(DEFAULT_RHO_V, DEFAULT_RHO_A)
            tr.model.set_compressor(comp)
            record["seconds"] = time.perf_counter() - started
            result["modes"][mode] = record
            atomic_write_json(path, result)
            log.info("seed %d %s step %d: answer sound kept %s", seed, mode, step,
                     " ".join(f"{r:.0%}={record[str(r)]['target_audio_kept'][-1]:.3f}" for r in retentions))

        evaluate(0, trainer)
        trainer.train(steps, cfg.finetune_lr, f"seed {seed} {mode}", callback=evaluate,
                      direct=direct_weight if mode == "direct" else 0.0)
        record["done"] = True
        result["modes"][mode] = record
        atomic_write_json(path, result)
    return result


def curves_report(out_dir: Path) -> str:
    """Markdown table (mean ± sd over the seeds found) of answer-sound retention per step and mode, and a
    figure ``curves.png`` beside the JSON files."""
    import statistics

    files = sorted(Path(out_dir).glob("curves-seed*.json"))
    runs = [json.loads(f.read_text()) for f in files]
    if not runs:
        raise FileNotFoundError(f"{out_dir}: no curves-seed*.json")
    retentions = [str(r) for r in runs[0]["config"]["retentions"]]
    lines = []
    for r in retentions:
        lines += [f"Answer sound kept at {float(r):.0%} retention (mean ± sd over {len(runs)} seeds; random = "
                  "uniform random audio at the same budget, measured on the same evaluation samples):", "",
                  "| step | " + " | ".join(MODES) + " | random |", "|---|" + "---|" * (len(MODES) + 1)]
        steps = runs[0]["modes"].get("ste", {}).get("steps", [])
        rand = [run["modes"]["random"][r]["target_audio_kept"] for run in runs]
        for i, step in enumerate(steps):
            cells = []
            for mode in MODES:
                vals = [run["modes"][mode][r]["target_audio_kept"][i] for run in runs
                        if mode in run["modes"] and len(run["modes"][mode][r]["target_audio_kept"]) > i]
                cells.append(f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.3f}"
                             f"{'' if len(vals) == len(runs) else f' (n={len(vals)})'}" if vals else "–")
            cells.append(f"{statistics.mean(rand):.3f} ± {statistics.stdev(rand) if len(rand) > 1 else 0:.3f}")
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        lines.append("")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(retentions), figsize=(5 * len(retentions), 3.2), squeeze=False)
    for ax, r in zip(axes[0], retentions, strict=True):
        for mode, color in zip(MODES, ("C0", "C2", "C3", "C1"), strict=True):
            for k, run in enumerate(runs):
                if mode in run["modes"]:
                    m = run["modes"][mode]
                    ax.plot(m["steps"], m[r]["target_audio_kept"], color=color, alpha=0.8,
                            label=mode if k == 0 else None)
        rand = statistics.mean(run["modes"]["random"][r]["target_audio_kept"] for run in runs)
        ax.axhline(rand, color="k", linestyle="--", label="random")
        ax.set_title(f"{float(r):.0%} kept")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("answer sound kept")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "curves.png", dpi=110)
    plt.close(fig)
    return "\n".join(lines)
