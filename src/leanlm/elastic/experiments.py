"""The registered headline experiment: ERNIE 5.0 elastic training at laptop scale (issue 17's study design).

Per-axis elastic runs (depth, width, top-k, all) against a plain run and from-scratch sub-models on the same data
(same tokens, and equal total FLOPs), over seeds, as paired differences with t-based 95% intervals; see
:mod:`leanlm.elastic.study`. :func:`render` turns the study's numbers into tables and ``results.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanlm.common.atomic import atomic_write_text
from leanlm.common.report import ExperimentResult, Table, table_markdown
from leanlm.common.verdicts import AtLeast
from leanlm.reproduce import Claim, RunContext, register

#: The CPU study: the smallest compared model (the combined cut, 3 layers x 4 experts, top-1) has ~108k
#: parameters, so 1072 steps x 16 x 128 tokens = 2.20M tokens is 20.3 tokens per parameter.
_MODEL_FULL = {"hidden_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4, "num_experts": 8,
               "num_experts_per_tok": 2, "moe_intermediate_size": 24, "num_shared_experts": 1, "num_mtp_modules": 0}
_MODEL_QUICK = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "num_experts": 8,
                "num_experts_per_tok": 2, "moe_intermediate_size": 16, "num_shared_experts": 1, "num_mtp_modules": 0}

FULL: dict[str, Any] = {
    "base": {"model": _MODEL_FULL, "steps": 1072, "batch_size": 16, "seq_len": 128, "lr": 3e-3, "train_articles": 8000,
             "eval_articles": 500, "eval_batches": 16, "eval_batch_size": 16, "log_every": 25, "checkpoint_every": 100,
             "grouped_fraction": 0.25},
    "seeds": [0, 1, 2, 3, 4],
    "axes": ["depth", "width", "topk", "all"],
    "equal_flops": True,
    "threads": 1,
}
QUICK: dict[str, Any] = {
    "base": {"model": _MODEL_QUICK, "steps": 30, "batch_size": 8, "seq_len": 48, "lr": 5e-3, "train_articles": 1500,
             "eval_articles": 200, "eval_batches": 2, "eval_batch_size": 16, "log_every": 5, "bias_rate": 1e-2},
    "seeds": [0, 1, 2],
    "axes": ["depth", "topk"],
    "equal_flops": True,
    "threads": 1,
}


def _ci(d: dict[str, Any]) -> str:
    if not d["n"]:
        return "—"
    if d["n"] < 2:
        return f"{d['mean']:+.4f} (1 seed)"
    return f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"


def _ms(values: list[float]) -> str:
    import statistics

    if not values:
        return "—"
    return f"{statistics.fmean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def build_result(result: dict[str, Any]) -> ExperimentResult:
    """Tables, metrics and notes from :func:`leanlm.elastic.study.summarize`'s output."""
    axes = result["axes"]
    loss_rows, diff_rows = [], []
    for axis, a in axes.items():
        r = a["losses"]
        loss_rows.append([axis, a["cut"], len(a["seeds"]), _ms(r["b_full"]), _ms(r["a_full"]), _ms(r["a_cut"]),
                          _ms(r["b_cut"]), _ms(r["c_cut"]), _ms(r["e_cut"])])
        diff_rows.append([axis, _ci(a["a_full_minus_b_full"]), a["claim_full"], _ci(a["a_cut_minus_e"]),
                          a["claim_sub_equal_flops"], _ci(a["a_cut_minus_c"]), _ci(a["a_cut_minus_b_cut"])])
    loss_table = Table(
        "Held-out text loss (nats/byte, mean ± std over finished seeds)",
        ["axis", "cut", "seeds", "B full (plain)", "A full (elastic)", "A cut", "B cut", "C cut (scratch, same tokens)",
         "E cut (scratch, equal total FLOPs)"], loss_rows,
        caption="A = the elastic run of that axis; cuts run inside A/B with the SubNet extraction uses (first/last layer "
        "kept, most-used experts).",
    )
    diff_table = Table(
        "Paired differences over seeds (mean [t-based 95% interval]) and the issue's claim rules",
        ["axis", "A full − B full", "rule 1 (≤ +0.01 or ∋ 0)", "A cut − E cut", "rule 2 (< 0 at equal FLOPs)",
         "A cut − C cut (same tokens)", "A cut − B cut"], diff_rows,
    )
    p = result["params"]
    param_rows = [[name, v["total"], v["active"]] for name, v in p.items()]
    param_table = Table(
        "Model sizes (parameters, embeddings included)", ["model", "total", "active per token"], param_rows,
        caption=f"{result['tokens_per_run']:,} training tokens per A/B/C run = "
        f"{result['tokens_per_param_smallest']:.1f} tokens per parameter of the smallest compared model.",
    )
    holding = [a for a in axes.values() if a["claim_full"] == "holds"]
    judged = [a for a in axes.values() if a["claim_full"] in ("holds", "fails")]
    sub_hold = [a for a in axes.values() if a["claim_sub_equal_flops"] == "holds"]
    sub_judged = [a for a in axes.values() if a["claim_sub_equal_flops"] in ("holds", "fails", "undecided")]
    metrics = {
        "runs_finished": f"{result['runs_finished']}/{result['runs_planned']}",
        "tokens_per_param_smallest": round(result["tokens_per_param_smallest"], 1),
        "full_claim_axes_holding": f"{len(holding)}/{len(judged)}" if judged else "n/a",
        "sub_claim_axes_holding": f"{len(sub_hold)}/{len(sub_judged)}" if sub_judged else "n/a",
    }
    for axis, a in axes.items():
        d = a["a_full_minus_b_full"]
        metrics[f"{axis}_a_full_minus_b_full"] = round(d["mean"], 4) if d["n"] else None
        metrics[f"{axis}_a_full_minus_b_full_ci_half"] = round(d["half"], 4) if d["n"] > 1 else None
        e = a["a_cut_minus_e"]
        metrics[f"{axis}_a_cut_minus_e_cut"] = round(e["mean"], 4) if e["n"] else None
    notes = [
        f"{result['runs_finished']} of {result['runs_planned']} planned runs finished"
        + (f"; missing: {', '.join(result['missing'][:8])}{' …' if len(result['missing']) > 8 else ''}." if result["missing"] else "."),
        "Rule 1 (elastic full model unharmed): the 95% interval of A full − B full contains 0 or lies below +0.01 nats.",
        "Rule 2 (sub-models worth it): the interval of A cut − E cut lies below 0 ('undecided' when it straddles 0). "
        "E is the cut's shape trained from scratch on the token budget T' at which a plain family (full model and cut, "
        "each on T') costs A's training FLOPs. In short runs E is far from converged, which favours A.",
    ]
    return ExperimentResult(tables=[diff_table, loss_table, param_table], metrics=metrics, notes=notes)


