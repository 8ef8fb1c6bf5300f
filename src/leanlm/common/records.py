"""Reading JSONL (plain, gzip, zstd) and Parquet records with errors that name the file and line.

Every reader yields ``(line_number, record)`` pairs so callers can report where a record came from.
Bad input raises :class:`RecordError` unless ``skip_invalid`` is given, in which case each bad line is
passed to ``on_invalid`` (for example to write a rejects file) and reading goes on.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


class RecordError(ValueError):
    """A record that could not be read, with the file and 1-based line it came from."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str, raw: str | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        self.raw = raw
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """Open a text file, transparently decompressing ``.gz`` and ``.zst``/``.zstd``."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8")
    if suffix in (".zst", ".zstd"):
        import zstandard

        raw = open(p, "rb")  # noqa: SIM115 - closed by the wrapper
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), encoding="utf-8")
    return open(p, encoding="utf-8")


def open_binary(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open a file for binary reading, transparently decompressing ``.gz`` and ``.zst``/``.zstd``."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".gz":
        return gzip.open(p, "rb")  # type: ignore[return-value]
    if suffix in (".zst", ".zstd"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(p, "rb"), closefd=True)
    return open(p, "rb")


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    require_object: bool = True,
    skip_invalid: bool = False,
    on_invalid: Callable[[RecordError], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL file.

    A line that is not valid JSON (or not an object when ``require_object``) raises :class:`RecordError`
    naming the file and line; with ``skip_invalid`` it is handed to ``on_invalid`` and skipped.
    A file that does not end in a newline is accepted; a truncated last record is invalid like any other.
    """
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                error = RecordError(path, number, f"invalid JSON ({exc.msg} at column {exc.colno})", raw=line)
            else:
                if not require_object or isinstance(record, dict):
                    yield number, record
                    continue
                error = RecordError(path, number, f"expected a JSON object, got {type(record).__name__}", raw=line)
            if not skip_invalid:
                raise error
            if on_invalid is not None:
                on_invalid(error)


def read_parquet(path: str | os.PathLike[str], batch_size: int = 65536) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, record)`` from a Parquet file, streaming in record batches (rows are 1-based)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise RecordError(path, None, f"not a readable Parquet file ({exc})") from exc
    number = 0
    for batch in parquet.iter_batches(batch_size=batch_size):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def read_records(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    on_invalid: Callable[[RecordError], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Dispatch on the file extension: ``.parquet`` or JSONL (optionally ``.gz``/``.zst``)."""
    p = Path(path)
    if not p.exists():
        raise RecordError(p, None, "no such file")
    if p.suffix.lower() == ".parquet":
        yield from read_parquet(p)
    else:
        yield from read_jsonl(p, skip_invalid=skip_invalid, on_invalid=on_invalid)
