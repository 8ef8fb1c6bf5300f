"""Task difficulty knobs and the tuning step (issue #14: full KV must land between floor and ceiling)."""

from __future__ import annotations

import json
import re

import pytest

from leanlm.fasa.evaluation.run import step_build_prompts, step_tune_tasks
from leanlm.fasa.evaluation.tasks import DEFAULT_PARAMS, TASKS, build_trial, task_params
from leanlm.fasa.evaluation.tune import LADDERS, TUNE_SEED, tune_suite

from .test_fasa_evaluation import WordTokenizer


def _document(trial) -> str:
    return trial.prompt.split("<assistant>")[0]


@pytest.mark.parametrize("task", TASKS)
def test_explicit_default_knobs_give_the_default_trial(task):
    tok = WordTokenizer()
    plain = build_trial(tok, task, 1200, 5)
    explicit = build_trial(tok, task, 1200, 5, {**DEFAULT_PARAMS[task], "question_first": False})
    assert plain == explicit


def test_wrong_knobs_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="'kv_retrieval' has no parameter 'keys'"):
        task_params("kv_retrieval", {"keys": 2})
    with pytest.raises(ValueError, match="'pairs' must be int"):
        task_params("kv_retrieval", {"pairs": "4"})
    with pytest.raises(ValueError, match="'hops' must be at least 1"):
        task_params("variable_tracking", {"hops": 0})
    with pytest.raises(ValueError, match="'share' must be in"):
        task_params("common_words", {"share": 1.5})
    with pytest.raises(ValueError, match="unknown task"):
        task_params("nope")


def test_each_knob_changes_what_the_prompt_holds():
    tok = WordTokenizer()
    multikey = _document(build_trial(tok, "niah_multikey", 1200, 2, {"keys": 2}))
    assert multikey.count("The special magic number for") == 2
    multivalue = build_trial(tok, "niah_multivalue", 1200, 2, {"values": 2})
    assert len(multivalue.answers) == 2 and _document(multivalue).count("One of the special magic numbers") == 2
    kv = build_trial(tok, "kv_retrieval", 1200, 2, {"pairs": 4})
    assert len(re.findall(r'"[0-9a-f]{8}": "[0-9a-f]{8}"', _document(kv))) == 4
    vt = build_trial(tok, "variable_tracking", 1200, 2, {"hops": 1, "distractor_chain": False})
    assert len(vt.answers) == 2 and _document(vt).count("VAR ") == 3  # "VAR A = x." and "VAR B = VAR A."
    vt_full = build_trial(tok, "variable_tracking", 1200, 2)
    assert len(vt_full.answers) == 4 and _document(vt_full).count("VAR ") == 14  # 2 chains of 1 + 3 hops
    cw = build_trial(tok, "common_words", 1200, 2, {"words": 1, "share": 0.3})
    entries = [line.split(". ", 1)[1] for line in _document(cw).splitlines() if ". " in line and line[0].isdigit()]
    assert len(cw.answers) == 1 and entries.count(cw.answers[0]) == int(len(entries) * 0.3)
    asked = build_trial(tok, "qa_article", 1200, 2, {"question_first": True})
    question = asked.prompt.split("</user>")[0].rsplit("\n\n", 1)[1].strip()
    assert asked.prompt.count(question) == 2 and asked.prompt.index(question) < asked.prompt.index(asked.answers[0])
    assert 600 < asked.n_tokens <= 1200


def _fake_answer(solvable):
    """A 'model' that answers a prompt correctly iff ``solvable(prompt)``; counts its calls."""
    calls = []

    def answer(model, tok, prompt, max_new_tokens):
        calls.append(prompt)
        if not solvable(prompt):
            return "no idea"
        return " ".join(re.findall(r"(?:is|are): (\d+)", prompt.split("<assistant>")[0]))
    return answer, calls


