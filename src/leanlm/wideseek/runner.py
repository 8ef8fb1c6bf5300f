"""Run a task set N times with the multi-agent or single-agent system and score it (``leanlm wideseek eval``).

Each trial writes its trace to ``<out>/traces/<id>_<trial>.jsonl`` and appends one line to
``<out>/results.jsonl`` (``instance_id``, ``trial_idx``, ``response``, scores, stats, and the shaped ``reward``,
its ``reward_case`` and the ``trainable_turns`` of :func:`leanlm.wideseek.rewards.credit`), the response file
layout of WideSearch (``instance_id``, ``response``, ``trial_idx``). A rerun with the same ``out`` skips the
trials already in ``results.jsonl``, so an interrupted evaluation resumes. ``summary.json`` holds
:func:`leanlm.wideseek.scorer.summarize` over table tasks and exact match over QA tasks.
"""

from __future__ import annotations

import functools
import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from leanlm.common.atomic import atomic_write_json
from leanlm.common.progress import get_logger, progress_bar
from leanlm.common.records import read_jsonl
from leanlm.wideseek.agents import AgentConfig, RunResult, Toolbox, WideSeek
from leanlm.wideseek.llm import Backend
from leanlm.wideseek.scorer import SUMMARY_METRICS, summarize
from leanlm.wideseek.tasks import Task

log = get_logger("leanlm.wideseek.runner")


@functools.lru_cache(maxsize=2)
def default_world(wiki_limit: int | None = None) -> Toolbox:
    """The full offline world (countries, cities, elements, Wikipedia) with the FTS5 index; built once."""
    from leanlm.wideseek.corpus import build_corpus
    from leanlm.wideseek.tools import WorldTools

    return WorldTools(build_corpus(wiki_limit=wiki_limit))


def run_task(task: Task, backend: Backend, tools: Toolbox, config: AgentConfig, mode: str = "multi") -> RunResult:
    if mode not in ("multi", "single"):
        raise ValueError(f"mode must be 'multi' or 'single', got {mode!r}")
    agent = WideSeek(backend, tools, config)
    fmt = "qa" if task.kind == "qa" else "table"
    return agent.run(task.query, fmt) if mode == "multi" else agent.run_single(task.query, fmt)


def evaluate(
    tasks: Sequence[Task], backend: Backend, tools: Toolbox, config: AgentConfig, *, n: int = 1,
    mode: str = "multi", out_dir: str | os.PathLike[str] | None = None, block: str = "first",
    on_result: Callable[[dict[str, Any]], None] | None = None, judge: Any = None, aligner: Any = None,
    numbers: str = "official",
) -> dict[str, Any]:
    """Run every task ``n`` times; returns ``{"summary": ..., "qa": ..., "rows": [...]}`` and writes files."""
    out = Path(out_dir) if out_dir else None
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if out is not None:
        (out / "traces").mkdir(parents=True, exist_ok=True)
        if (out / "results.jsonl").exists():
            for _, record in read_jsonl(out / "results.jsonl"):
                done[(record["instance_id"], int(record["trial_idx"]))] = record
            log.info("resuming: %d trials already in %s", len(done), out / "results.jsonl")
    rows: list[dict[str, Any]] = []
    with progress_bar(desc=f"wideseek eval ({mode})", total=len(tasks) * n, unit="trial") as bar:
        for task in tasks:
            for trial in range(n):
                key = (task.instance_id, trial)
                if key in done:
                    rows.append(done[key])
                    bar.update(1)
                    continue
                result = run_task(task, backend, tools, config, mode)
                score = task.score(result.answer, block=block, judge=judge, aligner=aligner, numbers=numbers)
                credit = result.credit(score.score if task.kind == "qa" else score.f1_by_item, format_ok(task, result.answer, block))
                row = {"instance_id": task.instance_id, "trial_idx": trial, "kind": task.kind, "mode": mode,
                       "response": result.answer, **score.as_dict(), **{f"stat_{k}": v for k, v in result.stats.items()},
                       "reward": credit.reward, "reward_case": credit.case,
                       "trainable_turns": [list(t) for t in credit.trainable]}
                if out is not None:
                    result.trace.write(out / "traces" / f"{task.instance_id}_{trial}.jsonl")
                    with open(out / "results.jsonl", "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                        handle.flush()
                        os.fsync(handle.fileno())
                rows.append(row)
                if on_result:
                    on_result(row)
                bar.update(1)
    report = summarize_rows(rows, n)
    if out is not None:
        atomic_write_json(out / "summary.json", report["summary_json"])
    return {**report, "rows": rows}


def format_ok(task: Task, answer: str, block: str = "first") -> bool:
    """RLinf's valid-format test for the reward: a parseable answer table, or a ``\\boxed{}`` QA answer."""
    from leanlm.wideseek.agents import extract_boxed
    from leanlm.wideseek.scorer import extract_table

    if task.kind == "qa":
        return extract_boxed(answer or "") is not None
    try:
        return extract_table(answer, block) is not None
    except Exception:
        return False


def summarize_rows(rows: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    table: dict[str, list[dict[str, Any]]] = defaultdict(list)
    qa: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row["kind"] == "qa":
            qa[row["instance_id"]].append(float(row["score"]))
        else:
            table[row["instance_id"]].append({m: row[m] for m in SUMMARY_METRICS})
    summary = summarize(table, n) if table else {}
    qa_summary = {}
    if qa:
        qa_summary = {"avg_n": sum(sum(v) / len(v) for v in qa.values()) / len(qa),
                      "pass_n": sum(max(v) for v in qa.values()) / len(qa), "tasks": len(qa)}
    return {"summary": summary, "qa": qa_summary, "summary_json": {"n": n, "table_tasks": len(table),
                                                                     "table": summary, "qa": qa_summary}}


def metrics_rows(summary: dict[str, dict[str, float]]) -> list[list[Any]]:
    """The WideSearch metrics table: metric, Avg@N, Max@N (Pass@N for success), Min@N, in percent."""
    names = {"score": "success rate", "f1_by_item": "item F1", "precision_by_item": "item precision",
             "recall_by_item": "item recall", "f1_by_row": "row F1", "precision_by_row": "row precision",
             "recall_by_row": "row recall"}
    order = ["f1_by_item", "precision_by_item", "recall_by_item", "f1_by_row", "precision_by_row", "recall_by_row", "score"]
    return [[names[m], round(100 * summary[m]["avg_n"], 1), round(100 * summary[m]["max_n"], 1),
             round(100 * summary[m]["min_n"], 1)] for m in order if m in summary]
