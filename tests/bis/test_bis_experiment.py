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


def test_contender_names_map_to_configs() -> None:
    from leanlm.bis.bench import contender_config

    c = contender_config("ours:stream/two-pass/1w", 0.2, 0.1)
    assert (c.engine, c.plan, c.workers, c.output_format, c.ratio) == ("stream", "two-pass", 1, "jsonl", 0.1)
    c = contender_config("ours:stream+mmprm", 0.05, 0.25)
    assert (c.engine, c.plan, c.workers, c.output_format, c.compat) == ("stream", "auto", 0, "mmprm", "official")
    with pytest.raises(ValueError, match="unknown contender option"):
        contender_config("ours:stream/fast", 0.05, 0.25)
