"""The registered reproduce experiment runs end to end at toy size and reports identical selections."""

from __future__ import annotations

from pathlib import Path

import pytest

from leanlm.reproduce import RunContext


@pytest.mark.slow
def test_experiment_tiny(tmp_path: Path) -> None:
    from leanlm.bis.experiments import run

    cfg = {"rollouts": 1500, "sources": 3, "repeats": 1, "corpus_root": str(tmp_path / "corpus"),
           "contenders": ["reference", "reference-raw", "duckdb-copy", "ours:stream", "ours:stream+mmprm"]}
    res = run(cfg, RunContext(out_dir=tmp_path / "out", mode="quick"))
    assert res.metrics["identical"] == "yes"
    assert res.metrics["rollouts"] == 1500 and res.metrics["official_contender"] == "reference"
    assert 0 < res.metrics["peak_rss_mb"] < 1024
    bench = res.tables[0]
    assert [r[0] for r in bench.rows] == cfg["contenders"]
    assert all(r[6] > 0 for r in bench.rows)
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


def test_bench_checks_outputs_and_pairs_rounds(tmp_path: Path) -> None:
    """A stand-in "official script" (any program with its CLI) that writes different bytes is flagged, the
    like-for-like ratios pair the rounds, and the report has both tables."""
    from leanlm.bis.bench import ratios, run_benchmark, to_markdown
    from leanlm.bis.synth import SynthConfig, write_corpus

    corpus = tmp_path / "c"
    write_corpus(corpus, SynthConfig(rollouts=300, sources=2, seed=1))
    fake = tmp_path / "scripts" / "build_bis_subset.py"
    fake.parent.mkdir()
    fake.write_text("import sys\nopen(sys.argv[sys.argv.index('--output') + 1], 'w').write('x\\n')\n")
    (tmp_path / "COMMIT").write_text("abc123\n")
    data = run_benchmark(corpus, tmp_path / "w", ["official-script", "reference", "duckdb-copy", "reference-raw",
                                                  "ours:stream+mmprm"], repeats=1, official_script=fake)
    res = data["results"]
    assert data["official_commit"] == "abc123"
    assert res["official-script"].identical  # it is the mmprm reference ...
    assert not res["reference"].identical and not res["ours:stream+mmprm"].identical  # ... so the rest differ
    assert res["duckdb-copy"].identical and res["reference-raw"].identical
    assert res["reference"].sha256 == res["ours:stream+mmprm"].sha256
    assert all(len(r.runs) == 1 for r in res.values())
    q = ratios(data, "reference-raw", "duckdb-copy")
    assert q["paired_min"] <= q["paired_median"] <= q["paired_max"]
    md = to_markdown(data, "leanlm bis bench")
    assert "### Raw output" in md and "### MM-PRM output" in md and "**DIFFERENT**" in md and "abc123" in md


def test_bench_cli_writes_markdown_and_json(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from leanlm.bis.cli import app
    from leanlm.bis.synth import SynthConfig, write_corpus

    corpus = tmp_path / "c"
    write_corpus(corpus, SynthConfig(rollouts=200, sources=2, seed=3))
    out = tmp_path / "r" / "bench.md"
    r = CliRunner().invoke(app, ["bench", "--out", str(out), "--corpus", str(corpus), "--repeats", "1",
                                 "--contender", "reference-raw", "--contender", "ours:stream"])
    assert r.exit_code == 0, r.output
    assert "| ours:stream |" in out.read_text() and "identical" in out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data["results"]) == {"reference-raw", "ours:stream"}
    assert data["results"]["ours:stream"]["identical"] is True
