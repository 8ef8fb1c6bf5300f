"""The two-pass plan: any grouping (file, global, a field), any input (plain/compressed JSONL, Parquet), any
engine, with bounded memory.

1. **Pass 1**: the engine scans every file into a spill (:mod:`leanlm.bis.spill`), on the executor.
2. **Cut**: the exact threshold and tie quota of every group by radix selection over the spills
   (:func:`leanlm.bis.cut.find_cut`); each group's tie quota is then split across files in file order
   (:func:`tie_quotas`), so files can be written independently.
3. **Pass 2**: every file is streamed again beside its spill and its kept rows go to the format's writer, in a
   part file per file (concatenated in file order), or straight into one Parquet writer.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np

from leanlm.bis.config import SelectConfig
from leanlm.bis.convert import ConversionCounts
from leanlm.bis.cut import Cut, find_cut, keep_count, keep_mask, sortable_keys
from leanlm.bis.engines import get_engine
from leanlm.bis.executor import map_ordered
from leanlm.bis.manifest import FileOutcome, GroupOutcome
from leanlm.bis.scan import is_parquet, iter_line_chunks, row_lines
from leanlm.bis.spill import SPILL_DTYPE, FileScores, iter_spill, spill_path
from leanlm.bis.writers import Writer, make_writer
from leanlm.common.atomic import atomic_write


@dataclass
class FileWrite:
    """Pass 2's result for one file."""

    kept: int
    not_kept: int
    written: int
    conversion: ConversionCounts
    part: str | None = None


def pass1(files: list[str], config: SelectConfig, spill_dir: str, executor: str, workers: int) -> list[FileScores]:
    if executor == "ray":  # a Ray Data pipeline: no filesystem shared with the workers
        from leanlm.bis import ray_pipeline

        return ray_pipeline.pass1(files, config, spill_dir, workers)
    engine = get_engine(config.engine)
    items = [(p, i, config, spill_dir) for i, p in enumerate(files)]
    return list(map_ordered(engine.scan, items, executor, workers))


def global_groups(scans: list[FileScores]) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """Global group names, each file's local -> global code map, and each group's candidates m."""
    gnames: dict[str, int] = {}
    remaps = [np.array([gnames.setdefault(n, len(gnames)) for n in s.group_names], dtype=np.int64) for s in scans]
    m = np.zeros(len(gnames), dtype=np.int64)
    for s, remap in zip(scans, remaps, strict=True):
        for local, c in enumerate(s.group_candidates):
            m[remap[local]] += c
    return list(gnames), remaps, m


def compute_cut(scans: list[FileScores], remaps: list[np.ndarray], names: list[str], m: np.ndarray,
                config: SelectConfig) -> Cut:
    k = np.array([keep_count(int(m[i]), config.ratio_for(n)) for i, n in enumerate(names)], dtype=np.int64)

    def blocks():
        for s, remap in zip(scans, remaps, strict=True):
            for block in iter_spill(s.spill):
                yield block["score"], remap[block["group"]]

    return find_cut(blocks, m, k)


def tie_quotas(scans: list[FileScores], remaps: list[np.ndarray], cut: Cut) -> list[np.ndarray]:
    """Split each group's tie quota at its threshold across files in file order, so files can run apart."""
    left = cut.ties.astype(np.int64).copy()
    quotas = []
    for scan, remap in zip(scans, remaps, strict=True):
        at_t = np.zeros(len(left), dtype=np.int64)
        for block in iter_spill(scan.spill):
            cand = ~np.isnan(block["score"])
            g = remap[block["group"][cand]]
            eq = sortable_keys(block["score"][cand]) == cut.threshold[g]
            at_t += np.bincount(g[eq], minlength=len(left))
        take = np.minimum(at_t, left)
        quotas.append(take)
        left -= take
    return quotas


def write_kept(path: str, scan: FileScores, remap: np.ndarray, cut: Cut, quota: np.ndarray, writer: Writer,
               chunk_bytes: int) -> tuple[int, int]:
    """Pass 2 for one file: stream it again beside its spill and hand its kept rows to ``writer``.
    Returns (kept, not kept), counted from the keep decisions."""
    ties_left = quota.copy()
    kept = not_kept = 0
    with open(scan.spill, "rb") as spill:
        def decide(nrows: int) -> np.ndarray:
            nonlocal kept, not_kept
            block = np.fromfile(spill, dtype=SPILL_DTYPE, count=nrows)
            if len(block) != nrows:
                raise RuntimeError(f"{path}: changed between the two passes")
            mask = keep_mask(block["score"], remap[block["group"]], cut, ties_left)
            kept += int(np.count_nonzero(mask))
            not_kept += int(np.count_nonzero(~np.isnan(block["score"]) & ~mask))
            return mask

        if is_parquet(path):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=65536):
                mask = decide(batch.num_rows)
                if mask.any():
                    writer.write_batch(batch.filter(mask))
        else:
            no_blanks = scan.counts.blank == 0
            for chunk in iter_line_chunks(path, chunk_bytes):
                ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + 1  # one past each newline
                starts = np.concatenate(([0], ends[:-1]))
                line_of_row = None if no_blanks else np.asarray(row_lines(chunk)[1], dtype=np.int64)
                mask = decide(len(ends) if line_of_row is None else len(line_of_row))
                sel = np.flatnonzero(mask)
                if len(sel):
                    li = sel if line_of_row is None else line_of_row[sel]
                    writer.write_spans(chunk, starts[li], ends[li])
        if np.fromfile(spill, dtype=SPILL_DTYPE, count=1).size:
            raise RuntimeError(f"{path}: changed between the two passes (fewer rows now)")
    return kept, not_kept


