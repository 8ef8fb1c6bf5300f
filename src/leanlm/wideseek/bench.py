"""Width benchmark: wall time vs number of subagents with a latency-realistic model backend.

WideSeek-R1's claim (arXiv 2602.04634, Sec. 1 and Fig. 4) is that broad information seeking scales with
*width* (parallel subagents) rather than depth (turns). Here the agents are driven by a deterministic
scripted policy (:class:`OraclePolicy`) that really searches and reads the offline world, while every
model call sleeps for a latency drawn from :class:`LatencyModel` -- a log-normal fitted to measured
llama.cpp calls on the embedded model (:func:`calibrate_llama`), or given parameters. Two serving regimes
are compared: unlimited parallel slots (a batching server such as vLLM/SGLang) and one slot (llama.cpp's
Python server, which answers one request at a time).

Orchestration overhead is reported two ways: wall time minus the ideal critical path of the sampled
latencies and tool times (unlimited slots) or minus the server's busy time (one slot), and the runtime's
own cost per model call with zero latency.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from leanlm.common.progress import get_logger
from leanlm.wideseek.agents import AgentConfig, RunResult, Toolbox, WideSeek
from leanlm.wideseek.llm import Completion, ScriptedBackend, ToolCall
from leanlm.wideseek.tasks import Task

log = get_logger("leanlm.wideseek.bench")


@dataclass
class LatencyModel:
    """Per-call latency ``exp(N(log median, sigma))`` seconds, times ``scale``; records every sample."""

    median: float = 1.5
    sigma: float = 0.25
    scale: float = 1.0
    seed: int = 0
    samples: list[float] = field(default_factory=list)
    source: str = "assumed"

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __call__(self) -> float:
        value = self.scale * math.exp(self.rng.gauss(math.log(self.median), self.sigma)) if self.median > 0 else 0.0
        self.samples.append(value)
        return value

    @classmethod
    def fit(cls, latencies: Sequence[float], **kw: Any) -> LatencyModel:
        logs = [math.log(x) for x in latencies if x > 0]
        if len(logs) < 2:
            raise ValueError("need at least two positive latencies to fit")
        return cls(median=math.exp(statistics.mean(logs)), sigma=statistics.stdev(logs), source="measured", **kw)


_FACT = {"capital": "Capital", "population": "Population", "currency": "Currency", "symbol": "Symbol",
         "atomicnumber": "Atomic number", "atomicweight": "Atomic weight", "area": "Area (km2)"}
_URL_IN_RESULT = re.compile(r"\[Doc \d+\]\((\S+?)\):")


def _best_urls(tool_text: str) -> list[str]:
    """Per query block of a search result, the first hit that is an entity page (else the first hit)."""
    out = []
    for block in re.split(r"(?=Results for )", tool_text):
        urls = _URL_IN_RESULT.findall(block)
        if urls:
            out.append(next((u for u in urls if re.search(r"/(country|element|city)/", u)), urls[0]))
    return out


def entities(task: Task) -> list[str]:
    """The key values of a table task's gold table (what the lead must cover)."""
    gold = task.gold()
    return [str(v) for v in gold[task.evaluation["unique_columns"][0]]]  # type: ignore[index]


