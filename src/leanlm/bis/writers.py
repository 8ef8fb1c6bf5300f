"""One writer per output format. Both plans hand a writer the kept rows of each file, in file order:

* :meth:`Writer.write_spans`: kept lines of a JSONL file, as byte spans of its buffer;
* :meth:`Writer.write_batch`: kept rows of a Parquet file, as an Arrow record batch.

``jsonl`` copies the original bytes of each kept line (rows from Parquet are serialised with ``json``);
``mmprm`` converts each kept rollout to the official training format (:mod:`leanlm.bis.convert`);
``parquet`` writes record batches (Parquet input; JSONL input is converted by Arrow afterwards).
"""

from __future__ import annotations

import json
from typing import IO, Any

import numpy as np

from leanlm.bis.convert import ConversionCounts, StructConverter, mmprm_line
from leanlm.bis.schema import Fields

#: Lines written per batch (bounds the memory of the joined output bytes).
WRITE_BATCH = 8192


class Writer:
    """Base: counts what it wrote; ``conversion`` stays empty except for ``mmprm``."""

    def __init__(self, out: Any):
        self.out = out
        self.written = 0
        self.conversion = ConversionCounts()

    def write_spans(self, buf: Any, start: np.ndarray, stop: np.ndarray) -> int:
        raise NotImplementedError(f"{type(self).__name__} cannot write JSONL lines")

    def write_batch(self, batch: Any) -> int:
        raise NotImplementedError(f"{type(self).__name__} cannot write record batches")


class JsonlWriter(Writer):
    def write_spans(self, buf: Any, start: np.ndarray, stop: np.ndarray) -> int:
        view = memoryview(buf)
        n = 0
        try:
            for b0 in range(0, len(start), WRITE_BATCH):
                lines = [view[a:b] for a, b in zip(start[b0 : b0 + WRITE_BATCH].tolist(),
                                                   stop[b0 : b0 + WRITE_BATCH].tolist(), strict=True)]
                self.out.write(b"".join(lines))
                if lines and lines[-1][-1:] != b"\n":  # the file's last line had no newline
                    self.out.write(b"\n")
                n += len(lines)
                for line in lines:
                    line.release()
        finally:
            view.release()
        self.written += n
        return n

    def write_batch(self, batch: Any) -> int:
        rows = batch.to_pylist()
        self.out.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode("utf-8"))
        self.written += len(rows)
        return len(rows)


class MmprmWriter(Writer):
    def __init__(self, out: Any, fields: Fields, compat: str):
        super().__init__(out)
        self.fields, self.compat = fields, compat
        try:
            self._struct: StructConverter | None = StructConverter(fields, compat)
        except ValueError:  # per-step MC counts or overlapping field names: the general path
            self._struct = None

    def _convert(self, rec: dict[str, Any]) -> str | None:
        return mmprm_line(rec, self.fields, self.compat, self.conversion)

    def _convert_line(self, line: Any) -> str | None:
        if self._struct is not None:
            return self._struct.line(line, self.conversion)
        return self._convert(json.loads(bytes(line)))

    def write_spans(self, buf: Any, start: np.ndarray, stop: np.ndarray) -> int:
        view = memoryview(buf)
        n = 0
        try:
            for b0 in range(0, len(start), WRITE_BATCH):
                parts = []
                for a, b in zip(start[b0 : b0 + WRITE_BATCH].tolist(), stop[b0 : b0 + WRITE_BATCH].tolist(),
                                strict=True):
                    line = view[a:b]
                    text = self._convert_line(line)
                    line.release()
                    if text is not None:
                        parts.append(text)
                self.out.write("".join(parts).encode("utf-8"))
                n += len(parts)
        finally:
            view.release()
        self.written += n
        return n

    def write_batch(self, batch: Any) -> int:
        parts = [t for rec in batch.to_pylist() if (t := self._convert(rec)) is not None]
        self.out.write("".join(parts).encode("utf-8"))
        self.written += len(parts)
        return len(parts)


class ParquetBatchWriter(Writer):
    def write_batch(self, batch: Any) -> int:
        self.out.write_batch(batch)
        self.written += batch.num_rows
        return batch.num_rows


def make_writer(fmt: str, out: IO[bytes] | Any, fields: Fields, compat: str) -> Writer:
    """The writer of an output format over ``out`` (a binary file, or a ``pyarrow.parquet.ParquetWriter``)."""
    if fmt == "jsonl":
        return JsonlWriter(out)
    if fmt == "mmprm":
        return MmprmWriter(out, fields, compat)
    if fmt == "parquet":
        return ParquetBatchWriter(out)
    raise ValueError(f"unknown output format {fmt!r}")
