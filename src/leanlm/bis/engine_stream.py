"""The stream engine (default): msgspec decoding of the step scores only, in chunks of whole lines; Parquet
files through Arrow record batches (:mod:`leanlm.bis.scan`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leanlm.bis.config import SelectConfig, initial_group_names
from leanlm.bis.scan import scanner
from leanlm.bis.spill import FileScores, RejectSink, SpillWriter, spill_path


def scanner_for(path: str, index: int, config: SelectConfig, on_reject: Any, hash_input: bool | None = None,
                source: str | None = None) -> Any:
    """The configured pass-1 scanner of a file (both plans use it); ``source``: read from a copy of ``path``."""
    return scanner(path, index, config.fields, skip_invalid=config.skip_invalid, on_reject=on_reject,
                   chunk_bytes=config.chunk_bytes,
                   hash_input=config.hash_input if hash_input is None else hash_input,
                   strict_scores=config.strict_scores, nan_negative=config.nan_scores_negative, source=source)


@dataclass(frozen=True)
class StreamEngine:
    name: str = "stream"

    def scan(self, path: str, index: int, config: SelectConfig, spill_dir: str,
             on_progress: Any | None = None, source: str | None = None) -> FileScores:
        sink = RejectSink(spill_path(spill_dir, index, ".rejects.jsonl"))
        writer = SpillWriter(spill_path(spill_dir, index), config.scorer, initial_group_names(config.group_by, path))
        scan = scanner_for(path, index, config, sink, source=source)
        try:
            for chunk in scan:
                n = writer.write(chunk.stats, chunk.groups)
                if on_progress is not None:
                    on_progress(n)
        finally:
            writer.close()
            rejects = sink.close()
        return writer.result(str(path), scan.counts, rejects, self.name)
