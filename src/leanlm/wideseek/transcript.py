"""Rollout transcripts: what each agent of an evaluated rollout wrote, and why its answer scored as it did.

The study's metric files (:meth:`leanlm.wideseek.study.Study.evaluate`) hold scores only; when a policy scores
0 the question is *why*: did the lead never stop delegating (turn limit), write a malformed tool call, get its
table cut by the reply cap, or write prose instead of a table? :func:`rollout_transcript` answers from the
run's :class:`~leanlm.wideseek.trace.Trace` and, with the in-process backend, the sampled tokens themselves:

- ``lead``: one entry per lead model call: the raw reply text as sampled (decoded completion tokens, tool-call
  blocks included; without samples, the visible text plus each call's raw JSON), prompt and completion tokens,
  ``finish_reason`` (``length`` = cut by the reply cap), the tool calls it made (name, malformed reason,
  subagent prompts) and the subagents they started; a call that failed (context overflow) has ``error``.
- ``subagents``: per subagent its lead turn, status, turns and report, and ``steps``: per model call the raw reply
  (clipped), finish reason, each tool call's name, arguments and the start of its result, and any error.
- ``answer``: the text that was scored, ``status`` of the lead, ``f1``/``format_ok``/``success`` and
  :func:`format_problem` (why the answer is not a valid table, or None), the scorer's ``score_msg``.

Long texts are cut to ``max_chars`` (head and tail kept, the cut counted), so a transcript line stays readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from leanlm.wideseek.agents import RunResult
from leanlm.wideseek.tasks import Task


def clip(text: str | None, max_chars: int) -> str:
    """``text`` cut to about ``max_chars`` characters: head and tail kept, the number of cut characters named."""
    text = text or ""
    if len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    return f"{text[:head]} [... {len(text) - head - tail} chars cut ...] {text[len(text) - tail:]}"


def format_problem(task: Task, answer: str | None) -> str | None:
    """Why ``answer`` fails the valid-format test of :func:`leanlm.wideseek.runner.format_ok` (None if it passes):
    empty answer, no ``\\boxed{}``, no markdown block and no pipe table, or a table that cannot be parsed."""
    from leanlm.wideseek.agents import extract_boxed
    from leanlm.wideseek.scorer import extract_table, table_text

    if not (answer or "").strip():
        return "empty answer"
    if task.kind == "qa":
        return None if extract_boxed(answer or "") is not None else "no \\boxed{} answer"
    try:
        if table_text(answer or "") is None:
            return ("no ```markdown block and no pipe table" if "```markdown" not in (answer or "")
                    else "```markdown block not closed and no pipe table")
        if extract_table(answer) is None:
            return "table found but unreadable (no rows, or pandas cannot parse it)"
    except Exception as exc:  # the scorer treats any parse failure as an invalid table
        return f"table parse error: {type(exc).__name__}: {exc}"
    return None


def _agent_steps(events: Sequence[dict[str, Any]], agent: str, raw: dict[int, str]) -> list[dict[str, Any]]:
    """A subagent's turns: raw reply (clipped to 400 characters), each tool call's name, arguments and the start
    of its result (200), and the error of a failed call (context overflow, backend error)."""
    results = {e["id"]: e for e in events if e["agent"] == agent and e["type"] == "tool_result"}
    steps: list[dict[str, Any]] = []
    for e in events:
        if e["agent"] != agent:
            continue
        if e["type"] == "llm_call":
            step: dict[str, Any] = {"turn": e["turn"], "prompt_tokens": e.get("prompt_tokens"),
                                    "completion_tokens": e.get("completion_tokens"),
                                    "finish_reason": e.get("finish_reason"), "calls": []}
            if not e.get("ok", True):
                step["error"] = e.get("error")
            elif e["turn"] in raw:
                step["text"] = clip(raw[e["turn"]], 400)
            steps.append(step)
        elif e["type"] == "tool_call" and steps:
            res = results.get(e["id"], {})
            steps[-1]["calls"].append({"name": e.get("name"), "malformed": bool(e.get("malformed")),
                                       "arguments": clip(str(e.get("arguments")), 200),
                                       "result": clip(str(res.get("content", "")), 200)})
        elif e["type"] == "error":
            if not steps:  # e.g. the context estimate stopped the agent before its first call
                steps.append({"turn": 0, "calls": []})
            steps[-1].setdefault("errors", []).append(f"{e.get('kind')}: {clip(e.get('message'), 200)}")
    return steps


def _raw_texts(result: RunResult, samples: Sequence[Any], tokenizer: Any, agent: str) -> dict[int, str]:
    """turn -> raw reply text of ``agent``: decoded sampled tokens when the backend recorded them."""
    if tokenizer is None:
        return {}
    return {s.turn: tokenizer.decode(s.completion_ids, skip_special_tokens=True)
            for s in samples if getattr(s, "agent_name", None) == agent}


def rollout_transcript(task: Task, result: RunResult, *, samples: Sequence[Any] = (), tokenizer: Any = None,
                       score: tuple[float, bool, float] | None = None, max_chars: int = 1500) -> dict[str, Any]:
    """One rollout's transcript (module doc). ``samples`` are the rollout's :class:`~leanlm.wideseek.grpo.TurnSample`
    (with ``agent_name``) and ``tokenizer`` decodes them; ``score`` is (F1, format_ok, success) as scored."""
    events = result.trace.events
    raw = _raw_texts(result, samples, tokenizer, "lead")
    calls_by_turn: dict[int, list[dict[str, Any]]] = {}
    results_by_id = {e["id"]: e for e in events if e["agent"] == "lead" and e["type"] == "tool_result"}
    problems = {e["id"]: e["message"] for e in events if e["agent"] == "lead" and e["type"] == "error"
                and e.get("kind") == "malformed_call"}
    for e in events:
        if e["agent"] != "lead" or e["type"] != "tool_call":
            continue
        args = e.get("arguments") if isinstance(e.get("arguments"), dict) else {}
        subs = args.get("sub_agents") if isinstance(args.get("sub_agents"), list) else []
        res = results_by_id.get(e["id"], {})
        calls_by_turn.setdefault(e["turn"], []).append({
            "name": e["name"], "problem": problems.get(e["id"]),
            "prompts": [clip(s.get("prompt") if isinstance(s, dict) else str(s), 300) for s in subs],
            "started": list(res.get("subagents") or []), "raw": clip(e.get("raw"), 300)})
    messages = {e["turn"]: e for e in events if e["agent"] == "lead" and e["type"] == "message"
                and e.get("role") == "assistant"}
    lead = []
    for e in events:
        if e["agent"] != "lead" or e["type"] != "llm_call":
            continue
        turn = e["turn"]
        entry: dict[str, Any] = {"turn": turn, "prompt_tokens": e.get("prompt_tokens"),
                                 "completion_tokens": e.get("completion_tokens"),
                                 "finish_reason": e.get("finish_reason")}
        if not e.get("ok", True):
            entry["error"] = e.get("error")
        else:
            text = raw.get(turn)
            if text is None:  # no sampled tokens (a scripted or server backend): visible text + raw calls
                m = messages.get(turn, {})
                text = "\n".join([m.get("content") or "", *(f"<tool_call>{c['raw']}</tool_call>"
                                                            for c in calls_by_turn.get(turn, []))]).strip()
            entry["chars"] = len(text)
            entry["text"] = clip(text, max_chars)
            entry["tool_calls"] = calls_by_turn.get(turn, [])
        lead.append(entry)
    subagents = []
    for e in events:
        if e["type"] == "start" and e["agent"].startswith("sub-"):
            run = next((r for r in result.subagents if r.agent == e["agent"]), None)
            subagents.append({"agent": e["agent"], "lead_turn": e.get("lead_turn"),
                              "subtask": clip(e.get("subtask"), 300),
                              "status": run.status if run else None, "turns": run.turns if run else None,
                              "report": clip(run.answer if run else "", 500),
                              "steps": _agent_steps(events, e["agent"], _raw_texts(result, samples, tokenizer,
                                                                                   e["agent"]))})
    out: dict[str, Any] = {"task": task.instance_id, "status": result.status, "lead_turns": result.lead.turns,
                           "subagents_started": len(result.subagents),
                           "lead_errors": [{"kind": e.get("kind"), "message": clip(e.get("message"), 300)}
                                           for e in events if e["agent"] == "lead" and e["type"] == "error"],
                           "answer_chars": len(result.answer or ""), "answer": clip(result.answer, 2 * max_chars),
                           "format_problem": format_problem(task, result.answer)}
    if score is not None:
        out.update(f1=score[0], format_ok=score[1], success=score[2])
    try:
        out["score_msg"] = task.score(result.answer).msg
    except Exception as exc:  # pragma: no cover - the scorer itself returns errors as messages
        out["score_msg"] = f"scorer raised {type(exc).__name__}: {exc}"
    out["lead"] = lead
    out["subagents"] = subagents
    return out
