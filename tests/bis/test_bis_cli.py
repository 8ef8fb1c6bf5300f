"""The ``leanlm bis`` commands end to end on a small synthetic corpus."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from leanlm.bis.cli import app

runner = CliRunner()


def test_synth_select_score_stats_external(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    r = runner.invoke(app, ["synth", str(corpus), "--rollouts", "600", "--sources", "3", "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["files"] == 3
    assert len(list(corpus.glob("*.jsonl"))) == 3
    sel = tmp_path / "sel.jsonl"
    r = runner.invoke(app, ["select", str(corpus), "-o", str(sel), "--ratio", "0.1", "--alpha", "0.2",
                            "--scores-out", str(tmp_path / "sel-scores.csv")])
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "sel.jsonl.manifest.json").read_text())
    assert man["settings"]["alpha"] == 0.2 and man["settings"]["ratio"] == 0.1
    assert man["totals"]["kept"] == len(sel.read_text().splitlines()) == sum(
        max(1, int(f["candidates"] * 0.1)) for f in man["files"])
    assert all(len(f["sha256"]) == 64 for f in man["files"])
    assert len((tmp_path / "sel-scores.csv").read_text().splitlines()) == 600 + 1  # header
    scores = tmp_path / "s.parquet"
    r = runner.invoke(app, ["score", str(corpus), "-o", str(scores), "--alpha", "0.2"])
    assert r.exit_code == 0, r.output
    ext = tmp_path / "ext.jsonl"
    r = runner.invoke(app, ["select", str(corpus), "-o", str(ext), "--ratio", "0.1", "--scorer", "external",
                            "--scores-file", str(scores)])
    assert r.exit_code == 0, r.output
    assert ext.read_bytes() == sel.read_bytes()  # BIS via a score file = BIS
    png, js = tmp_path / "h.png", tmp_path / "s.json"
    r = runner.invoke(app, ["stats", str(corpus), "--png", str(png), "--json", str(js)])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads(js.read_text())["sources"]
    assert sum(s["rows"] for s in summary.values()) == 600
    for s in summary.values():
        assert s["all_negative"] + s["all_positive"] + s["mixed"] == s["candidates"]


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"steps_with_score": [{"score": 1}]}\n{"steps_with_score": [{"score": "x"}]}\n')
    r = runner.invoke(app, ["select", str(bad), "-o", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2
    assert f"{bad}:2:" in r.output
    r = runner.invoke(app, ["select", str(bad), "-o", str(tmp_path / "o.jsonl"), "--ratio-for", "oops"])
    assert r.exit_code != 0
    r = runner.invoke(app, ["select", str(bad), "-o", str(tmp_path / "o.jsonl"), "--skip-invalid"])
    assert r.exit_code == 0, r.output
    assert "1 rejected" in r.output
    assert (tmp_path / "o.jsonl.rejects.jsonl").exists()
