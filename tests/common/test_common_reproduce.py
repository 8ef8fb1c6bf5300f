from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from leanlm import reproduce as repro
from leanlm.common.report import ExperimentResult, Figure, Table


@pytest.fixture
def isolated_registry(monkeypatch):
    """An empty registry with module discovery switched off, restored after the test."""
    monkeypatch.setattr(repro, "REGISTRY", {})
    monkeypatch.setattr(repro, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(repro, "EXPERIMENT_MODULES", ())
    return repro.REGISTRY


def _register_pair():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    @repro.register(name="boom", module="test", title="Always fails", quick={"n": 1})
    def boom(config, ctx):
        raise RuntimeError("deliberate failure for the test")

    @repro.register(
        name="fine", module="test", title="Works",
        claims=[repro.Claim("answer", paper="42", metric="answer"), repro.Claim("not measured", paper="1")],
        quick={"n": 2}, full={"n": 3},
    )
    def fine(config, ctx):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, config["n"]])
        (ctx.out_dir / "artifact.txt").write_text("kept")
        return ExperimentResult(
            tables=[Table("t", ["a", "b"], [[1, 2.5]])], figures=[Figure.from_matplotlib(fig, "line")],
            metrics={"answer": 41.5}, notes=["a note"],
        )


def test_failing_experiment_does_not_stop_the_others(isolated_registry, tmp_path):
    _register_pair()
    index, records = repro.reproduce("quick", out=tmp_path / "rep")
    assert [(r.name, r.status) for r in records] == [("boom", "failed"), ("fine", "ok")]
    assert "deliberate failure for the test" in records[0].error
    assert records[1].config == {"n": 2}
    assert records[1].claims[0].ours == "41.5" and records[1].claims[1].ours == "n/a"
    page = index.read_text()
    assert "class='failed'>failed" in page and "deliberate failure for the test" in page
    assert "data:image/png;base64," in page  # figure embedded: the HTML is self-contained
    md = (tmp_path / "rep" / "index.md").read_text()
    assert "| boom | test | failed |" in md and "| fine | test | ok |" in md
    pngs = list((tmp_path / "rep").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "rep" / "fine" / "artifact.txt").read_text() == "kept"
    data = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert data["experiments"][1]["metrics"] == {"answer": 41.5}
    assert "git commit" in data["environment"]


def test_full_mode_and_only_filter(isolated_registry, tmp_path):
    _register_pair()
    _, records = repro.reproduce("full", only=["fine"], out=tmp_path / "r2")
    assert [r.name for r in records] == ["fine"] and records[0].config == {"n": 3}
    with pytest.raises(KeyError, match="unknown experiment or module: nope"):
        repro.reproduce("quick", only=["nope"], out=tmp_path / "r3")
    with pytest.raises(ValueError, match="mode must be"):
        repro.reproduce("medium", out=tmp_path / "r4")


def test_broken_module_import_is_reported_as_failed(isolated_registry, tmp_path, monkeypatch):
    import leanlm

    package = tmp_path / "brokenmod"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "experiments.py").write_text("raise ImportError('a dependency is missing')\n")
    monkeypatch.setattr(leanlm, "__path__", [*leanlm.__path__, str(tmp_path)])
    monkeypatch.setattr(repro, "EXPERIMENT_MODULES", ("brokenmod", "absentmod"))  # absent: silently skipped
    _register_pair()
    _, records = repro.reproduce("quick", out=tmp_path / "r5")
    assert records[0].name == "brokenmod-import" and records[0].status == "failed"
    assert "a dependency is missing" in records[0].error
    assert {r.name: r.status for r in records[1:]} == {"boom": "failed", "fine": "ok"}


def test_cli_reproduce_exit_code_and_listing(isolated_registry, tmp_path):
    from leanlm.cli import app

    _register_pair()
    runner = CliRunner()
    listing = runner.invoke(app, ["reproduce", "--list"])
    assert listing.exit_code == 0 and "boom" in listing.output and "fine" in listing.output
    result = runner.invoke(app, ["reproduce", "--quick", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 1  # one experiment failed
    assert "failed" in result.output and "index.html" in result.output
    ok = runner.invoke(app, ["reproduce", "--only", "fine", "--out", str(tmp_path / "cli2")])
    assert ok.exit_code == 0, ok.output


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="row 1 has 1 cells, expected 2"):
        Table("t", ["a", "b"], [[1, 2], [3]])


def test_cli_mounts_only_the_module_a_command_line_enters():
    from leanlm.cli import MODULES, build_app, modules_named_by

    assert modules_named_by(["bis", "select", "x"]) == {"bis"}
    assert modules_named_by(["--help"]) == set()
    assert modules_named_by(["reproduce", "--quick"]) == set()
    assert modules_named_by(["nonsense"]) is None
    lean = build_app(set())
    result = CliRunner().invoke(lean, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in MODULES)
