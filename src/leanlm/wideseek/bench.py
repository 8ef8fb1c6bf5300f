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
from leanlm.wideseek import prompts
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


def entities(task: Task) -> list[str]:
    """The key values of a table task's gold table (what the lead must cover)."""
    gold = task.gold()
    return [str(v) for v in gold[task.evaluation["unique_columns"][0]]]  # type: ignore[index]


_ENUMERATE = "Enumerate the list: "
_FIND = "for: "
_SEP = " ;; "
_LIST_PHRASE = re.compile(r"\b[Ee]very (.+?)(?:, with its |, give | with its )")


def listing_phrase(query: str) -> str | None:
    """The words of a table query that name its set of rows ("every city of Spain with at least 500,000
    inhabitants"), or None. What the oracle's lead delegates and its enumerating subagent searches: both come
    from the query, so a trained policy can reproduce them (the listing's URL is not in the query)."""
    match = _LIST_PHRASE.search(query)
    return f"every {match.group(1)}" if match else None


def _data(messages: list[dict[str, Any]], tool: str) -> list[dict[str, Any]]:
    """Every structured result of ``tool`` in an agent's context (tool messages carry ``data``)."""
    return [d for m in messages if m["role"] == "tool" for d in m.get("data") or [] if d.get("tool") == tool]


def _part_of(listing: str, url: str) -> bool:
    """Whether ``url`` is a part of the listing whose first part is ``listing`` (``.../list/<slug>-<k>``)."""
    stem = listing.rsplit("-", 1)[0] + "-"
    return url.startswith(stem) and url[len(stem):].isdigit()


def _listing_members(listing: str, read: dict[str, Any]) -> list[str] | None:
    """The listing's members in part order once every part has been read, else None."""
    pages = [u for u in read if _part_of(listing, u)]
    if not pages:
        return None
    parts = read[pages[0]]["facts"]["parts"]
    if not all(u in read for u in parts):
        return None
    return [n for u in parts for n in read[u]["facts"]["members"]]


