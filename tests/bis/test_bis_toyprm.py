"""The toy PRM study: annotations follow their definition, and the study runs deterministically."""

from __future__ import annotations

from pathlib import Path

import pytest

from leanlm.bis.toyprm import ToyConfig, make_rollouts, run_study


def test_toy_annotations_are_consistent() -> None:
    cfg = ToyConfig(p_luck=0.0, eps_completer=0.0)
    for r in make_rollouts(cfg, 300, seed=1):
        prev, ok = r["x0"], True
        for j, (inc, val) in enumerate(zip(r["d"], r["v"], strict=True)):
            ok = ok and (prev + inc) % cfg.modulus == val
            prev = val
            assert r["truth"][j] == int(ok)
            # no luck and a perfect completer: the MC score is exactly 1 on correct prefixes, 0 on wrong ones
            assert r["steps_with_score"][j]["score"] == float(ok)


@pytest.mark.slow
def test_study_runs_and_is_deterministic(tmp_path: Path) -> None:
    cfg = ToyConfig(train=1200, test=300, hidden=16)
    a = run_study(cfg, tmp_path / "a", ratio=0.25, seeds=1)
    b = run_study(cfg, tmp_path / "b", ratio=0.25, seeds=1)
    assert [r["arm"] for r in a] == ["full data (100%)", "BIS α=0.2, 25%", "random 25%", "mixed-only 25%",
                                     "low-MC 25%"]
    assert [(r["macro_f1"], r["accuracy"], r["steps_trained"]) for r in a] == [
        (r["macro_f1"], r["accuracy"], r["steps_trained"]) for r in b]
    assert all(r["rollouts"] == 300 for r in a[1:]) and a[0]["rollouts"] == 1200
    assert all(0.0 <= r["macro_f1"] <= 1.0 for r in a)
