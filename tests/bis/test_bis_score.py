"""BIS formula: golden values, properties (hypothesis), and exactness of the vectorised statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leanlm.bis.reference import scores_of
from leanlm.bis.scan import _stats_from_rows
from leanlm.bis.schema import Fields, build_decoder
from leanlm.bis.score import (
    BIS,
    LowMC,
    MixedOnly,
    MixtureOnly,
    RandomScorer,
    ReliabilityOnly,
    RolloutStats,
    bis_value,
    make_scorer,
    seeded_uniform,
)

mc = st.sampled_from([0.0, 0.0625, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0]) | st.floats(0.0, 1.0)
alphas = st.floats(0.0, 1.0)


def stats_of(score_lists: list[list[float]]) -> RolloutStats:
    n, n_pos, sum_pos = [], [], []
    for scores in score_lists:
        total, k = 0.0, 0
        for s in scores:
            if s > 0:
                total += s
                k += 1
        n.append(len(scores))
        n_pos.append(k)
        sum_pos.append(total)
    return RolloutStats(np.array(n, np.int32), np.array(n_pos, np.int32), np.array(sum_pos), np.arange(len(n)))


def test_golden_values() -> None:
    assert bis_value([0.0, 0.0, 0.0], 0.05) == 0.05  # all-negative = alpha (R = 1)
    assert bis_value([0.5, 1.0], 0.2) == 0.2 * 0.75  # all-positive = alpha * mean
    # mixed: p = 2/4, R = (0.25 + 0.75) / 2
    assert bis_value([0.25, 0.75, 0.0, 0.0], 0.05) == (0.25 + 0.05) * 0.5
    # strict > 0 threshold: a tiny positive is a positive
    assert bis_value([1e-9, 0.0], 0.0) == 0.25 * 1e-9
    with pytest.raises(ValueError):
        bis_value([], 0.05)


@settings(max_examples=300, deadline=None)
@given(st.lists(mc, min_size=1, max_size=40), alphas)
def test_bounds(scores: list[float], alpha: float) -> None:
    b = bis_value(scores, alpha)
    r = (sum(s for s in scores if s > 0) / sum(s > 0 for s in scores)) if any(s > 0 for s in scores) else 1.0
    assert 0.0 <= b <= (0.25 + alpha) * r + 1e-15
    assert b >= alpha * r - 1e-15


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.data())
def test_mixture_symmetric_in_p(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    m = MixtureOnly().scores(RolloutStats(np.array([n, n]), np.array([k, n - k]), np.array([0.0, 0.0]),
                                          np.arange(2)))
    assert m[0] == pytest.approx(m[1], abs=1e-15)
    assert 0.0 <= m[0] <= 0.25


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30), st.data(), alphas)
def test_monotone_in_reliability(n: int, data: st.DataObject, alpha: float) -> None:
    k = data.draw(st.integers(1, n))
    lo, hi = sorted(data.draw(st.lists(st.floats(1e-6, 1.0), min_size=2, max_size=2)))
    s = RolloutStats(np.array([n, n]), np.array([k, k]), np.array([lo * k, hi * k]), np.arange(2))
    b = BIS(alpha).scores(s)
    assert b[0] <= b[1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(mc, min_size=1, max_size=12), min_size=1, max_size=30), alphas)
def test_vectorised_equals_scalar_exactly(score_lists: list[list[float]], alpha: float) -> None:
    got = BIS(alpha).scores(stats_of(score_lists))
    want = [bis_value(s, alpha) for s in score_lists]
    assert got.tolist() == want  # bit-exact, so ties fall exactly as in the official script


def test_decoder_stats_bit_exact_on_long_rollouts() -> None:
    """The column-wise sum must equal Python's left-to-right sum, also past numpy's pairwise-sum block (8)
    and past the 256-column grid (row-wise fallback)."""
    rng = np.random.default_rng(0)
    dec = build_decoder(Fields())
    recs = []
    for n in (1, 7, 8, 9, 17, 64, 300):
        sc = [float(x) for x in rng.random(n)]
        sc[0] = 0.0
        recs.append({"steps_with_score": [{"score": s, "step": "x"} for s in sc] + [{"score": None}]})
    import json

    rows = dec.decode_lines("\n".join(json.dumps(r) for r in recs).encode() + b"\n")
    stats, _ = _stats_from_rows(rows, False, 0, 0)
    want = [bis_value(scores_of(r), 0.05) for r in recs]
    assert BIS(0.05).scores(stats).tolist() == want
    assert stats.n.tolist() == [len(scores_of(r)) for r in recs]


def test_other_scorers() -> None:
    s = stats_of([[0.0, 0.0], [1.0, 1.0], [0.5, 0.0], [0.125, 0.0]])
    assert MixtureOnly().scores(s).tolist() == [0.0, 0.0, 0.25, 0.25]
    assert ReliabilityOnly().scores(s).tolist() == [1.0, 1.0, 0.5, 0.125]
    assert LowMC().scores(s).tolist() == [0.0, 0.0, 0.5, 0.875]
    mixed = MixedOnly(seed=1).scores(s)
    assert (mixed[2:] >= 1.0).all() and (mixed[:2] < 1.0).all()
    r1, r2 = RandomScorer(3).scores(s), RandomScorer(3).scores(s)
    assert r1.tolist() == r2.tolist() and not np.array_equal(r1, RandomScorer(4).scores(s))
    assert make_scorer("bis", alpha=0.2) == BIS(0.2)
    with pytest.raises(ValueError):
        make_scorer("nope")
    with pytest.raises(ValueError):
        BIS(alpha=-1.0)


def test_seeded_uniform_is_uniform_and_chunk_independent() -> None:
    rows = np.arange(200_000)
    u = seeded_uniform(5, 2, rows)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert np.array_equal(u[1000:2000], seeded_uniform(5, 2, rows[1000:2000]))
    assert not math.isclose(float(u[0]), float(seeded_uniform(5, 3, rows[:1])[0]))
