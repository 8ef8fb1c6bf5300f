"""Rollout transcripts (leanlm.wideseek.transcript) and the study's transcript files beside its eval files."""

from __future__ import annotations

import json

import pytest
import torch

from leanlm.wideseek.agents import AgentConfig, WideSeek
from leanlm.wideseek.llm import ScriptedBackend
from leanlm.wideseek.tasks import gold_answer_text
from leanlm.wideseek.train import score_rollout
from leanlm.wideseek.transcript import clip, format_problem, rollout_transcript

CALL = ('Plan.\n<tool_call>{"name": "create_sub_agents", "arguments": {"sub_agents": [{"prompt": "find Algiers"}, '
        '{"prompt": "find Oran"}]}}</tool_call>')
BAD = '<tool_call>{"name": "create_sub_agents", "arguments": {bad</tool_call>'


class ToyTools:
    def search(self, query: str, count: int) -> str:
        return f"[Doc 1](http://toy/{query}):\n{query}"

    def access(self, url: str, info: str) -> str:
        return f"page {url}"


@pytest.fixture(scope="module")
def task():
    from leanlm.wideseek.tasks import generate_wide_tasks

    return generate_wide_tasks("eval", min_rows=2, max_rows=2)[0]  # a held-out cities task, two rows


def run(task, lead_replies, max_lead_turns=3):
    replies = iter(lead_replies)

    def policy(agent, messages, tools):
        return next(replies) if agent == "lead" else f"report of {agent}"

    cfg = AgentConfig(max_lead_turns=max_lead_turns, max_sub_turns=2, few_shot=False)
    return WideSeek(ScriptedBackend(policy), ToyTools(), cfg).run(task.query, "table")


def test_format_problem_names_each_failure(task):
    assert format_problem(task, gold_answer_text(task)) is None
    assert format_problem(task, "") == "empty answer"
    assert format_problem(task, "The cities are Algiers and Oran.") == "no ```markdown block and no pipe table"
    assert format_problem(task, "```markdown\n| city | population") == "```markdown block not closed and no pipe table"
    assert format_problem(task, "```markdown\n| city |\n| --- |") is None  # a pipe table, even unclosed, parses
    assert format_problem(task, "```markdown\n| --- | --- |\n```").startswith("table found but unreadable")


def test_clip_keeps_head_and_tail_and_counts_the_cut():
    text = "a" * 100 + "b" * 100
    out = clip(text, 30)
    assert out.startswith("a" * 20) and out.endswith("b" * 10) and "[... 170 chars cut ...]" in out
    assert clip("short", 30) == "short" and clip(None, 5) == ""


def test_transcript_of_a_scripted_rollout_records_turns_calls_and_why_the_answer_failed(task):
    result = run(task, [CALL, BAD, "The cities are Algiers and Oran."])
    score = score_rollout(task, result)
    t = rollout_transcript(task, result, score=score)
    assert (t["status"], t["lead_turns"], t["subagents_started"]) == ("answered", 3, 2)
    assert [e["turn"] for e in t["lead"]] == [1, 2, 3]
    first, second, last = t["lead"]
    assert first["text"].startswith("Plan.") and '"create_sub_agents"' in first["text"]
    assert first["tool_calls"] == [{"name": "create_sub_agents", "problem": None, "prompts": ["find Algiers", "find Oran"],
                                    "started": ["sub-1", "sub-2"], "raw": first["tool_calls"][0]["raw"]}]
    assert second["tool_calls"][0]["problem"].startswith("could not parse the tool call")
    assert second["tool_calls"][0]["started"] == []
    assert last["tool_calls"] == [] and last["text"] == "The cities are Algiers and Oran."
    assert [(s["agent"], s["lead_turn"], s["status"], s["report"]) for s in t["subagents"]] == [
        ("sub-1", 1, "answered", "report of sub-1"), ("sub-2", 1, "answered", "report of sub-2")]
    assert t["answer"] == "The cities are Algiers and Oran." and t["format_ok"] is False and t["f1"] == 0.0
    assert t["format_problem"] == "no ```markdown block and no pipe table"
    assert t["score_msg"] == "response_df is None"
    assert [e["kind"] for e in t["lead_errors"]] == ["malformed_call"]
    json.dumps(t)  # one JSON line


