"""Exact per-group top-ratio selection in two streaming passes, with bounded memory, and its manifest.

Semantics (the official ``scripts/build_bis_subset.py``, brief §1.1): in each group (source file by default,
a field's value with ``group_by=<field>``, or the whole corpus with ``group_by="global"``) let m be the number of
rollouts with at least one scored step; keep ``max(1, int(m * ratio))`` of them by score descending, ties
broken by original order (a stable sort), and write the kept rollouts in original order (files in name order).

How it runs without holding the corpus:

1. **Pass 1** (an engine: ``stream`` = msgspec, ``duckdb``, ``ray``) turns every row into a score (NaN when the
   row is not a candidate) and a group code, written to a per-file spill file (12 bytes per row, on disk).
2. **Cut**: the exact k-th largest score of every group is found by radix selection over the spill
   (8 passes of 8 bits over order-preserving integer keys of the float64 scores), giving a threshold T and
   the number q of ties at T to keep. Memory: 256 counters per group.
3. **Pass 2** streams the corpus again and keeps a row iff its score > T, or == T and fewer than q tied rows
   of its group were kept before it; kept JSONL lines are copied as their original bytes.

Keeping "> T, then the first q rows equal to T in file order" is exactly the stable sort's first k.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leanlm.bis import single_pass
from leanlm.bis.convert import ConversionCounts, encode_mmprm, to_mmprm
from leanlm.bis.scan import CHUNK_BYTES, FileCounts, Reject, is_parquet, iter_line_chunks, row_lines, scanner
from leanlm.bis.schema import Fields
from leanlm.bis.score import BIS, External, Scorer
from leanlm.bis.single_pass import worker_count
from leanlm.common.atomic import atomic_write, atomic_write_json
from leanlm.common.progress import get_logger, progress, progress_bar

log = get_logger("leanlm.bis.select")

ENGINES = ("stream", "duckdb", "ray")
FORMATS = ("jsonl", "mmprm", "parquet")
PLANS = ("auto", "single-pass", "two-pass")
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd", ".parquet")  # not .json: manifests


@dataclass
class SelectConfig:
    """Selection settings; defaults are the official CLI's (α = 0.05, ratio 0.25, per source file)."""

    ratio: float = 0.25
    scorer: Scorer = field(default_factory=BIS)
    #: ``"file"`` (one stratum per input file, the official behaviour), ``"global"``, or a field name.
    group_by: str = "file"
    #: Per-group ratio overrides, by group name (file stem or field value).
    ratios: dict[str, float] = field(default_factory=dict)
    fields: Fields = field(default_factory=Fields)
    engine: str = "stream"
    output_format: str = "jsonl"
    #: ``"default"`` or ``"official"`` (drop what the official converter drops; only affects ``mmprm``).
    compat: str = "default"
    skip_invalid: bool = False
    #: Worker processes over files; 0 = one per available CPU (a single process below 32 MB of input).
    workers: int = 0
    hash_input: bool = True
    chunk_bytes: int = CHUNK_BYTES
    #: ``"auto"`` (single pass where it applies, see :func:`leanlm.bis.single_pass.eligible`), ``"single-pass"``
    #: (an error where it does not apply) or ``"two-pass"``.
    plan: str = "auto"

    def __post_init__(self) -> None:
        for name, r in [("ratio", self.ratio), *self.ratios.items()]:
            if not (0.0 < float(r) <= 1.0):
                raise ValueError(f"ratio for {name!r} must be in (0, 1], got {r}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose from {', '.join(ENGINES)}")
        if self.output_format not in FORMATS:
            raise ValueError(f"unknown output format {self.output_format!r}; choose from {', '.join(FORMATS)}")
        if self.plan not in PLANS:
            raise ValueError(f"unknown plan {self.plan!r}; choose from {', '.join(PLANS)}")
        if self.compat not in ("default", "official"):
            raise ValueError(f"compat must be 'default' or 'official', got {self.compat!r}")
        if self.group_by not in ("file", "global") and self.fields.group != self.group_by:
            self.fields = Fields(**{**asdict(self.fields), "group": self.group_by})