@dataclass
class OraclePolicy:
    """A scripted policy that really uses the tools and reads their results as data (``message["data"]``).

    Lead: when the task has a listing, its first turn starts one subagent that enumerates the rows (search
    the listing, read its first part, read the other parts it names); then it splits the rows over ``width``
    subagents (at most ``max_per_turn`` per turn, more turns if needed) and joins their rows into the table;
    rows of subagents that failed are retried in pieces half as large per failed round.
    Subagent: for each of its rows and each page holding some of that row's cells (``task.sources``), search
    the page's query, take the hit with the page's URL (searching again with count 9 when it is missing, and
    reading the page anyway when it is still missing: a *search miss*), read the pages, and write the cells
    from the page facts (:func:`leanlm.wideseek.tasks.cell`). ``items_per_turn`` items go into each
    search/access call (1 is how small models behave; the paper allows up to 5)."""

    task: Task
    width: int
    items_per_turn: int = 1
    max_per_turn: int = 10

    def __post_init__(self) -> None:
        self.columns: list[str] = list(self.task.evaluation["required"])  # type: ignore[index]
        if not self.task.sources:
            raise ValueError(f"task {self.task.instance_id} has no sources: the oracle cannot know its pages")
        self.names = list(self.task.sources)
        # the listing as the query words it; a query that does not name its rows "every ..." falls back to the
        # listing's URL, which only this oracle knows (a policy cannot imitate that first delegation)
        self.list_words = (listing_phrase(self.task.query) or self.task.listing) if self.task.listing else None

    def __call__(self, agent: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Completion:
        if agent == "lead":
            return self._lead(messages)
        return self._worker(messages, scalar=agent == "single")

    # ---------------------------------------------------------------------------------------------- lead
    def _lead(self, messages: list[dict[str, Any]]) -> Completion:
        reports = [m["content"] for m in messages if m["role"] == "tool"]
        listed = [n for r in reports for line in r.splitlines() if line.startswith("Members: ")
                  for n in line[len("Members: "):].split(_SEP)]
        if self.task.listing and not listed:
            return Completion("", [ToolCall("create_sub_agents", {"sub_agents": [
                {"prompt": f"{_ENUMERATE}{self.list_words}"}]})])
        names = listed or self.names
        done = {line.split(" | ")[0].removeprefix("| ") for r in reports for line in r.splitlines()
                if line.startswith("| ")}
        todo = [n for n in names if n not in done]
        if todo:
            # after a round in which subagents failed (turn or context limit), retry the missing rows in smaller
            # pieces, halving the piece size per failed round, as the failure message asks
            failed_rounds = sum(prompts.SUBAGENT_FAILED in r for r in reports)
            if failed_rounds == 0:
                groups = [g for g in (todo[i :: self.width] for i in range(self.width)) if g]
            else:
                chunk = max(1, math.ceil(len(names) / self.width) >> failed_rounds)
                groups = [todo[i : i + chunk] for i in range(0, len(todo), chunk)][: self.width]
            turn_groups = groups[: self.max_per_turn]
            subtasks = [{"prompt": f"Find {', '.join(self.columns[1:])} {_FIND}" + _SEP.join(g)} for g in turn_groups]
            return Completion("", [ToolCall("create_sub_agents", {"sub_agents": subtasks})])
        rows = [line for r in reports for line in r.splitlines() if line.startswith("| ")]
        return Completion(self._table(rows))

    def _table(self, rows: list[str]) -> str:
        header = "| " + " | ".join(self.columns) + " |"
        sep = "| " + " | ".join("---" for _ in self.columns) + " |"
        return "```markdown\n" + "\n".join([header, sep, *rows]) + "\n```"

    # ---------------------------------------------------------------------------------------------- worker
    def _call(self, name: str, items: list[dict[str, Any]], scalar: bool) -> Completion:
        if scalar:
            return Completion("", [ToolCall(name, items[0])])
        return Completion("", [ToolCall(name, {"queries" if name == "search" else "urls": items})])

    def _worker(self, messages: list[dict[str, Any]], scalar: bool) -> Completion:
        step = 1 if scalar else self.items_per_turn
        searches, pages = _data(messages, "search"), _data(messages, "access")
        read = {p["url"]: p for p in pages}
        subtask = messages[1]["content"].split("Your current subtask is:\n", 1)[-1].split("\n\n[Turn")[0]
        if scalar:
            listed = _listing_members(self.task.listing, read) if self.task.listing else None
            if self.task.listing and listed is None:
                return self._enumerate(searches, read, step, scalar)
            mine = listed or self.names
        elif subtask.startswith(_ENUMERATE):
            members = _listing_members(self.task.listing, read) if self.task.listing else None
            if members is None:
                return self._enumerate(searches, read, step, scalar)
            return Completion("Members: " + _SEP.join(members))
        else:
            mine = subtask.split(_FIND, 1)[1].split(_SEP)
        needed = [src for name in mine for src in self.task.sources[name]]
        searched: dict[str, list[dict[str, Any]]] = {}
        for s in searches:
            searched.setdefault(s["query"], []).append(s)
        todo = [src for src in needed if src["query"] not in searched]
        if todo:
            return self._call("search", [{"query": src["query"]} for src in todo[:step]], scalar)

        def found(src: dict[str, Any]) -> bool:
            return any(h["url"] == src["url"] for s in searched[src["query"]] for h in s["hits"])

        retry = [src for src in needed if not found(src) and len(searched[src["query"]]) < 2]
        if retry:
            return self._call("search", [{"query": src["query"], "count": 9} for src in retry[:step]], scalar)
        unread = list(dict.fromkeys(src["url"] for src in needed if src["url"] not in read))
        if unread:
            info = ", ".join(self.columns[1:])
            return self._call("access", [{"url": u, "info_to_extract": info} for u in unread[:step]], scalar)
        rows = [self._row(name, read) for name in mine]
        return Completion(self._table(rows) if scalar else "\n".join(rows))

    def _enumerate(self, searches: list[dict[str, Any]], read: dict[str, Any], step: int,
                   scalar: bool) -> Completion:
        """Find the task's listing through search and read all its parts: search the list's words from the query
        (again with 9 hits when no part of the listing is among the hits), read the first hit that is a part
        of the listing (a policy tells it by its title), then the other parts it names; when search never
        returns a part, read the listing's first part anyway (a *search miss*)."""
        listing = str(self.task.listing)
        pages = [u for u in read if _part_of(listing, u)]
        if not pages:
            hits = [h["url"] for s in searches for h in s["hits"] if _part_of(listing, h["url"])]
            if hits:
                return self._call("access", [{"url": hits[0], "info_to_extract": "all members"}], scalar)
            words = str(self.list_words).removeprefix("every ")
            if len(searches) < 2:
                return self._call("search", [{"query": words, **({"count": 9} if searches else {})}], scalar)
            return self._call("access", [{"url": listing, "info_to_extract": "all members"}], scalar)
        rest = [u for u in read[pages[0]]["facts"]["parts"] if u not in read]
        return self._call("access", [{"url": u, "info_to_extract": "all members"} for u in rest[:step]], scalar)

    def _row(self, name: str, read: dict[str, Any]) -> str:
        from leanlm.wideseek.tasks import UNKNOWN, cell

        values: dict[str, Any] = {self.columns[0]: name}
        for src in self.task.sources[name]:
            for col, fmt in src["cells"].items():
                values[col] = cell(read[src["url"]]["facts"], fmt)
        return "| " + " | ".join(str(values.get(c, UNKNOWN)) for c in self.columns) + " |"


def search_misses(result: RunResult) -> int:
    """Pages an agent read although none of its earlier searches returned them (the oracle's fallback)."""
    misses = 0
    for agent in result.trace.agents():
        seen: set[str] = set()
        for event in result.trace.of(agent, "tool_result"):
            for d in event.get("data") or []:
                if d.get("tool") == "search":
                    seen |= {h["url"] for h in d["hits"]}
                elif d.get("tool") == "access" and "url" in d:
                    misses += d["url"] not in seen
                    seen |= set(d.get("facts", {}).get("parts") or []) if d.get("kind") == "list" else set()
    return misses


def critical_path(result: RunResult, latency_scale: float = 1.0) -> float:
    """Ideal wall time with unlimited servers: lead model time plus, per lead turn, the slowest subagent chain.

    Model time is the simulated latency of each call when the backend sleeps for one (else measured seconds);
    tool time is measured. ``latency_scale``: the factor the sleeps were multiplied by; simulated latencies are
    divided by it, so a fast run (small sleeps) yields the critical path at full latency.
    """
    trace = result.trace

    def model_s(agent: str) -> float:
        return sum(e["simulated_s"] / latency_scale if "simulated_s" in e else e["seconds"]
                   for e in trace.of(agent, "llm_call"))

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
              items_per_turn: int = 1, turn_limit: int = 1000, unscale: bool = False) -> WidthPoint:
    """One benchmark point: a full run of ``task`` with ``width`` subagents (or SingleSeek). Subagent and
    single-agent turn limits are ``turn_limit`` (generous by default, so every width does the same work).
    ``unscale``: report ``ideal_s`` at full latency (sampled latencies divided by ``latency.scale``)."""
    policy = OraclePolicy(task, width, items_per_turn)
    latency.samples.clear()
    backend = ScriptedBackend(policy, latency=latency, slots=slots)
    cfg = AgentConfig(max_subagents_per_call=max(width, 1), max_subagents_per_turn=max(width, 1),
                      max_concurrency=max(width, 1), max_sub_turns=turn_limit, max_single_turns=turn_limit)
    agent = WideSeek(backend, tools, cfg)
    t0 = time.perf_counter()
    result = asyncio.run(agent.arun(task.query) if mode == "multi" else agent.arun_single(task.query))
    wall = time.perf_counter() - t0
    problems = result.trace.check_complete()
    if problems:
        raise RuntimeError(f"incomplete trace in the benchmark: {problems[:3]}")
    score = task.score(result.answer)
    return WidthPoint(mode, width, "unlimited" if slots is None else str(slots), wall,
                      critical_path(result, latency.scale if unscale and latency.scale > 0 else 1.0),
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
