"""The registered reproduce experiment runs end to end at toy size and reports identical selections."""

from __future__ import annotations

from pathlib import Path

import pytest

from leanlm.reproduce import RunContext


@pytest.mark.slow
def test_experiment_tiny(tmp_path: Path) -> None:
    from leanlm.bis.experiments import run

    cfg = {"rollouts": 1500, "sources": 3, "repeats": 1, "corpus_root": str(tmp_path / "corpus"),
           "contenders": ["official", "duckdb-sql", "ours:stream", "ours:duckdb", "ours:stream+mmprm"]}
    res = run(cfg, RunContext(out_dir=tmp_path / "out", mode="quick"))
    assert res.metrics["identical"] == "yes"
    assert res.metrics["rollouts"] == 1500
    assert 0 < res.metrics["peak_rss_mb"] < 1024
    bench = res.tables[0]
    assert [r[0] for r in bench.rows] == cfg["contenders"]
    assert all(r[4] > 0 for r in bench.rows)
    mix = {r[0]: r for r in res.tables[1].rows}
    assert mix["BIS α=0.05, 25%"][2] > mix["full corpus"][2]  # BIS raises the share of mixed rollouts
