"""CLI polish: help width when piped, literal percent signs in help, the reproduce --compare options."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from leanlm import reproduce as repro
from leanlm.common.report import ExperimentResult


def _widths(text: str) -> list[int]:
    return [len(line.rstrip("\n")) for line in text.splitlines()]


def test_help_is_not_squeezed_to_80_columns_when_piped(monkeypatch):
    from typer import rich_utils

    from leanlm.cli import HELP_WIDTH, build_app

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", None)
    result = CliRunner().invoke(build_app(set()), ["reproduce", "--help"])
    assert result.exit_code == 0
    widths = _widths(result.output)
    assert max(widths) == HELP_WIDTH  # rich panels span the console width
    # the long --compare help stays on fewer lines than at 80 columns
    assert "Previous run to compare with (results.json or its report directory); default:" in result.output


def test_user_columns_win(monkeypatch):
    from typer import rich_utils

    from leanlm.cli import widen_help_when_piped

    monkeypatch.setattr(rich_utils, "MAX_WIDTH", None)
    monkeypatch.setenv("COLUMNS", "90")
    widen_help_when_piped()
    assert rich_utils.MAX_WIDTH is None


def test_fasa_calibrate_help_shows_a_single_percent_sign():
    pytest.importorskip("torch")
    from leanlm.cli import build_app

    result = CliRunner().invoke(build_app({"fasa"}), ["fasa", "calibrate", "--help"])
    assert result.exit_code == 0, result.output
    assert "25% of head_dim/2" in result.output and "%%" not in result.output


@pytest.fixture
def one_experiment(monkeypatch):
    monkeypatch.setattr(repro, "REGISTRY", {})
    monkeypatch.setattr(repro, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(repro, "EXPERIMENT_MODULES", ())

    @repro.register(name="one", module="fasa", title="One",
                    claims=[repro.Claim("c", paper="1", metric="m", rule=repro.AtLeast("m", 1))])
    def one(config, ctx):
        return ExperimentResult(metrics={"m": 2})


def test_reproduce_prints_verdicts_and_compare_options(one_experiment, tmp_path):
    from leanlm.cli import app

    runner = CliRunner()
    first = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "one  (1 reproduced)" in first.output and str(tmp_path / "a" / "index.html") in first.output
    second = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "b"), "--compare", str(tmp_path / "a")])
    assert second.exit_code == 0, second.output
    assert "No verdict or headline number changed" in (tmp_path / "b" / "index.html").read_text()
    third = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "c"), "--no-compare"])
    assert third.exit_code == 0 and "previous run" not in (tmp_path / "c" / "index.html").read_text()
    missing = runner.invoke(app, ["reproduce", "--out", str(tmp_path / "d"), "--compare", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "cannot read the previous run" in missing.output