def render(result: dict[str, Any], out: Path) -> ExperimentResult:
    """Write ``results.md`` for a study into ``out``; returns the ExperimentResult."""
    out = Path(out)
    res = build_result(result)
    parts = ["# Elastic MoE study", ""]
    parts += [f"- `{key}`: {value}" for key, value in res.metrics.items()]
    parts.append("")
    parts += [f"- {n}" for n in res.notes]
    parts.append("")
    for table in res.tables:
        parts += [table_markdown(table), ""]
    atomic_write_text(out / "results.md", "\n".join(parts))
    return res


@register(
    name="elastic-moe",
    module="elastic",
    title="ERNIE 5.0 elastic MoE: one training run yields a family of sub-models",
    claims=[
        Claim("Elasticity leaves the full model's loss unchanged (axes where the rule holds)", paper="1.941 vs 1.945",
              metric="full_claim_axes_holding", rule=AtLeast("full_claim_axes_holding", 1.0, partly=0.25),
              setting="full: byte-level 0.19M-param MoE, 2.2M tokens, 5 seeds (recorded in docs/results/elastic.md: holds on top-k only); "
                      "quick: 30 steps x 3 seeds, a smoke run, not evidence"),
        Claim("Elastic sub-models beat same-size models trained from scratch at equal total FLOPs (axes holding)",
              paper="not reported (OFA/MatFormer claim)", metric="sub_claim_axes_holding",
              rule=AtLeast("sub_claim_axes_holding", 1.0, partly=0.25),
              setting="as above; quick: a smoke run, not evidence"),
    ],
    quick=QUICK,
    full=FULL,
)
def run(config: dict[str, Any], ctx: RunContext) -> ExperimentResult:
    from leanlm.elastic.study import StudyConfig, run_study

    study = StudyConfig(**config)
    result = run_study(study, ctx.out_dir)
    res = render(result, ctx.out_dir)
    res.notes.append(f"Artifacts (runs, study.json, results.md) in {ctx.out_dir}.")
    return res
