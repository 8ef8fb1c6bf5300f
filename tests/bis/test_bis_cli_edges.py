"""Inputs and outputs that cannot go wrong silently (issue #15 §1), each through ``leanlm bis select``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leanlm.bis import reference
from leanlm.bis.cli import app
from leanlm.bis.manifest import ReconciliationError, reconcile
from leanlm.bis.score import bis_value

runner = CliRunner()


def _roll(scores: list, tag: str) -> str:
    steps = ", ".join(f'{{"step": "s{j}", "score": {s}}}' for j, s in enumerate(scores))
    return f'{{"image": "i.png", "question": "q {tag}", "steps_with_score": [{steps}]}}'


def _corpus(d: Path, name: str = "a.jsonl", n: int = 12) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = [_roll([(i % 3) / 2, (i % 2) * 0.5, 0.0], str(i)) for i in range(n)]
    path = d / name
    path.write_text("\n".join(lines) + "\n")
    return path


def select(*args: str):
    return runner.invoke(app, ["select", *args])


def test_refuses_to_overwrite_output_manifest_or_rejects_without_force(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "in")
    out = tmp_path / "out.jsonl"
    r = select(str(src), "-o", str(out), "--ratio", "0.5")
    assert r.exit_code == 0, r.output
    first = out.read_bytes()
    out.write_bytes(b"keep me\n")
    r = select(str(src), "-o", str(out), "--ratio", "0.25")
    assert r.exit_code == 2 and "already exist" in r.output and "--force" in r.output
    assert out.read_bytes() == b"keep me\n"  # untouched
    out.unlink()  # the manifest alone also blocks
    r = select(str(src), "-o", str(out), "--ratio", "0.25")
    assert r.exit_code == 2 and "manifest" in r.output and not out.exists()
    (tmp_path / "out.jsonl.manifest.json").unlink()
    (tmp_path / "out.jsonl.rejects.jsonl").write_text("old\n")  # and a rejects file
    r = select(str(src), "-o", str(out), "--ratio", "0.25")
    assert r.exit_code == 2 and "rejects" in r.output and not out.exists()
    r = select(str(src), "-o", str(out), "--ratio", "0.5", "--force")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == first
    assert not (tmp_path / "out.jsonl.rejects.jsonl").exists()  # the stale rejects file is gone


def test_discovery_skips_own_outputs_recognised_by_manifest(tmp_path: Path) -> None:
    d = tmp_path / "in"
    _corpus(d, "a.jsonl", 40)
    _corpus(d, "b.jsonl", 20)
    out = d / "sel.jsonl"  # inside the input directory
    bad = d / "c.jsonl"
    bad.write_text(_roll([1.0, 0.0], "c") + "\n{broken\n")
    r = select(str(d), "-o", str(out), "--skip-invalid")
    assert r.exit_code == 0, r.output
    m1 = json.loads((d / "sel.jsonl.manifest.json").read_text())
    assert (d / "sel.jsonl.rejects.jsonl").exists()
    # A renamed copy of the output: still leanlm's, recognised through a manifest that records it.
    renamed = d / "subset-v1.jsonl"
    out.rename(renamed)
    man = json.loads((d / "sel.jsonl.manifest.json").read_text())
    man["output"] = {"path": "subset-v1.jsonl", "format": "jsonl"}  # as an older manifest records it
    (d / "old.manifest.json").write_text(json.dumps({**man, "rejects": None}))
    out2 = tmp_path / "sel2.jsonl"
    r = select(str(d), "-o", str(out2), "--skip-invalid")
    assert r.exit_code == 0, r.output
    m2 = json.loads((tmp_path / "sel2.jsonl.manifest.json").read_text())
    assert [Path(f["file"]).name for f in m2["files"]] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert m2["totals"] == {**m1["totals"]}  # nothing read back, nothing doubled
    skipped = {Path(s["file"]).name: s["why"] for s in m2["skipped_inputs"]}
    assert set(skipped) == {"subset-v1.jsonl", "sel.jsonl.rejects.jsonl"}
    assert "old.manifest.json" in skipped["subset-v1.jsonl"]
    assert "skipped" in r.output and "subset-v1.jsonl" in r.output
    # Rerunning into the same place (with --force) reads the same inputs and gives the same bytes.
    renamed.rename(out)
    (d / "old.manifest.json").unlink()
    r = select(str(d), "-o", str(out), "--skip-invalid", "--force")
    assert r.exit_code == 0, r.output
    m3 = json.loads((d / "sel.jsonl.manifest.json").read_text())
    assert m3["totals"] == m1["totals"] and len(m3["files"]) == 3


def test_empty_files_warn_and_nothing_read_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text("\n \n")
    r = select(str(d), "-o", str(tmp_path / "o.jsonl"))
    assert r.exit_code == 2 and "nothing to select" in r.output and "--allow-empty" in r.output
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.manifest.json").exists()
    for plan in ("single-pass", "two-pass"):
        out = tmp_path / f"{plan}.jsonl"
        r = select(str(d), "-o", str(out), "--plan", plan, "--allow-empty")
        assert r.exit_code == 0, r.output
        assert "empty.jsonl: empty" in r.output and "blank.jsonl: empty (no rows), 2 blank lines" in r.output
        assert "kept 0 of 0" in r.output and out.read_bytes() == b""
    _corpus(d, "good.jsonl")
    r = select(str(d), "-o", str(tmp_path / "g.jsonl"))
    assert r.exit_code == 0 and "warning:" in r.output and "empty.jsonl: empty" in r.output
    assert "kept 3 of 12" in r.output


def test_without_scores_is_shown_and_strict_scores_rejects_with_file_line(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "in")
    with open(src, "a") as fh:
        fh.write('{"image": "i", "question": "q none", "steps_with_score": [{"step": "x", "score": null}]}\n')
        fh.write('{"image": "i", "question": "q nosteps"}\n')
    r = select(str(src), "-o", str(tmp_path / "o.jsonl"))
    assert r.exit_code == 0 and "2 WITHOUT SCORES" in r.output and "--strict-scores" in r.output
    for plan in ("single-pass", "two-pass"):
        r = select(str(src), "-o", str(tmp_path / f"s-{plan}.jsonl"), "--strict-scores", "--plan", plan)
        assert r.exit_code == 2 and f"{src}:13: no scored step" in r.output, r.output
    r = select(str(src), "-o", str(tmp_path / "d.jsonl"), "--strict-scores", "--engine", "duckdb")
    assert r.exit_code == 2 and f"{src}:13: no scored step" in r.output  # duckdb hands the file to the stream engine
    r = select(str(src), "-o", str(tmp_path / "k.jsonl"), "--strict-scores", "--skip-invalid")
    assert r.exit_code == 0, r.output
    rej = [json.loads(x) for x in (tmp_path / "k.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [x["line"] for x in rej] == [13, 14]
    man = json.loads((tmp_path / "k.jsonl.manifest.json").read_text())
    assert man["totals"]["malformed"] == 2 and man["totals"]["without_scores"] == 0
    assert man["files"][0]["candidates"] == 12


def test_nan_scores_official_behaviour_or_clear_rejection(tmp_path: Path) -> None:
    assert math.isclose(bis_value([float("nan"), 0.5], 0.05), 0.15)  # the official compute_bis
    d = tmp_path / "in"
    src = _corpus(d, "a.jsonl", 9)
    with open(src, "a") as fh:
        fh.write(_roll(["NaN", 0.5], "nan-mixed") + "\n")  # BIS 0.15: among the kept
        fh.write(_roll(["NaN", "NaN"], "nan-only") + "\n")  # scored, all negative: BIS = alpha
    for plan in ("single-pass", "two-pass"):
        r = select(str(d), "-o", str(tmp_path / f"x-{plan}.jsonl"), "--plan", plan)
        assert r.exit_code == 2 and f"{src}:10: NaN step score" in r.output and "--compat official" in r.output
    ref = tmp_path / "ref.jsonl"
    reference.build_subset([src], 0.05, 0.5, ref, raw=True)  # json.loads + float(), as the official script
    for plan in ("single-pass", "two-pass"):
        out = tmp_path / f"o-{plan}.jsonl"
        r = select(str(d), "-o", str(out), "--plan", plan, "--compat", "official", "--ratio", "0.5")
        assert r.exit_code == 0, r.output
        assert out.read_bytes() == ref.read_bytes()
        assert "nan-mixed" in out.read_text()
        man = json.loads((tmp_path / f"o-{plan}.jsonl.manifest.json").read_text())
        assert man["totals"]["candidates"] == 11 and man["totals"]["malformed"] == 0
    mm, mm_ref = tmp_path / "o.mmprm.jsonl", tmp_path / "ref.mmprm.jsonl"
    reference.build_subset([src], 0.05, 0.5, mm_ref)
    r = select(str(d), "-o", str(mm), "--compat", "official", "--ratio", "0.5", "--format", "mmprm")
    assert r.exit_code == 0, r.output
    assert mm.read_bytes() == mm_ref.read_bytes()  # NaN step -> label 0.0, as float(nan) > 0 is false


def test_manifest_categories_are_counted_apart_and_checked(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "in", n=10)
    with open(src, "a") as fh:
        fh.write('{"steps_with_score": [{"score": "bad"}]}\n\n{"question": "none"}\n')
    r = select(str(src), "-o", str(tmp_path / "o.jsonl"), "--skip-invalid", "--format", "mmprm",
               "--compat", "official")
    assert r.exit_code == 0, r.output
    f = json.loads((tmp_path / "o.jsonl.manifest.json").read_text())["files"][0]
    assert (f["rows"], f["blank_lines"], f["malformed"], f["without_scores"], f["candidates"]) == (12, 1, 1, 1, 10)
    assert (f["kept"], f["not_kept"], f["written"]) == (2, 8, 2)
    good = {"file": "x", "rows": 5, "candidates": 3, "without_scores": 1, "malformed": 1, "kept": 1, "not_kept": 2,
            "written": 1, "conversion": {"dropped": 0}}
    reconcile([good], [{"candidates": 3, "k": 1}], "jsonl")
    for bad in ({"not_kept": 1}, {"without_scores": 2}, {"written": 0}):
        with pytest.raises(ReconciliationError):
            reconcile([{**good, **bad}], [{"candidates": 3, "k": 1}], "jsonl")
    with pytest.raises(ReconciliationError, match="groups' k"):
        reconcile([good], [{"candidates": 3, "k": 2}], "jsonl")
