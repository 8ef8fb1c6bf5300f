"""Tune the task suite's difficulty to the model, so that full KV lands between floor and ceiling.

A comparison where the reference answers nothing (or everything) cannot rank methods: at 8K tokens
SmolLM2-135M with full KV answers 1 of 16 of the RULER-like default tasks. For each (length, task) this
step walks a ladder of settings of the task's difficulty knobs (:data:`LADDERS`, hardest = the default
first) and keeps the first (hardest) rung at which full KV answers at least ``target`` of the prompts of
``seeds`` tuning seeds (a rung stops early once the remaining seeds cannot change its verdict). The tuning seeds start at :data:`TUNE_SEED` (100,000 or more below the evaluation's
seeds, which count from 0), so the tuned suite is never scored on the prompts it was tuned on. A task whose
easiest rung stays below ``target`` keeps the easiest rung and is reported as *at the floor*.

Full KV here is the evaluation's own full-KV path (:func:`~leanlm.fasa.evaluation.harness.prefill` then
:func:`~leanlm.fasa.evaluation.harness.greedy`, dense everywhere), so a tuning answer equals the row the
evaluation would record for that prompt. Every tuning answer is checkpointed (``tuning.jsonl``), so a stopped
tuning resumes where it was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leanlm.fasa.evaluation.metrics import score_answer
from leanlm.fasa.evaluation.run import append_jsonl, read_jsonl
from leanlm.fasa.evaluation.tasks import TASKS, build_trial, task_params

#: First tuning seed; evaluation prompts use seeds 0, 1, ... (n_per_task of them).
TUNE_SEED = 200_000

#: Per task, settings of its knobs from hardest (the default) to easiest.
LADDERS: dict[str, list[dict[str, Any]]] = {
    "niah_single": [{}, {"question_first": True}],
    "niah_multikey": [{}, {"keys": 2}, {"keys": 2, "question_first": True}],
    "niah_multivalue": [{}, {"values": 2}, {"values": 2, "question_first": True}],
    "kv_retrieval": [{}, {"pairs": 8}, {"pairs": 4, "question_first": True}],
    "variable_tracking": [{}, {"hops": 1}, {"hops": 1, "distractor_chain": False, "question_first": True}],
    "common_words": [{}, {"words": 1, "share": 0.3}, {"words": 1, "share": 0.3, "question_first": True}],
    "qa_article": [{}, {"question_first": True}],
}


def full_kv_answer(model: Any, tok: Any, prompt: str, max_new_tokens: int) -> str:
    """Full KV's greedy reply, through the evaluation's own dense path."""
    from leanlm.fasa.evaluation.harness import ProbeAttention, greedy, n_layers_of, prefill

    ids = tok(prompt, return_tensors="pt").input_ids
    cache, last = prefill(model, ids)
    handler = ProbeAttention(None, 0, n_layers_of(model), probe=False)
    tokens = greedy(model, cache, last, ids.shape[1], max_new_tokens, handler, tok.eos_token_id)
    return tok.decode(tokens, skip_special_tokens=True).strip()


def tune_suite(model: Any, tok: Any, tasks: list[str] | tuple[str, ...], lengths: list[int], seeds: int,
               target: float, out: Path | None = None, log: Callable[..., None] = lambda *a: None,
               ladders: dict[str, list[dict[str, Any]]] | None = None,
               answer: Callable[[Any, Any, str, int], str] = full_kv_answer) -> dict[str, Any]:
    """``{"params": {str(length): {task: knobs}}, "rungs": [...per (length, task, rung): accuracy...]}``.

    ``out/tuning.jsonl`` (if ``out``) checkpoints each tuning answer; ``answer`` is the full-KV reply
    (injectable for tests)."""
    if not 0 < target <= 1:
        raise ValueError(f"tune target must be in (0, 1], got {target}")
    if seeds < 1:
        raise ValueError(f"tune seeds must be at least 1, got {seeds}")
    ladders = ladders or LADDERS
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        for knobs in ladders[task]:
            task_params(task, knobs)  # a wrong rung fails before any model call
    need = math.ceil(target * seeds - 1e-9)
    path = None if out is None else Path(out) / "tuning.jsonl"
    done = {(r["length"], r["task"], json.dumps(r["params"], sort_keys=True), r["seed"]): r
            for r in (read_jsonl(path) if path else [])}
    params: dict[str, dict[str, dict[str, Any]]] = {}
    rungs: list[dict[str, Any]] = []
    for length in lengths:
        params[str(length)] = {}
        for task in tasks:
            ladder = ladders[task]
            for rung, knobs in enumerate(ladder):
                correct = tried = 0
                for seed in range(TUNE_SEED, TUNE_SEED + seeds):
                    if correct >= need or correct + (seeds - tried) < need:
                        break  # decided: the remaining seeds cannot change the verdict
                    key = (length, task, json.dumps(knobs, sort_keys=True), seed)
                    if key not in done:
                        trial = build_trial(tok, task, length, seed, knobs)
                        text = answer(model, tok, trial.prompt, trial.max_new_tokens)
                        row = {"length": length, "task": task, "params": knobs, "seed": seed, "answers": trial.answers,
                               "text": text, "correct": score_answer(text, trial.answers)[0]}
                        if path is not None:
                            append_jsonl(path, [row])
                        done[key] = row
                    correct += bool(done[key]["correct"])
                    tried += 1
                accepted = correct >= need
                floor = not accepted and rung == len(ladder) - 1
                rungs.append({"length": length, "task": task, "rung": rung, "params": knobs, "correct": correct,
                              "seeds": tried, "chosen": accepted or floor, "floor": floor})
                log("tune %s @%d rung %d %s: full KV %d/%d%s", task, length, rung, knobs, correct, tried,
                    " (chosen)" if accepted else " (easiest rung, at the floor)" if floor else "")
                if accepted or floor:
                    params[str(length)][task] = knobs
                    break
    return {"params": params, "rungs": rungs, "seeds": seeds, "target": target, "first_seed": TUNE_SEED}
