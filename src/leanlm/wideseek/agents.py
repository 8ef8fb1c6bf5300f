"""The WideSeek-R1 runtime: a lead agent fanning out to parallel subagents, and the SingleSeek baseline.

Paper: WideSeek-R1 (arXiv 2602.04634), Sec. 3.1 (multi-agent system) and RLinf's
``rlinf/agents/wideseek_r1`` (what ran). One shared model (``backend``) plays every role; each agent has
its own, isolated message list.

- **Lead** (:meth:`WideSeek.run`): only tool ``create_sub_agents {sub_agents: [{prompt}]}``, at most
  ``max_subagents_per_call`` (10) per call, at most ``max_lead_turns`` (10) turns. A turn without a tool
  call ends the run; its text is the final answer (a fenced markdown table, or ``\\boxed{}`` for QA).
- **Subagents**: ``search {queries: [{query, count}]}`` and ``access {urls: [{url, info_to_extract}]}``,
  at most ``max_items_per_call`` (5) items per call, run concurrently, at most ``max_sub_turns`` (20)
  turns. Their report (text after ``</think>``) goes back to the lead as ``# Subtask i`` / ``# Result``;
  a subagent whose context overflows returns a fixed "exceeded its context window ... retry" result.
- **Concurrency**: subagents of one call run as asyncio tasks under a semaphore (``max_concurrency``);
  synchronous tools run on a thread pool sized for every item of every running subagent, so tool calls
  really overlap. The paper's runtime is asynchronous in the same way.
- **SingleSeek** (:meth:`WideSeek.run_single`): one agent with scalar ``search``/``access`` and at most
  ``max_single_turns`` (50) turns (RLinf ``workflow: sa``).

Failures never crash a run: malformed tool calls, unknown tools, bad arguments, tools that raise or time
out, and model-server errors are answered with an error message to the model (or end that agent with a
status) and recorded in the trace (:mod:`leanlm.wideseek.trace`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from leanlm.common.progress import get_logger
from leanlm.wideseek import prompts
from leanlm.wideseek.llm import Backend, Completion, ContextOverflow, ToolCall, strip_think
from leanlm.wideseek.trace import Trace

log = get_logger("leanlm.wideseek.agents")


class Toolbox(Protocol):
    """The two subagent tools, one item each; methods may be plain functions or coroutines."""

    def search(self, query: str, count: int) -> Any: ...

    def access(self, url: str, info_to_extract: str) -> Any: ...


@dataclass
class AgentConfig:
    """Limits from the paper / RLinf config (defaults) and runtime knobs."""

    max_lead_turns: int = 10
    max_sub_turns: int = 20
    max_single_turns: int = 50
    max_subagents_per_call: int = 10
    max_subagents_per_turn: int = 10
    max_items_per_call: int = 5
    search_count: int = 3
    max_search_count: int = 9
    max_concurrency: int = 10
    context_tokens: int = 32_000
    tool_timeout: float = 60.0
    answer_format: str = "table"
    thinking: bool = False
    few_shot: bool = True
    subagent_failure_message: str = prompts.SUBAGENT_FAILED

    def __post_init__(self) -> None:
        for name in ("max_lead_turns", "max_sub_turns", "max_single_turns", "max_subagents_per_call",
                     "max_subagents_per_turn",
                     "max_items_per_call", "search_count", "max_concurrency", "context_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"AgentConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.answer_format not in ("table", "qa"):
            raise ValueError(f"AgentConfig.answer_format must be 'table' or 'qa', got {self.answer_format!r}")


@dataclass
class AgentRun:
    """One agent's outcome: ``status`` is answered, turn_limit, context_overflow or backend_error."""

    agent: str
    status: str
    answer: str
    turns: int
    messages: list[dict[str, Any]]
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class RunResult:
    answer: str
    status: str
    trace: Trace
    lead: AgentRun
    subagents: list[AgentRun] = field(default_factory=list)
    seconds: float = 0.0

    def credit(self, outcome: float, format_ok: bool, config: Any = None) -> Any:
        """Shaped reward and trainable turns (:func:`leanlm.wideseek.rewards.credit`)."""
        from leanlm.wideseek.rewards import credit

        return credit(self, outcome, format_ok, config)

    @property
    def stats(self) -> dict[str, Any]:
        counts = self.trace.counts()
        runs = [self.lead, *self.subagents]
        return {
            "status": self.status, "seconds": round(self.seconds, 4), "subagents": len(self.subagents),
            "llm_calls": counts["llm_call"], "tool_calls": counts["tool_call"], "errors": counts["error"],
            "prompt_tokens": sum(r.prompt_tokens for r in runs),
            "completion_tokens": sum(r.completion_tokens for r in runs),
        }


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """A cheap context-length estimate (4 characters per token) used for overflow handling."""
    chars = 0
    for m in messages:
        chars += len(str(m.get("content") or ""))
        for call in m.get("tool_calls") or []:
            chars += len(str(call["function"].get("arguments") or ""))
    return chars // 4 + 4 * len(messages)


