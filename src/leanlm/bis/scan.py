"""Pass 1 of the streaming engine: read a corpus file in byte chunks and turn each chunk into compact stats.

A chunk is a run of whole lines (cut at the last newline of a fixed-size read), so memory is bounded by the
chunk size whatever the file size. Each chunk is decoded in one call (msgspec ``decode_lines`` with the typed
decoder of :mod:`leanlm.bis.schema`, which parses only the step scores); if that fails, the chunk is decoded
line by line to name the bad line. Blank lines are skipped and counted; "row" means a non-blank line, numbered
from 0 in file order, which is the identity every engine uses.

Pass 2 (:mod:`leanlm.bis.select`) re-reads the same chunks and copies the kept lines' original bytes.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from leanlm.bis.schema import Fields, build_decoder
from leanlm.bis.score import RolloutStats
from leanlm.common.records import RecordError, open_binary

#: Bytes read per chunk (whole lines are carried over). 8 MiB keeps pass-1 memory far below 1 GB.
CHUNK_BYTES = 8 << 20
_WS = b" \t\r\n"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a whole file, read in 4 MiB blocks (files that are not otherwise read byte by byte)."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def is_parquet(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == ".parquet"


def iter_line_chunks(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES,
                     on_bytes: Callable[[bytes], object] | None = None) -> Iterator[bytes]:
    """Yield runs of whole lines, each ending in ``\\n`` (one is added to a last line that lacks it)."""
    with open_binary(path) as handle:
        tail = b""
        while True:
            block = handle.read(chunk_bytes)
            if not block:
                break
            if on_bytes is not None:
                on_bytes(block)
            cut = block.rfind(b"\n")
            if cut < 0:
                tail += block
                continue
            chunk = tail + block[: cut + 1]
            tail = block[cut + 1 :]
            yield chunk
        if tail:
            yield tail + b"\n"


def row_lines(chunk: bytes) -> tuple[list[bytes], list[int]]:
    """Split a chunk into lines (without ``\\n``) and the indices of the non-blank ones."""
    lines = chunk.split(b"\n")
    lines.pop()  # the empty piece after the final newline
    return lines, [i for i, line in enumerate(lines) if line.strip(_WS)]


@dataclass
class ChunkScan:
    """Pass-1 result for one chunk: stats of its rows, their groups, and the rows rejected as invalid."""

    stats: RolloutStats
    groups: list[object] | None  # per-row group value when grouping by a field
    lines_in_chunk: int
    first_line: int  # 1-based number of the chunk's first line
    rejected: np.ndarray  # bool per row
    blank: int = 0


@dataclass
class Reject:
    """One invalid row skipped under ``skip_invalid``."""

    path: str
    line: int
    error: str
    raw: str


@dataclass
class FileCounts:
    """Per-file counters; ``rows = candidates + without_scores + malformed`` always holds."""

    rows: int = 0
    blank: int = 0
    malformed: int = 0
    without_scores: int = 0
    candidates: int = 0
    bytes: int = 0
    sha256: str = ""


_STEPS, _S, _C, _T = attrgetter("steps"), attrgetter("s"), attrgetter("c"), attrgetter("t")


def _stats_from_rows(rows: list, counts_mode: bool, row0: int, file_index: int
                     ) -> tuple[RolloutStats, list[int]]:
    """Compute (n, n_pos, sum_pos) per decoded row; returns stats and the rows with a non-finite/invalid score."""
    nrows = len(rows)
    # C-level iteration (map/attrgetter/chain): a Python comprehension over ~6M steps costs seconds.
    steps_of = list(map(_STEPS, rows))
    if steps_of.count(None):
        steps_of = [st or () for st in steps_of]
    lens = np.fromiter(map(len, steps_of), dtype=np.int64, count=nrows)
    total = int(lens.sum())
    if counts_mode:
        # None (a missing count) becomes NaN in a float64 array
        corr = np.array(list(map(_C, chain.from_iterable(steps_of))), dtype=np.float64) if total else np.zeros(0)
        tot = np.array(list(map(_T, chain.from_iterable(steps_of))), dtype=np.float64) if total else np.zeros(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            flat = corr / tot
        flat[~np.isfinite(flat)] = np.nan  # a count pair without a usable total counts as "no score"
    else:
        flat = (np.array(list(map(_S, chain.from_iterable(steps_of))), dtype=np.float64) if total
                else np.zeros(0))
    bad: list[int] = []
    if total and np.isinf(flat).any():  # pragma: no cover - msgspec rejects out-of-range numbers
        bad = sorted(set(np.repeat(np.arange(nrows), lens)[np.isinf(flat)].tolist()))
    scored = ~np.isnan(flat)
    positive = scored & (flat > 0.0)
    owner = np.repeat(np.arange(nrows), lens)
    n = np.bincount(owner[scored], minlength=nrows).astype(np.int32)
    n_pos = np.bincount(owner[positive], minlength=nrows).astype(np.int32)
    # Left-to-right float64 sum of positive scores per row, column by column (exactly Python's sum order).
    sum_pos = np.zeros(nrows, dtype=np.float64)
    if total:
        starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
        pos_in_row = np.arange(total) - np.repeat(starts, lens)
        values = np.where(positive, flat, 0.0)
        width = int(lens.max())
        if width <= 256:
            grid = np.zeros((nrows, width), dtype=np.float64)
            grid[owner, pos_in_row] = values
            for j in range(width):
                sum_pos += grid[:, j]
        else:
            for i in range(nrows):
                acc = 0.0
                for v in values[starts[i] : starts[i] + lens[i]]:
                    acc += float(v)
                sum_pos[i] = acc
    row = np.arange(row0, row0 + nrows, dtype=np.int64)
    return RolloutStats(n=n, n_pos=n_pos, sum_pos=sum_pos, row=row, file_index=file_index), bad


class _Empty:
    steps = None
    group = None


class FileScanner:
    """Pass 1 over one JSONL file: yields a :class:`ChunkScan` per chunk and fills :attr:`counts`."""

    def __init__(self, path: str | os.PathLike[str], file_index: int, fields: Fields, *, skip_invalid: bool = False,
                 on_reject: Callable[[Reject], None] | None = None, chunk_bytes: int = CHUNK_BYTES,
                 hash_input: bool = True, strict_scores: bool = False, nan_negative: bool = False,
                 source: str | os.PathLike[str] | None = None):
        self.path = str(path)
        #: Where the bytes are read from (a local copy on a Ray worker); ``path`` is what messages name.
        self.source = str(source) if source is not None else self.path
        self.file_index = file_index
        self.fields = fields
        self.skip_invalid = skip_invalid
        self.on_reject = on_reject
        self.chunk_bytes = chunk_bytes
        self.hash_input = hash_input
        self.strict_scores = strict_scores
        self.nan_negative = nan_negative
        self.decoder = build_decoder(fields)
        self.counts = FileCounts()

    def _reject(self, line: int, message: str, raw: bytes) -> None:
        if not self.skip_invalid:
            raise RecordError(self.path, line, message)
        if self.on_reject is not None:
            self.on_reject(Reject(self.path, line, message, raw.decode("utf-8", "replace")))

    def _decode_each(self, chunk: bytes, first_line: int) -> tuple[list, np.ndarray, int, int]:
        lines, nonblank = row_lines(chunk)
        rows: list = []
        rejected = np.zeros(len(nonblank), dtype=bool)
        for k, i in enumerate(nonblank):
            try:
                rows.append(self.decoder.decode(lines[i]))
            except msgspec.ValidationError as exc:
                self._reject(first_line + i, f"wrong type or missing field: {exc}", lines[i])
                rows.append(_Empty)
                rejected[k] = True
            except msgspec.DecodeError as exc:
                try:
                    rows.append(self._decode_nonfinite(lines[i]))
                except _NotNonFinite:
                    self._reject(first_line + i, f"invalid JSON ({exc})", lines[i])
                    rows.append(_Empty)
                    rejected[k] = True
                except (_NonFinite, msgspec.ValidationError) as why:
                    self._reject(first_line + i, str(why), lines[i])
                    rows.append(_Empty)
                    rejected[k] = True
        return rows, rejected, len(lines), len(lines) - len(nonblank)

    def _decode_nonfinite(self, line: bytes) -> Any:
        """A line msgspec refused: if it is JSON only once ``NaN``/``Infinity`` tokens are allowed, decide.

        The official script reads such lines with ``json.loads`` and ``float()``: a NaN step score is then a
        scored step that is not positive (``nan > 0`` is false), e.g. ``compute_bis([nan, 0.5], 0.05) = 0.15``.
        BIS depends on a non-positive score only through the step count, so under ``--compat official`` a
        NaN score is decoded as 0.0, which gives the official BIS exactly. Otherwise, and for ±Infinity
        (whose BIS is infinite or undefined), the line is rejected with a message saying so.
        """
        seen: list[str] = []

        def constant(name: str) -> float:
            seen.append(name)
            return 0.0

        try:
            obj = json.loads(line, parse_constant=constant)
        except ValueError:
            raise _NotNonFinite from None
        if not seen:
            raise _NotNonFinite
        if any(c != "NaN" for c in seen):
            raise _NonFinite(f"non-finite number ({', '.join(sorted(set(seen)))}) in the line: an infinite step "
                             "score gives an infinite or undefined BIS; fix or drop the line")
        if not self.nan_negative:
            raise _NonFinite("NaN step score (not valid JSON); the official script counts a NaN score as a "
                             "negative step: use --compat official for that, or fix the data")
        return self.decoder.decode(msgspec.json.encode(obj))

    def __iter__(self) -> Iterator[ChunkScan]:
        sha = hashlib.sha256() if self.hash_input else None
        # Inline: a helper thread measured slower here (GIL hand-offs per chunk cost more than SHA-NI hashing).
        on_bytes = sha.update if sha is not None else None
        # Millions of small acyclic lists: keep the cyclic GC from re-traversing them after every chunk.
        gc_was = gc.isenabled()
        gc.disable()
        try:
            yield from self._scan(on_bytes)
        finally:
            if gc_was:
                gc.enable()
        if sha is not None:
            self.counts.sha256 = sha.hexdigest()

    def _scan(self, on_bytes: Callable[[bytes], object] | None) -> Iterator[ChunkScan]:
        line_no, row0 = 1, 0
        self.counts.bytes = os.path.getsize(self.source)  # on disk (compressed size for .gz/.zst), as every engine
        for chunk in iter_line_chunks(self.source, self.chunk_bytes, on_bytes=on_bytes):
            scan = self.scan_chunk(chunk, line_no, row0)
            yield scan
            line_no += scan.lines_in_chunk
            row0 += len(scan.stats)

    def scan_buffer(self, buffer: Any, on_bytes: Callable[[Any], object] | None = None
                    ) -> Iterator[tuple[int, np.ndarray, ChunkScan]]:
        """Pass 1 over a whole file already in memory or memory-mapped (no copy of the bytes is made).

        Yields ``(offset, line_ends, scan)`` per run of whole lines: the run's byte offset in ``buffer``, the
        offsets one past each of its lines (relative to the run; a last line without a newline ends at the
        run's end) and the :class:`ChunkScan`. ``on_bytes`` (a hash's ``update``) sees every run, in order.
        """
        gc_was = gc.isenabled()
        gc.disable()
        try:
            line_no, row0 = 1, 0
            is_newline = np.empty(0, dtype=bool)  # reused: a fresh 8 MB array per run costs its page faults
            for offset, view in iter_buffer_chunks(buffer, self.chunk_bytes):
                if on_bytes is not None:
                    on_bytes(view)
                if len(is_newline) < len(view):
                    is_newline = np.empty(len(view), dtype=bool)
                mask = np.equal(np.frombuffer(view, dtype=np.uint8), 10, out=is_newline[: len(view)])
                ends = np.flatnonzero(mask) + 1
                if len(view) and view[-1] != 10:
                    ends = np.append(ends, len(view))
                self.counts.bytes += len(view)
                scan = self.scan_chunk(view, line_no, row0, nlines=len(ends))
                yield offset, ends, scan
                line_no += scan.lines_in_chunk
                row0 += len(scan.stats)
        finally:
            if gc_was:
                gc.enable()

    def scan_chunk(self, chunk: Any, line_no: int, row0: int, nlines: int | None = None) -> ChunkScan:
        """Pass 1 of one run of whole lines (``bytes`` or a buffer view) starting at 1-based ``line_no``."""
        counts = self.counts
        try:
            rows = self.decoder.decode_lines(chunk)
            rejected = np.zeros(len(rows), dtype=bool)
            if nlines is None:
                nlines = chunk.count(b"\n")
            blank = nlines - len(rows)
        except (msgspec.ValidationError, msgspec.DecodeError):
            rows, rejected, nlines, blank = self._decode_each(_as_bytes(chunk), line_no)
        stats, bad = _stats_from_rows(rows, self.fields.counts_mode, row0, self.file_index)
        for b in bad:  # pragma: no cover - see _stats_from_rows
            stats.n[b] = 0
            rejected[b] = True
        groups = None
        split: tuple[list[bytes], list[int]] | None = None
        if self.fields.group is not None:
            groups = [r.group for r in rows]
            for k, g in enumerate(groups):
                if g is None and not rejected[k]:
                    split = split or row_lines(_as_bytes(chunk))
                    lines, nonblank = split
                    self._reject(line_no + nonblank[k], f"missing group field {self.fields.group!r}",
                                 lines[nonblank[k]])
                    rejected[k] = True
                    stats.n[k] = 0
        if self.strict_scores:
            for k in np.flatnonzero((stats.n == 0) & ~rejected).tolist():
                split = split or row_lines(_as_bytes(chunk))
                lines, nonblank = split
                self._reject(line_no + nonblank[k], f"no scored step in {self.fields.steps!r} (--strict-scores)",
                             lines[nonblank[k]])
                rejected[k] = True
        _count(counts, len(rows), stats.n, rejected)
        counts.blank += blank
        return ChunkScan(stats=stats, groups=groups, lines_in_chunk=nlines, first_line=line_no,
                         rejected=rejected, blank=blank)


class _NotNonFinite(Exception):
    """The line is not JSON even with NaN/Infinity allowed."""


class _NonFinite(ValueError):
    """The line is JSON with NaN/Infinity tokens that are not accepted here (the message says why)."""


def _count(counts: FileCounts, nrows: int, n: np.ndarray, rejected: np.ndarray) -> None:
    """Add a chunk's rows to the file's counters, each category counted on its own (they must add up)."""
    counts.rows += nrows
    counts.malformed += int(np.count_nonzero(rejected))
    counts.candidates += int(np.count_nonzero((n > 0) & ~rejected))
    counts.without_scores += int(np.count_nonzero((n == 0) & ~rejected))


def _as_bytes(chunk: Any) -> bytes:
    """A chunk as ``bytes`` (views are copied; only the slow, error-reporting paths need this), newline-ended."""
    data = chunk if isinstance(chunk, bytes) else bytes(chunk)
    return data if data.endswith(b"\n") else data + b"\n"


def iter_buffer_chunks(buffer: Any, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, memoryview]]:
    """Split an in-memory or memory-mapped file into runs of whole lines: ``(offset, view)`` pairs, no copies.

    Every run but possibly the last ends in ``\n``; a line longer than ``chunk_bytes`` makes its run longer.
    """
    view = memoryview(buffer)
    size = len(view)
    start = 0
    while start < size:
        stop = min(start + chunk_bytes, size)
        if stop < size:
            cut = buffer.rfind(b"\n", start, stop)
            if cut < 0:
                cut = buffer.find(b"\n", stop)
                stop = size if cut < 0 else cut + 1
            else:
                stop = cut + 1
        yield start, view[start:stop]
        start = stop
    view.release()


class ParquetScanner:
    """Pass 1 over a Parquet file: reads only the steps (and group) columns, in record batches."""

    def __init__(self, path: str | os.PathLike[str], file_index: int, fields: Fields, *, skip_invalid: bool = False,
                 on_reject: Callable[[Reject], None] | None = None, batch_rows: int = 65536, hash_input: bool = True,
                 strict_scores: bool = False, nan_negative: bool = False,
                 source: str | os.PathLike[str] | None = None, **_: object):
        self.source = str(source) if source is not None else str(path)
        self.strict_scores = strict_scores
        self.nan_negative = nan_negative
        self.path = str(path)
        self.file_index = file_index
        self.fields = fields
        self.skip_invalid = skip_invalid
        self.on_reject = on_reject
        self.batch_rows = batch_rows
        self.hash_input = hash_input
        self.counts = FileCounts()

    def _step_score(self, step: object, row: int) -> float | None:
        f = self.fields
        if not isinstance(step, dict):
            raise RecordError(self.path, row, f"field {f.steps!r}: a step is not an object")
        if f.counts_mode:
            c, t = step.get(f.mc_correct), step.get(f.mc_total)  # type: ignore[arg-type]
            if c is None or t is None or not t:
                return None
            return float(c) / float(t)
        s = step.get(f.score)
        if s is None:
            return None
        if self.nan_negative and isinstance(s, float) and math.isnan(s):
            return 0.0  # the official float(): a NaN step is scored and not positive (see FileScanner)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise RecordError(self.path, row, f"field {f.steps}[].{f.score}: expected a finite number, got {s!r}")
        return float(s)

    def __iter__(self) -> Iterator[ChunkScan]:
        import pyarrow.parquet as pq

        f = self.fields
        try:
            pf = pq.ParquetFile(self.source)
        except Exception as exc:
            raise RecordError(self.path, None, f"not a readable Parquet file ({exc})") from exc
        names = set(pf.schema_arrow.names)
        for column in (f.steps, f.group):
            if column is not None and column not in names:
                raise RecordError(self.path, None, f"missing column {column!r}")
        columns = [f.steps] + ([f.group] if f.group else [])
        counts = self.counts
        counts.bytes = os.path.getsize(self.source)
        if self.hash_input:
            counts.sha256 = sha256_file(self.source)
        row0 = 0
        for batch in pf.iter_batches(batch_size=self.batch_rows, columns=columns):
            steps_col = batch.column(f.steps).to_pylist()
            nrows = len(steps_col)
            n = np.zeros(nrows, np.int32)
            n_pos = np.zeros(nrows, np.int32)
            sum_pos = np.zeros(nrows, np.float64)
            rejected = np.zeros(nrows, dtype=bool)
            for k, steps in enumerate(steps_col):
                try:
                    scores = [s for s in (self._step_score(st, row0 + k + 1) for st in steps or ()) if s is not None]
                except RecordError as exc:
                    if not self.skip_invalid:
                        raise
                    if self.on_reject is not None:
                        self.on_reject(Reject(self.path, row0 + k + 1, exc.message, repr(steps)[:1000]))
                    rejected[k] = True
                    continue
                acc, npos = 0.0, 0
                for s in scores:
                    if s > 0.0:
                        acc += s
                        npos += 1
                n[k], n_pos[k], sum_pos[k] = len(scores), npos, acc
                if self.strict_scores and not scores:
                    message = f"no scored step in {f.steps!r} (--strict-scores)"
                    if not self.skip_invalid:
                        raise RecordError(self.path, row0 + k + 1, message)
                    if self.on_reject is not None:
                        self.on_reject(Reject(self.path, row0 + k + 1, message, repr(steps)[:1000]))
                    rejected[k] = True
            groups = batch.column(f.group).to_pylist() if f.group else None
            stats = RolloutStats(n=n, n_pos=n_pos, sum_pos=sum_pos, row=np.arange(row0, row0 + nrows),
                                 file_index=self.file_index)
            _count(counts, nrows, n, rejected)
            yield ChunkScan(stats=stats, groups=groups, lines_in_chunk=nrows, first_line=row0 + 1,
                            rejected=rejected)
            row0 += nrows


def scanner(path: str | os.PathLike[str], file_index: int, fields: Fields, **kwargs: object
            ) -> FileScanner | ParquetScanner:
    """The pass-1 scanner for a file: Parquet by extension, JSONL (plain/.gz/.zst) otherwise."""
    if not Path(str(kwargs.get("source") or path)).exists():
        raise RecordError(path, None, "no such file")
    cls = ParquetScanner if is_parquet(path) else FileScanner
    return cls(path, file_index, fields, **kwargs)  # type: ignore[arg-type]
