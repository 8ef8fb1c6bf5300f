"""Measurements behind ``docs/results/wideseek.md`` sections 1, 6 and 7, each one command writing Markdown.

- :func:`families_report` (``leanlm wideseek families``): per task family, the oracle policy's success and
  tool calls at widths 1, 2, 4, 8 under the paper's limits (10 lead turns, 20 subagent turns, 10
  subagents per lead turn, 5 items per tool call), and the world's build and index times.
- :func:`width_model_report` (``leanlm wideseek width-model``): the *simulated* wall-time speed-up of
  width 8 over width 1 (scripted oracle, model calls replaced by sleeps drawn from a log-normal latency
  model) over several latency seeds, with its spread. A model, not a measurement.
- :func:`real_width_report` (``leanlm wideseek width-real``): the oracle policy drives the runtime while
  the real embedded model (SmolLM2-135M through llama.cpp) writes every subagent's report; ``slots``
  llama.cpp server processes serve requests in parallel (llama-cpp-python's server answers one request at
  a time, so parallel slots are separate processes). Wall time and model tokens at widths 1, 2, 4, 8 with
  5 items per tool call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from leanlm.common.progress import get_logger, progress
from leanlm.common.stats import mean_interval
from leanlm.wideseek.agents import AgentConfig, WideSeek
from leanlm.wideseek.bench import LatencyModel, OraclePolicy, run_point, search_misses
from leanlm.wideseek.llm import Backend, Completion, ScriptedBackend
from leanlm.wideseek.tasks import Task

log = get_logger("leanlm.wideseek.measure")

def _md(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + (f"\n\n_{note}_" if note else "") + "\n"


# --------------------------------------------------------------------------------------------- families
def families_report(widths: Sequence[int] = (1, 2, 4, 8), items_per_turn: int = 5,
                    wiki_limit: int | None = None) -> tuple[str, dict[str, Any]]:
    """Oracle success and tool calls per wide task family and width, under the paper's limits."""
    from leanlm.wideseek.corpus import build_corpus
    from leanlm.wideseek.tasks import generate_wide_tasks
    from leanlm.wideseek.tools import WorldTools

    t0 = time.perf_counter()
    corpus = build_corpus(wiki_limit=wiki_limit)
    t1 = time.perf_counter()
    tools = WorldTools(corpus)
    t2 = time.perf_counter()
    tasks = generate_wide_tasks()
    data: dict[str, Any] = {"pages": len(corpus), "build_s": t1 - t0, "index_s": t2 - t1, "families": {}}
    for task in progress(tasks, desc="oracle over the wide families", unit="task"):
        fam = data["families"].setdefault(task.family, {"split": task.split, "tasks": 0, "rows": [],
                                                        "columns": len(task.evaluation["required"]),  # type: ignore[index]
                                                        "pages_per_row": 0, "by_width": {}})
        fam["tasks"] += 1
        fam["rows"].append(len(task.sources))
        fam["pages_per_row"] = max(fam["pages_per_row"], max(len(s) for s in task.sources.values()))
        for width in widths:
            policy = OraclePolicy(task, width, items_per_turn)
            result = asyncio.run(WideSeek(ScriptedBackend(policy), tools, AgentConfig()).arun(task.query))
            score = task.score(result.answer)
            per_agent: dict[str, int] = {}
            for event in result.trace.of(type="tool_call"):
                if event["agent"] != "lead":
                    per_agent[event["agent"]] = per_agent.get(event["agent"], 0) + 1
            w = fam["by_width"].setdefault(str(width), {"success": [], "tool_calls": [], "longest_chain": [],
                                                        "lead_turns": [], "misses": []})
            w["success"].append(score.score)
            w["tool_calls"].append(sum(per_agent.values()))
            w["longest_chain"].append(max(per_agent.values(), default=0))
            w["lead_turns"].append(result.lead.turns)
            w["misses"].append(search_misses(result))
    rows = []
    for name, fam in data["families"].items():
        row = [name, fam["split"], fam["tasks"], f"{min(fam['rows'])}-{max(fam['rows'])}", fam["columns"],
               fam["pages_per_row"]]
        for width in widths:
            w = fam["by_width"][str(width)]
            row.append(f"{statistics.mean(w['success']):.2f} / {statistics.mean(w['tool_calls']):.0f} / "
                       f"{statistics.mean(w['longest_chain']):.0f}")
        row.append(sum(sum(w["misses"]) for w in fam["by_width"].values()))
        rows.append(row)
    text = _md(f"Wide task families: oracle success / tool calls per task / longest subagent chain (tool calls), "
               f"{items_per_turn} items per call, paper limits",
               ["family", "split", "tasks", "rows", "columns", "pages per row", *[f"width {w}" for w in widths],
                "search misses"], rows,
               note=f"world: {len(corpus)} pages built in {data['build_s']:.1f} s, FTS5 index in {data['index_s']:.1f} s; "
                    "success under the paper's limits (10 lead turns, 20 subagent turns, <= 10 subagents per lead "
                    "turn); a search miss is a page read although no search returned it")
    return text, data


