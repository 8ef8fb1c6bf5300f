"""Steps 5-6 of the evaluation: tabulate (tables + claim metrics) and plot."""

from __future__ import annotations

import json
import math
from typing import Any

from leanlm.common.report import Figure, Table
from leanlm.fasa.evaluation.methods import BASELINES, Offline
from leanlm.fasa.evaluation.metrics import aggregate, ppl_ratio_interval


def _pct(x: float) -> float:
    return round(100 * x, 1) if not math.isnan(x) else float("nan")


def _acc_cell(e: dict[str, Any] | None) -> str:
    if not e:
        return "-"
    return f"{100 * e['acc']:.0f} [{100 * e['acc_lo']:.0f}, {100 * e['acc_hi']:.0f}] ({e['correct']}/{e['n']})"


def answer_span(text: str) -> str:
    """The answer part of a reply: its first line, cut at the first sentence end (``". "``), without the final
    period. Replies run on past the answer for a fixed number of tokens; agreement compares only this part."""
    first = text.strip().split("\n")[0].split(". ")[0]
    return first.strip().rstrip(".").strip()


def with_agreement(rows: list[dict[str, Any]], full_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with ``agree`` = the answer span equals full KV's on the same prompt (recomputed from the texts)."""
    full = {r["id"]: answer_span(r["text"]) for r in full_rows if r["method"] == "full KV"}
    return [{**r, "agree": r["id"] in full and answer_span(r["text"]) == full[r["id"]]} for r in rows]


def overlap(a: Any, b: Any, k: int) -> float:
    """Mean fraction of a head's dominant FCs shared by two calibrations, ``|A ∩ B| / N_tip`` (Table 10)."""
    sa, sb = a.dominant_sets(k), b.dominant_sets(k)
    pairs = [(x, y) for la, lb in zip(sa, sb, strict=True) for x, y in zip(la, lb, strict=True)]
    return sum(len(x & y) / len(x) for x, y in pairs) / len(pairs)


def accuracy_table(rows_l: list[dict[str, Any]], budgets: list[int], title: str) -> Table:
    """% correct per method x budget with Wilson intervals, and agreement with full KV's answer."""
    agg = aggregate(rows_l)
    n_prompts = len({r["id"] for r in rows_l if r["method"] == "full KV"})
    table_rows = []
    for m in dict.fromkeys(r["method"] for r in rows_l):
        cells = [_acc_cell(agg.get((m, 0)))] if m == "full KV" else [_acc_cell(agg.get((m, b))) for b in budgets]
        if m == "full KV":
            cells += ["-"] * (len(budgets) - 1)
        agree = [agg.get((m, b)) for b in ([0] if m == "full KV" else budgets)]
        table_rows.append([m, *cells, " / ".join(f"{e['agree']}/{e['n']}" if e else "-" for e in agree)])
    return Table(
        f"{title}: % correct [95% Wilson interval] (correct/prompts)",
        ["method", *[f"budget {b}" for b in budgets], "answer identical to full KV's (per budget)"], table_rows,
        caption=f"{n_prompts} prompts ({', '.join(sorted({r['task'] for r in rows_l}))}); layer 0 dense for every "
                "per-step method; kvpress rows evict at prefill (other protocol), budget = kept tokens.")


def goal_metrics(agg: dict[tuple[str, int], dict[str, Any]], budgets: list[int]) -> dict[str, Any]:
    """The issue's goal quantities: FASA@256 minus full KV, FASA's agreement and recall at 256, and FASA's
    smallest margin over the best non-oracle baseline at budgets <= 256 (percentage points)."""
    out: dict[str, Any] = {}
    full, fasa256 = agg.get(("full KV", 0)), agg.get(("FASA", 256))
    if full and fasa256:
        out["fasa_minus_full_256"] = round(100 * (fasa256["acc"] - full["acc"]), 1)
        out["fasa_agree_256"] = f"{fasa256['agree']}/{fasa256['n']}"
        out["fasa_recall_256"] = _pct(fasa256.get("recall", float("nan")))
    margins = []
    for b in [b for b in budgets if b <= 256]:
        f = agg.get(("FASA", b))
        others = [agg[(m, b)]["acc"] for (m, bb) in agg if bb == b and (m in BASELINES or m.startswith("kvpress"))]
        if f and others:
            margins.append(100 * (f["acc"] - max(others)))
    if margins:
        out["fasa_margin_over_best_baseline"] = round(min(margins), 1)
    return out


def floor_tasks(tuning: dict[str, Any] | None, length: int) -> set[str]:
    """Tasks the tuning left at the floor at ``length`` (full KV below target even at the easiest rung)."""
    return {r["task"] for r in (tuning or {}).get("rungs", []) if r["length"] == length and r["floor"]}


def tuning_table(tuning: dict[str, Any]) -> Table:
    """The task settings the tuning step chose, with full KV's score on the tuning seeds at each rung tried."""
    rows = [[r["length"], r["task"], r["rung"], json.dumps(r["params"]) if r["params"] else "default (RULER-like)",
             f"{r['correct']}/{r['seeds']}", "floor (easiest rung)" if r["floor"] else "yes" if r["chosen"] else ""]
            for r in tuning["rungs"]]
    return Table("Task difficulty tuned to the model: full KV on the tuning seeds at each rung tried",
                 ["length", "task", "rung", "knobs", "full KV correct", "chosen"], rows,
                 caption=f"Rungs from hardest (the default) to easiest; the first with full KV correct on at least "
                         f"{100 * tuning['target']:.0f}% of {tuning['seeds']} tuning prompts (seeds from "
                         f"{tuning['first_seed']}, disjoint from the evaluated seeds) is kept; a rung stops early "
                         "once the remaining seeds cannot change its verdict (hence fewer prompts).")


def retention_table(rows_l: list[dict[str, Any]], budgets: list[int], length: int) -> Table | None:
    """Accuracy of each method on the prompts full KV answers correctly (how much of full KV's skill it keeps)."""
    solved = {r["id"] for r in rows_l if r["method"] == "full KV" and r["correct"]}
    if not solved:
        return None
    agg = aggregate([r for r in rows_l if r["id"] in solved])
    methods = [m for m in dict.fromkeys(r["method"] for r in rows_l) if m != "full KV"]
    return Table(f"Retention at {length} tokens: % correct on the {len(solved)} prompts full KV answers correctly "
                 "[95% Wilson interval]", ["method", *[f"budget {b}" for b in budgets]],
                 [[m, *[_acc_cell(agg.get((m, b))) for b in budgets]] for m in methods])


def tabulate(answers: list[dict[str, Any]], press_rows: list[dict[str, Any]], ppl_rows: list[dict[str, Any]],
             offline: Offline, config: dict[str, Any], tuning: dict[str, Any] | None = None
             ) -> tuple[list[Table], dict[str, Any], dict[str, Any]]:
    """Tables, claim metrics and a JSON summary from the checkpointed rows (``tuning``: the tuning step's
    result, tabulated first)."""
    answers, press_rows = with_agreement(answers, answers), with_agreement(press_rows, answers)
    tables: list[Table] = [tuning_table(tuning)] if tuning else []
    metrics: dict[str, Any] = {}
    summary: dict[str, Any] = {"lengths": {}}
    budgets = list(config["budgets"])
    lengths = [n for n in config["lengths"] if any(r["length"] == n for r in answers)]
    for length in lengths:
        rows_l = [r for r in answers if r["length"] == length] + [r for r in press_rows if r["length"] == length]
        agg = aggregate(rows_l)
        methods = list(dict.fromkeys(r["method"] for r in rows_l))
        tables.append(accuracy_table(rows_l, budgets, f"Task accuracy at {length} tokens"))
        floor = floor_tasks(tuning, length)
        if floor and any(r["task"] not in floor for r in rows_l):
            tables.append(accuracy_table([r for r in rows_l if r["task"] not in floor], budgets,
                                         f"Task accuracy at {length} tokens, tasks off the floor only"))
        kept = retention_table(rows_l, budgets, length)
        if kept is not None:
            tables.append(kept)
        tasks = list(dict.fromkeys(r["task"] for r in rows_l))
        b_ref = 256 if 256 in budgets else budgets[-1]
        per_task = []
        for m in methods:
            row = [m]
            for task in tasks:
                sel = [r for r in rows_l if r["method"] == m and r["task"] == task and r["budget"] in (0, b_ref)]
                row.append(f"{sum(r['correct'] for r in sel)}/{len(sel)}" if sel else "-")
            per_task.append(row)
        tables.append(Table(f"Per task at {length} tokens, budget {b_ref} (full KV: all tokens)", ["method", *tasks],
                            per_task))
        probe_rows = []
        for m in methods:
            for b in budgets:
                e = agg.get((m, b))
                if e and "recall" in e:
                    probe_rows.append([m, b, _pct(e["recall"]), _pct(e["mass"]), round(e["rel_err"], 3)])
        tables.append(Table(f"Selection quality during task decoding at {length} tokens (mean over sparse layers)",
                            ["method", "budget", "top-K recall (%)", "captured softmax mass (%)",
                             "attention-output rel. error"], probe_rows))
        summary["lengths"][str(length)] = {f"{m}@{b}": e for (m, b), e in agg.items()}
    if lengths:
        longest = [r for r in answers + press_rows if r["length"] == lengths[-1]]
        metrics["prompts_longest"] = len({r["id"] for r in longest if r["method"] == "full KV"})
        metrics["longest_length"] = lengths[-1]
        metrics.update(goal_metrics(aggregate(longest), budgets))
        floor = floor_tasks(tuning, lengths[-1])
        if floor:
            metrics["floor_tasks"] = sorted(floor)
            off = aggregate([r for r in longest if r["task"] not in floor])
            metrics.update({f"{k}_off_floor": v for k, v in goal_metrics(off, budgets).items()})
    if ppl_rows:
        ppl_table = []
        by = {(r["text_kind"], r["method"], r["budget"]): r for r in ppl_rows}
        kinds = list(dict.fromkeys(r["text_kind"] for r in ppl_rows))
        for kind in kinds:
            full = by.get((kind, "full KV", 0))
            for (k, m, b), r in by.items():
                if k != kind:
                    continue
                rel = (r["ppl"] / full["ppl"] - 1) * 100 if full else float("nan")
                cell = f"{rel:+.2f}"
                if full and m != "full KV":
                    _, lo, hi = ppl_ratio_interval(r["nll"], full["nll"])
                    cell += f" [{lo:+.1f}, {hi:+.1f}]"
                err = [x for x in (r.get("rel_err") or []) if x is not None]
                ppl_table.append([kind, m, b or "all", round(r["ppl"], 3), cell,
                                  round(sum(err) / len(err), 3) if err else "-", len(r["nll"])])
        tables.append(Table("Teacher-forced decode perplexity (dense prefill, then one token at a time)",
                            ["text", "method", "budget", "perplexity", "vs full KV (%) [95% paired t interval]",
                             "attention-output rel. error", "tokens"], ppl_table,
                            caption="Held-out Wikipedia summaries / CPython sources; the interval is a Student-t "
                                    "interval of the mean per-token NLL difference to full KV on the same tokens "
                                    "(approximate: neighbouring tokens are not independent); rel. error is the "
                                    "mean over sparse layers of ‖o − ô‖/‖o‖ at each step (same q/K/V, local "
                                    "error)."))
        increases = [(by[(k, "FASA", 256)]["ppl"] / by[(k, "full KV", 0)]["ppl"] - 1) * 100 for k in kinds
                     if (k, "FASA", 256) in by and (k, "full KV", 0) in by]
        if increases:
            metrics["fasa_ppl_increase_256_pct"] = round(max(increases), 2)
    cal = offline.calibrations
    if len(cal) > 1:
        k = offline.main.k_for_budget(256)
        names = [n for n in cal if n != "adjacent"]
        rows = [[a, *[round(100 * overlap(cal[a], cal[b], k), 1) for b in names]] for a in names]
        tables.append(Table(f"Calibration transfer: dominant-set overlap |A∩B|/N_tip (%), K={k}", ["calibrated on", *names],
                            rows, caption="Paper Table 10: 65-98% between calibration tasks."))
        offs = [rows[i][j + 1] for i in range(len(names)) for j in range(len(names)) if i != j]
        if offs:
            metrics["transfer_overlap_min_pct"] = min(offs)
    return tables, metrics, summary


def plot(answers: list[dict[str, Any]], press_rows: list[dict[str, Any]], ppl_rows: list[dict[str, Any]],
         offline: Offline, config: dict[str, Any]) -> list[Figure]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leanlm.fasa.plots import ca_heatmap

    answers, press_rows = with_agreement(answers, answers), with_agreement(press_rows, answers)
    figures = []
    budgets = list(config["budgets"])
    lengths = [n for n in config["lengths"] if any(r["length"] == n for r in answers)]
    if lengths:
        length = lengths[-1]
        agg = aggregate([r for r in answers + press_rows if r["length"] == length])
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        methods = list(dict.fromkeys(m for m, _ in agg if m != "full KV"))
        for m in methods:
            xs = [b for b in budgets if (m, b) in agg] or [b for (mm, b) in agg if mm == m]
            ys = [100 * agg[(m, b)]["acc"] for b in xs]
            lo = [max(0.0, y - 100 * agg[(m, b)]["acc_lo"]) for y, b in zip(ys, xs, strict=True)]
            hi = [max(0.0, 100 * agg[(m, b)]["acc_hi"] - y) for y, b in zip(ys, xs, strict=True)]
            style = dict(lw=2.2) if m == "FASA" else dict(lw=1, ls="--" if m.startswith("kvpress") else "-")
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=2, label=m, **style)
        if ("full KV", 0) in agg:
            ax.axhline(100 * agg[("full KV", 0)]["acc"], color="k", ls=":", label="full KV")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("budget (tokens attended per head per step)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=6, ncol=2)
        figures.append(Figure.from_matplotlib(fig, f"Accuracy vs budget at {length} tokens (95% Wilson intervals)"))
    if ppl_rows:
        fig, ax = plt.subplots(figsize=(7.5, 4.0))
        for kind in dict.fromkeys(r["text_kind"] for r in ppl_rows):
            rows = [r for r in ppl_rows if r["text_kind"] == kind]
            full = next((r["ppl"] for r in rows if r["method"] == "full KV"), None)
            for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "full KV"):
                pts = sorted((r["budget"], r["ppl"]) for r in rows if r["method"] == m)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{m} ({kind})",
                        lw=2.2 if m == "FASA" else 1)
            if full:
                ax.axhline(full, color="k", ls=":", label=f"full KV ({kind})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("budget")
        ax.set_ylabel("decode perplexity")
        ax.legend(fontsize=6, ncol=2)
        figures.append(Figure.from_matplotlib(fig, "Teacher-forced decode perplexity vs budget"))
        fasa = [r for r in ppl_rows if r["method"] in ("FASA", "Quest (page 16)", "SparQ", "Loki") and r["budget"] == 256
                and r.get("rel_err")]
        if fasa:
            fig, ax = plt.subplots(figsize=(7.5, 3.4))
            for r in fasa:
                ax.plot([x if x is not None else float("nan") for x in r["rel_err"]], marker=".",
                        label=f"{r['method']} ({r['text_kind']})")
            ax.set_xlabel("layer")
            ax.set_ylabel("‖o − ô‖ / ‖o‖")
            ax.legend(fontsize=7)
            figures.append(Figure.from_matplotlib(fig, "Per-layer attention-output relative error at budget 256"))
    figures.append(Figure.from_matplotlib(ca_heatmap(offline.main, 256), "Contextual agreement (CA) heatmap, K=256"))
    return figures
