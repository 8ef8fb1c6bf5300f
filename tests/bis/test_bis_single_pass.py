"""The single-pass plan (per-file groups) against the two-pass plan: same bytes, same manifest, same rejects."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from leanlm.bis import single_pass
from leanlm.bis.cut import stable_top_k
from leanlm.bis.score import BIS, RandomScorer
from leanlm.bis.select import SelectConfig, select, worker_count

GOOD = {"image": "i", "question": "q", "steps_with_score": [{"step": "a", "score": 0.5}, {"step": "b", "score": 0.0}]}


def both_plans(inputs: list[Path], tmp_path: Path, **kwargs: object) -> tuple[dict, dict, bytes]:
    """Run both plans on the same input; assert identical output bytes and manifests; return the manifests."""
    docs, outs = {}, {}
    for plan in ("two-pass", "single-pass"):
        out = tmp_path / f"{plan}.jsonl"
        rejects = tmp_path / f"{plan}.rejects.jsonl"
        docs[plan] = select(inputs, out, SelectConfig(plan=plan, **kwargs), rejects=rejects)  # type: ignore[arg-type]
        outs[plan] = out.read_bytes()
        if rejects.exists():
            outs[plan + "-rejects"] = rejects.read_bytes()
    assert outs["single-pass"] == outs["two-pass"]
    assert outs.get("single-pass-rejects") == outs.get("two-pass-rejects")
    one, two = docs["single-pass"], docs["two-pass"]
    assert one["settings"]["plan"] == "single-pass" and two["settings"]["plan"] == "two-pass"
    for key in ("files", "groups", "totals", "conversion"):
        assert one[key] == two[key], key
    return one, two, outs["single-pass"]


def test_synthetic_corpus_same_bytes_and_manifest(synth_corpus: Path, tmp_path: Path) -> None:
    one, _, data = both_plans([synth_corpus], tmp_path, ratio=0.3, ratios={"source01_train_extracted": 0.05})
    assert one["totals"]["kept"] == data.count(b"\n") > 0
    assert all(f["sha256"] and len(f["sha256"]) == 64 for f in one["files"])
    assert [g["ratio"] for g in one["groups"]][:2] == [0.3, 0.05]
    assert all(g["threshold"] is not None for g in one["groups"])


@pytest.mark.parametrize("compat", ["default", "official"])
def test_mmprm_conversion_same_bytes(synth_corpus: Path, tmp_path: Path, compat: str) -> None:
    one, _, data = both_plans([synth_corpus], tmp_path, output_format="mmprm", compat=compat)
    assert one["totals"]["written"] == data.count(b"\n")
    assert json.loads(data.splitlines()[0])["conversations"][0]["from"] == "human"


@pytest.mark.parametrize("chunk_bytes", [40, 1 << 20])
def test_blank_lines_crlf_long_lines_and_no_final_newline(tmp_path: Path, chunk_bytes: int) -> None:
    """Runs cut anywhere (even inside a line longer than a run), whitespace-only lines, CRLF, no final newline:
    the kept lines are copied as they are, the last one newline-terminated."""
    rng = np.random.default_rng(3)
    lines = []
    for i in range(60):
        steps = [{"step": "x" * int(rng.integers(0, 90)), "score": float(rng.choice([0.0, 0.25, 1.0]))}
                 for _ in range(int(rng.integers(1, 5)))]
        lines.append(json.dumps({"question": f"q{i}", "steps_with_score": steps}))
        if i % 7 == 0:
            lines.append("   ")
        if i % 11 == 0:
            lines.append("")
    text = "\n".join(lines[:30]) + "\r\n" + "\n".join(lines[30:])  # one CRLF line, and no final newline
    src = tmp_path / "in" / "a.jsonl"
    src.parent.mkdir()
    src.write_bytes(text.encode())
    one, _, data = both_plans([src], tmp_path, ratio=1.0, chunk_bytes=chunk_bytes)
    assert data.endswith(b"\n") and data.count(b"\n") == 60 == one["files"][0]["kept"]
    assert one["files"][0]["blank_lines"] == len(lines) - 60
    assert data.rstrip(b"\n").split(b"\n")[-1] == lines[-1].encode()


def test_skip_invalid_rejects_same(tmp_path: Path) -> None:
    lines = [json.dumps(GOOD), '{"steps_with_score": [{"score": "bad"}]}', "", "[1]", json.dumps(GOOD),
             '{"steps_with_score": [{"score": 0.5']
    src = tmp_path / "in" / "a.jsonl"
    src.parent.mkdir()
    src.write_text("\n".join(lines))
    one, _, _ = both_plans([src], tmp_path, skip_invalid=True, ratio=1.0, chunk_bytes=50)
    f = one["files"][0]
    assert (f["rows"], f["malformed"], f["kept"]) == (5, 3, 2)
    assert f["rows"] == f["kept"] + f["not_kept"] + f["malformed"]


def test_seeded_random_scorer_same(synth_corpus: Path, tmp_path: Path) -> None:
    both_plans([synth_corpus], tmp_path, scorer=RandomScorer(seed=5), ratio=0.2)


def test_parallel_workers_same_bytes(synth_corpus: Path, tmp_path: Path) -> None:
    base = tmp_path / "one.jsonl"
    select([synth_corpus], base, SelectConfig(workers=1, scorer=BIS(0.2), ratio=0.1))
    out = tmp_path / "two.jsonl"
    doc = select([synth_corpus], out, SelectConfig(workers=2, scorer=BIS(0.2), ratio=0.1))
    assert out.read_bytes() == base.read_bytes() and doc["settings"]["plan"] == "single-pass"


def test_plan_choice(synth_corpus: Path, tmp_path: Path) -> None:
    files = sorted(synth_corpus.glob("*.jsonl"))
    assert single_pass.ineligible_reason(files, SelectConfig()) is None
    assert "group_by" in single_pass.ineligible_reason(files, SelectConfig(group_by="global"))
    assert "engine" in single_pass.ineligible_reason(files, SelectConfig(engine="duckdb"))
    gz = tmp_path / "in" / "z.jsonl.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(files[0].read_bytes()))
    assert "not plain JSONL" in single_pass.ineligible_reason([gz], SelectConfig())
    doc = select([gz], tmp_path / "o.jsonl", SelectConfig())
    assert doc["settings"]["plan"] == "two-pass"  # auto falls back
    with pytest.raises(ValueError, match="single-pass plan does not apply"):
        select([synth_corpus], tmp_path / "o.jsonl", SelectConfig(group_by="global", plan="single-pass"))
    with pytest.raises(ValueError, match="unknown plan"):
        SelectConfig(plan="three-pass")
    # workers: 0 = auto, one process for a small corpus; an explicit count is capped by the number of files
    assert worker_count(files, SelectConfig()) == 1
    assert worker_count(files, SelectConfig(workers=64)) == len(files)


def test_stable_top_k_is_the_stable_descending_sort() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = rng.choice([0.0, 0.05, 0.3, 1.0, np.nan], size=int(rng.integers(0, 40)))
        cand = [i for i in range(len(s)) if not np.isnan(s[i])]
        for k in range(len(cand) + 1):
            want = sorted(cand, key=lambda i: s[i], reverse=True)[:k]  # Python's sort is stable
            assert stable_top_k(s, k).tolist() == want


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_scanned_pages_leave_the_resident_set(tmp_path: Path) -> None:
    """What keeps the single pass's memory bounded: pages handed back with MADV_DONTNEED leave the RSS."""
    src = tmp_path / "big.jsonl"
    src.write_bytes(b"x" * (32 << 20))
    with single_pass._mapped(str(src)) as buf:
        assert int(np.frombuffer(buf, dtype=np.uint8)[:: 4096].sum()) == ord("x") * (8 << 10)  # touch every page
        before = _rss_kb()
        single_pass._drop_pages(buf, 0, len(buf))
        after = _rss_kb()
    assert before - after > 24 << 10  # most of the 32 MB mapping left the resident set
