"""Single-pass selection for the usual case: every stratum is one source file (the official behaviour).

When groups are files, a file's cut depends on that file alone, so there is no need for the two-pass plan of
:mod:`leanlm.bis.select` (spill every score, find all cuts, re-read and re-split the whole corpus). Each file
is memory-mapped once and, in one worker:

1. hashed (SHA-256 of the mapping) and decoded in runs of whole lines by the same pass-1 scanner as the
   two-pass engine (:meth:`leanlm.bis.scan.FileScanner.scan_buffer`), keeping each row's score and the byte
   span of its line (24 bytes per row);
2. cut exactly: the candidates' stable descending sort by score keeps the first ``max(1, int(m·ratio))``, ties
   in file order, the same rows as the radix cut (:func:`leanlm.bis.cut.find_cut`);
3. written: the kept lines' original bytes (or their MM-PRM conversion), in file order, into a part file that
   the driver appends to the output as soon as every earlier file is done.

Pages of the mapping that have been scanned are handed back to the kernel (``MADV_DONTNEED``), so the
resident size stays near one run of lines plus the per-row arrays, whatever the file size. Files are spread
over worker processes (``workers``; 0 = one per CPU). The output, manifest and rejects are the two-pass
engine's byte for byte (the tests check it).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from leanlm.bis.config import SelectConfig, source_name
from leanlm.bis.convert import ConversionCounts
from leanlm.bis.cut import chunk_scores, keep_count, stable_top_k
from leanlm.bis.engine_stream import scanner_for
from leanlm.bis.executor import map_ordered
from leanlm.bis.scan import FileCounts
from leanlm.bis.spill import RejectSink, spill_path
from leanlm.bis.writers import make_writer

#: A file larger than this takes the two-pass path: the per-row arrays and the cut's sort peak near 100 bytes
#: per row (measured: 204 MB for a 951 MB file of 2M rows), and several workers may hold one each.
MAX_FILE_BYTES = 1 << 30


@dataclass
class FileSelection:
    """One file's single-pass result: pass-1 counts, the cut of its group and what was written."""

    path: str
    counts: FileCounts
    candidates: int
    k: int
    threshold: float | None  # the k-th largest score (None when nothing is kept)
    ties_kept: int  # kept rows whose score equals the threshold
    kept: int
    not_kept: int
    written: int
    conversion: ConversionCounts
    part: str
    rejects: str | None


def ineligible_reason(files: list[Path], config: SelectConfig) -> str | None:
    """Why the single-pass plan does not apply (``None`` when it does). It needs per-file groups, the stream
    engine, plain JSONL in, JSONL or MM-PRM out, and no file over :data:`MAX_FILE_BYTES`."""
    if config.engine != "stream":
        return f"engine {config.engine!r} (the single pass is the stream engine's)"
    if config.group_by != "file":
        return f"group_by={config.group_by!r}: a group's cut needs other files (only per-file groups are local)"
    if config.output_format not in ("jsonl", "mmprm"):
        return f"output format {config.output_format!r}"
    if len({source_name(p) for p in files}) != len(files):
        return "two input files share a source name (e.g. a.jsonl and a.jsonl.gz), so a group spans files"
    for p in files:
        if not p.name.lower().endswith(".jsonl"):
            return f"{p}: not plain JSONL (compressed and Parquet inputs take two passes)"
        if p.stat().st_size > MAX_FILE_BYTES:
            return f"{p}: larger than {MAX_FILE_BYTES >> 30} GiB"
    return None