# --------------------------------------------------------------------------------------------- width model
def width_model_report(task: Task, tools: Any, seeds: Sequence[int] = tuple(range(10)), widths: Sequence[int] = (1, 8),
                       items: Sequence[int] = (1, 5), median: float = 1.5, sigma: float = 0.25,
                       scale: float = 0.02) -> tuple[str, dict[str, Any]]:
    """Simulated speed-up over latency seeds, per items-per-call: the critical path (sampled model latencies
    at full size plus measured tool times) at width 1 over that at the widest width.

    ``scale`` shrinks the sleeps so the runs are quick; the critical path divides it out again."""
    lo, hi = min(widths), max(widths)
    data: dict[str, Any] = {"task": task.instance_id, "rows": len(task.sources), "median": median, "sigma": sigma,
                            "scale": scale, "seeds": list(seeds), "speedups": {}}
    for k in items:
        ratios = []
        for seed in progress(list(seeds), desc=f"width model, {k} items per call", unit="seed"):
            walls = {}
            for width in (lo, hi):
                point = run_point(task, tools, LatencyModel(median, sigma, scale=scale, seed=seed), width, None,
                                  items_per_turn=k, unscale=True)
                if point.success != 1.0:
                    raise RuntimeError(f"oracle failed at width {width}, seed {seed}")
                walls[width] = point.ideal_s
            ratios.append(walls[lo] / walls[hi])
        data["speedups"][str(k)] = ratios
    rows = []
    for k, ratios in data["speedups"].items():
        n = len(ratios)
        mean = statistics.mean(ratios)
        half = mean_interval(ratios).half
        rows.append([k, n, f"{statistics.median(ratios):.2f}", f"{mean:.2f} ± {half:.2f}", f"{min(ratios):.2f}",
                     f"{max(ratios):.2f}"])
    text = _md(f"MODEL (simulated latencies, not a measurement): speed-up of width {hi} over width {lo}, task "
               f"{task.instance_id} ({len(task.sources)} rows)",
               ["items per call", "seeds", "median", "mean ± 95% t", "min", "max"], rows,
               note=f"critical path of sampled latencies (log-normal, median {median} s, sigma {sigma}) plus measured "
                    "tool times; batching server with unlimited slots; the same oracle work at every width")
    return text, data


# --------------------------------------------------------------------------------------------- real
@dataclass
class PooledBackend:
    """Round-robin over ``backends`` (one llama.cpp process each = one parallel slot); a request waits for a
    free one."""

    backends: list[Backend]
    _free: asyncio.Queue | None = field(default=None, repr=False)

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, agent: str) -> Completion:
        if self._free is None:
            self._free = asyncio.Queue()
            for b in self.backends:
                self._free.put_nowait(b)
        backend = await self._free.get()
        try:
            return await backend.complete(messages, tools, agent=agent)
        finally:
            self._free.put_nowait(backend)


