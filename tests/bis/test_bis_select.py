"""Selection semantics (golden cases), equality with the plain-Python official algorithm, engines, formats."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leanlm.bis import reference
from leanlm.bis.schema import Fields
from leanlm.bis.score import BIS, External, MixedOnly, RandomScorer
from leanlm.bis.select import SelectConfig, find_cut, keep_count, select, sortable_keys


def kept_tags(path: Path) -> list[str]:
    return [json.loads(line)["question"].removeprefix("q ") for line in path.read_text().splitlines()]


def test_keep_count_is_max_one_floor() -> None:
    assert keep_count(0, 0.25) == 0
    assert keep_count(1, 0.25) == 1  # max(1, 0)
    assert keep_count(3, 0.25) == 1
    assert keep_count(4, 0.25) == 1
    assert keep_count(8, 0.25) == 2
    assert keep_count(9, 0.25) == 2  # floor
    assert keep_count(10, 0.3) == int(10 * 0.3) == 3  # Python float product, then truncation
    assert keep_count(7, 1.0) == 7


def test_ties_at_cut_break_by_file_order_and_output_in_file_order(rollout, make_jsonl, tmp_path: Path) -> None:
    # BIS (alpha 0.05): mixed p=0.5,R=1 -> 0.3; all-negative -> 0.05; all-positive mean 1 -> 0.05 (tie!)
    recs = [
        rollout([0.0, 0.0], "neg-a"),  # 0.05
        rollout([1.0, 0.0], "mix-a"),  # 0.30
        rollout([1.0, 1.0], "pos-a"),  # 0.05
        rollout([0.0], "neg-b"),  # 0.05
        rollout([1.0, 0.0], "mix-b"),  # 0.30
        rollout([None, None], "none"),  # not a candidate
        rollout([0.5, 0.5], "pos-half"),  # 0.025
        rollout([0.0, 0.0, 0.0], "neg-c"),  # 0.05
    ]
    src = make_jsonl("a.jsonl", recs)
    # m = 7 candidates; ratio 0.5 -> k = 3: both mixed, then the first 0.05 tie in file order = neg-a
    out = tmp_path / "out.jsonl"
    doc = select([src], out, SelectConfig(ratio=0.5))
    assert kept_tags(out) == ["neg-a", "mix-a", "mix-b"]
    assert doc["groups"][0]["k"] == 3 and doc["groups"][0]["candidates"] == 7
    assert doc["groups"][0]["threshold"] == 0.05 and doc["groups"][0]["ties_kept_at_threshold"] == 1
    # ratio 5/7 -> k = 5: ties neg-a, pos-a, neg-b kept; neg-c (later tie) and pos-half not
    select([src], out, SelectConfig(ratio=5 / 7))
    assert kept_tags(out) == ["neg-a", "mix-a", "pos-a", "neg-b", "mix-b"]
    assert kept_tags(out) == [json.loads(src.read_text().splitlines()[i])["question"][2:]
                              for i in reference.select_lines(src.read_text().splitlines(), 0.05, 5 / 7)]


def test_missing_scores_skip_steps_and_rollouts_without_scores_are_not_candidates(rollout, make_jsonl, tmp_path) -> None:
    recs = [
        rollout([None, 1.0, 0.0], "partial"),  # scored steps [1, 0] -> 0.3
        rollout([None], "none"),
        {"image": "x", "question": "q empty", "steps_with_score": []},
        {"image": "x", "question": "q nosteps"},
        {"image": "x", "question": "q nullsteps", "steps_with_score": None},
        rollout([0.0], "neg"),
    ]
    src = make_jsonl("b.jsonl", recs)
    out = tmp_path / "o.jsonl"
    doc = select([src], out, SelectConfig(ratio=0.5))
    f = doc["files"][0]
    assert (f["rows"], f["without_scores"], f["candidates"], f["kept"], f["not_kept"]) == (6, 4, 2, 1, 1)
    assert kept_tags(out) == ["partial"]


def test_original_bytes_are_copied(rollout, make_jsonl, tmp_path: Path) -> None:
    odd = '{"question":"q odd",  "image":"\\u00e9", "steps_with_score":[{"score":1,"step":"é"},{"score":0}] , "z":1.50}'
    src = make_jsonl("c.jsonl", [odd, json.dumps(rollout([0.0], "neg"))])
    out = tmp_path / "o.jsonl"
    select([src], out, SelectConfig(ratio=0.5))
    assert out.read_text(encoding="utf-8") == odd + "\n"


def test_per_group_ratio_global_and_field_grouping(rollout, make_jsonl, tmp_path: Path) -> None:
    a = make_jsonl("d/a.jsonl", [rollout([1.0, 0.0], f"a{i}") for i in range(8)])
    make_jsonl("d/b.jsonl", [rollout([0.0], f"b{i}") for i in range(8)])
    out = tmp_path / "o.jsonl"
    doc = select([a.parent], out, SelectConfig(ratio=0.25, ratios={"b": 0.5}))
    assert kept_tags(out) == ["a0", "a1", "b0", "b1", "b2", "b3"]
    assert [g["k"] for g in doc["groups"]] == [2, 4]
    doc = select([a.parent], out, SelectConfig(ratio=0.25, group_by="global"))
    assert kept_tags(out) == ["a0", "a1", "a2", "a3"]  # mixed rollouts of a beat all of b
    mixed = make_jsonl("one.jsonl", [rollout([1.0, 0.0] if i % 2 else [0.0], f"r{i}", source="s" + str(i % 3))
                                     for i in range(12)])
    doc = select([mixed], out, SelectConfig(ratio=0.5, group_by="source"))
    assert sorted(g["group"] for g in doc["groups"]) == ["s0", "s1", "s2"]
    assert kept_tags(out) == ["r1", "r3", "r5", "r7", "r9", "r11"]  # the two mixed rollouts of each source


@pytest.mark.parametrize(("alpha", "ratio"), [(0.05, 0.25), (0.2, 0.1), (0.0, 0.5)])
def test_equals_official_algorithm_on_synthetic_corpus(synth_corpus: Path, tmp_path: Path, alpha: float,
                                                       ratio: float) -> None:
    files = reference.select_paths(synth_corpus)
    ref_raw, ref_mm = tmp_path / "ref.jsonl", tmp_path / "ref_mm.jsonl"
    reference.build_subset(files, alpha, ratio, ref_raw, raw=True)
    reference.build_subset(files, alpha, ratio, ref_mm)
    out = tmp_path / "out.jsonl"
    doc = select([synth_corpus], out, SelectConfig(ratio=ratio, scorer=BIS(alpha)))
    assert out.read_bytes() == ref_raw.read_bytes()
    assert doc["totals"]["kept"] == len(ref_raw.read_text().splitlines())
    mm = tmp_path / "mm.jsonl"
    doc = select([synth_corpus], mm, SelectConfig(ratio=ratio, scorer=BIS(alpha), output_format="mmprm",
                                                  compat="official"))
    assert mm.read_bytes() == ref_mm.read_bytes()
    conv = doc["conversion"]
    assert conv["dropped"] > 0  # the corpus has rollouts the official converter drops: they are counted
    assert doc["totals"]["written"] + conv["dropped"] == doc["totals"]["kept"]


def test_default_mmprm_drops_nothing(rollout, make_jsonl, tmp_path: Path) -> None:
    recs = [
        rollout([1.0, 0.0], "noimg", image=""),
        {"image": "i", "question_orig": " Q orig ", "question": "q", "steps_with_score": [
            {"step": " a ", "score": 0.5}, {"step": "", "score": 0.0}, {"step": "ctx", "score": None}]},
    ]
    src = make_jsonl("e.jsonl", recs)
    out = tmp_path / "o.jsonl"
    doc = select([src], out, SelectConfig(ratio=1.0, output_format="mmprm"))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert "image" not in rows[0] and rows[0]["conversations"][1]["value"] == [1.0, 0.0]
    assert rows[1]["conversations"][0]["value"] == "Question: Q orig\nProcess: a<prm>\n\n<prm>\n\nctx"
    assert rows[1]["conversations"][1]["value"] == [1.0, 0.0]
    assert doc["conversion"]["no_image"] == 1 and doc["conversion"]["empty_step"] == 1
    assert doc["conversion"]["unscored_step"] == 1 and doc["conversion"]["dropped"] == 0
    doc = select([src], out, SelectConfig(ratio=1.0, output_format="mmprm", compat="official"))
    assert out.read_text() == "" and doc["conversion"]["dropped"] == 2


ENGINE_CASES = [
    {"engine": "duckdb"},
    {"workers": 2},
    {"chunk_bytes": 1000},  # chunk boundaries every few lines
    {"plan": "two-pass"},
    {"plan": "two-pass", "workers": 2},
    {"plan": "two-pass", "chunk_bytes": 1000},
]


@pytest.mark.parametrize("extra", ENGINE_CASES, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
@pytest.mark.parametrize("group_by", ["file", "global"])
def test_engines_byte_identical(synth_corpus: Path, tmp_path: Path, extra: dict, group_by: str) -> None:
    base = tmp_path / "base.jsonl"
    d0 = select([synth_corpus], base, SelectConfig(group_by=group_by))
    out = tmp_path / "other.jsonl"
    d1 = select([synth_corpus], out, SelectConfig(group_by=group_by, **extra))
    assert out.read_bytes() == base.read_bytes()
    assert d0["totals"] == d1["totals"] and d0["groups"] == d1["groups"]
    assert all(f["engine"] == ("duckdb" if extra.get("engine") == "duckdb" else "stream") for f in d1["files"])
    single = group_by == "file" and extra.get("plan", "auto") == "auto" and "engine" not in extra
    assert d1["settings"]["plan"] == ("single-pass" if single else "two-pass")


def test_compressed_and_parquet_inputs(synth_corpus: Path, tmp_path: Path) -> None:
    import pyarrow.json as pj
    import pyarrow.parquet as pq
    import zstandard

    src = sorted(synth_corpus.glob("*.jsonl"))[0]
    base = tmp_path / "base.jsonl"
    select([src], base, SelectConfig(group_by="global"))
    gz = tmp_path / "in" / (src.name + ".gz")
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(src.read_bytes()))
    zst = tmp_path / "in2" / (src.name + ".zst")
    zst.parent.mkdir()
    zst.write_bytes(zstandard.ZstdCompressor().compress(src.read_bytes()))
    for p in (gz, zst):
        for engine in ("stream", "duckdb"):
            out = tmp_path / "o.jsonl"
            doc = select([p], out, SelectConfig(group_by="global", engine=engine))
            assert out.read_bytes() == base.read_bytes()
            assert doc["files"][0]["engine"] == engine
    table = pj.read_json(src)
    pqf = tmp_path / "in3" / "s.parquet"
    pqf.parent.mkdir()
    pq.write_table(table, pqf)
    for engine in ("stream", "duckdb"):
        outp = tmp_path / f"o-{engine}.parquet"
        doc = select([pqf], outp, SelectConfig(group_by="global", output_format="parquet", engine=engine))
        got = pq.read_table(outp)
        want = [json.loads(x) for x in base.read_text().splitlines()]
        assert got.column("question").to_pylist() == [w["question"] for w in want]
        assert doc["totals"]["kept"] == len(want)
    outj = tmp_path / "o.parquet"
    select([src], outj, SelectConfig(group_by="global", output_format="parquet"))
    assert pq.read_table(outj).column("question").to_pylist() == [
        json.loads(x)["question"] for x in base.read_text().splitlines()]


def test_mc_count_fields(make_jsonl, tmp_path: Path) -> None:
    recs = [{"question": f"q {i}", "steps": [{"num_mc_correct": c, "num_mc_total": 16} for c in cs]}
            for i, cs in enumerate([[16, 0], [0, 0], [4, 0], [16, 16]])]
    src = make_jsonl("f.jsonl", recs)
    fields = Fields(steps="steps", mc_correct="num_mc_correct", mc_total="num_mc_total")
    out = tmp_path / "o.jsonl"
    for engine in ("stream", "duckdb"):
        select([src], out, SelectConfig(ratio=0.5, fields=fields, engine=engine))
        # BIS: [1,0] -> 0.3; [0,0] -> 0.05; [0.25,0] -> 0.075; [1,1] -> 0.05
        assert kept_tags(out) == ["0", "2"]


def test_scorers_through_select(synth_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    d1 = select([synth_corpus], out, SelectConfig(scorer=RandomScorer(seed=1)))
    first = out.read_bytes()
    select([synth_corpus], out, SelectConfig(scorer=RandomScorer(seed=1), engine="duckdb"))
    assert out.read_bytes() == first
    d2 = select([synth_corpus], out, SelectConfig(scorer=MixedOnly(seed=1)))
    assert d1["totals"]["kept"] == d2["totals"]["kept"]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    labels = [[s["score"] > 0 for s in r["steps_with_score"] if s["score"] is not None] for r in rows]
    assert all(any(lab) and not all(lab) for lab in labels)  # enough mixed rollouts exist: only mixed kept
    # external scores: prefer the last rows of each file
    files = sorted(synth_corpus.glob("*.jsonl"))
    table = {f.name: np.arange(len(f.read_text().splitlines()), dtype=np.float64) for f in files}
    select([synth_corpus], out, SelectConfig(scorer=External(table=table)))
    want = []
    for f in files:
        lines = f.read_text().splitlines()
        cand = [i for i, line in enumerate(lines) if reference.scores_of(json.loads(line))]
        want += [lines[i] for i in sorted(cand[-keep_count(len(cand), 0.25):])]
    assert out.read_text().splitlines() == want


def test_find_cut_matches_sort() -> None:
    rng = np.random.default_rng(1)
    if True:
        vals = rng.choice([0.05, 0.3, 0.075, -0.0, 0.0, 1e-300, 2.5, -1.0], size=5000)
        vals[rng.random(5000) < 0.1] = np.nan
        groups = rng.integers(0, 3, size=5000).astype(np.int32)
        def blocks():  # the rows in two blocks, as a spill reader would give them
            return [(vals[:2000] + 0.0, groups[:2000].astype(np.int64)), (vals[2000:] + 0.0, groups[2000:].astype(np.int64))]

        m = np.array([int((~np.isnan(vals[groups == g])).sum()) for g in range(3)])
        k = np.array([keep_count(int(x), 0.37) for x in m])
        for in_memory_rows in (10**9, 0):  # keys loaded once, or streamed from disk on every radix pass
            cut = find_cut(blocks, m, k, in_memory_rows=in_memory_rows)
            for g in range(3):
                v = np.sort(vals[(groups == g) & ~np.isnan(vals)])[::-1]
                kth = v[k[g] - 1]
                assert cut.threshold[g] == sortable_keys(np.array([kth + 0.0]))[0]
                assert cut.ties[g] == k[g] - int((v > kth).sum())


_mc = st.one_of(st.none(), st.sampled_from([0.0, 0.0, 0.125, 0.25, 0.5, 1.0]), st.floats(0.0, 1.0))
_rollouts = st.lists(st.lists(_mc, min_size=0, max_size=9), min_size=0, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(_rollouts, min_size=1, max_size=3), alpha=st.sampled_from([0.0, 0.05, 0.2]),
       ratio=st.floats(0.01, 1.0), chunk=st.sampled_from([64, 1 << 20]), plan=st.sampled_from(["auto", "two-pass"]))
def test_random_corpora_equal_reference(tmp_path_factory, files, alpha, ratio, chunk, plan) -> None:
    """Any corpus (ties, missing scores, empty rollouts), any ratio: the kept lines are the reference's."""
    d = tmp_path_factory.mktemp("h")
    paths = []
    for i, rolls in enumerate(files):
        p = d / f"s{i}.jsonl"
        p.write_text("".join(json.dumps({"question": f"q {i}-{j}", "steps_with_score": [{"score": s} for s in r]})
                             + "\n" for j, r in enumerate(rolls)))
        paths.append(p)
    ref = d / "ref.out"
    reference.build_subset(paths, alpha, ratio, ref, raw=True)
    out = d / "ours.out"
    doc = select([d], out, SelectConfig(ratio=ratio, scorer=BIS(alpha), chunk_bytes=chunk, hash_input=False, allow_empty=True,
                                        plan=plan))
    assert out.read_bytes() == ref.read_bytes()
    t = doc["totals"]
    assert t["rows"] == t["candidates"] + t["without_scores"] + t["malformed"] == sum(len(r) for r in files)
    assert t["candidates"] == t["kept"] + t["not_kept"]


def test_disk_cut_path_same_bytes(synth_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the in-memory cap the cut streams the spills on every radix pass: same selection."""
    base = tmp_path / "mem.jsonl"
    select([synth_corpus], base, SelectConfig(group_by="global", ratio=0.3))
    monkeypatch.setattr(find_cut, "__defaults__", (0,))  # in_memory_rows = 0
    out = tmp_path / "disk.jsonl"
    select([synth_corpus], out, SelectConfig(group_by="global", ratio=0.3))
    assert out.read_bytes() == base.read_bytes()