def test_transcript_of_a_turn_limit_and_of_a_perfect_table(task):
    stuck = rollout_transcript(task, run(task, [CALL, CALL], max_lead_turns=2), max_chars=40, score=(0.0, False, 0.0))
    assert stuck["status"] == "turn_limit" and stuck["answer"] == "Plan."  # the last turn's visible text
    assert [e["kind"] for e in stuck["lead_errors"]] == ["turn_limit"] and stuck["subagents_started"] == 4
    assert "chars cut" in stuck["lead"][0]["text"] and stuck["lead"][0]["chars"] > 40
    good = run(task, [gold_answer_text(task)])
    t = rollout_transcript(task, good, score=score_rollout(task, good))
    assert t["f1"] == 1.0 and t["format_ok"] is True and t["format_problem"] is None
    assert t["lead"][0]["text"] == gold_answer_text(task) and t["score_msg"].startswith("matched 2 of 2 gold rows")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from leanlm.common.models import embedded_cache_path, embedded_cached

    if not embedded_cached():
        pytest.skip("the embedded SmolLM2 tokenizer is not cached yet (run leanlm once with --model embedded)")
    return AutoTokenizer.from_pretrained(str(embedded_cache_path()))


def _tiny_sft_study(tokenizer, out, cfg):
    """A Study on toy tools (no world) whose SFT policy is a tiny random model saved under ``out``."""
    from leanlm.common.models import tiny_llama
    from leanlm.wideseek import study as st

    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, max_position_embeddings=4096, seed=0)
    model.save_pretrained(out / "sft" / "model")
    tokenizer.save_pretrained(out / "sft" / "model")
    study = object.__new__(st.Study)
    study.config, study.out, study.tools, study.timings = cfg, out, ToyTools(), {}
    return study


def test_study_evaluate_writes_one_transcript_per_rollout_beside_the_metrics(tokenizer, tmp_path):
    """Study.evaluate on a tiny random model saved as the SFT policy: one transcript line per rollout whose turns,
    subagents and scores match the metrics line, raw lead text equal to the decoded sampled tokens; summarize and
    resume read the metric files only."""
    from leanlm.wideseek import study as st
    from leanlm.wideseek.rollout import TransformersBackend

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = {**st.QUICK, "eval_tasks": 1, "eval_max_rows": 2, "n": 2, "max_new_tokens": 12, "role_max_new_tokens": {},
               "max_lead_turns": 2}
        study = _tiny_sft_study(tokenizer, tmp_path, cfg)
        decoded: list[str] = []
        real_generate = TransformersBackend._generate

        def spy(self, batch):  # record the lead's sampled text as the backend decoded it
            outs = real_generate(self, batch)
            decoded.extend(tokenizer.decode(o.token_ids, skip_special_tokens=True)
                           for r, o in zip(batch, outs, strict=True) if r.agent == "lead")
            return outs

        TransformersBackend._generate = spy
        try:
            path = study.evaluate("sft", 0, 2)
        finally:
            TransformersBackend._generate = real_generate
        traces = st.transcript_path(path)
        assert traces == tmp_path / "evals" / "traces" / "sft-seed0-w2.jsonl"
        metrics = [json.loads(x) for x in path.read_text().splitlines()]
        lines = [json.loads(x) for x in traces.read_text().splitlines()]
        assert len(metrics) == 1 and len(lines) == cfg["n"]
        m = metrics[0]
        assert [t["rollout"] for t in lines] == [0, 1] and {t["task"] for t in lines} == {m["task"]}
        assert [t["lead_turns"] for t in lines] == m["lead_turns"] == [len(t["lead"]) for t in lines]
        assert [t["subagents_started"] for t in lines] == m["subagents"]
        assert [t["f1"] for t in lines] == m["f1"] and [t["format_ok"] for t in lines] == m["format_ok"]
        assert sorted(e["text"] for t in lines for e in t["lead"]) == sorted(d for d in decoded)
        task = st.eval_tasks(cfg)[0]
        for t in lines:
            assert t["format_problem"] == format_problem(task, t["answer"])
            assert (t["format_problem"] is None) == t["format_ok"]
        st.summarize(tmp_path)  # the transcripts folder is not read as a metrics file
        assert study.evaluate("sft", 0, 2) == path and len(traces.read_text().splitlines()) == cfg["n"]  # resumed
    finally:
        torch.set_num_threads(n_threads)


