"""Rollout throughput: the in-process batched transformers backend vs the llama.cpp server (issue 13, item 1).

Both generate replies to the same ``batch`` subagent prompts (text tool mode, temperature 1) with at most
``max_tokens`` tokens each; the in-process backend answers them in one batched ``generate`` call (fp32
SmolLM2 weights, the policy being trained), llama.cpp (llama-cpp-python's server, one slot, the packaged
Q4_1 GGUF of the same model) answers the concurrent requests one at a time. Reported: generated tokens per
second of wall time per repeat (interleaved), their median and the ratio of the medians.

Caveat written into the report: the llama.cpp path here serves the *packaged* weights; in training it would
need the policy exported to GGUF after every update (a conversion step not counted here), and the learner
would recompute the old log-probs in one teacher-forced pass (as RLinf and verl do), also not counted.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import torch

from leanlm.common.progress import get_logger
from leanlm.wideseek import prompts

log = get_logger("leanlm.wideseek.rollout_bench")

ENTITIES = ["France", "Japan", "Brazil", "Kenya", "Canada", "India", "Chile", "Norway", "Egypt", "Peru", "Spain",
            "Vietnam", "Ghana", "Italy", "Mexico", "Nepal"]


def bench_prompts(batch: int) -> list[list[dict[str, Any]]]:
    """``batch`` subagent conversations (system prompt + subtask), one entity each."""
    task = "List every country of a region with its capital and population."
    return [[{"role": "system", "content": prompts.SUB_SYSTEM.format(max_items=5)},
             {"role": "user", "content": prompts.SUB_TASK.format(main_task=task, subtask=f"Find the capital and "
                                                                  f"population of {ENTITIES[i % len(ENTITIES)]}.")
              + prompts.turn_hint(0, 6)}] for i in range(batch)]


async def _many(backend: Any, convs: list[list[dict[str, Any]]], tools: list[dict[str, Any]]) -> list[Any]:
    return list(await asyncio.gather(*(backend.complete(c, tools, agent=f"sub-{i + 1}") for i, c in enumerate(convs))))


async def _timed(backend: Any, convs: list[list[dict[str, Any]]], tools: list[dict[str, Any]]) -> tuple[int, float]:
    t0 = time.perf_counter()
    outs = await _many(backend, convs, tools)
    return sum(o.completion_tokens or 0 for o in outs), time.perf_counter() - t0


async def _interleaved(inproc: Any, client: Any, convs: list[list[dict[str, Any]]], tools: list[dict[str, Any]],
                       repeats: int, rows: list[dict[str, Any]]) -> None:
    """Each repeat runs the in-process backend, then (if present) the server, appending one row per run."""
    backends = [("in-process (transformers, batched)", inproc)]
    if client is not None:
        backends.append(("llama.cpp server (1 slot, Q4_1)", client))
    for r in range(repeats):
        for name, backend in backends:
            tokens, wall = await _timed(backend, convs, tools)
            rows.append({"repeat": r, "backend": name, "tokens": tokens, "wall_s": round(wall, 2),
                         "tokens_per_s": round(tokens / wall, 2)})


def run(batch: int = 8, max_tokens: int = 64, repeats: int = 3, threads: int = 2, seed: int = 0) -> tuple[str, dict]:
    """Interleaved repeats of both backends; returns (Markdown report, data)."""
    from leanlm.common.models import load_embedded
    from leanlm.wideseek.llm import OpenAIBackend
    from leanlm.wideseek.rollout import TransformersBackend
    from leanlm.wideseek.server import LlamaServer, server_available

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    loaded = load_embedded()
    tools = prompts.sub_tools(5, 3)
    convs = bench_prompts(batch)
    inproc = TransformersBackend(loaded.model, loaded.tokenizer, max_new_tokens=max_tokens, temperature=1.0)
    rows: list[dict[str, Any]] = []
    server = LlamaServer(n_ctx=4096, n_threads=threads).start() if server_available() else None
    try:
        client = (OpenAIBackend(server.base_url, model="embedded", tool_mode="text", max_tokens=max_tokens,
                                temperature=1.0, timeout=900, retries=0) if server else None)
        # One event loop for every repeat: the OpenAI AsyncClient (httpx) is bound to the loop it first ran on,
        # so a fresh ``asyncio.run`` per repeat would fail with "Event loop is closed".
        asyncio.run(_interleaved(inproc, client, convs, tools, repeats, rows))
    finally:
        if server is not None:
            server.stop()
    med = {b: statistics.median(x["tokens_per_s"] for x in rows if x["backend"] == b)
           for b in dict.fromkeys(x["backend"] for x in rows)}
    names = list(med)
    ratio = med[names[0]] / med[names[1]] if len(names) == 2 and med[names[1]] else None
    data = {"batch": batch, "max_tokens": max_tokens, "repeats": repeats, "threads": threads, "rows": rows,
            "median_tokens_per_s": med, "ratio_inprocess_over_llamacpp": ratio}
    lines = [f"### Rollout throughput: {batch} subagent prompts, ≤ {max_tokens} new tokens each, {threads} threads",
             "", "| repeat | backend | tokens | wall s | tokens/s |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {x['repeat']} | {x['backend']} | {x['tokens']} | {x['wall_s']} | {x['tokens_per_s']} |" for x in rows]
    lines += ["", "| backend | median tokens/s |", "| --- | --- |"]
    lines += [f"| {b} | {v:.2f} |" for b, v in med.items()]
    if ratio is not None:
        lines += ["", f"In-process / llama.cpp throughput ratio: **{ratio:.2f}** (medians)."]
    else:
        lines += ["", "llama-cpp-python[server] is not installed: only the in-process backend was measured."]
    lines += ["", "llama.cpp serves the packaged Q4_1 weights; training with it would also need a GGUF export of the "
              "policy after each update and a teacher-forced pass for the old log-probs, neither counted here."]
    return "\n".join(lines) + "\n", data