def _write_part(path: str, scan: FileScores, remap: np.ndarray, cut: Cut, quota: np.ndarray, config: SelectConfig,
                part: str) -> FileWrite:
    with open(part, "wb") as out:
        writer = make_writer(config.output_format, out, config.fields, config.compat)
        kept, not_kept = write_kept(path, scan, remap, cut, quota, writer, config.chunk_bytes)
    return FileWrite(kept=kept, not_kept=not_kept, written=writer.written, conversion=writer.conversion, part=part)


def pass2(files: list[str], scans: list[FileScores], remaps: list[np.ndarray], cut: Cut, config: SelectConfig,
          output: str | os.PathLike[str], spill_dir: str, executor: str, workers: int) -> list[FileWrite]:
    quotas = tie_quotas(scans, remaps, cut)
    if config.output_format == "parquet":
        import pyarrow.parquet as pq

        schema = pq.ParquetFile(files[0]).schema_arrow
        results = []
        with atomic_write(output, "wb") as raw:
            pw = pq.ParquetWriter(raw, schema)
            try:
                for p, s, r, q in zip(files, scans, remaps, quotas, strict=True):
                    writer = make_writer("parquet", pw, config.fields, config.compat)
                    kept, not_kept = write_kept(p, s, r, cut, q, writer, config.chunk_bytes)
                    results.append(FileWrite(kept, not_kept, writer.written, writer.conversion))
            finally:
                pw.close()
        return results
    items = [(p, s, r, cut, q, config, spill_path(spill_dir, i, ".part"))
             for i, (p, s, r, q) in enumerate(zip(files, scans, remaps, quotas, strict=True))]
    results = []
    with atomic_write(output, "wb") as out:
        for res in map_ordered(_write_part, items, executor, workers):
            with open(res.part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 22)
            os.unlink(res.part)
            results.append(res)
    return results


def outcomes(scans: list[FileScores], writes: list[FileWrite], names: list[str], cut: Cut
             ) -> tuple[list[FileOutcome], list[GroupOutcome]]:
    files = [FileOutcome(path=s.path, counts=s.counts, engine=s.engine, kept=w.kept, not_kept=w.not_kept,
                         written=w.written, conversion=w.conversion) for s, w in zip(scans, writes, strict=True)]
    groups = [GroupOutcome(name=n, candidates=int(cut.m[i]), k=int(cut.k[i]), threshold=cut.threshold_value(i),
                           ties_kept=int(cut.ties[i])) for i, n in enumerate(names)]
    return files, groups


def run(files: list[str], config: SelectConfig, output: str | os.PathLike[str], spill_dir: str, executor: str,
        workers: int, check_rows: Any = None) -> tuple[list[FileScores], list[FileOutcome], list[GroupOutcome],
                                                       dict[str, float]]:
    """The whole two-pass plan; ``check_rows(scans)`` runs after pass 1 (it may raise before anything is written)."""
    import time

    t0 = time.perf_counter()
    scans = pass1(files, config, spill_dir, executor, workers)
    if check_rows is not None:
        check_rows([s.counts for s in scans])
    t1 = time.perf_counter()
    names, remaps, m = global_groups(scans)
    cut = compute_cut(scans, remaps, names, m, config)
    t2 = time.perf_counter()
    # Tie quotas are split per file (tie_quotas), so files are written independently whatever the grouping.
    # With Ray, pass 2 runs where the inputs and spills are: on the driver, in local processes.
    local = ("process" if workers > 1 else "serial") if executor == "ray" else executor
    writes = pass2(files, scans, remaps, cut, config, output, spill_dir, local, workers)
    t3 = time.perf_counter()
    f, g = outcomes(scans, writes, names, cut)
    return scans, f, g, {"pass1": t1 - t0, "cut": t2 - t1, "pass2": t3 - t2}