class WideSeek:
    """Run a task with a lead and parallel subagents (:meth:`run`) or one agent (:meth:`run_single`)."""

    def __init__(self, backend: Backend, tools: Toolbox, config: AgentConfig | None = None):
        self.backend = backend
        self.tools = tools
        self.config = config or AgentConfig()

    # ------------------------------------------------------------------------------------------ public
    def run(self, task: str, answer_format: str | None = None) -> RunResult:
        return asyncio.run(self.arun(task, answer_format))

    def run_single(self, task: str, answer_format: str | None = None) -> RunResult:
        return asyncio.run(self.arun_single(task, answer_format))

    async def arun(self, task: str, answer_format: str | None = None) -> RunResult:
        cfg = self.config
        state = _RunState(Trace(), asyncio.Semaphore(cfg.max_concurrency), self._executor())
        fmt = prompts.TABLE_FORMAT if (answer_format or cfg.answer_format) == "table" else prompts.QA_FORMAT
        messages = [
            {"role": "system", "content": prompts.lead_system(min(cfg.max_subagents_per_call, cfg.max_subagents_per_turn),
                                                              fmt, thinking=cfg.thinking,
                                                              few_shot=cfg.few_shot and fmt == prompts.TABLE_FORMAT)},
            {"role": "user", "content": task + prompts.turn_hint(0, cfg.max_lead_turns)},
        ]
        start = time.perf_counter()
        try:
            lead = await self._loop(
                state, "lead", messages, prompts.lead_tools(cfg.max_subagents_per_call), cfg.max_lead_turns,
                lambda turn, calls: self._lead_calls(state, task, turn, calls), meta={"role": "lead", "task": task},
            )
        finally:
            state.executor.shutdown(wait=False, cancel_futures=True)
        return RunResult(answer=lead.answer, status=lead.status, trace=state.trace, lead=lead,
                         subagents=sorted(state.subagents, key=lambda r: int(r.agent.split("-")[1])),
                         seconds=time.perf_counter() - start)

    async def arun_single(self, task: str, answer_format: str | None = None) -> RunResult:
        cfg = self.config
        state = _RunState(Trace(), asyncio.Semaphore(1), self._executor())
        fmt = prompts.TABLE_FORMAT if (answer_format or cfg.answer_format) == "table" else prompts.QA_FORMAT
        messages = [
            {"role": "system", "content": prompts.SINGLE_SYSTEM.format(answer_format=fmt)
             + (prompts.THINK_RULE if cfg.thinking else "")},
            {"role": "user", "content": task + prompts.turn_hint(0, cfg.max_single_turns)},
        ]
        start = time.perf_counter()
        try:
            run = await self._loop(
                state, "single", messages, prompts.single_tools(cfg.search_count), cfg.max_single_turns,
                lambda turn, calls: self._single_calls(state, "single", calls), meta={"role": "single", "task": task},
            )
        finally:
            state.executor.shutdown(wait=False, cancel_futures=True)
        return RunResult(answer=run.answer, status=run.status, trace=state.trace, lead=run,
                         seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------------------------------ loop
    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        cfg = self.config
        return concurrent.futures.ThreadPoolExecutor(
            max_workers=cfg.max_concurrency * cfg.max_items_per_call + 4, thread_name_prefix="wideseek-tool")

    async def _loop(
        self, state: _RunState, agent: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
        max_turns: int, execute: Callable[[int, list[ToolCall]], Any], meta: dict[str, Any],
    ) -> AgentRun:
        """The agent loop shared by every role: call the model, run tool calls, until an answer or a limit."""
        trace, cfg = state.trace, self.config
        trace.add(agent, "start", **meta)
        for m in messages:
            trace.add(agent, "message", role=m["role"], content=m["content"])
        run = AgentRun(agent=agent, status="turn_limit", answer="", turns=0, messages=messages)
        last_text = ""
        while run.turns < max_turns:
            if estimate_tokens(messages) > cfg.context_tokens:
                run.status = "context_overflow"
                trace.add(agent, "error", kind="context_overflow",
                          message=f"context estimate {estimate_tokens(messages)} > {cfg.context_tokens} tokens")
                break
            t_start = trace.now()
            try:
                completion: Completion = await self.backend.complete(messages, tools, agent=agent)
            except ContextOverflow as exc:
                trace.add(agent, "llm_call", turn=run.turns + 1, t_start=t_start, seconds=trace.now() - t_start,
                          prompt_tokens=0, completion_tokens=0, ok=False, error=str(exc))
                trace.add(agent, "error", kind="context_overflow", message=str(exc))
                run.status = "context_overflow"
                break
            except Exception as exc:  # BackendError after retries, or anything a custom backend raises
                trace.add(agent, "llm_call", turn=run.turns + 1, t_start=t_start, seconds=trace.now() - t_start,
                          prompt_tokens=0, completion_tokens=0, ok=False, error=f"{type(exc).__name__}: {exc}",
                          attempts=getattr(exc, "attempts", []))
                trace.add(agent, "error", kind="backend_error", message=f"{type(exc).__name__}: {exc}")
                run.status = "backend_error"
                break
            run.turns += 1
            run.prompt_tokens += completion.prompt_tokens or 0
            run.completion_tokens += completion.completion_tokens or 0
            trace.add(agent, "llm_call", turn=run.turns, t_start=t_start, seconds=completion.seconds,
                      prompt_tokens=completion.prompt_tokens or 0, completion_tokens=completion.completion_tokens or 0,
                      finish_reason=completion.finish_reason, attempts=completion.attempts, ok=True,
                      **({"simulated_s": completion.simulated_s} if completion.simulated_s is not None else {}))
            for attempt in completion.attempts:
                trace.add(agent, "error", kind="retried", message=attempt.get("error"))
            assistant: dict[str, Any] = {"role": "assistant", "content": completion.content}
            if completion.tool_calls:
                assistant["tool_calls"] = [c.to_openai() for c in completion.tool_calls]
            messages.append(assistant)
            trace.add(agent, "message", role="assistant", content=completion.content,
                      tool_calls=assistant.get("tool_calls"), turn=run.turns)
            last_text = completion.content
            if not completion.tool_calls:
                run.status, run.answer = "answered", strip_think(completion.content)
                break
            for call in completion.tool_calls:
                trace.add(agent, "tool_call", id=call.id, name=call.name, arguments=call.arguments, raw=call.raw,
                          turn=run.turns, malformed=call.error is not None)
            results: list[str | tuple[str, list[Any]]] = await execute(run.turns, completion.tool_calls)
            for i, (call, out) in enumerate(zip(completion.tool_calls, results, strict=False)):
                text, data = (out, None) if isinstance(out, str) else out
                if i == len(results) - 1:
                    text += prompts.turn_hint(run.turns, max_turns)
                message: dict[str, Any] = {"role": "tool", "tool_call_id": call.id, "content": text}
                if data is not None:
                    message["data"] = data  # structured results for in-process policies; never sent to a server
                messages.append(message)
                trace.add(agent, "message", role="tool", tool_call_id=call.id, content=text)
        if run.status == "turn_limit":
            trace.add(agent, "error", kind="turn_limit", message=f"no final answer within {max_turns} turns")
            run.answer = strip_think(last_text)
        trace.add(agent, "end", status=run.status, turns=run.turns, prompt_tokens=run.prompt_tokens,
                  completion_tokens=run.completion_tokens)
        return run

    # ------------------------------------------------------------------------------------------ lead
    async def _lead_calls(self, state: _RunState, task: str, turn: int, calls: list[ToolCall]) -> list[str]:
        """All ``create_sub_agents`` calls of one lead turn; together they start at most
        ``max_subagents_per_turn`` subagents (RLinf parses one call per turn and keeps its first 10), the
        earlier calls first, and each call at most ``max_subagents_per_call``."""
        budget = self.config.max_subagents_per_turn
        plans: list[tuple[ToolCall, str | None, list[Any], int]] = []
        for call in calls:
            problem = _check_call(call, "create_sub_agents", "sub_agents")
            items: list[Any] = []
            if problem is None:
                items = call.arguments["sub_agents"]  # type: ignore[index]
                bad = [i for i, s in enumerate(items) if not (isinstance(s, dict) and isinstance(s.get("prompt"), str)
                                                              and s["prompt"].strip())]
                if bad:
                    problem = f"sub_agents[{bad[0]}] must be an object with a non-empty string 'prompt'"
            allowed = 0 if problem else min(len(items), self.config.max_subagents_per_call, budget)
            budget -= allowed
            plans.append((call, problem, items, allowed))
        return list(await asyncio.gather(*(self._lead_call(state, task, turn, *plan) for plan in plans)))

    async def _lead_call(self, state: _RunState, task: str, turn: int, call: ToolCall, problem: str | None,
                         items: list[Any], allowed: int) -> str:
        trace, cfg = state.trace, self.config
        t0 = trace.now()
        if problem is not None:
            return _tool_error(trace, "lead", call, problem, t0)
        note = ""
        if allowed < len(items):
            note = (f"Note: only {allowed} of the {len(items)} subagents of this call were started (at most "
                    f"{cfg.max_subagents_per_call} per call and {cfg.max_subagents_per_turn} per turn).\n\n")
            trace.add("lead", "error", kind="limit", message=note.strip(), id=call.id)
            items = items[:allowed]
        if not items:
            text = note + "No subagent was started by this call."
            trace.add("lead", "tool_result", id=call.id, name=call.name, content=text, seconds=trace.now() - t0,
                      t_start=t0, error=True, subagents=[])
            return text
        ids = [state.new_sub_id() for _ in items]
        runs = await asyncio.gather(*(self._sub(state, task, sid, item["prompt"], call.id, turn)
                                      for sid, item in zip(ids, items, strict=False)))
        parts = []
        for i, (item, run) in enumerate(zip(items, runs, strict=False), start=1):
            result = run.answer
            if run.status in ("context_overflow", "turn_limit"):
                result = cfg.subagent_failure_message  # RLinf: one failure/retry message for every limit
            elif run.status == "backend_error":
                result = "This subagent failed because the model server returned an error. Please retry this subtask."
            elif not result.strip():
                result = "This subagent returned no report."
            parts.append(prompts.subtask_result(i, item["prompt"], result))
        text = note + "\n\n".join(parts)
        trace.add("lead", "tool_result", id=call.id, name=call.name, content=text, seconds=trace.now() - t0,
                  t_start=t0, error=False, subagents=ids)
        return text

    async def _sub(self, state: _RunState, task: str, sid: str, subtask: str, call_id: str, lead_turn: int) -> AgentRun:
        cfg = self.config
        async with state.semaphore:
            messages = [
                {"role": "system", "content": prompts.SUB_SYSTEM.format(max_items=cfg.max_items_per_call)
                 + (prompts.THINK_RULE if cfg.thinking else "")},
                {"role": "user", "content": prompts.SUB_TASK.format(main_task=task, subtask=subtask)
                 + prompts.turn_hint(0, cfg.max_sub_turns)},
            ]
            run = await self._loop(
                state, sid, messages, prompts.sub_tools(cfg.max_items_per_call, cfg.search_count), cfg.max_sub_turns,
                lambda turn, calls: self._sub_calls(state, sid, calls),
                meta={"role": "subagent", "parent": "lead", "lead_turn": lead_turn, "call_id": call_id, "subtask": subtask},
            )
        state.subagents.append(run)
        return run

    # ------------------------------------------------------------------------------------------ tools
    async def _sub_calls(self, state: _RunState, agent: str, calls: list[ToolCall]) -> list[tuple[str, list[Any]]]:
        return list(await asyncio.gather(*(self._sub_call(state, agent, c) for c in calls)))

    async def _sub_call(self, state: _RunState, agent: str, call: ToolCall) -> tuple[str, list[Any]]:
        trace, cfg = state.trace, self.config
        t0 = trace.now()
        field_name = {"search": "queries", "access": "urls"}.get(call.name, "")
        problem = _check_call(call, ("search", "access"), field_name)
        if problem is not None:
            return _tool_error(trace, agent, call, problem, t0), []
        items = call.arguments[field_name]  # type: ignore[index]
        note = ""
        if len(items) > cfg.max_items_per_call:
            note = (f"Note: only the first {cfg.max_items_per_call} of {len(items)} {field_name} were run "
                    f"(at most {cfg.max_items_per_call} per call).\n\n")
            trace.add(agent, "error", kind="limit", message=note.strip(), id=call.id)
            items = items[: cfg.max_items_per_call]
        outs = await asyncio.gather(*(self._one_item(state, call.name, item) for item in items))
        errors = [o for ok, o, _ in outs if not ok]
        for message in errors:
            trace.add(agent, "error", kind="tool_error", message=message, id=call.id)
        text = note + "\n\n".join(o for _, o, _ in outs)
        data = [d for _, _, d in outs]
        trace.add(agent, "tool_result", id=call.id, name=call.name, content=text, seconds=trace.now() - t0, t_start=t0,
                  error=bool(errors), item_errors=len(errors), items=len(items), data=data)
        return text, data

    async def _single_calls(self, state: _RunState, agent: str,
                            calls: list[ToolCall]) -> list[str | tuple[str, list[Any]]]:
        out = []
        for call in calls:
            t0 = state.trace.now()
            problem = _check_call(call, ("search", "access"), None)
            if problem is None:
                need = "query" if call.name == "search" else "url"
                if not isinstance(call.arguments.get(need), str):  # type: ignore[union-attr]
                    problem = f"{call.name} needs a string '{need}'"
            if problem is not None:
                out.append(_tool_error(state.trace, agent, call, problem, t0))
                continue
            ok, text, data = await self._one_item(state, call.name, call.arguments)  # type: ignore[arg-type]
            if not ok:
                state.trace.add(agent, "error", kind="tool_error", message=text, id=call.id)
            state.trace.add(agent, "tool_result", id=call.id, name=call.name, content=text,
                            seconds=state.trace.now() - t0, t_start=t0, error=not ok, data=[data])
            out.append((text, [data]))
        return out

    async def _one_item(self, state: _RunState, name: str, item: Any) -> tuple[bool, str, Any]:
        """Run one search query or one page access; returns (ok, text for the model, the result as data or
        ``{"tool": name, "error": text}``). Never raises."""
        ok, out = await self._run_item(state, name, item)
        if not ok:
            return False, out, {"tool": name, "error": out}
        data = out.as_data() if hasattr(out, "as_data") else {"tool": name, "text": str(out)}
        return True, str(out), data

    async def _run_item(self, state: _RunState, name: str, item: Any) -> tuple[bool, Any]:
        cfg = self.config
        if not isinstance(item, dict):
            return False, f"Error: each {name} item must be an object, got {type(item).__name__}."
        try:
            if name == "search":
                query = item.get("query")
                if not isinstance(query, str) or not query.strip():
                    return False, "Error: search item needs a non-empty string 'query'."
                count = item.get("count", cfg.search_count)
                if not isinstance(count, int) or isinstance(count, bool):
                    count = cfg.search_count
                count = max(1, min(count, cfg.max_search_count))
                fn, args, label = self.tools.search, (query, count), f"search {query!r}"
            else:
                url = item.get("url")
                if not isinstance(url, str) or not url.strip():
                    return False, "Error: access item needs a string 'url'."
                info = item.get("info_to_extract", "")
                fn, args, label = self.tools.access, (url, info if isinstance(info, str) else str(info)), f"access {url}"
            if inspect.iscoroutinefunction(fn):
                result = await asyncio.wait_for(fn(*args), cfg.tool_timeout)
            else:
                loop = asyncio.get_running_loop()
                result = await asyncio.wait_for(loop.run_in_executor(state.executor, fn, *args), cfg.tool_timeout)
        except asyncio.TimeoutError:
            return False, f"Error: {label} timed out after {cfg.tool_timeout:g} s."
        except Exception as exc:
            return False, f"Error: {label} failed: {type(exc).__name__}: {exc}"
        return True, result


@dataclass
class _RunState:
    trace: Trace
    semaphore: asyncio.Semaphore
    executor: concurrent.futures.ThreadPoolExecutor
    subagents: list[AgentRun] = field(default_factory=list)
    _next: int = 0

    def new_sub_id(self) -> str:
        self._next += 1
        return f"sub-{self._next}"


def _check_call(call: ToolCall, names: str | tuple[str, ...], list_field: str | None) -> str | None:
    """Why a tool call cannot be run, or None."""
    allowed = (names,) if isinstance(names, str) else names
    if call.error:
        return f"could not parse the tool call: {call.error}"
    if call.name not in allowed:
        return f"unknown tool {call.name!r}; available: {', '.join(allowed)}"
    if list_field is not None:
        value = (call.arguments or {}).get(list_field)
        if not isinstance(value, list) or not value:
            return f"{call.name} needs a non-empty list '{list_field}'"
    return None


def _tool_error(trace: Trace, agent: str, call: ToolCall, problem: str, t0: float) -> str:
    trace.add(agent, "error", kind="malformed_call", message=problem, id=call.id)
    text = f"Error: {problem}. Please correct the call."
    trace.add(agent, "tool_result", id=call.id, name=call.name, content=text, seconds=trace.now() - t0, t_start=t0,
              error=True)
    return text


BOXED_RE = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (one level of nested braces), or None."""
    found = BOXED_RE.findall(text or "")
    return found[-1].strip() if found else None
