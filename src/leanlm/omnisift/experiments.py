"""The registered headline experiment: the synthetic audio-visual study plus latency and FLOPs vs retention."""

from __future__ import annotations

from typing import Any

from leanlm.common.atomic import atomic_write_json
from leanlm.common.report import ExperimentResult, Figure, Table
from leanlm.reproduce import AtLeast, AtMost, Claim, Interval, RatioAtMost, RunContext, Within, register

_TASK: dict[str, Any] = {}  # TaskConfig defaults: 2 chunks, 4 sources, 8 classes (drawn per sound), 4 sounds per chunk
# issue #18 §2: 4 chunks (8 frames of 16 tokens), 16 audio tokens per chunk of which 10 are loud and irrelevant
TRAINING_FREE_BASELINES = ("Random", "DyCoke-style", "OmniZip-style")
_GEOMETRY: dict[str, Any] = {"frames": 8, "audio_per_chunk": 16, "loud_per_chunk": 10}
QUICK: dict[str, Any] = {
    "study": {"seeds": [0], "pretrain_steps": 1200, "finetune_steps": 150, "batch_size": 32, "lr": 3e-3,
              "finetune_lr": 1e-3, "eval_samples": 256, "task": _TASK,
              "variants": ["full tokens", "OmniSIFT", "Random", "DyCoke-style", "OmniZip-style"]},
    "latency": {"frames": 16, "grid": 16, "repeats": 3, "hidden": 256},
}
#: Stage-A recipe of docs/results/omnisift.md §2f: every pretraining sample carries the hint at a strength drawn
#: uniformly from [0, 1] (the binary hint of §2d let half the seeds solve only the hinted samples and stop there),
#: linear warmup then cosine decay of the learning rate, and the best of the stage-A weights on hint-free
#: validation samples every 200 steps. Checked on seeds 0, 1, 3, 4 (three of them failed under §2d's recipe).
STAGE_A_RECIPE: dict[str, Any] = {"pretrain_steps": 2000, "pretrain_hint": 1.0, "pretrain_hint_graded": True,
                                  "lr_schedule": "cosine", "keep_best": 200}
FULL: dict[str, Any] = {
    # the larger geometry of docs/results/omnisift.md §2d (ablations left out to fit the CPU budget) with the §2f
    # stage-A recipe; §2d itself ran {"pretrain_steps": 4000, "pretrain_hint": 0.5, "pretrain_hint_graded": False,
    # "lr_schedule": "constant", "keep_best": 0}, under which stage A failed on seeds 1, 3 and 4
    "study": {"seeds": [0, 1, 2, 3, 4, 5], "finetune_steps": 200, "batch_size": 32, "lr": 3e-3,
              "finetune_lr": 1e-3, "eval_samples": 256, "task": _GEOMETRY, **STAGE_A_RECIPE,
              "variants": ["full tokens", "OmniSIFT", "OmniSIFT (untrained selector)", "VGAS→random",
                           "Random (fine-tuned)", "Random", "DyCoke-style", "OmniZip-style"]},
    "latency": {"frames": 32, "grid": 16, "repeats": 5, "hidden": 256},
}


