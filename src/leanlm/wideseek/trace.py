"""Run traces: every message, tool call, tool result, model call (tokens, timings) of every agent, as JSONL.

One event per line, in the order they happened, each with ``agent`` (``lead``, ``sub-1``..``sub-N`` in
creation order, or ``single``), ``type`` and ``t`` (seconds since the run started). Event types:

- ``start`` / ``end``: one each per agent; ``end`` has ``status``, ``turns`` and token totals.
- ``message``: a message appended to the agent's context (``role``, ``content``, ``tool_calls``).
- ``llm_call``: one model call (``turn``, ``t_start``, ``seconds``, ``prompt_tokens``, ``completion_tokens``,
  ``attempts`` with any retried errors).
- ``tool_call`` / ``tool_result``: matched by ``id``; results carry ``seconds`` and ``error`` (bool).
- ``error``: anything that went wrong and was survived (malformed call, backend failure, limit hit).

The numbering ``sub-k`` is RLinf's ``idx_to_sub_traj`` (0 = lead, 1..N = subagents in creation order).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from leanlm.common.atomic import atomic_write


class Trace:
    """An append-only list of events with a common clock; :meth:`write` saves it atomically as JSONL."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, agent: str, type: str, **data: Any) -> dict[str, Any]:
        event = {"t": round(self.now(), 6), "agent": agent, "type": type, **data}
        self.events.append(event)
        return event

    def of(self, agent: str | None = None, type: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if (agent is None or e["agent"] == agent) and (type is None or e["type"] == type)]

    def agents(self) -> list[str]:
        return [e["agent"] for e in self.events if e["type"] == "start"]

    def counts(self) -> Counter[str]:
        return Counter(e["type"] for e in self.events)

    def write(self, path: str | os.PathLike[str]) -> Path:
        with atomic_write(path) as handle:
            for event in self.events:
                handle.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
        return Path(path)

    def check_complete(self) -> list[str]:
        """Problems that would make the trace incomplete (empty list when it is complete).

        Every agent has one start and one end; every tool call has exactly one result; every model call has
        timing and token counts; every agent's end event matches its number of model calls.
        """
        problems: list[str] = []
        starts = Counter(e["agent"] for e in self.events if e["type"] == "start")
        ends = Counter(e["agent"] for e in self.events if e["type"] == "end")
        for agent in set(starts) | set(ends):
            if starts[agent] != 1 or ends[agent] != 1:
                problems.append(f"{agent}: {starts[agent]} start and {ends[agent]} end events")
        calls = {(e["agent"], e["id"]) for e in self.events if e["type"] == "tool_call"}
        results = Counter((e["agent"], e["id"]) for e in self.events if e["type"] == "tool_result")
        for key in calls:
            if results[key] != 1:
                problems.append(f"{key[0]}: tool call {key[1]} has {results[key]} results")
        for key in results:
            if key not in calls:
                problems.append(f"{key[0]}: tool result {key[1]} without a call")
        for e in self.events:
            if e["type"] == "llm_call" and (e.get("seconds") is None or e.get("prompt_tokens") is None
                                            or e.get("completion_tokens") is None):
                problems.append(f"{e['agent']}: llm_call at turn {e.get('turn')} lacks timing or tokens")
        for e in self.events:
            if e["type"] == "end":
                n = sum(1 for x in self.events if x["type"] == "llm_call" and x["agent"] == e["agent"] and x.get("ok", True))
                if n != e.get("turns"):
                    problems.append(f"{e['agent']}: end says {e.get('turns')} turns, trace has {n} model calls")
        return problems