def test_study_evaluate_in_groups_resumes_after_a_kill_at_the_next_group(tokenizer, tmp_path):
    """With ``eval_group_tasks`` 1 each task's rollouts are one group whose lines land when it ends: a kill in the
    second group keeps the first task's line and transcripts, and the rerun evaluates the second task only."""
    from leanlm.wideseek import study as st

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = {**st.QUICK, "eval_tasks": 2, "eval_max_rows": 3, "n": 2, "max_new_tokens": 8, "role_max_new_tokens": {},
               "max_lead_turns": 1, "eval_group_tasks": 1}
        study = _tiny_sft_study(tokenizer, tmp_path, cfg)
        tasks = [t.instance_id for t in st.eval_tasks(cfg)]
        assert len(tasks) == 2
        real_group, calls, kill = st.Study._evaluate_group, [], {"at": 2}

        class Killed(Exception):
            pass

        def killed_in_second(self, path, group, *args):
            calls.append([t.instance_id for t in group])
            if len(calls) == kill["at"]:
                raise Killed
            return real_group(self, path, group, *args)

        st.Study._evaluate_group = killed_in_second
        try:
            with pytest.raises(Killed):
                study.evaluate("sft", 0, 2)
            path = tmp_path / "evals" / "sft-seed0-w2.jsonl"
            assert [json.loads(x)["task"] for x in path.read_text().splitlines()] == tasks[:1]
            assert len(st.transcript_path(path).read_text().splitlines()) == cfg["n"]
            assert calls == [tasks[:1], tasks[1:]]
            calls.clear()
            kill["at"] = None
            study.evaluate("sft", 0, 2)
        finally:
            st.Study._evaluate_group = real_group
        assert calls == [tasks[1:]]  # only the task without a line
        assert [json.loads(x)["task"] for x in path.read_text().splitlines()] == tasks
        assert all(json.loads(x)["group_tasks"] == 1 for x in path.read_text().splitlines())
        assert len(st.transcript_path(path).read_text().splitlines()) == 2 * cfg["n"]
    finally:
        torch.set_num_threads(n_threads)


def test_study_evaluate_train_split_runs_grpo_pool_prompts_into_their_own_folder(tokenizer, tmp_path):
    """``split="train"`` evaluates prompts of GRPO's pool, spread over it, into ``evals-train`` (which
    ``summarize`` does not mix with the held-out results); an unknown split is refused."""
    from leanlm.wideseek import study as st
    from leanlm.wideseek.tasks import generate_wide_tasks

    cfg = {**st.QUICK, "eval_tasks": 3, "marl_max_rows": 8, "train_column_sets": 5, "eval_group_tasks": 1}
    pool = generate_wide_tasks("train", min_rows=2, max_rows=8, column_sets=5)
    chosen = st.train_eval_tasks(cfg)
    assert len(pool) == 15 and [t.instance_id for t in chosen] == [pool[i].instance_id for i in (0, 5, 10)]
    assert {t.split for t in chosen} == {"train"} and not {t.family for t in chosen} & {t.family for t in st.eval_tasks(cfg)}
    study = _tiny_sft_study(tokenizer, tmp_path, cfg)
    real_group, groups = st.Study._evaluate_group, []
    st.Study._evaluate_group = lambda self, path, group, *args: groups.append((path, [t.instance_id for t in group]))
    try:
        study.evaluate("sft", 0, 2, split="train")
        with pytest.raises(ValueError, match="unknown split 'dev'"):
            study.evaluate("sft", 0, 2, split="dev")
    finally:
        st.Study._evaluate_group = real_group
    assert [p for p, _ in groups] == [tmp_path / "evals-train" / "sft-seed0-w2.jsonl"] * 3
    assert [ids for _, ids in groups] == [[t.instance_id] for t in chosen]
    (tmp_path / "evals-train" / "sft-seed0-w2.jsonl").write_text(
        json.dumps({"task": "a", "f1": [0.5, 0.0], "format_ok": [True, False]}) + "\n"
        + json.dumps({"task": "b", "f1": [0.25, 0.25], "format_ok": [True, True]}) + "\n")
    metrics = st.summarize(tmp_path)
    assert metrics["in_distribution"] == {"sft-seed0-w2": {"f1": 25.0, "format_ok": 0.75, "tasks": 2}}
    assert "f1_sft" not in metrics  # held-out metrics read evals/ only


def test_transcript_records_each_subagent_step_with_its_calls_and_results(task):
    """A subagent that searches once and then reports: its steps hold the raw reply, the call's name, arguments
    and the start of the tool's result, then the report turn."""
    search = ('<tool_call>{"name": "search", "arguments": {"queries": [{"query": "Algiers population", '
              '"count": 2}]}}</tool_call>')

    def policy(agent, messages, tools):
        if agent == "lead":
            return CALL if sum(m["role"] == "assistant" for m in messages) == 0 else gold_answer_text(task)
        return search if not any(m["role"] == "tool" for m in messages) else f"report of {agent}"

    cfg = AgentConfig(max_lead_turns=2, max_sub_turns=3, few_shot=False)
    result = WideSeek(ScriptedBackend(policy), ToyTools(), cfg).run(task.query, "table")
    t = rollout_transcript(task, result)
    sub = t["subagents"][0]
    assert sub["status"] == "answered" and sub["report"] == "report of sub-1"
    first, second = sub["steps"]
    assert first["turn"] == 1 and second["turn"] == 2 and second["calls"] == []
    assert [c["name"] for c in first["calls"]] == ["search"] and first["calls"][0]["malformed"] is False
    assert "Algiers population" in first["calls"][0]["arguments"]
    assert first["calls"][0]["result"].startswith("[Doc 1](http://toy/Algiers population)")
    json.dumps(t)