def paper_flops_check() -> list[list[Any]]:
    """Analytic prefill FLOPs for Qwen2.5-Omni-7B vs Table 7: LLM (+ selector) and the unchanged encoders, at
    the number of 2-s chunks that makes our full-token total closest to the paper's 555.74T (the paper does
    not give its sequence length). Columns: setting, LLM tokens, LLM TFLOPs, encoder TFLOPs, total TFLOPs,
    ratio to full, paper TFLOPs, paper ratio."""
    from leanlm.omnisift.flops import (
        QWEN_OMNI_7B,
        QWEN_OMNI_7B_AUDIO,
        QWEN_OMNI_7B_VISION,
        audio_encoder_flops,
        llm_prefill_flops,
        selector_flops,
    )
    from leanlm.omnisift.presets import kept_tokens, paper_ratios

    n_p, n_a, text = 256, 50, 200  # eval setting 256·28·28 pixels -> 256 tokens per frame; 25 audio tokens/s

    def encoders(chunks: int) -> float:
        from leanlm.omnisift.flops import vision_encoder_flops

        return (vision_encoder_flops(2 * chunks, 4 * n_p, **QWEN_OMNI_7B_VISION)
                + audio_encoder_flops(2.0 * chunks, **QWEN_OMNI_7B_AUDIO))

    def full_flops(chunks: int) -> float:
        return llm_prefill_flops(chunks * (2 * n_p + n_a) + text, **QWEN_OMNI_7B) + encoders(chunks)

    chunks = 1
    while full_flops(chunks + 1) <= 555.74e12:
        chunks += 1
    enc = encoders(chunks)
    full = full_flops(chunks)
    rows = [["full", f"{chunks * (2 * n_p + n_a) + text}", round((full - enc) / 1e12, 2), round(enc / 1e12, 2),
             round(full / 1e12, 2), 1.0, 555.74, 1.0]]
    for retention, paper in ((0.35, 292.16), (0.25, 250.83)):
        rho_v, rho_a = paper_ratios("omnisift", retention)
        kept = kept_tokens([[n_p, n_p]] * chunks, [n_a] * chunks, rho_v, rho_a) + text
        video_kept = 2 * (n_p - int(n_p * rho_v))
        sel = selector_flops(chunks, n_a, video_kept, QWEN_OMNI_7B["hidden"])
        llm = llm_prefill_flops(kept, **QWEN_OMNI_7B) + sel
        rows.append([f"OmniSIFT {int(retention * 100)}% (selector {sel / 1e12:.3f}T)", str(kept), round(llm / 1e12, 2),
                     round(enc / 1e12, 2), round((llm + enc) / 1e12, 2), round((llm + enc) / full, 3), paper,
                     round(paper / 555.74, 3)])
    return rows


def study_metrics(records: list[dict[str, Any]], retentions: list[float]) -> dict[str, Any]:
    """The claims' metrics from the study's per-seed records: OmniSIFT's and the best training-free
    baseline's mean accuracy as % of full tokens, and paired-by-seed differences with their 95% t half-width
    (only with 2+ seeds): what VGAS adds over random audio on STVP's video (accuracy, answer sound kept), and
    what the STE fine-tuning taught the selector (trained vs its own initialisation)."""
    from leanlm.omnisift.merge import paired
    from leanlm.omnisift.study import summarize

    rows = summarize(records)
    full = next(r["accuracy"] for r in rows if r["method"] == "full tokens")
    metrics: dict[str, Any] = {}
    for target in retentions:
        tag = int(target * 100)
        at = {r["method"]: r["accuracy"] for r in rows if r["target"] == target}
        if "OmniSIFT" in at and full > 0:
            metrics[f"omnisift_{tag}_pct_full"] = f"{100 * at['OmniSIFT'] / full:.0f}%"
        best = max((at[b] for b in TRAINING_FREE_BASELINES if b in at), default=None)
        if best is not None and full > 0:
            metrics[f"best_baseline_{tag}_pct_full"] = f"{100 * best / full:.0f}%"
        for key, a, b, metric in (("vgas_gain", "OmniSIFT", "VGAS→random", "accuracy"),
                                  ("vgas_answer_sound_gain", "OmniSIFT", "VGAS→random", "target_audio_kept"),
                                  ("ste_answer_sound_gain", "OmniSIFT", "OmniSIFT (untrained selector)",
                                   "target_audio_kept")):
            d = paired(records, a, b, metric, target)
            if d is not None and len(d["seeds"]) > 1:
                metrics[f"{key}_{tag}"] = round(float(d["mean"]), 3)
                metrics[f"{key}_{tag}_hw"] = round(float(d["high"] - d["low"]) / 2, 3)
    return metrics


