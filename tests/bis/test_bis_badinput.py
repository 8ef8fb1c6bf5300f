"""Bad input: errors name the file and line; ``skip_invalid`` writes rejects and the counts reconcile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leanlm.bis.select import SelectConfig, select
from leanlm.common.records import RecordError

GOOD = json.dumps({"image": "i", "question": "q", "steps_with_score": [{"step": "a", "score": 0.5},
                                                                        {"step": "b", "score": 0.0}]})
BAD_CASES = {
    "truncated": ('{"image": "i", "steps_with_score": [{"score": 0.5', "invalid JSON"),
    "string score": ('{"steps_with_score": [{"score": "0.5"}]}', "steps_with_score[0].score"),
    "steps not a list": ('{"steps_with_score": {"score": 1}}', "steps_with_score"),
    "step not an object": ('{"steps_with_score": [0.5]}', "steps_with_score[0]"),
    "not an object": ("[1, 2, 3]", "Expected `object`"),
    "bool score": ('{"steps_with_score": [{"score": true}]}', "score"),
    "nan score": ('{"steps_with_score": [{"score": NaN}]}', "NaN step score (not valid JSON)"),
    "infinite score": ('{"steps_with_score": [{"score": Infinity}]}', "non-finite number (Infinity)"),
}


def config(engine: str, **kwargs: object) -> SelectConfig:
    """``stream`` (single pass here), ``stream/two-pass`` or ``duckdb``."""
    engine, _, plan = engine.partition("/")
    return SelectConfig(engine=engine, plan=plan or "auto", **kwargs)


def write(path: Path, lines: list[str], trailing_newline: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""), encoding="utf-8")
    return path


@pytest.mark.parametrize("engine", ["stream", "stream/two-pass", "duckdb"])
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_error_names_file_line_and_field(tmp_path: Path, case: str, engine: str) -> None:
    bad, expected = BAD_CASES[case]
    src = write(tmp_path / "in" / "src.jsonl", [GOOD, "", GOOD, bad, GOOD], trailing_newline=case != "truncated")
    out = tmp_path / "out.jsonl"
    with pytest.raises(RecordError) as info:
        select([src], out, config(engine))
    assert info.value.path == str(src)
    assert info.value.line == 4  # 1-based, blank line 2 counted
    assert expected in str(info.value)
    assert str(src) + ":4:" in str(info.value)
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize("engine", ["stream", "stream/two-pass", "duckdb"])
def test_skip_invalid_writes_rejects_and_counts_reconcile(tmp_path: Path, engine: str) -> None:
    lines = [GOOD, "", *[BAD_CASES[c][0] for c in ("string score", "not an object", "steps not a list")], GOOD,
             '{"steps_with_score": []}', GOOD, BAD_CASES["truncated"][0]]
    src = write(tmp_path / "in" / "src.jsonl", lines, trailing_newline=False)
    out = tmp_path / "out.jsonl"
    rejects = tmp_path / "rejects.jsonl"
    doc = select([src], out, config(engine, ratio=0.5, skip_invalid=True), rejects=rejects)
    f = doc["files"][0]
    assert f["rows"] == 8 and f["blank_lines"] == 1
    assert f["malformed"] == 4 and f["without_scores"] == 1 and f["candidates"] == 3
    assert f["kept"] == 1 and f["not_kept"] == 2 and f["rows"] == f["candidates"] + f["without_scores"] + f["malformed"]
    rej = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [r["line"] for r in rej] == [3, 4, 5, 9]
    assert all(r["file"] == str(src) and r["error"] and r["raw"] for r in rej)
    assert doc["rejects"] == str(rejects)
    assert out.read_text() == GOOD + "\n"


def test_empty_files_and_blank_only_files(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text("\n  \n\n")
    write(d / "good.jsonl", [GOOD, GOOD, GOOD, GOOD])
    out = tmp_path / "out.jsonl"
    doc = select([d], out, SelectConfig())
    by = {Path(f["file"]).name: f for f in doc["files"]}
    assert by["empty.jsonl"]["rows"] == 0 and by["empty.jsonl"]["kept"] == 0
    assert by["blank.jsonl"]["rows"] == 0 and by["blank.jsonl"]["blank_lines"] == 3
    assert by["good.jsonl"]["kept"] == 1
    assert [g["k"] for g in doc["groups"]] == [0, 0, 1]
    assert out.read_text() == GOOD + "\n"


def test_missing_inputs_and_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        select([tmp_path / "nope.jsonl"], tmp_path / "o.jsonl")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*.jsonl"):
        select([tmp_path / "emptydir"], tmp_path / "o.jsonl")
    good = write(tmp_path / "in" / "a.jsonl", [GOOD])
    with pytest.raises(ValueError, match="is one of the inputs"):
        select([good], good)
    with pytest.raises(FileNotFoundError, match="skipped 1 of leanlm's own files"):  # the output is not an input
        select([good.parent], good)
    assert good.read_text() == GOOD + "\n"
    with pytest.raises(ValueError, match="ratio"):
        SelectConfig(ratio=0.0)
    with pytest.raises(ValueError, match="engine"):
        SelectConfig(engine="spark")


def test_missing_group_field_is_an_error(tmp_path: Path) -> None:
    src = write(tmp_path / "a.jsonl", [json.dumps({"source": "x", **json.loads(GOOD)}), GOOD])
    with pytest.raises(RecordError, match=r"a.jsonl:2: missing group field 'source'"):
        select([src], tmp_path / "o.jsonl", SelectConfig(group_by="source"))
    doc = select([src], tmp_path / "o.jsonl", SelectConfig(group_by="source", skip_invalid=True))
    assert doc["totals"]["malformed"] == 1 and doc["totals"]["kept"] == 1
