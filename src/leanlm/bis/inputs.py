"""Which files a selection reads: directories expanded, and leanlm's own outputs left out.

An output written inside an input directory would otherwise be read back as a new source on the next run (and
``<out>.rejects.jsonl`` matches ``*.jsonl``). A file is leanlm's own when a leanlm manifest in the same
directory names it as its output or rejects file (so a renamed output is still recognised), or when its name
is a manifest's or a rejects file's. Every skipped file is reported with the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd", ".parquet")  # not .json: manifests
MANIFEST_SUFFIX = ".manifest.json"
REJECTS_SUFFIX = ".rejects.jsonl"
#: The ``tool`` field of every manifest leanlm writes starts with this.
TOOL_PREFIX = "leanlm.bis"


@dataclass
class Discovered:
    """The input files in read order, and the files of the input directories that were left out (and why)."""

    files: list[Path]
    skipped: list[dict[str, str]] = field(default_factory=list)


def _read_manifest(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not str(doc.get("tool", "")).startswith(TOOL_PREFIX):
        return None
    return doc


def _resolve(recorded: object, manifest: Path, key: str) -> Path | None:
    """A path recorded in a manifest: absolute as recorded (``resolved``), else relative to the manifest."""
    if isinstance(recorded, dict):
        if recorded.get("resolved"):
            return Path(str(recorded["resolved"]))
        recorded = recorded.get("path")
    if not recorded:
        return None
    p = Path(str(recorded))
    return p if p.is_absolute() else (manifest.parent / p.name)


def own_files(directory: Path) -> dict[Path, str]:
    """leanlm's own files in ``directory`` by resolved path, with why each one is recognised."""
    own: dict[Path, str] = {}
    for m in directory.glob("*" + MANIFEST_SUFFIX):
        doc = _read_manifest(m)
        if doc is None:
            continue
        own[m.resolve()] = "a leanlm manifest"
        for key, what in (("output", "output"), ("rejects", "rejects file")):
            p = _resolve(doc.get(key), m, key)
            if p is not None:
                own[p.resolve()] = f"the {what} recorded in leanlm manifest {m.name}"
        # the output named by convention (<output>.manifest.json), if the manifest's recorded path moved
        own.setdefault((m.parent / m.name.removesuffix(MANIFEST_SUFFIX)).resolve(),
                       f"the output of leanlm manifest {m.name}")
    return own


def discover(inputs: Sequence[str | os.PathLike[str]], exclude: Sequence[str | os.PathLike[str]] = ()) -> Discovered:
    """Expand directories to their JSONL/Parquet files, sorted by name (the official ``sorted(glob)``).

    Inside directories, leanlm's own outputs, manifests and rejects files (see the module docstring) and the
    paths in ``exclude`` (this run's own outputs) are skipped and listed in :attr:`Discovered.skipped`.
    Files named explicitly are always read.
    """
    excluded = {Path(p).resolve() for p in exclude}
    out: list[Path] = []
    skipped: list[dict[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            own = own_files(p)
            candidates = sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(INPUT_SUFFIXES))
            found = []
            for q in candidates:
                rq = q.resolve()
                if rq in excluded:
                    why = "this run's own output, manifest or rejects file"
                elif rq in own:
                    why = own[rq]
                elif q.name.endswith(REJECTS_SUFFIX):
                    why = "named like a leanlm rejects file (*.rejects.jsonl)"
                else:
                    found.append(q)
                    continue
                skipped.append({"file": str(q), "why": why})
            if not found:
                extra = f" (skipped {len(skipped)} of leanlm's own files)" if skipped else ""
                raise FileNotFoundError(f"{p}: no *.jsonl[.gz|.zst] or *.parquet files{extra}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError("two input files share a name; their per-file groups would collide")
    return Discovered(files=out, skipped=skipped)


def discover_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The input files of :func:`discover` (leanlm's own files in the directories skipped)."""
    return discover(inputs).files