@register(
    name="omnisift-synthetic-av",
    module="omnisift",
    title="OmniSIFT vs baselines and ablations at 35% / 25% retention on a synthetic audio-visual task",
    claims=[
        Claim("OmniSIFT at 35% kept, % of full-token score (DailyOmni 7B: 73.2 / 72.2)", "101%", "omnisift_35_pct_full",
              rule=AtLeast("omnisift_35_pct_full", 99, partly=90),
              setting="tiny thinker, synthetic AV task; full: 6 seeds, mean over seeds, stage A with the §2f "
                      "recipe (docs/results/omnisift.md §2f: 5 of 6 backbones learn; under §2d's, 3 of 6); quick: 1 seed, small geometry, a smoke run, not evidence"),
        Claim("OmniSIFT at 25% kept, % of full-token score (DailyOmni 7B: 72.5 / 72.2)", "100%", "omnisift_25_pct_full",
              rule=AtLeast("omnisift_25_pct_full", 99, partly=90),
              setting="tiny thinker, synthetic AV task; full: 6 seeds, mean over seeds, stage A with the §2f "
                      "recipe (docs/results/omnisift.md §2f: 5 of 6 backbones learn; under §2d's, 3 of 6); quick: 1 seed, small geometry, a smoke run, not evidence"),
        Claim("Best baseline at 25% kept, % of full (DailyOmni 7B: OmniZip 66.2 / 72.2)", "92%", "best_baseline_25_pct_full",
              rule=RatioAtMost("best_baseline_25_pct_full", "omnisift_25_pct_full", 0.99, partly=1.0),
              setting="style re-implementations of the baselines; full: mean over 6 seeds; quick: a smoke run, not evidence"),
        Claim("VGAS vs random audio on the same STVP video, accuracy at 35% kept (ablation VGAS→random, 7B "
              "DailyOmni: 73.2 vs 71.0)", "+2.2 points", "vgas_gain_35",
              rule=Interval("vgas_gain_35", "vgas_gain_35_hw", expect="above"),
              setting="tiny thinker, synthetic AV task; accuracy difference (fraction) paired by seed, 95% t interval; "
                      "full only (the quick run has no VGAS→random row)",
              spread="vgas_gain_35_hw", spread_label="95% t half-width"),
        Claim("Prefill FLOPs, LLM + encoders, at 35% kept / full (Table 7, 7B: 292.16T / 555.74T)", "0.526", "flops_ratio_35",
              rule=Within("flops_ratio_35", 0.526, tolerance=0.01, partly=0.05), setting="analytic, 7B geometry"),
        Claim("Tiny-thinker prefill time at 35% kept / full (Table 3, 7B: 2.76 s / 4.76 s)", "0.58", "latency_ratio_35",
              rule=AtMost("latency_ratio_35", 0.64, partly=0.9), setting="tiny thinker, 2 shared CPU cores"),
    ],
    quick=QUICK,
    full=FULL,
)
def run(config: dict[str, Any], ctx: RunContext) -> ExperimentResult:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leanlm.omnisift.study import StudyConfig, prefill_latency, run_study, summarize
    from leanlm.omnisift.synth import TaskConfig

    cfg = StudyConfig.from_dict(dict(config["study"]))
    result = run_study(cfg, ctx.out_dir)
    rows = summarize(result["records"])
    atomic_write_json(ctx.out_dir / "results.json", {"summary": rows, **result})
    full = next(r["accuracy"] for r in rows if r["method"] == "full tokens")
    table_rows = [
        [r["method"], "100%" if r["target"] == 1.0 else f"{int(r['target'] * 100)}%", round(r["retention"], 3),
         f"{r['rho_v']:.3f} / {r['rho_a']:.2f}", r["seeds"], round(r["accuracy"], 3), round(r["std"], 3),
         round(r["target_audio_kept"], 3), round(r["object_kept"], 3),
         "–" if r.get("accuracy_sound_dropped") is None else round(r["accuracy_sound_dropped"], 3)]
        for r in sorted(rows, key=lambda r: (-r["target"], -r["accuracy"]))
    ]
    metrics: dict[str, Any] = {"full_accuracy": round(full, 3), "study_seconds": round(result["seconds"], 1),
                                **study_metrics(result["records"], cfg.retentions)}

    lat_cfg = config["latency"]
    latency = prefill_latency(cfg, lat_cfg["frames"], (lat_cfg["grid"], lat_cfg["grid"]), [0.35, 0.25],
                              lat_cfg["repeats"], hidden_size=lat_cfg["hidden"])
    for row in latency:
        if row["retention"] == 0.35:
            metrics["latency_ratio_35"] = round(row["ratio_to_full"], 3)
    flops_rows = paper_flops_check()
    metrics["flops_ratio_35"] = flops_rows[1][5]  # end to end (LLM + selector + encoders) / full
    atomic_write_json(ctx.out_dir / "latency.json", {"latency": latency, "flops": flops_rows})

    fig, ax = plt.subplots(figsize=(7, 3.2))
    methods = [m for m in cfg.variants if m != "full tokens"]
    width = 0.8 / max(1, len(cfg.retentions))
    for i, target in enumerate(cfg.retentions):
        vals = [next((r["accuracy"] for r in rows if r["method"] == m and r["target"] == target), 0.0) for m in methods]
        ax.bar([j + i * width for j in range(len(methods))], vals, width, label=f"{int(target * 100)}% kept")
    ax.axhline(full, color="k", linestyle="--", label="full tokens")
    ax.set_xticks([j + width / 2 for j in range(len(methods))], methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    curves = result["curves"]
    fig2, ax2 = plt.subplots(figsize=(6, 3))
    for name, losses in curves.items():
        k = max(1, len(losses) // 50)
        smooth = [sum(losses[i : i + k]) / len(losses[i : i + k]) for i in range(0, len(losses), k)]
        ax2.plot([i * k for i in range(len(smooth))], smooth, label=name, linewidth=1)
    ax2.set_xlabel("step")
    ax2.set_ylabel("LM loss (answer token)")
    if curves:
        ax2.legend(fontsize=6)
    return ExperimentResult(
        tables=[
            Table("Synthetic audio-visual task: accuracy by method and retention",
                  ["method", "target", "kept fraction", "rho_v / rho_a", "seeds", "accuracy", "std",
                   "answer sound kept", "object kept", "accuracy when answer sound dropped"], table_rows,
                  caption=f"chance = {1 / cfg.task.get('classes', TaskConfig.classes):.3f} (also the leak check: accuracy when "
                          "the answer sound is dropped should be about chance); trained variants are fine-tuned with their own "
                          "compression at rho_v=0.7, rho_a=0.3; Random / DyCoke-style / OmniZip-style and OmniSIFT (untrained "
                          "selector: the trained row's starting point, a diagnostic) run on the full-token fine-tuned "
                          "backbone"),
            Table("Prefill latency of a tiny thinker vs retention (median, interleaved)",
                  ["retention", "sequence length", "median s", "ratio to full"],
                  [[r["retention"], r["sequence"], round(r["median_s"], 4), round(r["ratio_to_full"], 3)] for r in latency]),
            Table("Analytic LLM prefill FLOPs, Qwen2.5-Omni-7B geometry, vs paper Table 7",
                  ["setting", "LLM tokens", "LLM+selector (TFLOPs)", "encoders (TFLOPs)", "total (TFLOPs)",
                   "ratio", "paper (TFLOPs)", "paper ratio"], flops_rows),
        ],
        figures=[Figure.from_matplotlib(fig, "Accuracy by method at each retention"),
                 Figure.from_matplotlib(fig2, "Training curves")],
        metrics=metrics,
        notes=[
            "Synthetic task, tiny random-init thinker (2 layers, D=64), encoders bypassed (features drawn in "
            "embedding space). The task is built around the paper's assumption (the relevant sound can only be "
            "found through the video of the same chunk), so a win here checks the implementation, not the "
            "benchmark claims.",
            "Latency is CPU wall time of a tiny model on a shared 2-core machine; compression overhead included.",
            "FLOPs: language model + selector + the (unchanged) vision and audio encoders; the paper's Table 7 "
            "sequence length is not given, so ours is chosen to match its full-token total.",
        ],
    )
