"""Runtime tests with a scripted in-process policy: overlap, limits, malformed calls, failing tools, traces."""

from __future__ import annotations

import json
import time

from leanlm.wideseek import prompts
from leanlm.wideseek.agents import AgentConfig, WideSeek, extract_boxed
from leanlm.wideseek.llm import BackendError, Completion, ScriptedBackend, ToolCall


def n_tool_msgs(messages):
    return sum(1 for m in messages if m["role"] == "tool")


def tc(name, **args):
    return ToolCall(name=name, arguments=args)


class SleepyTools:
    """Tools whose every call takes ``delay`` seconds; records when each call ran."""

    def __init__(self, delay=0.2, fail_urls=()):
        self.delay, self.fail_urls, self.calls = delay, set(fail_urls), []

    def search(self, query, count):
        t0 = time.perf_counter()
        time.sleep(self.delay)
        self.calls.append(("search", query, count, t0, time.perf_counter()))
        return f"[Doc 1](https://leanlm.local/x/{query}):\n{query} result"

    def access(self, url, info):
        if url in self.fail_urls:
            raise ConnectionError(f"cannot reach {url}")
        self.calls.append(("access", url, info, 0, 0))
        return f"page {url}"


def fanout_policy(k, items_per_sub=1):
    def policy(agent, messages, tools):
        if agent == "lead":
            if n_tool_msgs(messages) == 0:
                return Completion("", [tc("create_sub_agents", sub_agents=[{"prompt": f"entity {i}"} for i in range(k)])])
            return Completion("```markdown\n| k | v |\n|---|---|\n| a | 1 |\n```")
        if n_tool_msgs(messages) == 0:
            return Completion("", [tc("search", queries=[{"query": f"{agent}-{j}"} for j in range(items_per_sub)])])
        return Completion(f"report from {agent}")
    return policy


def test_eight_subagents_overlap_in_time(tmp_path):
    tools = SleepyTools(delay=0.2)
    ws = WideSeek(ScriptedBackend(fanout_policy(8)), tools, AgentConfig(max_concurrency=8))
    t0 = time.perf_counter()
    result = ws.run("find 8 things")
    wall = time.perf_counter() - t0
    assert result.status == "answered"
    assert len(result.subagents) == 8 and all(r.status == "answered" for r in result.subagents)
    assert len(tools.calls) == 8
    # serial execution would take 8 x 0.2 = 1.6 s; overlapping takes about 0.2 s
    assert wall < 0.6, wall
    starts = sorted(c[3] for c in tools.calls)
    ends = sorted(c[4] for c in tools.calls)
    assert starts[-1] < ends[0], "every tool call must start before the first one ends"
    assert result.trace.check_complete() == []
    # the lead sees every subagent's report, numbered, under its prompt
    tool_msg = next(m for m in result.lead.messages if m["role"] == "tool")["content"]
    for i in range(8):
        assert f"# Subtask {i + 1}:\nentity {i}\n# Result:\nreport from sub-{i + 1}" in tool_msg


def test_concurrency_limit_is_enforced():
    tools = SleepyTools(delay=0.1)
    ws = WideSeek(ScriptedBackend(fanout_policy(6)), tools, AgentConfig(max_concurrency=2))
    result = ws.run("x")
    assert result.status == "answered"
    events = sorted((c[3], 1) for c in tools.calls) + sorted((c[4], -1) for c in tools.calls)
    running = peak = 0
    for _, d in sorted(events):
        running += d
        peak = max(peak, running)
    assert peak == 2
    assert result.seconds > 0.28  # three waves of 0.1 s


def test_items_per_call_run_concurrently_and_are_capped():
    tools = SleepyTools(delay=0.2)
    ws = WideSeek(ScriptedBackend(fanout_policy(1, items_per_sub=7)), tools, AgentConfig())
    t0 = time.perf_counter()
    result = ws.run("x")
    assert time.perf_counter() - t0 < 0.6
    assert len(tools.calls) == 5  # at most 5 items per call
    sub = result.subagents[0]
    tool_msg = next(m for m in sub.messages if m["role"] == "tool")["content"]
    assert "only the first 5 of 7 queries were run" in tool_msg
    assert any(e["kind"] == "limit" for e in result.trace.of("sub-1", "error"))


def test_subagents_per_call_capped_at_ten():
    ws = WideSeek(ScriptedBackend(fanout_policy(13)), SleepyTools(delay=0), AgentConfig())
    result = ws.run("x")
    assert len(result.subagents) == 10
    assert "only 10 of the 13 subagents of this call were started" in next(
        m for m in result.lead.messages if m["role"] == "tool")["content"]