def test_tuning_keeps_the_hardest_rung_full_kv_passes_and_resumes_without_rerunning(tmp_path):
    tok = WordTokenizer()
    ladders = {"niah_multikey": LADDERS["niah_multikey"], "niah_single": LADDERS["niah_single"]}

    def solvable(prompt):  # only niah_multikey with 2 keys: 2 needles + the answer prefix's mention
        return prompt.count("The special magic number for") == 3
    answer, calls = _fake_answer(solvable)
    result = tune_suite(None, tok, ["niah_multikey", "niah_single"], [900], seeds=3, target=0.5, out=tmp_path,
                        ladders=ladders, answer=answer)
    assert result["params"] == {"900": {"niah_multikey": {"keys": 2}, "niah_single": {"question_first": True}}}
    rungs = {(r["task"], r["rung"]): r for r in result["rungs"]}
    # 2 of 3 needed: a rung stops once decided (two misses, or two hits)
    assert rungs[("niah_multikey", 0)]["correct"] == 0 and rungs[("niah_multikey", 0)]["seeds"] == 2
    assert not rungs[("niah_multikey", 0)]["chosen"]
    assert rungs[("niah_multikey", 1)]["correct"] == 2 and rungs[("niah_multikey", 1)]["chosen"]
    assert ("niah_multikey", 2) not in rungs  # the walk stops at the first passing rung
    assert rungs[("niah_single", 1)]["floor"] and rungs[("niah_single", 1)]["chosen"]
    assert len(calls) == 2 * 2 + 2 * 2
    seeds = {json.loads(line)["seed"] for line in (tmp_path / "tuning.jsonl").read_text().splitlines()}
    assert seeds == {TUNE_SEED, TUNE_SEED + 1} and min(seeds) > 1000
    again, calls_again = _fake_answer(solvable)
    assert tune_suite(None, tok, ["niah_multikey", "niah_single"], [900], seeds=3, target=0.5, out=tmp_path,
                      ladders=ladders, answer=again) == result
    assert calls_again == []  # every tuning answer came from the checkpoint


def test_the_tuned_knobs_reach_the_prompts_of_their_length_only(tmp_path):
    tok = WordTokenizer()
    config = {"tasks": ["kv_retrieval"], "lengths": [900, 1200], "n_per_task": 2, "seed": 0,
              "task_params": {"1200": {"kv_retrieval": {"pairs": 4}}}}
    params = step_tune_tasks(None, tok, config, tmp_path, print)
    trials = step_build_prompts(tok, config, params)
    pairs = [len(re.findall(r'"[0-9a-f]{8}": "[0-9a-f]{8}"', _document(t))) for t in trials]
    assert pairs == [32, 32, 4, 4]
    assert step_tune_tasks(None, tok, {**config, "task_params": None, "tune": None}, tmp_path, print) == {}


def test_retention_counts_only_the_prompts_full_kv_answers_and_the_tuning_table_lists_each_rung():
    from leanlm.fasa.evaluation.report import retention_table, tuning_table

    def row(pid, method, budget, correct):
        return {"id": pid, "method": method, "budget": budget, "correct": correct, "agree": correct}

    rows = [row("a", "full KV", 0, True), row("b", "full KV", 0, True), row("c", "full KV", 0, False),
            row("a", "FASA", 64, True), row("b", "FASA", 64, False), row("c", "FASA", 64, True)]
    table = retention_table(rows, [64], 4096)
    assert "2 prompts" in table.title and table.rows == [["FASA", "50 [9, 91] (1/2)"]]
    assert retention_table([row("c", "full KV", 0, False)], [64], 4096) is None
    tuning = {"target": 0.5, "seeds": 4, "first_seed": TUNE_SEED, "rungs": [
        {"length": 900, "task": "kv_retrieval", "rung": 0, "params": {}, "correct": 0, "seeds": 3, "chosen": False,
         "floor": False},
        {"length": 900, "task": "kv_retrieval", "rung": 1, "params": {"pairs": 8}, "correct": 2, "seeds": 2,
         "chosen": True, "floor": False}]}
    assert [r[3:] for r in tuning_table(tuning).rows] == [["default (RULER-like)", "0/3", ""],
                                                          ['{"pairs": 8}', "2/2", "yes"]]