@dataclass
class ReportWriter:
    """The oracle decides every call; the real model writes each subagent's final report from the subagent's
    instructions, its subtask and the values it found (the oracle's rows, at most 6,000 characters); the model's
    text comes first, the oracle's rows after it so the lead can still build the table. Records each model call."""

    policy: OraclePolicy
    model: Backend
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, agent: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Completion:
        out = self.policy(agent, messages, tools)
        if agent == "lead" or out.tool_calls:
            return out
        # a bounded prompt: the subagent's instructions and task, then what it found (the oracle's rows), so the
        # report call does not carry every tool result of a long chain (the 4,096-token server context)
        found = out.content if len(out.content) <= 6000 else out.content[:6000] + "\n..."
        ask = [*messages[:2], {"role": "user", "content": "You found these values:\n" + found
                               + "\nWrite your short structured report of what you found."}]
        t0 = time.perf_counter()
        written = await self.model.complete(ask, [], agent=agent)
        self.calls.append({"agent": agent, "seconds": time.perf_counter() - t0,
                           "prompt_tokens": written.prompt_tokens or 0,
                           "completion_tokens": written.completion_tokens or 0})
        return Completion(f"{written.content.strip()}\n\n{out.content}")


def real_width_report(task: Task, tools: Any, widths: Sequence[int] = (1, 2, 4, 8), slots: int = 8,
                      threads_per_slot: int = 1, max_tokens: int = 64, items_per_turn: int = 5,
                      repeats: int = 1) -> tuple[str, dict[str, Any]]:
    """Wall time and tokens per width with the real embedded model writing the subagent reports."""
    from leanlm.wideseek.llm import OpenAIBackend
    from leanlm.wideseek.server import LlamaServer

    servers = [LlamaServer(n_ctx=4096, n_threads=threads_per_slot) for _ in range(slots)]
    data: dict[str, Any] = {"task": task.instance_id, "rows": len(task.sources), "slots": slots,
                            "threads_per_slot": threads_per_slot, "max_tokens": max_tokens, "points": []}
    try:
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=slots) as pool:  # start the slots side by side
            list(pool.map(lambda server: server.start(), servers))
        data["startup_s"] = time.perf_counter() - t0
        pool = PooledBackend([OpenAIBackend(s.base_url, model="embedded", max_tokens=max_tokens, temperature=0.0,
                                            timeout=600, tool_mode="text") for s in servers])
        plan = [w for _ in range(repeats) for w in widths]  # interleaved repeats
        for width in progress(plan, desc="real width sweep", unit="run"):
            writer = ReportWriter(OraclePolicy(task, width, items_per_turn), pool)
            cfg = AgentConfig(max_subagents_per_call=width, max_subagents_per_turn=width, max_concurrency=width,
                              max_sub_turns=1000)
            t1 = time.perf_counter()
            result = asyncio.run(WideSeek(ScriptedBackend(writer), tools, cfg).arun(task.query))
            wall = time.perf_counter() - t1
            score = task.score(result.answer)
            data["points"].append({
                "width": width, "wall_s": wall, "success": score.score, "model_calls": len(writer.calls),
                "model_s": sum(c["seconds"] for c in writer.calls),
                "prompt_tokens": sum(c["prompt_tokens"] for c in writer.calls),
                "completion_tokens": sum(c["completion_tokens"] for c in writer.calls),
                "tool_calls": result.stats["tool_calls"]})
    finally:
        for server in servers:
            server.stop()
    rows = []
    for width in widths:
        pts = [p for p in data["points"] if p["width"] == width]
        walls = [p["wall_s"] for p in pts]
        rows.append([width, len(pts), f"{statistics.median(walls):.1f}", f"{min(walls):.1f}-{max(walls):.1f}",
                     pts[0]["model_calls"], pts[0]["prompt_tokens"], pts[0]["completion_tokens"],
                     f"{statistics.mean(p['success'] for p in pts):.2f}"])
    base = statistics.median(p["wall_s"] for p in data["points"] if p["width"] == min(widths))
    top = statistics.median(p["wall_s"] for p in data["points"] if p["width"] == max(widths))
    data["speedup"] = base / top
    text = _md(f"MEASURED: oracle + real SmolLM2-135M reports through {slots} llama.cpp slot(s) ({threads_per_slot} "
               f"thread(s) each), task {task.instance_id} ({len(task.sources)} rows), {items_per_turn} items per call",
               ["width", "runs", "wall s (median)", "range", "model calls", "prompt tokens", "completion tokens",
                "success"], rows,
               note=f"speed-up width {max(widths)} over {min(widths)}: {data['speedup']:.2f}x; {max_tokens} tokens "
                    f"per report at most; server start {data['startup_s']:.1f} s (not in the wall times)")
    return text, data