def test_at_most_ten_subagents_per_lead_turn_over_all_calls():
    """Two create_sub_agents calls of 8 in one turn start 8 + 2 (RLinf parses one call per turn and keeps 10)."""
    def policy(agent, messages, tools):
        if agent == "lead":
            if n_tool_msgs(messages) == 0:
                return Completion("", [tc("create_sub_agents", sub_agents=[{"prompt": f"a{i}"} for i in range(8)]),
                                       tc("create_sub_agents", sub_agents=[{"prompt": f"b{i}"} for i in range(8)]),
                                       tc("create_sub_agents", sub_agents=[{"prompt": "c"}])])
            if n_tool_msgs(messages) == 3:
                return Completion("", [tc("create_sub_agents", sub_agents=[{"prompt": f"d{i}"} for i in range(12)])])
            return Completion("done")
        return Completion(f"report from {agent}")

    result = WideSeek(ScriptedBackend(policy), SleepyTools(delay=0), AgentConfig()).run("x")
    first = [e for e in result.trace.of(type="start") if e.get("lead_turn") == 1]
    second = [e for e in result.trace.of(type="start") if e.get("lead_turn") == 2]
    assert [e["subtask"] for e in first] == [f"a{i}" for i in range(8)] + ["b0", "b1"]
    assert len(second) == 10  # a new turn has a new budget
    tool_msgs = [m["content"] for m in result.lead.messages if m["role"] == "tool"]
    assert "only 2 of the 8 subagents of this call were started" in tool_msgs[1]
    assert tool_msgs[2].startswith("Note: only 0 of the 1 subagents") and "No subagent was started" in tool_msgs[2]
    assert len([e for e in result.trace.of("lead", "error") if e["kind"] == "limit"]) == 3
    assert result.trace.check_complete() == []


def test_turn_limits_for_lead_and_subagents():
    def policy(agent, messages, tools):
        if agent == "lead":
            return Completion("", [tc("create_sub_agents", sub_agents=[{"prompt": "loop forever"}])])
        return Completion("", [tc("search", queries=[{"query": "again"}])])

    cfg = AgentConfig(max_lead_turns=3, max_sub_turns=4)
    backend = ScriptedBackend(policy)
    result = WideSeek(backend, SleepyTools(delay=0), cfg).run("x")
    assert result.status == "turn_limit"
    assert result.lead.turns == 3
    assert len(result.subagents) == 3 and all(r.status == "turn_limit" and r.turns == 4 for r in result.subagents)
    assert backend.calls == 3 + 3 * 4
    assert result.trace.check_complete() == []
    # turn hints name the turn budget
    lead_tool = [m["content"] for m in result.lead.messages if m["role"] == "tool"]
    assert lead_tool[1].endswith("[Turn 2 of 3 done. Your next reply is turn 3; give your final answer by turn 3.]")
    # RLinf's failure/retry message, not the subagent's last text
    assert lead_tool[0].startswith("# Subtask 1:\nloop forever\n# Result:\n" + prompts.SUBAGENT_FAILED)


def test_malformed_calls_and_failing_tools_are_recorded_and_survived():
    def policy(agent, messages, tools):
        k = n_tool_msgs(messages)
        if agent == "lead":
            if k == 0:  # raw text: one broken JSON call, one unknown tool, one good call
                return ('<tool_call>{"name": "create_sub_agents", "arguments": {"sub_agents": [}</tool_call>\n'
                        '<tool_call>{"name": "search", "arguments": {"queries": [{"query": "q"}]}}</tool_call>\n'
                        '<tool_call>{"name": "create_sub_agents", "arguments": {"sub_agents": [{"prompt": "p"}]}}</tool_call>')
            return "All done. \\boxed{42}"
        if k == 0:
            return Completion("", [tc("access", urls=[{"url": "https://bad", "info_to_extract": "x"},
                                                      {"url": "https://good", "info_to_extract": "y"}]),
                                   tc("search", queries="not a list")])
        return Completion("report")

    result = WideSeek(ScriptedBackend(policy), SleepyTools(delay=0, fail_urls={"https://bad"})).run("x", "qa")
    assert result.status == "answered"
    assert extract_boxed(result.answer) == "42"
    errors = result.trace.of(type="error")
    kinds = [e["kind"] for e in errors]
    assert kinds.count("malformed_call") == 3  # bad JSON, unknown tool (lead), non-list queries (sub)
    assert kinds.count("tool_error") == 1
    lead_tool_msgs = [m["content"] for m in result.lead.messages if m["role"] == "tool"]
    assert "not valid JSON" in lead_tool_msgs[0] and "unknown tool 'search'" in lead_tool_msgs[1]
    sub_tool = [m["content"] for m in result.subagents[0].messages if m["role"] == "tool"]
    assert "ConnectionError: cannot reach https://bad" in sub_tool[0] and "page https://good" in sub_tool[0]
    assert result.trace.check_complete() == []
    malformed = [e for e in result.trace.of("lead", "tool_call") if e["malformed"]]
    assert len(malformed) == 1


