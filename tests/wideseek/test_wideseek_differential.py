"""The scorer against WideSearch's own evaluation code, run beside ours (never vendored).

Set ``LEANLM_WIDESEARCH_DIR`` to a checkout of ByteDance-Seed/WideSearch to run the comparisons; without it
they skip, and the invariants (no exception, every metric in [0, 1]) are still fuzzed.
"""

from __future__ import annotations

import io
import os
import random

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leanlm.wideseek.difftest import ENV_VAR, compare, load_official, mutate_text, random_case
from leanlm.wideseek.scorer import SUMMARY_METRICS, NormalizedAligner, score_table

OFFICIAL_DIR = os.environ.get(ENV_VAR)
needs_official = pytest.mark.skipif(
    not OFFICIAL_DIR, reason=f"{ENV_VAR} is not set: point it to a checkout of ByteDance-Seed/WideSearch to compare "
                             "with the official evaluation code")


@pytest.fixture(scope="module")
def official():
    return load_official(OFFICIAL_DIR)


@needs_official
def test_random_tables_equal_official_code(official):
    """>= 1,000 random tables (mixed int/float columns, blanks, float-formatted integers, dates, URLs, text
    mutations): ``exact_code=True`` equals WideSearch on every metric of every case."""
    n = int(os.environ.get("LEANLM_DIFFTEST_CASES", "1000"))
    diffs, counts = compare(official, n, seed=12345)
    assert counts["cases"] == n and counts["nonzero_item_f1"] > n // 3 and counts["success"] > 0
    assert not diffs, [(d.index, d.metric, d.ours, d.official, d.case.mutations) for d in diffs[:5]]


@needs_official
def test_default_differs_only_where_the_official_code_leaves_the_unit_interval(official):
    """The default scorer equals ``exact_code=True`` (hence WideSearch) except on cases whose keys collide after
    alignment/preprocessing or that score a column with several metrics; it never leaves [0, 1]."""
    rng = random.Random(7)
    for _ in range(300):
        case = random_case(rng)
        exact = score_table(case.response, case.gold, case.spec, exact_code=True)
        default = score_table(case.response, case.gold, case.spec)
        assert all(0.0 <= getattr(default, m) <= 1.0 for m in SUMMARY_METRICS)
        if "keys collided" not in default.msg:
            assert [getattr(exact, m) for m in SUMMARY_METRICS] == [getattr(default, m) for m in SUMMARY_METRICS]


def test_year_column_with_a_blank_matches_the_issue_numbers():
    gold = pd.read_csv(io.StringIO("k,year\na,2001\nb,2002\nc,2003\nd,\n"))
    spec = {"required": ["k", "year"], "unique_columns": ["k"],
            "eval_pipeline": {"k": {"metric": ["exact_match"]}, "year": {"metric": ["exact_match"]}}}
    text = "```markdown\n| k | year |\n|---|---|\n| a | 2001 |\n| b | 2002 |\n| c | 2003 |\n| d | 2004 |\n```"
    s = score_table(text, gold, spec)
    assert (s.f1_by_item, s.f1_by_row) == (0.5, 0.0)  # WideSearch's own numbers (issue 12)


_GOLD = pd.read_csv(io.StringIO("Name,Pop,Year,Capital\nFrance,67000000,1958,Paris\nGermany,83000000,1949,Berlin\n"
                                "Italy,59000000,,Rome\n"))
_SPEC = {"required": ["name", "pop", "year", "capital"], "unique_columns": ["name"],
         "eval_pipeline": {"name": {"preprocess": ["norm_str"], "metric": ["exact_match"]},
                           "pop": {"preprocess": ["extract_number"], "metric": ["number_near"], "criterion": 0.05},
                           "year": {"metric": ["exact_match"]},
                           "capital": {"preprocess": ["norm_str"], "metric": ["exact_match"]}}}
_VALID = ("Sure.\n```markdown\n| Name | Pop | Year | Capital |\n|---|---|---|---|\n| France | 67,000,000 | 1958 | Paris |\n"
          "| Germany | 83000000 | 1949.0 | Berlin |\n| Italy | 59 million | | Rome |\n```\nDone.")
_INSERTS = ["```", "```markdown", "|", "||", "<think>", "</think>", "<tool_call>", "\x00", "\x0b", "\r", "\u200b",
            " UTC", "+02:00", "**", "\n", "nan", "-", ":", ",", "\"", "'"]


@st.composite
def mutated_answers(draw):
    text = _VALID
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(["insert", "delete", "duplicate_line"]))
        if how == "insert":
            piece = draw(st.one_of(st.sampled_from(_INSERTS), st.text(max_size=4)))
            text = text[:pos] + piece + text[pos:]
        elif how == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 8)):]
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            text = "\n".join([*lines[:i + 1], lines[i], *lines[i + 1:]])
    return text


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_answers())
def test_fuzzed_answers_never_crash_and_stay_in_unit_interval(text):
    for numbers in ("official", "lenient"):
        s = score_table(text, _GOLD, _SPEC, numbers=numbers)
        values = [getattr(s, m) for m in SUMMARY_METRICS]
        assert all(0.0 <= v <= 1.0 for v in values), (values, s.msg)
        assert s.score in (0.0, 1.0)
    if OFFICIAL_DIR:
        theirs = load_official(OFFICIAL_DIR).score(text, _GOLD, _SPEC, NormalizedAligner())
        ours = score_table(text, _GOLD, _SPEC, exact_code=True)
        assert [getattr(ours, m) for m in SUMMARY_METRICS] == pytest.approx(
            [getattr(theirs, m) for m in SUMMARY_METRICS], abs=1e-9), (ours.msg, theirs.msg)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1))
def test_random_cases_with_text_mutations_keep_invariants(seed):
    rng = random.Random(seed)
    case = random_case(rng)
    text = mutate_text(case.response, rng, [])
    for numbers in ("official", "lenient"):
        s = score_table(text, case.gold, case.spec, numbers=numbers)
        assert all(0.0 <= getattr(s, m) <= 1.0 for m in SUMMARY_METRICS), s.msg