def test_floor_tasks_and_goal_metrics_on_the_tasks_off_the_floor():
    from leanlm.fasa.evaluation.metrics import aggregate
    from leanlm.fasa.evaluation.report import floor_tasks, goal_metrics

    tuning = {"rungs": [{"length": 900, "task": "kv_retrieval", "floor": True},
                        {"length": 900, "task": "niah_single", "floor": False},
                        {"length": 1200, "task": "niah_single", "floor": True}]}
    assert floor_tasks(tuning, 900) == {"kv_retrieval"} and floor_tasks(None, 900) == set()

    def row(pid, task, method, budget, correct):
        return {"id": pid, "task": task, "method": method, "budget": budget, "correct": correct, "agree": correct}

    rows = [row("a", "niah_single", "full KV", 0, True), row("a", "niah_single", "FASA", 256, True),
            row("a", "niah_single", "Quest (page 16)", 256, False),
            row("b", "kv_retrieval", "full KV", 0, False), row("b", "kv_retrieval", "FASA", 256, False),
            row("b", "kv_retrieval", "Quest (page 16)", 256, True)]
    everything = goal_metrics(aggregate(rows), [256])
    assert everything["fasa_minus_full_256"] == 0.0 and everything["fasa_margin_over_best_baseline"] == 0.0
    off = goal_metrics(aggregate([r for r in rows if r["task"] not in floor_tasks(tuning, 900)]), [256])
    assert off["fasa_minus_full_256"] == 0.0 and off["fasa_margin_over_best_baseline"] == 100.0


def test_perplexity_texts_are_long_enough_and_code_skips_the_haystack_files(monkeypatch):
    import torch

    import leanlm.fasa.evaluation.run as run
    from leanlm.common.data import cpython_source_files
    from leanlm.fasa.evaluation.tasks import CODE_HAYSTACK_FILES

    seen: list[str] = []

    class SplitTokenizer:
        def __call__(self, text, return_tensors=None):
            seen.append(text)

            class Out:
                input_ids = torch.arange(len(text.split()))[None]
            return Out()

    for kind in ("wiki", "code"):
        assert run.ppl_text(kind, SplitTokenizer(), 4065).shape == (4065,)
    first_held_out = cpython_source_files()[CODE_HAYSTACK_FILES].read_text(encoding="utf-8", errors="replace")
    assert seen[-1].startswith(first_held_out)
    with pytest.raises(ValueError, match="perplexity text has only"):
        run.ppl_text("code", SplitTokenizer(), 10**8)


def test_perplexity_ratio_interval_is_the_paired_t_interval_mapped_to_percent():
    import math

    from leanlm.fasa.evaluation.metrics import ppl_ratio_interval

    ref = [1.0, 2.0, 3.0, 4.0]
    same = ppl_ratio_interval(ref, ref)
    assert same == (0.0, 0.0, 0.0)
    shifted = ppl_ratio_interval([x + 0.1 for x in ref], ref)  # every token 0.1 nats worse: no spread
    assert shifted[0] == pytest.approx(100 * math.expm1(0.1)) and shifted[1] == pytest.approx(shifted[2])
    d = [0.3, -0.1, 0.2, 0.0]  # mean 0.1, sd 0.1826, t(0.975, 3) = 3.1824
    _, lo, hi = ppl_ratio_interval([a + b for a, b in zip(ref, d, strict=True)], ref)
    half = 3.182446 * 0.182574 / 2
    assert lo == pytest.approx(100 * math.expm1(0.1 - half), rel=1e-4)
    assert hi == pytest.approx(100 * math.expm1(0.1 + half), rel=1e-4)
    with pytest.raises(ValueError, match="equal lengths"):
        ppl_ratio_interval([1.0], ref)


def test_flush_denormals_zeroes_subnormals_inside_and_restores_after():
    import torch

    from leanlm.fasa.evaluation.harness import flush_denormals

    tiny = torch.tensor([1e-41], dtype=torch.float32)
    assert float(tiny * 1.0) > 0  # subnormal arithmetic by default
    with flush_denormals() as supported:
        if supported:  # x86 with SSE3: subnormal results are flushed to zero
            assert float(tiny * 1.0) == 0.0
    assert float(tiny * 1.0) > 0
