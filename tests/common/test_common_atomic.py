from __future__ import annotations

import json
import os

import pytest

from leanlm.common.atomic import atomic_write, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_content(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp files left behind


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("partial garbage")
        raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_failed_first_write_creates_nothing(tmp_path):
    target = tmp_path / "never.txt"
    with pytest.raises(ValueError), atomic_write(target) as handle:
        handle.write("x")
        raise ValueError
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_binary_mode_and_read_mode_rejected(tmp_path):
    target = tmp_path / "b.bin"
    with atomic_write(target, "wb") as handle:
        handle.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError), atomic_write(target, "r"):
        pass


def test_new_files_get_the_usual_mode_and_existing_modes_are_kept(tmp_path):
    umask = os.umask(0o022)
    try:
        fresh = atomic_write_text(tmp_path / "fresh.txt", "x")
        assert fresh.stat().st_mode & 0o777 == 0o644
        (tmp_path / "script.sh").write_text("old")
        os.chmod(tmp_path / "script.sh", 0o750)
        atomic_write_text(tmp_path / "script.sh", "new")
        assert (tmp_path / "script.sh").stat().st_mode & 0o777 == 0o750
    finally:
        os.umask(umask)