def test_backend_errors_and_context_overflow_end_the_agent_not_the_run():
    def policy(agent, messages, tools):
        if agent == "lead":
            if n_tool_msgs(messages) == 0:
                return Completion("", [tc("create_sub_agents", sub_agents=[{"prompt": "boom"}, {"prompt": "big"},
                                                                           {"prompt": "fine"}])])
            return Completion("final")
        task = messages[1]["content"]
        if "boom" in task:
            raise BackendError("HTTP 500 forever")
        if "big" in task and n_tool_msgs(messages) == 0:
            return Completion("", [tc("access", urls=[{"url": "u", "info_to_extract": "all"}])])
        return Completion("ok")

    class BigTools(SleepyTools):
        def access(self, url, info):
            return "x" * 50_000

    result = WideSeek(ScriptedBackend(policy), BigTools(delay=0), AgentConfig(context_tokens=5_000)).run("x")
    assert result.status == "answered" and result.answer == "final"
    status = {r.agent: r.status for r in result.subagents}
    assert status == {"sub-1": "backend_error", "sub-2": "context_overflow", "sub-3": "answered"}
    lead_view = next(m["content"] for m in result.lead.messages if m["role"] == "tool")
    assert prompts.SUBAGENT_FAILED in lead_view and "model server returned an error" in lead_view
    assert result.trace.check_complete() == []


def test_tool_timeout_is_survived():
    cfg = AgentConfig(tool_timeout=0.05)
    result = WideSeek(ScriptedBackend(fanout_policy(2)), SleepyTools(delay=0.3), cfg).run("x")
    assert result.status == "answered"
    assert sum(1 for e in result.trace.of(type="error") if e["kind"] == "tool_error") == 2
    assert "timed out after 0.05 s" in next(m for m in result.subagents[0].messages if m["role"] == "tool")["content"]


def test_trace_is_complete_and_written_as_jsonl(tmp_path):
    result = WideSeek(ScriptedBackend(fanout_policy(3)), SleepyTools(delay=0)).run("find 3")
    path = result.trace.write(tmp_path / "trace.jsonl")
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert events == json.loads(json.dumps(result.trace.events))
    agents = {e["agent"] for e in events}
    assert agents == {"lead", "sub-1", "sub-2", "sub-3"}
    for agent in agents:
        mine = [e for e in events if e["agent"] == agent]
        assert mine[0]["type"] == "start" and mine[-1]["type"] == "end"
        calls = [e for e in mine if e["type"] == "llm_call"]
        assert all(e["seconds"] >= 0 and e["prompt_tokens"] > 0 for e in calls)
        assert mine[-1]["turns"] == len(calls) == 2
        # every message of the agent's context is in the trace, in order
        run = result.lead if agent == "lead" else result.subagents[int(agent[4:]) - 1]
        msgs = [e for e in mine if e["type"] == "message"]
        assert [m["role"] for m in msgs] == [m["role"] for m in run.messages]
        assert [m["content"] for m in msgs] == [m["content"] for m in run.messages]
    times = [e["t"] for e in events]
    assert times == sorted(times)
    sub_starts = [e for e in events if e["type"] == "start" and e["agent"] != "lead"]
    assert all(e["parent"] == "lead" and e["lead_turn"] == 1 for e in sub_starts)


def test_single_agent_mode_uses_scalar_tools_and_its_limit():
    seen = []

    def policy(agent, messages, tools):
        seen.append([t["function"]["name"] for t in tools])
        k = n_tool_msgs(messages)
        if k == 0:
            return Completion("", [tc("search", query="france", count=2)])
        if k == 1:
            return Completion("", [tc("access", url="https://leanlm.local/country/france", info_to_extract="capital")])
        return Completion("<think>done</think>\\boxed{Paris}")

    tools = SleepyTools(delay=0)
    result = WideSeek(ScriptedBackend(policy), tools).run_single("capital of France?", "qa")
    assert result.status == "answered" and result.answer == "\\boxed{Paris}"
    assert seen[0] == ["search", "access"] and result.subagents == []
    assert tools.calls[0][:3] == ("search", "france", 2)
    assert result.trace.agents() == ["single"] and result.trace.check_complete() == []

    looping = ScriptedBackend(lambda a, m, t: Completion("", [tc("search", query="x")]))
    result = WideSeek(looping, tools, AgentConfig(max_single_turns=7)).run_single("q")
    assert result.status == "turn_limit" and looping.calls == 7


def test_config_validation():
    import pytest

    with pytest.raises(ValueError, match="max_concurrency"):
        AgentConfig(max_concurrency=0)
    with pytest.raises(ValueError, match="answer_format"):
        AgentConfig(answer_format="csv")
