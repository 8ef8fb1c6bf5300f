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
    lines += final_comparison(runs, retentions)
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


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval of the mean (small n): :func:`leanlm.common.stats.mean_interval`."""
    from leanlm.common.stats import mean_interval

    m = mean_interval(values, level)
    return m.mean, m.lo, m.hi


def final_comparison(runs: list[dict[str, Any]], retentions: list[str]) -> list[str]:
    """Per mode, at its last evaluated step: answer sound kept (per seed, mean) and the paired difference to
    uniform random selection on the same evaluation samples, with a 95% t interval over the seeds."""
    lines = ["At each mode's last step (per seed; difference to random paired by seed, 95% t interval):", "",
             "| mode | steps | retention | answer sound kept per seed | mean | − random: mean [95% CI] |",
             "|---|---|---|---|---|---|"]
    for mode in MODES:
        done = [run for run in runs if mode in run["modes"] and run["modes"][mode]["steps"]]
        if not done:
            continue
        for r in retentions:
            vals = [run["modes"][mode][r]["target_audio_kept"][-1] for run in done]
            diffs = [v - run["modes"]["random"][r]["target_audio_kept"] for v, run in zip(vals, done, strict=True)]
            m, lo, hi = t_interval(diffs)
            steps = sorted({run["modes"][mode]["steps"][-1] for run in done})
            lines.append(f"| {mode} | {'/'.join(map(str, steps))} | {float(r):.0%} | "
                         f"{' / '.join(f'{v:.3f}' for v in vals)} | {sum(vals) / len(vals):.3f} | "
                         f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    lines.append("")
    return lines


def gradient_diagnostics(cfg: StudyConfig, seed: int, ckpt_dir: Path, formulations: tuple[str, ...] = ("remove", "mask", "mean"),
                         batches: int = 4, batch_size: int = 64) -> dict[str, Any]:
    """What the STE tells a fresh selector on the stage-A thinker of ``seed``, per formulation (§3.4 and our
    options, :class:`~leanlm.omnisift.omnisift.OmniSIFT` ``ste``), at the reference training ratios:

    * ∂L/∂s_j of the LM loss per group of audio tokens (answer sound / other audio × kept / dropped): mean,
      share < 0 (a descent step raises the score) and mean |·|;
    * the cosine between the selector's parameter gradient from the LM loss (through the STE) and from the
      direct BCE on the answer sound (the diagnostic supervised target), per batch: > 0 means an STE step
      moves the selector the way direct supervision would.
    """
    import statistics

    torch.set_num_threads(cfg.threads)
    base = pretrained(cfg, seed, ckpt_dir)
    state = base.state_dict()
    task = AVTask(TaskConfig(hidden_size=cfg.hidden_size, **cfg.task), base.config)
    out: dict[str, Any] = {}
    for ste in formulations:
        model = build_model(cfg, seed)
        torch.manual_seed(seed)  # the same fresh selector for every formulation
        model.set_compressor(make_compressor(cfg, {"ste": ste}, seed))
        model.load_state_dict(state, strict=False)
        trainer = Trainer(cfg, task, model, seed)
        model.train()
        params = list(model.compressor.selector.parameters())
        captured: list[torch.Tensor] = []
        handle = model.compressor.selector.register_forward_hook(lambda mod, args, o, c=captured: c.append(o))
        g = torch.Generator().manual_seed(5)
        groups: dict[str, list[float]] = {"answer kept": [], "answer dropped": [], "other kept": [], "other dropped": []}
        cosines = []
        chunk_audio = torch.stack([c.audio for c in trainer.layout.chunks])  # [C, A]
        try:
            for _ in range(batches):
                batch = task.sample(batch_size, g)
                captured.clear()
                out_lm = model(**trainer.inputs(batch))
                scores = captured[0]
                g_scores, *g_lm = torch.autograd.grad(out_lm.loss, [scores, *params], retain_graph=True,
                                                      allow_unused=True)
                g_direct = torch.autograd.grad(trainer._direct_loss(scores, batch), params, allow_unused=True)
                a = torch.cat([x.flatten() for x in g_lm if x is not None])
                b = torch.cat([y.flatten() for x, y in zip(g_lm, g_direct, strict=True) if x is not None])
                cosines.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
                n, (c, k) = batch.input_ids.shape[0], chunk_audio.shape
                grad = g_scores.reshape(n, c, k)
                kept = model.last_compression.keep[:, chunk_audio]
                answer = chunk_audio.view(1, c, k) == batch.target_audio_index.view(n, 1, 1)
                for name, mask in (("answer kept", answer & kept), ("answer dropped", answer & ~kept),
                                   ("other kept", ~answer & kept), ("other dropped", ~answer & ~kept)):
                    groups[name] += grad[mask].tolist()
        finally:
            handle.remove()
        out[ste] = {"cosine_to_direct": cosines, "groups": {
            name: {"n": len(v), "mean": statistics.mean(v), "share_negative": sum(x < 0 for x in v) / len(v),
                   "mean_abs": statistics.mean(abs(x) for x in v)} for name, v in groups.items() if v}}
        log.info("seed %d ste=%s: cos(STE, direct) %s", seed, ste, " ".join(f"{x:+.2f}" for x in cosines))
    return out
