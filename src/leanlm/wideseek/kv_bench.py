"""``leanlm wideseek kv-bench``: what cross-turn KV reuse saves on a real rollout group (issue 13, item 1).

One batched group of ``n`` rollouts of each of the first ``tasks`` held-out tasks (the study's evaluation
settings: real offline tools, turn limits, context) runs with the real SmolLM2-135M generating every model call
through :class:`~leanlm.wideseek.rollout.TransformersBackend`, once re-prefilling every prompt and once with
cross-turn KV reuse (``axis`` ``kv-reuse``; with ``fold-gqa``, once with transformers' ``sdpa`` and once with
the folded-GQA attention), in interleaved repeats (the order alternates per repeat). The conversation is driven by
the scripted oracle (:class:`~leanlm.wideseek.bench.OraclePolicy`), so every rollout has the multi-turn shape of
a protocol-following policy whatever the model writes (the base model answers in one turn without a tool call,
which leaves nothing to reuse); the model's replies are generated, timed and discarded. Since the oracle's
reply, not the model's, enters the next prompt, only the previous prompt is reused, not the previous reply: a
slight underestimate of the saving for a policy whose replies are re-rendered token for token.

Reported per run: wall seconds, seconds inside ``generate``, prompt tokens, prompt columns prefilled (rows x
width of the batch's new tokens) and tokens reused; medians per mode, the ratio of the medians and the
per-repeat paired ratios; and whether both modes sampled identical tokens (checked when their batches were the
same, which they are unless an agent's tool call finished on the other side of a batch cut).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import torch

from leanlm.common.progress import get_logger

log = get_logger("leanlm.wideseek.kv_bench")


def oracle_group(backend: Any, tasks: list[Any], tools: Any, agent_cfg: Any, n: int, width: int) -> list[Any]:
    """``n`` oracle-driven rollouts of each task, all concurrently: each model call first goes through
    ``backend`` (queued and batched with every other waiting agent), then the oracle answers it."""
    from leanlm.wideseek import rollout
    from leanlm.wideseek.agents import WideSeek
    from leanlm.wideseek.bench import OraclePolicy

    class Queued:
        def __init__(self, oracle: Any):
            self.oracle = oracle

        async def complete(self, messages: list[dict[str, Any]], tools_: list[dict[str, Any]], *, agent: str) -> Any:
            await backend.complete(messages, tools_, agent=agent)
            return self.oracle(agent, messages, tools_)

    async def main() -> list[Any]:
        async def one(traj: int, task: Any) -> Any:
            rollout.TRAJECTORY.set(traj)
            return await WideSeek(Queued(OraclePolicy(task, width=width)), tools, agent_cfg).arun(task.query, "table")
        return list(await asyncio.gather(*(one(i * n + k, t) for i, t in enumerate(tasks) for k in range(n))))

    try:
        return asyncio.run(main())
    finally:
        if hasattr(backend, "release"):
            backend.release()


def identity_check(repeat: int, members_off: list[Any], turns_off: dict[Any, Any], members_on: list[Any],
                   turns_on: dict[Any, Any]) -> dict[str, Any]:
    """Compare the two modes' sampled tokens row by row over the batches whose rows held the same prompts in
    the same order in both (the longest such prefix of the batch lists: from the first difference on, the
    sampler's random stream is consumed differently). Row order matters, agent names do not: the rollouts of
    one task have identical oracle-driven prompts, and which of them comes first in a batch depends on timing.
    ``members_*``: ``(traj, agent, turn)`` per row per batch; ``turns_*``: that key -> ``(prompt ids, token ids,
    log-probs)``."""
    same, compared, identical, worst = 0, 0, True, 0.0
    for rows_off, rows_on in zip(members_off, members_on, strict=False):
        if [turns_off[k][0] for k in rows_off] != [turns_on[k][0] for k in rows_on]:
            break
        same += 1
        for k0, k1 in zip(rows_off, rows_on, strict=True):
            (_, t0, l0), (_, t1, l1) = turns_off[k0], turns_on[k1]
            identical &= t0 == t1
            worst = max([worst, *(abs(x - y) for x, y in zip(l0, l1, strict=False))])
            compared += 1
    return {"repeat": repeat, "batches": len(members_off), "same_batches": same, "compared": compared,
            "identical_tokens": identical, "max_logprob_diff": worst}


AXES = {"kv-reuse": "KV reuse", "fold-gqa": "GQA folded"}
"""What a run switches on and off: cross-turn KV reuse (attention folded in both modes) or the folded-GQA
attention of :mod:`leanlm.common.attention` (KV reuse on in both modes)."""


def run(tasks: int = 1, n: int = 2, width: int = 2, max_new_tokens: int = 16, repeats: int = 3, threads: int = 1,
        seed: int = 0, gather_s: float = 0.05, axis: str = "kv-reuse") -> tuple[str, dict[str, Any]]:
    """Interleaved repeats of the oracle-driven group with ``axis`` (:data:`AXES`) off and on; (Markdown report,
    data)."""
    from leanlm.common.models import load_embedded
    from leanlm.wideseek.rollout import TransformersBackend
    from leanlm.wideseek.runner import default_world
    from leanlm.wideseek.study import FULL, _train_config, eval_tasks

    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
    label = AXES[axis]
    torch.set_num_threads(threads)
    cfg = dict(FULL)
    loaded = load_embedded()
    tools = default_world(cfg["wiki_limit"])
    chosen = eval_tasks(cfg)[:tasks]
    agent_cfg = _train_config(cfg, "/tmp", "", 0).agent_config()
    agent_cfg.max_subagents_per_call = agent_cfg.max_subagents_per_turn = agent_cfg.max_concurrency = width
    rows: list[dict[str, Any]] = []
    tokens: dict[tuple[int, bool], tuple[list[Any], dict[Any, Any]]] = {}
    for r in range(repeats):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            reuse, fold = (on, True) if axis == "kv-reuse" else (True, on)
            loaded.model.set_attn_implementation("sdpa")  # the backend switches it to the folded form if fold
            backend = TransformersBackend(loaded.model, loaded.tokenizer, max_new_tokens=max_new_tokens,
                                          max_context=cfg["max_context"], kv_reuse=reuse, kv_hold_all=True,
                                          gather_s=gather_s, fold_gqa=fold)
            torch.manual_seed(seed + r)
            t0 = time.perf_counter()
            oracle_group(backend, chosen, tools, agent_cfg, n, width)
            wall = time.perf_counter() - t0
            key = lambda s: (s.traj, s.agent_name, s.turn)  # noqa: E731
            samples = sorted(backend.samples, key=key)
            tokens[(r, on)] = (list(backend.batch_members), {key(s): (s.prompt_ids, s.completion_ids, s.logprobs)
                                                                for s in samples})
            st = dict(backend.stats)
            rows.append({"repeat": r, "on": on, "kv_reuse": reuse, "fold_gqa": fold, "wall_s": round(wall, 1),
                         "generate_s": round(backend.generate_s, 1), "generate_calls": len(backend.batches),
                         **st})
            log.info("repeat %d %s=%s: %.1f s wall, %.1f s generate, prefilled %d of %d", r, axis, on, wall,
                     backend.generate_s, st["prefilled_tokens"], st["padded_prompt_tokens"])
    checks = [identity_check(r, *tokens[(r, False)], *tokens[(r, True)]) for r in range(repeats)]

    def med(field: str, on: bool) -> float:
        return statistics.median(x[field] for x in rows if x["on"] == on)

    paired = [next(x for x in rows if x["repeat"] == r and x["on"])["generate_s"]
              / next(x for x in rows if x["repeat"] == r and not x["on"])["generate_s"] for r in range(repeats)]
    data = {"axis": axis, "tasks": [t.instance_id for t in chosen], "n": n, "width": width,
            "max_new_tokens": max_new_tokens,
            "gather_s": gather_s,
            "repeats": repeats, "threads": threads, "rows": rows, "checks": checks,
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            + f", load average {os.getloadavg()[0]:.1f}",
            "median_generate_s": {"off": med("generate_s", False), "on": med("generate_s", True)},
            "median_wall_s": {"off": med("wall_s", False), "on": med("wall_s", True)},
            "generate_ratio_of_medians": med("generate_s", True) / med("generate_s", False),
            "wall_ratio_of_medians": med("wall_s", True) / med("wall_s", False),
            "paired_generate_ratios": [round(p, 3) for p in paired],
            "prefill_ratio": med("prefilled_tokens", True) / med("prefilled_tokens", False)}
    other = "GQA folded in both modes" if axis == "kv-reuse" else "KV reuse on in both modes"
    lines = [f"### {label} off and on ({other}): {len(chosen)} held-out task(s) x {n} rollouts, width {width}, oracle-driven, "
             f"SmolLM2-135M fp32, {threads} thread(s), <= {max_new_tokens} new tokens per call, gather window "
             f"{gather_s:g} s",
             "", f"Measured {data['measured']}.", "",
             f"| repeat | {label} | wall s | generate s | generate calls | model calls | prompt tok | prefilled "
             "columns | padded columns | reused tok |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {x['repeat']} | {'on' if x['on'] else 'off'} | {x['wall_s']} | {x['generate_s']} | "
              f"{x['generate_calls']} | {x['calls']} | {x['prompt_tokens']} | {x['prefilled_tokens']} | "
              f"{x['padded_prompt_tokens']} | {x['reused_tokens']} |" for x in rows]
    lines += ["", "| | off | on | on / off |", "|---|---|---|---|",
              f"| median generate s | {data['median_generate_s']['off']:.1f} | {data['median_generate_s']['on']:.1f} "
              f"| {data['generate_ratio_of_medians']:.2f} |",
              f"| median wall s | {data['median_wall_s']['off']:.1f} | {data['median_wall_s']['on']:.1f} | "
              f"{data['wall_ratio_of_medians']:.2f} |",
              f"| median prefilled columns | {med('prefilled_tokens', False):.0f} | {med('prefilled_tokens', True):.0f} "
              f"| {data['prefill_ratio']:.2f} |", "",
              f"Paired generate-time ratios (on / off) per repeat: {data['paired_generate_ratios']}.", ""]
    for c in checks:
        lines.append(f"Repeat {c['repeat']}: the first {c['same_batches']} of {c['batches']} batches had the same "
                     f"prompts in the same rows in both modes; their {c['compared']} turns sampled "
                     f"{'identical' if c['identical_tokens'] else 'DIFFERENT'} tokens, largest log-prob difference "
                     f"{c['max_logprob_diff']:.1e}.")
    lines += ["", "Which agents share a batch, and in which row order, depends on when their tool calls return "
              "(threads) within the backend's gather window, so the two modes' batches can differ from some batch "
              "on; from the first "
              "differing batch the sampler's random stream is consumed differently and tokens are no longer "
              "comparable. The exact identity under fixed batches is what `tests/wideseek/test_wideseek_kv_reuse.py` "
              "checks."]
    lines += ["", "The oracle's replies, not the model's, continue each conversation: only the previous prompt is "
              "reused, never the previous reply."]
    return "\n".join(lines) + "\n", data