@contextmanager
def _mapped(path: str) -> Iterator[Any]:
    """The file's bytes, memory-mapped read-only (``b""`` for an empty file, which cannot be mapped)."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            yield b""
            return
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mm
        finally:
            # Views still referenced by an exception's traceback block closing: unmapped when it is freed.
            with suppress(BufferError):
                mm.close()


def _drop_pages(buffer: Any, start: int, stop: int) -> None:
    """Give scanned pages of a read-only mapping back to the kernel (they stay in the page cache)."""
    if isinstance(buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        start -= start % mmap.PAGESIZE
        if stop > start:
            buffer.madvise(mmap.MADV_DONTNEED, start, stop - start)


def select_file(path: str, file_index: int, config: SelectConfig, work_dir: str, ratio: float) -> FileSelection:
    """Score, cut and write one file in a single pass (see the module docstring)."""
    sink = RejectSink(spill_path(work_dir, file_index, ".rejects.jsonl"))
    part = spill_path(work_dir, file_index, ".part")
    scanner = scanner_for(path, file_index, config, sink, hash_input=False)
    sha = hashlib.sha256() if config.hash_input else None
    try:
        with _mapped(path) as buf:
            scores, starts, stops = [], [], []
            for offset, ends, chunk in scanner.scan_buffer(buf, on_bytes=sha.update if sha else None):
                scores.append(chunk_scores(config.scorer, chunk.stats))
                run_end = offset + int(ends[-1])
                line_start = np.concatenate(([0], ends[:-1]))
                if chunk.blank:  # rows are the non-blank lines
                    nonblank = _nonblank_lines(buf, offset, line_start, ends)
                    line_start, ends = line_start[nonblank], ends[nonblank]
                starts.append(line_start + offset)
                stops.append(ends + offset)
                _drop_pages(buf, offset, run_end)
            score = np.concatenate(scores) if scores else np.zeros(0)
            start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
            stop = np.concatenate(stops) if stops else np.zeros(0, np.int64)
            del scores, starts, stops  # the per-run pieces: halves the peak during the sort below
            candidate = ~np.isnan(score)
            m = int(np.count_nonzero(candidate))
            k = keep_count(m, ratio)
            top = stable_top_k(score, k)
            threshold = float(score[top[-1]]) if k else None
            ties = int(np.count_nonzero(score[top] == threshold)) if k else 0
            kept_mask = np.zeros(len(score), dtype=bool)
            kept_mask[top] = True
            kept_rows = np.flatnonzero(kept_mask)
            not_kept = int(np.count_nonzero(candidate & ~kept_mask))
            with open(part, "wb") as out:
                writer = make_writer(config.output_format, out, config.fields, config.compat)
                for b0 in range(0, len(kept_rows), 1 << 16):
                    rows = kept_rows[b0 : b0 + (1 << 16)]
                    writer.write_spans(buf, start[rows], stop[rows])
                    _drop_pages(buf, int(start[rows[0]]), int(stop[rows[-1]]))
    finally:
        rejects = sink.close()
    if sha is not None:
        scanner.counts.sha256 = sha.hexdigest()
    return FileSelection(path=path, counts=scanner.counts, candidates=m, k=k, threshold=threshold, ties_kept=ties,
                         kept=len(kept_rows), not_kept=not_kept, written=writer.written,
                         conversion=writer.conversion, part=part, rejects=rejects)


def _nonblank_lines(buf: Any, offset: int, line_start: np.ndarray, line_end: np.ndarray) -> np.ndarray:
    """Indices of the lines of a run that hold more than whitespace (the rows, as the scanner counts them)."""
    keep = [i for i, (a, b) in enumerate(zip((line_start + offset).tolist(), (line_end + offset).tolist(),
                                             strict=True)) if bytes(buf[a:b]).strip(b" \t\r\n")]
    return np.asarray(keep, dtype=np.int64)


def append_part(src: str, out: IO[bytes]) -> None:
    """Append a part file to ``out`` (in-kernel ``copy_file_range`` where possible) and delete it."""
    out.flush()
    with open(src, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(fh.fileno(), out.fileno(), size - done)
                if n == 0:
                    break
                done += n
        except (AttributeError, OSError):
            done = 0
        if done < size:
            fh.seek(done)
            out.seek(0, os.SEEK_END)
            shutil.copyfileobj(fh, out, 1 << 22)
        else:
            out.seek(0, os.SEEK_END)
    os.unlink(src)


def run(files: list[Path], config: SelectConfig, work_dir: str, out: IO[bytes], ratios: list[float],
        executor: str = "serial", workers: int = 1,
        on_done: Callable[[FileSelection], object] | None = None) -> list[FileSelection]:
    """Select every file (on ``executor``) and append the parts to ``out`` in file order."""
    items = [(str(p), i, config, work_dir, ratios[i]) for i, p in enumerate(files)]
    results: list[FileSelection] = []
    for res in map_ordered(select_file, items, executor, workers):
        append_part(res.part, out)
        results.append(res)
        if on_done is not None:
            on_done(res)
    return results