@dataclass
class OraclePolicy:
    """A scripted policy that really uses the tools: the lead splits the entities over ``width`` subagents;
    each subagent searches its entities, opens the top hit for each, copies the facts, and reports table
    rows; the lead joins the rows into the final table. ``items_per_turn`` items go into each tool call
    (1 is how small models behave; the paper allows up to 5)."""

    task: Task
    width: int
    items_per_turn: int = 1

    def __post_init__(self) -> None:
        self.columns: list[str] = list(self.task.evaluation["required"])  # type: ignore[index]
        self.names = entities(self.task)

    def __call__(self, agent: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Completion:
        if agent == "lead":
            return self._lead(messages)
        return self._worker(messages, scalar=agent == "single")

    def _lead(self, messages: list[dict[str, Any]]) -> Completion:
        if not any(m["role"] == "tool" for m in messages):
            groups = [self.names[i :: self.width] for i in range(min(self.width, len(self.names)))]
            prompts = [{"prompt": f"Find {', '.join(self.columns[1:])} for: " + "; ".join(g)} for g in groups]
            return Completion("", [ToolCall("create_sub_agents", {"sub_agents": prompts})])
        rows = [line for m in messages if m["role"] == "tool" for line in m["content"].splitlines()
                if line.startswith("| ") and not line.startswith("| ---")]
        return Completion(self._table(rows))

    def _table(self, rows: list[str]) -> str:
        header = "| " + " | ".join(self.columns) + " |"
        sep = "| " + " | ".join("---" for _ in self.columns) + " |"
        return "```markdown\n" + "\n".join([header, sep, *rows]) + "\n```"

    def _worker(self, messages: list[dict[str, Any]], scalar: bool) -> Completion:
        subtask = messages[1]["content"].split("Your current subtask is:\n", 1)[-1]
        mine = self.names if scalar else subtask.split("for: ", 1)[1].split("\n")[0].split("; ")
        tool_msgs = [m["content"] for m in messages if m["role"] == "tool"]
        searched = [u for t in tool_msgs if "Results for" in t and "Page: " not in t for u in _best_urls(t)]
        pages = [t for t in tool_msgs if "Page: " in t]
        step = 1 if scalar else self.items_per_turn
        done_search = sum(t.count("Results for") + t.count("No results for") for t in tool_msgs)
        if done_search < len(mine):
            batch = mine[done_search : done_search + step]
            if scalar:
                return Completion("", [ToolCall("search", {"query": f"{batch[0]} {self.columns[1]}"})])
            return Completion("", [ToolCall("search", {"queries": [{"query": f"{n} {self.columns[1]}"} for n in batch]})])
        n_pages = sum(t.count("Page: ") for t in pages)
        if n_pages < len(searched):
            batch = searched[n_pages : n_pages + step]
            info = ", ".join(self.columns[1:])
            if scalar:
                return Completion("", [ToolCall("access", {"url": batch[0], "info_to_extract": info})])
            return Completion("", [ToolCall("access", {"urls": [{"url": u, "info_to_extract": info} for u in batch]})])
        rows = [self._row(p) for t in pages for p in t.split("Page: ")[1:]]
        return Completion(self._table(rows) if scalar else "\n".join(rows))

    def _row(self, page: str) -> str:
        title = page.split(" (https://", 1)[0]
        key = title.split(" (")[0]
        cells = [key]
        for col in self.columns[1:]:
            m = re.search(rf"^- {re.escape(_FACT.get(col, col))}: (.+)$", page, flags=re.M)
            value = m.group(1).strip() if m else "unknown"
            if col == "currency":
                value = value.split(" ")[0].rstrip(",")
            cells.append(value)
        return "| " + " | ".join(cells) + " |"


def critical_path(result: RunResult) -> float:
    """Ideal wall time with unlimited servers: lead model time plus, per lead turn, the slowest subagent chain.

    Model time is the simulated latency of each call when the backend sleeps for one (else measured seconds);
    tool time is measured.
    """
    trace = result.trace

    def model_s(agent: str) -> float:
        return sum(e.get("simulated_s", e["seconds"]) for e in trace.of(agent, "llm_call"))

    if result.lead.agent == "single":
        return model_s("single") + sum(e["seconds"] for e in trace.of("single", "tool_result"))
    lead_llm = model_s("lead")
    chains: dict[int, float] = {}
    for start in trace.of(type="start"):
        if start["agent"] == "lead":
            continue
        agent = start["agent"]
        chain = model_s(agent)
        chain += sum(e["seconds"] for e in trace.of(agent, "tool_result"))
        chains[start["lead_turn"]] = max(chains.get(start["lead_turn"], 0.0), chain)
    return lead_llm + sum(chains.values())


@dataclass
class WidthPoint:
    mode: str
    width: int
    slots: str
    wall_s: float
    ideal_s: float
    model_busy_s: float
    llm_calls: int
    item_f1: float
    success: float

    @property
    def overhead_s(self) -> float:
        """Unlimited slots: wall minus the critical path. One slot: wall minus the server's busy time (what
        remains is tool time and runtime cost while the server idles)."""
        return self.wall_s - (self.ideal_s if self.slots == "unlimited" else self.model_busy_s)


def run_point(task: Task, tools: Toolbox, latency: LatencyModel, width: int, slots: int | None, mode: str = "multi",
              items_per_turn: int = 1) -> WidthPoint:
    """One benchmark point: a full run of ``task`` with ``width`` subagents (or SingleSeek)."""
    policy = OraclePolicy(task, width, items_per_turn)
    latency.samples.clear()
    backend = ScriptedBackend(policy, latency=latency, slots=slots)
    cfg = AgentConfig(max_subagents_per_call=max(width, 1), max_concurrency=max(width, 1), max_sub_turns=60,
                      max_single_turns=200)
    agent = WideSeek(backend, tools, cfg)
    t0 = time.perf_counter()
    result = asyncio.run(agent.arun(task.query) if mode == "multi" else agent.arun_single(task.query))
    wall = time.perf_counter() - t0
    problems = result.trace.check_complete()
    if problems:
        raise RuntimeError(f"incomplete trace in the benchmark: {problems[:3]}")
    score = task.score(result.answer)
    return WidthPoint(mode, width, "unlimited" if slots is None else str(slots), wall, critical_path(result),
                      sum(latency.samples), result.stats["llm_calls"], score.f1_by_item, score.score)


def runtime_cost_per_call(task: Task, tools: Toolbox, width: int = 8, repeats: int = 3) -> dict[str, float]:
    """The runtime's own cost with a zero-latency model: seconds per model call and per tool item."""
    best = math.inf
    calls = 0
    for _ in range(repeats):
        point = run_point(task, tools, LatencyModel(median=0.0), width, None)
        best, calls = min(best, point.wall_s), point.llm_calls
    return {"wall_s": best, "llm_calls": calls, "ms_per_call": 1000 * best / max(calls, 1)}


def calibrate_llama(calls: int = 6, max_tokens: int = 96, n_threads: int | None = None,
                    tool_mode: str = "native") -> dict[str, Any]:
    """Start the embedded llama.cpp server and time ``calls`` subagent-shaped tool-calling requests.

    ``tool_mode="native"`` uses llama.cpp's grammar-constrained ``chatml-function-calling``; ``"text"`` sends
    the tools in the prompt and parses ``<tool_call>`` blocks (no grammar, much cheaper per token). A first,
    untimed-for-the-fit call evaluates the whole prompt (``cold_s``); the timed calls reuse its cached prefix,
    as consecutive turns of an agent do."""
    from leanlm.wideseek import prompts
    from leanlm.wideseek.llm import OpenAIBackend
    from leanlm.wideseek.server import LlamaServer

    t0 = time.perf_counter()
    with LlamaServer(n_ctx=4096, n_threads=n_threads) as server:
        startup = time.perf_counter() - t0
        backend = OpenAIBackend(server.base_url, model="embedded", max_tokens=max_tokens, temperature=0.7, timeout=600,
                                tool_mode=tool_mode)
        messages = [{"role": "system", "content": prompts.SUB_SYSTEM.format(max_items=5)},
                    {"role": "user", "content": prompts.SUB_TASK.format(
                        main_task="List every country in Western Europe with its capital.",
                        subtask="Find the capital of France.")}]
        tools = prompts.sub_tools(5, 3)
        latencies, tool_calls, tokens = [], 0, []

        cold: list[float] = []

        async def go() -> None:
            nonlocal tool_calls
            first = await backend.complete(messages, tools, agent="calibration")  # cold: whole prompt evaluated
            cold.append(first.seconds)
            for _ in range(calls):
                out = await backend.complete(messages, tools, agent="calibration")
                latencies.append(out.seconds)
                tool_calls += bool(out.tool_calls)
                tokens.append(out.completion_tokens or 0)

        asyncio.run(go())
    return {"startup_s": startup, "cold_s": cold[0], "latencies": latencies, "tool_call_rate": tool_calls / calls,
            "completion_tokens": tokens}
