from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from leanlm.common.records import RecordError, read_jsonl, read_records


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_records_with_line_numbers_skipping_blank_lines(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"x": 1}\n\n{"x": 2}\n{"x": 3}')  # no trailing newline
    assert list(read_jsonl(path)) == [(1, {"x": 1}), (3, {"x": 2}), (4, {"x": 3})]


def test_invalid_json_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"x": 1}\n{"x": 2\n{"x": 3}\n')
    with pytest.raises(RecordError) as info:
        list(read_jsonl(path))
    assert info.value.line == 2
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:2: invalid JSON")


def test_non_object_line_is_an_error(tmp_path):
    path = write(tmp_path / "list.jsonl", '{"x": 1}\n[1, 2]\n')
    with pytest.raises(RecordError, match=r"list.jsonl:2: expected a JSON object, got list"):
        list(read_jsonl(path))


def test_truncated_last_line_is_reported(tmp_path):
    path = write(tmp_path / "cut.jsonl", '{"x": 1}\n{"x": 2, "y": "abc')
    with pytest.raises(RecordError, match=r"cut.jsonl:2: invalid JSON"):
        list(read_jsonl(path))


def test_skip_invalid_collects_rejects_and_counts_reconcile(tmp_path):
    lines = ['{"x": 1}', "nope", '{"x": 2}', "[3]", '{"x": 4']
    path = write(tmp_path / "mixed.jsonl", "\n".join(lines) + "\n")
    rejects: list[RecordError] = []
    good = list(read_jsonl(path, skip_invalid=True, on_invalid=rejects.append))
    assert [n for n, _ in good] == [1, 3]
    assert [e.line for e in rejects] == [2, 4, 5]
    assert rejects[0].raw == "nope\n"
    assert len(good) + len(rejects) == len(lines)


def test_gzip_and_zstd_are_transparent(tmp_path):
    payload = b'{"k": "v"}\n{"k": "w"}\n'
    gz = tmp_path / "a.jsonl.gz"
    with gzip.open(gz, "wb") as handle:
        handle.write(payload)
    zst = tmp_path / "a.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(payload))
    expected = [(1, {"k": "v"}), (2, {"k": "w"})]
    assert list(read_records(gz)) == expected
    assert list(read_records(zst)) == expected


def test_parquet_rows_are_numbered(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]}), path)
    assert list(read_records(path)) == [(1, {"a": 1, "b": "x"}), (2, {"a": 2, "b": "y"}), (3, {"a": 3, "b": "z"})]


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(RecordError, match="no such file"):
        list(read_records(tmp_path / "absent.jsonl"))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(RecordError, match=r"broken\.parquet: not a readable Parquet file"):
        list(read_records(broken))
