"""Pass 1 as a Ray Data pipeline, for a Ray cluster without a shared filesystem (``--engine ray``).

``ray.data.read_binary_files`` reads each input file on the node that holds it (``local://`` paths: the
driver's node) and streams it as a block through Ray's object store; a ``map`` scores each file on whichever
node has a free CPU (the stream engine over a node-local copy of the bytes) and returns its result as a row of
an Arrow block: the spill (12 bytes per row), the rejects, the counts and the group names. Only those come
back to the driver, which writes the spills to its own disk. Nothing is written to a path another node must
see. Pass 2 (copying or converting the kept lines) then runs on the driver, which has the inputs.

A bad line raises :class:`~leanlm.common.records.RecordError` on the driver naming the original file and
line, as with the other engines. The unit of parallelism is one file (the VisualPRM400K layout has 38).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from leanlm.bis.config import SelectConfig
from leanlm.bis.engine_stream import StreamEngine
from leanlm.bis.scan import FileCounts
from leanlm.bis.spill import FileScores, spill_path
from leanlm.common.records import RecordError


def ensure_ray(workers: int = 0) -> Any:
    """Connect to the cluster named by ``RAY_ADDRESS`` (or the one already connected), else start a local one."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=workers if workers > 0 else None, include_dashboard=False, log_to_driver=False)
    return ray


class _ScanFile:
    """The map of the pipeline: one input file's bytes -> its pass-1 result (runs on any node)."""

    def __init__(self, config_blob: bytes, index_of: dict[str, int]):
        self.config_blob = config_blob
        self.index_of = index_of

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        import ray

        config: SelectConfig = pickle.loads(self.config_blob)
        path = _strip_scheme(str(row["path"]))
        index = self.index_of[path]
        out: dict[str, Any] = {"index": index, "node": ray.get_runtime_context().get_node_id(), "error": "",
                               "spill": b"", "rejects": b"", "meta": ""}
        with tempfile.TemporaryDirectory(prefix="bis-ray-") as tmp:
            local = os.path.join(tmp, Path(path).name)  # same suffix: .jsonl, .gz, .zst, .parquet
            with open(local, "wb") as fh:
                fh.write(row["bytes"])
            try:
                res = StreamEngine().scan(path, index, config, tmp, source=local)
            except RecordError as exc:
                out["error"] = json.dumps({"line": exc.line, "message": exc.message})
                return out
            with open(res.spill, "rb") as fh:
                out["spill"] = fh.read()
            if res.rejects:
                with open(res.rejects, "rb") as fh:
                    out["rejects"] = fh.read()
        out["meta"] = json.dumps({"counts": asdict(res.counts), "group_names": res.group_names,
                                  "group_candidates": res.group_candidates})
        return out


def _strip_scheme(path: str) -> str:
    return path.removeprefix("local://")


def pass1(files: list[str], config: SelectConfig, spill_dir: str, workers: int = 0) -> list[FileScores]:
    """Pass 1 of every file through Ray Data; the spills and rejects land in the driver's ``spill_dir``."""
    ensure_ray(workers)
    import ray.data

    paths = [str(Path(p).resolve()) for p in files]
    index_of = {p: i for i, p in enumerate(paths)}
    ds = ray.data.read_binary_files(["local://" + p for p in paths], include_paths=True,
                                    override_num_blocks=len(paths))
    ds = ds.map(_ScanFile(pickle.dumps(config), index_of))
    results: list[FileScores | None] = [None] * len(paths)
    errors: dict[int, dict[str, Any]] = {}
    for row in ds.iter_rows():
        i = int(row["index"])
        if row["error"]:
            errors[i] = json.loads(row["error"])
            continue
        spill = spill_path(spill_dir, i)
        with open(spill, "wb") as fh:
            fh.write(row["spill"])
        rejects = None
        if row["rejects"]:
            rejects = spill_path(spill_dir, i, ".rejects.jsonl")
            with open(rejects, "wb") as fh:
                fh.write(row["rejects"])
        meta = json.loads(row["meta"])
        results[i] = FileScores(path=str(files[i]), counts=FileCounts(**meta["counts"]),
                                group_names=meta["group_names"], group_candidates=meta["group_candidates"],
                                spill=spill, rejects=rejects, engine=f"ray (node {str(row['node'])[:8]})")
    if errors:
        i = min(errors)
        raise RecordError(str(files[i]), errors[i]["line"], errors[i]["message"])
    missing = [str(files[i]) for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"the Ray pipeline returned no result for {missing[:3]}")
    return results  # type: ignore[return-value]