def discover_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand directories to their JSONL/Parquet files, sorted by name (the official ``sorted(glob)``)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(INPUT_SUFFIXES))
            if not found:
                raise FileNotFoundError(f"{p}: no *.jsonl[.gz|.zst] or *.parquet files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError("two input files share a name; their per-file groups would collide")
    return out


def source_name(path: str | os.PathLike[str]) -> str:
    """The group name of a file: its name without ``.jsonl``/``.gz``/``.zst``/``.parquet``."""
    name = Path(path).name
    for suffix in (".gz", ".zst", ".zstd"):
        name = name.removesuffix(suffix)
    for suffix in (".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def initial_group_names(group_by: str, path: str | os.PathLike[str]) -> dict[Any, int]:
    """The group-name -> local index map a file's pass 1 starts from: its own name when grouping by file,
    one ``all`` group in global mode, empty (filled as values are seen) when grouping by a field."""
    if group_by == "file":
        return {source_name(path): 0}
    if group_by == "global":
        return {"all": 0}
    return {}


# ----------------------------------------------------------------------------------------------- pass 1


@dataclass
class FileScanResult:
    """What pass 1 leaves for one file: counts, the local group names, and the spill file paths."""

    path: str
    counts: FileCounts
    group_names: list[str]
    group_candidates: list[int]
    spill: str
    rejects: str | None = None  # this file's rejects (JSONL in the spill directory), if any
    engine: str = "stream"


def spill_dtype() -> np.dtype:
    return np.dtype([("score", "<f8"), ("group", "<i4")])


def scan_file_to_spill(path: str, file_index: int, config: SelectConfig, spill_dir: str,
                       on_progress: Any | None = None) -> FileScanResult:
    """Pass 1 (stream engine) for one file: score every row and spill (score, local group) to disk."""
    rejects_path = os.path.join(spill_dir, f"{file_index:06d}.rejects.jsonl")
    rejects_file: Any = None

    def on_reject(r: Reject) -> None:  # to disk, so a corpus full of bad lines does not fill memory
        nonlocal rejects_file
        if rejects_file is None:
            rejects_file = open(rejects_path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        rejects_file.write(json.dumps({"file": r.path, "line": r.line, "error": r.error, "raw": r.raw},
                                      ensure_ascii=False) + "\n")
        nrejects[0] += 1

    nrejects = [0]

    scan = scanner(path, file_index, config.fields, skip_invalid=config.skip_invalid, on_reject=on_reject,
                   chunk_bytes=config.chunk_bytes, hash_input=config.hash_input)
    spill = os.path.join(spill_dir, f"{file_index:06d}.spill")
    names = initial_group_names(config.group_by, path)
    cand_counts: dict[int, int] = {}
    try:
        with open(spill, "wb") as out:
            for chunk in scan:
                score = _chunk_scores(config.scorer, chunk.stats)
                local = _local_groups(chunk.groups, len(chunk.stats), names)
                _tally(cand_counts, local, score)
                rec = np.empty(len(score), dtype=spill_dtype())
                rec["score"], rec["group"] = score, local
                out.write(rec.tobytes())
                if on_progress is not None:
                    on_progress(len(score))
    finally:
        if rejects_file is not None:
            rejects_file.close()
    group_names = [str(k) for k in names]
    return FileScanResult(path=str(path), counts=scan.counts, group_names=group_names,
                          group_candidates=[cand_counts.get(i, 0) for i in range(len(group_names))],
                          spill=spill, rejects=rejects_path if nrejects[0] else None)


def _chunk_scores(scorer: Scorer, stats: Any) -> np.ndarray:
    score = np.asarray(scorer.scores(stats), dtype=np.float64) + 0.0  # +0.0 folds -0.0 into 0.0
    score[~stats.candidate] = np.nan
    if np.isnan(score[stats.candidate]).any():
        raise ValueError(f"scorer {scorer.name!r} returned NaN for a candidate rollout")
    return score


def _local_groups(groups: list[Any] | None, nrows: int, names: dict[Any, int]) -> np.ndarray:
    if groups is None:
        return np.zeros(nrows, dtype=np.int32)
    out = np.empty(nrows, dtype=np.int32)
    for i, g in enumerate(groups):
        key = "" if g is None else str(g)
        code = names.get(key)
        if code is None:
            code = names[key] = len(names)
        out[i] = code
    return out


def _tally(counts: dict[int, int], local: np.ndarray, score: np.ndarray) -> None:
    cand = ~np.isnan(score)
    for code, c in zip(*np.unique(local[cand], return_counts=True), strict=True):
        counts[int(code)] = counts.get(int(code), 0) + int(c)


def iter_spill(path: str, block: int = 1 << 20) -> Iterator[np.ndarray]:
    """Read a spill file back in blocks of ``block`` rows."""
    dt = spill_dtype()
    with open(path, "rb") as fh:
        while True:
            arr = np.fromfile(fh, dtype=dt, count=block)
            if not len(arr):
                return
            yield arr


# ----------------------------------------------------------------------------------------------- the cut


def sortable_keys(score: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of float64 scores (no NaN): a < b iff key(a) < key(b)."""
    bits = score.view(np.uint64)
    sign = bits >> np.uint64(63)
    return np.where(sign == 1, ~bits, bits | np.uint64(1 << 63))


def keep_count(m: int, ratio: float) -> int:
    """``max(1, int(m * ratio))`` for a group with m candidates (0 when m = 0), as the official script."""
    return max(1, int(m * ratio)) if m > 0 else 0


@dataclass
class Cut:
    """Per global group: threshold key T, ties q at T to keep (in file order), k to keep, m candidates."""

    threshold: np.ndarray  # uint64
    ties: np.ndarray  # int64
    k: np.ndarray
    m: np.ndarray


#: Above this many candidate rows the cut reads the spills from disk on each radix pass instead of from memory.
CUT_IN_MEMORY_ROWS = 4_000_000


def _radix_choose(hist: np.ndarray, need: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """From per-group 256-bin histograms pick the digit holding the need-th largest key; returns (digit, above)."""
    h = hist.reshape(groups, 256)[:, ::-1]
    cum = h.cumsum(axis=1)
    idx = np.argmax(cum >= need[:, None], axis=1)
    above = cum[np.arange(groups), idx] - h[np.arange(groups), idx]
    return (255 - idx).astype(np.uint64), above


def _load_candidates(spills: list[tuple[str, np.ndarray]], limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    keys, groups, total = [], [], 0
    for spill, remap in spills:
        for block in iter_spill(spill):
            cand = ~np.isnan(block["score"])
            total += int(cand.sum())
            if total > limit:
                return None
            keys.append(sortable_keys(block["score"][cand]))
            groups.append(remap[block["group"][cand]].astype(np.int32))
    if not keys:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32)
    return np.concatenate(keys), np.concatenate(groups)


def find_cut(spills: list[tuple[str, np.ndarray]], m: np.ndarray, k: np.ndarray,
             in_memory_rows: int = CUT_IN_MEMORY_ROWS) -> Cut:
    """Exact k-th largest key per group by radix selection (8 passes × 8 bits) over the spills.

    ``spills`` is a list of (spill path, local→global group code map). Up to ``in_memory_rows`` candidates the
    keys are loaded once (12 bytes each) and each pass keeps only the rows still in the running; beyond that
    every pass streams the spills from disk and memory is 256 counters per group.
    """
    groups = len(m)
    prefix = np.zeros(groups, dtype=np.uint64)
    need = k.astype(np.int64).copy()
    active = need > 0
    loaded = _load_candidates(spills, in_memory_rows)
    for byte in range(8):
        shift = np.uint64(56 - 8 * byte)
        if loaded is not None:
            key, g = loaded
            digit = ((key >> shift) & np.uint64(255)).astype(np.int32)
            hist = np.bincount(g.astype(np.int64) * 256 + digit, minlength=groups * 256)
        else:
            hist = np.zeros(groups * 256, dtype=np.int64)
            for spill, remap in spills:
                for block in iter_spill(spill):
                    cand = ~np.isnan(block["score"])
                    if not cand.any():
                        continue
                    g = remap[block["group"][cand]]
                    key = sortable_keys(block["score"][cand])
                    if byte:
                        ok = (key >> (shift + np.uint64(8))) == prefix[g]
                        g, key = g[ok], key[ok]
                    digit = ((key >> shift) & np.uint64(255)).astype(np.int64)
                    hist += np.bincount(g.astype(np.int64) * 256 + digit, minlength=groups * 256)
        chosen, above = _radix_choose(hist, need, groups)
        need = np.where(active, need - above, need)
        prefix = np.where(active, (prefix << np.uint64(8)) | chosen, prefix)
        if loaded is not None:
            key, g = loaded
            keep = digit == chosen.astype(np.int32)[g]
            loaded = (key[keep], g[keep])
    return Cut(threshold=prefix, ties=np.where(active, need, 0), k=k, m=m)


def keep_mask(score: np.ndarray, groups: np.ndarray, cut: Cut, ties_left: np.ndarray) -> np.ndarray:
    """Pass-2 decision for a block of rows in file order; ``ties_left`` is updated in place."""
    cand = ~np.isnan(score)
    keep = np.zeros(len(score), dtype=bool)
    if not cand.any():
        return keep
    idx = np.flatnonzero(cand)
    g = groups[idx]
    key = sortable_keys(score[idx])
    t = cut.threshold[g]
    active = cut.k[g] > 0
    keep[idx[(key > t) & active]] = True
    tie_idx = idx[(key == t) & active]
    if len(tie_idx):
        tg = groups[tie_idx]
        for code in np.unique(tg):
            quota = int(ties_left[code])
            if quota <= 0:
                continue
            rows = tie_idx[tg == code][:quota]
            keep[rows] = True
            ties_left[code] -= len(rows)
    return keep


# ----------------------------------------------------------------------------------------------- pass 2


@dataclass
class FileWriteResult:
    path: str
    kept: int
    written: int
    conversion: ConversionCounts
    part: str | None = None


def write_kept(path: str, result: FileScanResult, remap: np.ndarray, cut: Cut, ties_left: np.ndarray,
               config: SelectConfig, out: Any) -> FileWriteResult:
    """Pass 2 for one file: stream it again beside its spill and write the kept rows to ``out`` (binary)."""
    conv = ConversionCounts()
    kept = written = 0
    spill = open(result.spill, "rb")  # noqa: SIM115 - closed below
    dt = spill_dtype()
    mode = config.compat
    try:
        if is_parquet(path):
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=65536):
                block = np.fromfile(spill, dtype=dt, count=batch.num_rows)
                if len(block) != batch.num_rows:
                    raise RuntimeError(f"{path}: changed between the two passes")
                mask = keep_mask(block["score"], remap[block["group"]], cut, ties_left)
                kept += int(mask.sum())
                if not mask.any():
                    continue
                sub = batch.filter(mask)
                if config.output_format == "parquet":
                    out.write_batch(sub)
                    written += sub.num_rows
                    continue
                for rec in sub.to_pylist():
                    if config.output_format == "mmprm":
                        rec = to_mmprm(rec, config.fields, mode, conv)
                        if rec is None:
                            continue
                        out.write(encode_mmprm(rec).encode("utf-8"))
                    else:
                        out.write((json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
                    written += 1
        else:
            no_blanks = result.counts.blank == 0
            for chunk in iter_line_chunks(path, config.chunk_bytes):
                ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + 1  # one past each newline
                starts = np.concatenate(([0], ends[:-1]))
                if no_blanks:
                    line_of_row = None
                    nrows = len(ends)
                else:
                    line_of_row = np.asarray(row_lines(chunk)[1], dtype=np.int64)
                    nrows = len(line_of_row)
                block = np.fromfile(spill, dtype=dt, count=nrows)
                if len(block) != nrows:
                    raise RuntimeError(f"{path}: changed between the two passes")
                mask = keep_mask(block["score"], remap[block["group"]], cut, ties_left)
                sel = np.flatnonzero(mask)
                kept += len(sel)
                if not len(sel):
                    continue
                li = sel if line_of_row is None else line_of_row[sel]
                spans = zip(starts[li].tolist(), ends[li].tolist(), strict=True)
                if config.output_format == "mmprm":
                    parts = []
                    for a, b in spans:
                        rec = to_mmprm(json.loads(chunk[a:b]), config.fields, mode, conv)
                        if rec is not None:
                            parts.append(encode_mmprm(rec))
                    out.write("".join(parts).encode("utf-8"))
                    written += len(parts)
                else:
                    out.write(b"".join([chunk[a:b] for a, b in spans]))  # the original bytes of each kept line
                    written += len(sel)
        if np.fromfile(spill, dtype=dt, count=1).size:
            raise RuntimeError(f"{path}: changed between the two passes (fewer rows now)")
    finally:
        spill.close()
    return FileWriteResult(path=str(path), kept=kept, written=written, conversion=conv)


# ----------------------------------------------------------------------------------------------- driver


TOOL_VERSION = "leanlm.bis 0.1.0"


def _ratio_for(name: str, config: SelectConfig) -> float:
    return float(config.ratios.get(name, config.ratio))


def _run_pass1(files: list[Path], config: SelectConfig, spill_dir: str) -> list[FileScanResult]:
    if config.engine == "duckdb":
        from leanlm.bis.engines import duckdb_pass1

        return duckdb_pass1(files, config, spill_dir)
    if config.engine == "ray":
        from leanlm.bis.engines import ray_pass1

        return ray_pass1(files, config, spill_dir)
    workers = worker_count(files, config)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(scan_file_to_spill, str(p), i, config, spill_dir) for i, p in enumerate(files)]
            return [f.result() for f in progress(futures, desc="bis pass 1", unit="file")]
    with progress_bar(desc="bis pass 1", unit="rows") as bar:
        return [scan_file_to_spill(str(p), i, config, spill_dir, on_progress=bar.update) for i, p in enumerate(files)]


def select(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    config: SelectConfig | None = None,
    *,
    manifest: str | os.PathLike[str] | None = None,
    rejects: str | os.PathLike[str] | None = None,
    spill_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Select the top ratio of each group of ``inputs`` into ``output``; return (and write) the manifest.

    ``manifest`` defaults to ``<output>.manifest.json``; ``rejects`` (with ``skip_invalid``) to
    ``<output>.rejects.jsonl``. All files are written atomically.
    """
    config = config or SelectConfig()
    t0 = time.perf_counter()
    files = discover_inputs(inputs)
    if any(Path(output).resolve() == p.resolve() for p in files):
        raise ValueError(f"output {output} is one of the inputs")
    if config.output_format == "parquet" and not all(is_parquet(p) for p in files):
        return _select_to_parquet_via_jsonl(files, output, config, manifest=manifest, rejects=rejects,
                                            spill_dir=spill_dir)
    if isinstance(config.scorer, External):
        config.scorer.file_names = [p.name for p in files]
    if config.plan == "single-pass" and (why := single_pass.ineligible_reason(files, config)):
        raise ValueError(f"the single-pass plan does not apply here: {why}")
    if config.plan != "two-pass" and single_pass.eligible(files, config):
        return _select_single_pass(files, output, config, manifest=manifest, rejects=rejects, spill_dir=spill_dir)
    tmp = tempfile.mkdtemp(prefix="bis-spill-", dir=spill_dir)
    try:
        scans = _run_pass1(files, config, tmp)
        t1 = time.perf_counter()
        # Global group codes.
        gnames: dict[str, int] = {}
        remaps = []
        for res in scans:
            remaps.append(np.array([gnames.setdefault(n, len(gnames)) for n in res.group_names], dtype=np.int64))
        m = np.zeros(len(gnames), dtype=np.int64)
        for res, remap in zip(scans, remaps, strict=True):
            for local, c in enumerate(res.group_candidates):
                m[remap[local]] += c
        names = list(gnames)
        k = np.array([keep_count(int(m[i]), _ratio_for(n, config)) for i, n in enumerate(names)], dtype=np.int64)
        cut = find_cut([(r.spill, remap) for r, remap in zip(scans, remaps, strict=True)], m, k)
        t2 = time.perf_counter()
        ties_left = cut.ties.copy()
        writes = _run_pass2(files, scans, remaps, cut, ties_left, config, output)
        t3 = time.perf_counter()
        rpath = _gather_rejects([res.rejects for res in scans if res.rejects], config, output, rejects)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = _manifest(files, scans, writes, names, m, k, cut, config, output, rpath,
                    timings={"pass1": t1 - t0, "cut": t2 - t1, "pass2": t3 - t2, "total": t3 - t0})
    atomic_write_json(manifest or str(output) + ".manifest.json", doc)
    log.info("bis select: kept %d of %d candidates (%d rows read) from %d files in %.2f s -> %s",
             doc["totals"]["kept"], doc["totals"]["candidates"], doc["totals"]["rows"], len(files), t3 - t0, output)
    return doc


def _gather_rejects(parts: list[str], config: SelectConfig, output: str | os.PathLike[str],
                    rejects: str | os.PathLike[str] | None) -> Path | None:
    """Concatenate the per-file rejects (in file order) into the rejects file, written atomically; its path, or
    ``None`` when there is none (an empty one is written when ``skip_invalid`` names a rejects path)."""
    if not parts and not (config.skip_invalid and rejects is not None):
        return None
    rpath = Path(rejects) if rejects is not None else Path(str(output) + ".rejects.jsonl")
    with atomic_write(rpath, "wb") as fh:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 22)
    return rpath


def _select_single_pass(files: list[Path], output: str | os.PathLike[str], config: SelectConfig, *,
                        manifest: str | os.PathLike[str] | None, rejects: str | os.PathLike[str] | None,
                        spill_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Per-file groups: select each file in one pass (:mod:`leanlm.bis.single_pass`) and write the manifest."""
    t0 = time.perf_counter()
    names = [source_name(p) for p in files]
    tmp = tempfile.mkdtemp(prefix="bis-work-", dir=spill_dir)
    try:
        with progress_bar(desc="bis select", unit="rows") as bar, atomic_write(output, "wb") as out:
            results = single_pass.run(files, config, tmp, out, [_ratio_for(n, config) for n in names],
                                      on_done=lambda r: bar.update(r.counts.rows))
        rpath = _gather_rejects([r.rejects for r in results if r.rejects], config, output, rejects)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t1 = time.perf_counter()
    scans = [FileScanResult(path=r.path, counts=r.counts, group_names=[n], group_candidates=[r.candidates], spill="",
                            rejects=r.rejects) for r, n in zip(results, names, strict=True)]
    writes = [FileWriteResult(path=r.path, kept=r.kept, written=r.written, conversion=r.conversion) for r in results]
    m = np.array([r.candidates for r in results], dtype=np.int64)
    k = np.array([r.k for r in results], dtype=np.int64)
    threshold = np.array([0.0 if r.threshold is None else r.threshold for r in results], dtype=np.float64)
    cut = Cut(threshold=np.where(k > 0, sortable_keys(threshold), np.uint64(0)),
              ties=np.array([r.ties_kept for r in results], dtype=np.int64), k=k, m=m)
    doc = _manifest(files, scans, writes, names, m, k, cut, config, output, rpath,
                    timings={"single_pass": t1 - t0, "total": t1 - t0})
    atomic_write_json(manifest or str(output) + ".manifest.json", doc)
    log.info("bis select: kept %d of %d candidates (%d rows read) from %d files in %.2f s (single pass) -> %s",
             doc["totals"]["kept"], doc["totals"]["candidates"], doc["totals"]["rows"], len(files), t1 - t0, output)
    return doc


def _run_pass2(files: list[Path], scans: list[FileScanResult], remaps: list[np.ndarray], cut: Cut,
               ties_left: np.ndarray, config: SelectConfig, output: str | os.PathLike[str]) -> list[FileWriteResult]:
    if config.output_format == "parquet":
        import pyarrow.parquet as pq

        schema = pq.ParquetFile(files[0]).schema_arrow
        with atomic_write(output, "wb") as raw:
            writer = pq.ParquetWriter(raw, schema)
            try:
                return [write_kept(str(p), s, r, cut, ties_left, config, writer)
                        for p, s, r in zip(files, scans, remaps, strict=True)]
            finally:
                writer.close()
    if config.engine == "ray" or (worker_count(files, config) > 1 and config.group_by == "file"):
        from leanlm.bis.engines import parallel_pass2

        return parallel_pass2(files, scans, remaps, cut, config, output)
    with atomic_write(output, "wb") as out:
        return [write_kept(str(p), s, r, cut, ties_left, config, out)
                for p, s, r in progress(list(zip(files, scans, remaps, strict=True)), desc="bis pass 2", unit="file")]


def _select_to_parquet_via_jsonl(files: list[Path], output: str | os.PathLike[str], config: SelectConfig,
                                 **kwargs: Any) -> dict[str, Any]:
    """JSONL input, Parquet output: select to a temporary JSONL, then let Arrow's JSON reader convert it."""
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    out = Path(output)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        jsonl = Path(tmp) / "kept.jsonl"
        cfg = SelectConfig(**{**{f: getattr(config, f) for f in config.__dataclass_fields__}, "output_format": "jsonl"})
        doc = select(files, jsonl, cfg, manifest=kwargs.get("manifest") or str(output) + ".manifest.json",
                     rejects=kwargs.get("rejects"), spill_dir=kwargs.get("spill_dir"))
        table = pj.read_json(jsonl) if jsonl.stat().st_size else None
        with atomic_write(out, "wb") as fh:
            if table is not None:
                pq.write_table(table, fh)
    doc["output"] = {"path": str(out), "format": "parquet"}
    atomic_write_json(kwargs.get("manifest") or str(output) + ".manifest.json", doc)
    return doc


def _manifest(files: list[Path], scans: list[FileScanResult], writes: list[FileWriteResult], names: list[str],
              m: np.ndarray, k: np.ndarray, cut: Cut, config: SelectConfig, output: str | os.PathLike[str],
              rejects_path: Path | None, timings: dict[str, float]) -> dict[str, Any]:
    per_file = []
    totals = {"rows": 0, "blank_lines": 0, "malformed": 0, "without_scores": 0, "candidates": 0, "kept": 0,
              "not_kept": 0, "written": 0}
    conv_total = ConversionCounts()
    for path, scan, w in zip(files, scans, writes, strict=True):
        c = scan.counts
        not_kept = c.rows - c.malformed - w.kept
        entry = {
            "file": str(path), "source": source_name(path), "sha256": c.sha256 or None, "bytes": c.bytes,
            "rows": c.rows, "blank_lines": c.blank, "malformed": c.malformed, "without_scores": c.without_scores,
            "engine": scan.engine, "candidates": c.candidates, "kept": w.kept, "not_kept": not_kept, "written": w.written,
            "conversion": w.conversion.as_dict() if config.output_format == "mmprm" else None,
        }
        if entry["rows"] != entry["kept"] + entry["not_kept"] + entry["malformed"]:
            raise AssertionError(f"{path}: counts do not reconcile: {entry}")
        per_file.append(entry)
        for key in totals:
            totals[key] += entry[key]
        conv_total.add(w.conversion)
    groups = []
    for i, name in enumerate(names):
        t = cut.threshold[i : i + 1].view(np.uint64)
        value = None
        if k[i] > 0:
            bits = np.where(t >> np.uint64(63) == 1, t & ~np.uint64(1 << 63), ~t)
            value = float(bits.view(np.float64)[0])
        groups.append({"group": name, "candidates": int(m[i]), "ratio": _ratio_for(name, config), "k": int(k[i]),
                       "threshold": value, "ties_kept_at_threshold": int(cut.ties[i])})
    return {
        "tool": TOOL_VERSION,
        "output": {"path": str(output), "format": config.output_format},
        "rejects": str(rejects_path) if rejects_path else None,
        "settings": {"scorer": config.scorer.name, **config.scorer.params(), "ratio": config.ratio,
                     "ratios": config.ratios, "group_by": config.group_by, "engine": config.engine,
                     "compat": config.compat, "skip_invalid": config.skip_invalid, "workers": config.workers,
                     "plan": "single-pass" if "single_pass" in timings else "two-pass",
                     "fields": asdict(config.fields)},
        "files": per_file,
        "groups": groups,
        "totals": totals,
        "conversion": conv_total.as_dict() if config.output_format == "mmprm" else None,
        "seconds": {k2: round(v, 4) for k2, v in timings.items()},
    }
