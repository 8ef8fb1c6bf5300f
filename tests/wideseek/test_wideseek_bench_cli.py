"""Width benchmark pieces, the eval runner (resume) and the CLI commands that need no model server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from leanlm.wideseek.agents import AgentConfig, WideSeek
from leanlm.wideseek.bench import LatencyModel, OraclePolicy, critical_path, run_point
from leanlm.wideseek.cli import app
from leanlm.wideseek.llm import ScriptedBackend
from leanlm.wideseek.runner import evaluate
from leanlm.wideseek.tasks import countries_task, generate_tasks, gold_answer_text, write_tasks


@pytest.fixture(scope="module")
def world(full_world):
    return full_world


def test_latency_model_fit_and_samples():
    model = LatencyModel(median=1.0, sigma=0.0)
    assert [model() for _ in range(3)] == [1.0, 1.0, 1.0] and model.samples == [1.0, 1.0, 1.0]
    fitted = LatencyModel.fit([1.0, 4.0])
    assert fitted.median == pytest.approx(2.0) and fitted.source == "measured"
    assert LatencyModel(median=0.0)() == 0.0


def test_oracle_width_sweep_is_correct_and_faster_when_wider(world):
    task = countries_task("Northern America")  # 5 gold rows, one listing page
    narrow = run_point(task, world, LatencyModel(median=0.05, sigma=0.0), 1, None)
    wide = run_point(task, world, LatencyModel(median=0.05, sigma=0.0), 4, None)
    assert narrow.item_f1 == wide.item_f1 == 1.0 and narrow.success == 1.0
    # width 1: lead 3 calls (enumerate, fan out, answer) + enumerator 3 (search, read the list, report)
    # + one subagent with 5 searches, 5 accesses, 1 report = 17 calls, all on the critical path
    # + the measured tool time: under 0.5 s idle, 1.6 s at load 11 on 2 cores (the bound leaves room for load)
    assert narrow.llm_calls == 17 and 17 * 0.05 <= narrow.ideal_s < 17 * 0.05 + 5.0
    # width 4 (rows split 2/1/1/1): 3 + 3 + 5 + 3 x 3 = 20 calls; critical path 3 + 3 + 5 calls
    assert wide.llm_calls == 20 and 11 * 0.05 <= wide.ideal_s < narrow.ideal_s
    assert narrow.wall_s >= narrow.ideal_s - 0.01 and wide.wall_s >= wide.ideal_s - 0.01
    assert wide.wall_s < 0.8 * narrow.wall_s
    one_slot = run_point(task, world, LatencyModel(median=0.05, sigma=0.0), 4, 1)
    assert one_slot.model_busy_s == pytest.approx(20 * 0.05) and one_slot.wall_s >= 20 * 0.05
    single = run_point(task, world, LatencyModel(median=0.0), 1, None, mode="single")
    assert single.item_f1 == 1.0 and single.llm_calls == 13  # search + read the list, 5 + 5, the answer


def test_critical_path_uses_simulated_latency(world):
    task = countries_task("Northern America")
    backend = ScriptedBackend(OraclePolicy(task, 2), latency=LatencyModel(median=0.02, sigma=0.0))
    result = WideSeek(backend, world, AgentConfig()).run(task.query)
    calls = result.trace.of(type="llm_call")
    assert all(e["simulated_s"] == 0.02 for e in calls)
    # lead 3 calls + enumerator chain (3 calls) + slowest row chain (3 rows: 3 + 3 + report) plus tool times
    tool_s = {a: sum(e["seconds"] for e in result.trace.of(a, "tool_result")) for a in ("sub-1", "sub-2", "sub-3")}
    assert critical_path(result) == pytest.approx(13 * 0.02 + tool_s["sub-1"] + tool_s["sub-2"], abs=0.01)


def test_evaluate_writes_results_and_resumes(tmp_path, world):
    tasks = [countries_task("Northern America"), *generate_tasks(n_table=0, n_qa=1, seed=0)]
    calls = []

    def policy(agent, messages, tools):
        calls.append(agent)
        task = next(t for t in tasks if t.query in messages[1]["content"])
        return gold_answer_text(task)

    backend = ScriptedBackend(policy)
    report = evaluate(tasks, backend, world, AgentConfig(), n=2, out_dir=tmp_path)
    assert report["summary"]["f1_by_item"] == {"avg_n": 1.0, "max_n": 1.0, "min_n": 1.0}
    assert report["qa"] == {"avg_n": 1.0, "pass_n": 1.0, "tasks": 1}
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len(list((tmp_path / "traces").glob("*.jsonl"))) == 4
    first = json.loads(lines[0])  # the answer on the lead's first turn: format bonus, no access bonus
    assert first["reward"] == pytest.approx(1.1) and first["reward_case"] == "ok" and first["trainable_turns"] == [["lead", 1]]
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == 2
    before = len(calls)
    again = evaluate(tasks, backend, world, AgentConfig(), n=2, out_dir=tmp_path)
    assert len(calls) == before and again["summary"] == report["summary"]  # nothing re-run


def test_cli_tasks_and_score(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["tasks", "--out", str(tmp_path), "--n-table", "2", "--n-qa", "1"])
    assert out.exit_code == 0, out.output
    assert "3 tasks written" in out.output
    from leanlm.wideseek.tasks import load_tasks

    tasks = load_tasks(tmp_path / "tasks.jsonl")
    responses = tmp_path / "responses.jsonl"
    with open(responses, "w") as f:
        for task in tasks:
            f.write(json.dumps({"instance_id": task.instance_id, "response": gold_answer_text(task), "trial_idx": 0}) + "\n")
    result = runner.invoke(app, ["score", str(responses), "--tasks", str(tmp_path / "tasks.jsonl"),
                                 "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert "| item F1 | 100 | 100 | 100 |" in result.output
    saved = json.loads((tmp_path / "s.json").read_text())
    assert len(saved["rows"]) == 3 and saved["table"]["score"]["avg_n"] == 1.0
    responses.write_text('{"instance_id": "nope", "response": "x"}\n')
    bad = runner.invoke(app, ["score", str(responses), "--tasks", str(tmp_path / "tasks.jsonl")])
    assert bad.exit_code != 0 and "responses.jsonl:1" in bad.output


def test_cli_run_needs_query_or_task():
    result = CliRunner().invoke(app, ["run", "--base-url", "http://127.0.0.1:9/v1"])
    assert result.exit_code != 0 and "either a QUERY or --task" in result.output


@pytest.mark.slow  # builds the full 10,971-page world
def test_cli_eval_against_a_loopback_openai_server(tmp_path):
    """``leanlm wideseek eval --base-url`` over real HTTP: the fake server answers each task with its gold table
    on the second lead turn, after delegating one subagent that searches once."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    tasks = generate_tasks(n_table=2, n_qa=1, seed=3)
    write_tasks(tasks, tmp_path / "t")

    def reply(body):
        messages = body["messages"]
        n_tool = sum(m["role"] == "tool" for m in messages)
        calls = None
        if "lead agent" in messages[0]["content"]:
            if n_tool == 0:
                calls = [("create_sub_agents", {"sub_agents": [{"prompt": "look it up"}]})]
                content = None
            else:
                task = next(t for t in tasks if t.query in messages[1]["content"])
                content = gold_answer_text(task)
        elif n_tool == 0:
            calls, content = [("search", {"queries": [{"query": "France"}]})], None
        else:
            content = "report"
        message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [{"id": f"c{i}", "type": "function",
                                      "function": {"name": n, "arguments": json.dumps(a)}} for i, (n, a) in enumerate(calls)]
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = json.dumps(reply(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(app, [
            "eval", "--tasks", str(tmp_path / "t" / "tasks.jsonl"), "--n", "2", "--subagents", "2",
            "--base-url", f"http://127.0.0.1:{server.server_address[1]}/v1", "--out", str(tmp_path / "e")])
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert "| item F1 | 100 | 100 | 100 |" in result.output and "| success rate | 100 | 100 | 100 |" in result.output
    assert "QA exact match over 1 tasks: Avg@2 100.0%, Pass@2 100.0%" in result.output
    rows = [json.loads(x) for x in (tmp_path / "e" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["stat_subagents"] == 1 and r["stat_llm_calls"] == 4 for r in rows)


def test_real_width_pieces_pool_and_report_writer(world):
    """The width-real driver without a server: a pool of two slow fake model slots serves the subagents' report
    calls at most two at a time; reports keep the oracle's rows, so the answer stays exact."""
    import asyncio
    import time

    from leanlm.wideseek.llm import Completion
    from leanlm.wideseek.measure import PooledBackend, ReportWriter

    class Slot:
        def __init__(self):
            self.active = 0

        async def complete(self, messages, tools, *, agent):
            self.active += 1
            pool_active.append(sum(s.active for s in slots))
            await asyncio.sleep(0.05)
            self.active -= 1
            return Completion("I found the values.", prompt_tokens=100, completion_tokens=5)

    pool_active: list[int] = []
    slots = [Slot(), Slot()]
    task = countries_task("Northern America")
    writer = ReportWriter(OraclePolicy(task, 4, items_per_turn=5), PooledBackend(slots))
    cfg = AgentConfig(max_subagents_per_call=4, max_subagents_per_turn=4, max_concurrency=4)
    t0 = time.perf_counter()
    result = asyncio.run(WideSeek(ScriptedBackend(writer), world, cfg).arun(task.query))
    assert task.score(result.answer).score == 1.0
    assert len(writer.calls) == 5 and all(c["completion_tokens"] == 5 for c in writer.calls)  # enumerator + 4
    assert max(pool_active) == 2 and time.perf_counter() - t0 >= 0.15  # 4 reports over 2 slots: 2 waves + 1
    assert all(m.startswith("I found the values.") for m in
               [e["content"] for e in result.trace.of(type="message") if e["role"] == "assistant"
                and e["agent"].startswith("sub-") and not e.get("tool_calls")])
