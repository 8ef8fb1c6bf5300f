"""LLM judge and LLM aligner hooks through a scripted backend."""

from __future__ import annotations

import io

import pandas as pd

from leanlm.wideseek.judge import LLMAligner, LLMJudge, parse_json_block
from leanlm.wideseek.llm import BackendError, ScriptedBackend
from leanlm.wideseek.scorer import score_table


def test_parse_json_block_takes_the_last_object():
    assert parse_json_block('x ```json\n{"a": 1}\n``` y ```json {"b": 2} ```') == {"b": 2}
    assert parse_json_block("```json\n[1]\n```") is None and parse_json_block("none") is None


def test_llm_judge_scores_each_item_and_zeroes_on_failure():
    prompts = []

    def policy(agent, messages, tools):
        prompts.append(messages[0]["content"])
        return 'Item 0 fine, item 1 wrong.\n```json\n{"idx_0": 1, "idx_1": 0, "idx_2": true}\n```'

    judge = LLMJudge(ScriptedBackend(policy))
    assert judge(["red fruit", "blue", "x"], ["apple-red", "green", "x"], "same colour") == [1.0, 0.0, 0.0]
    assert "same colour" in prompts[0] and '"idx_1"' in prompts[0] and '"target": "green"' in prompts[0]
    assert LLMJudge(ScriptedBackend(lambda a, m, t: "no json"))(["a"], ["b"], None) == [0.0]

    def boom(agent, messages, tools):
        raise BackendError("down")

    assert LLMJudge(ScriptedBackend(boom))(["a", "b"], ["a", "b"], "c") == [0.0, 0.0]


def test_llm_aligner_in_score_table():
    gold = pd.read_csv(io.StringIO("country,capital\nUnited States,Washington\nGermany,Berlin\n"))
    spec = {"required": ["country", "capital"], "unique_columns": ["country"],
            "eval_pipeline": {"country": {"metric": ["exact_match"]}, "capital": {"preprocess": ["norm_str"],
                                                                                 "metric": ["exact_match"]}}}
    asked = []

    def policy(agent, messages, tools):
        asked.append(messages[0]["content"])
        return '```json\n{"USA": "United States", "Atlantis": "Germany", "ignored": "x"}\n```'

    aligner = LLMAligner(ScriptedBackend(policy))
    text = "```markdown\n| country | capital |\n|---|---|\n| USA | Washington |\n| Germany | Berlin |\n```"
    s = score_table(text, gold, spec, aligner=aligner)
    assert s.score == 1.0 and s.f1_by_item == 1.0
    assert len(asked) == 1 and '["USA"]' in asked[0]  # identical values are not sent to the model
