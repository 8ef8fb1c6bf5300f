"""The manifest of a selection (one type for both plans), and its reconciliation.

Every category is counted where it happens, not derived from the others: rows, blank lines, malformed,
without scores and candidates by the scanner; kept and not kept by the cut, from its keep decisions; written
(and dropped by the MM-PRM conversion) by the writer; each group's m from the spill tallies. They must add
up (:func:`reconcile`), or no manifest is written:

* per file: ``rows = candidates + without_scores + malformed`` and ``candidates = kept + not_kept``;
* per file: ``written = kept`` (``jsonl``/``parquet``), ``written + conversion.dropped = kept`` (``mmprm``);
* in total: the groups' m and k add up to the files' candidates and kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leanlm.bis.config import SelectConfig, source_name
from leanlm.bis.convert import ConversionCounts
from leanlm.bis.scan import FileCounts

TOOL_VERSION = "leanlm.bis 0.2.0"


class ReconciliationError(AssertionError):
    """The independently counted categories do not add up (a bug: please report it with the manifest)."""


@dataclass
class FileOutcome:
    """What happened to one input file."""

    path: str
    counts: FileCounts
    engine: str
    kept: int
    not_kept: int
    written: int
    conversion: ConversionCounts = field(default_factory=ConversionCounts)


@dataclass
class GroupOutcome:
    """One stratum's cut: m candidates, k kept, the k-th largest score and how many ties at it were kept."""

    name: str
    candidates: int
    k: int
    threshold: float | None
    ties_kept: int


def reconcile(files: list[dict[str, Any]], groups: list[dict[str, Any]], fmt: str) -> None:
    for f in files:
        if f["rows"] != f["candidates"] + f["without_scores"] + f["malformed"]:
            raise ReconciliationError(f"{f['file']}: rows != candidates + without_scores + malformed: {f}")
        if f["candidates"] != f["kept"] + f["not_kept"]:
            raise ReconciliationError(f"{f['file']}: candidates != kept + not_kept: {f}")
        dropped = f["conversion"]["dropped"] if fmt == "mmprm" else 0
        if f["written"] + dropped != f["kept"]:
            raise ReconciliationError(f"{f['file']}: written + dropped != kept: {f}")
    if sum(g["candidates"] for g in groups) != sum(f["candidates"] for f in files):
        raise ReconciliationError("the groups' candidates do not add up to the files' candidates")
    if sum(g["k"] for g in groups) != sum(f["kept"] for f in files):
        raise ReconciliationError("the groups' k do not add up to the rows kept")


def build_manifest(config: SelectConfig, plan: str, files: list[FileOutcome], groups: list[GroupOutcome],
                   output: str | Path, rejects: Path | None, skipped: list[dict[str, str]],
                   warnings: list[str], timings: dict[str, float]) -> dict[str, Any]:
    """The manifest document (checked by :func:`reconcile` before it is returned)."""
    per_file = []
    keys = ("rows", "blank_lines", "malformed", "without_scores", "candidates", "kept", "not_kept", "written")
    totals = dict.fromkeys(keys, 0)
    conv_total = ConversionCounts()
    for f in files:
        c = f.counts
        entry = {
            "file": f.path, "source": source_name(f.path), "sha256": c.sha256 or None, "bytes": c.bytes,
            "rows": c.rows, "blank_lines": c.blank, "malformed": c.malformed, "without_scores": c.without_scores,
            "engine": f.engine, "candidates": c.candidates, "kept": f.kept, "not_kept": f.not_kept,
            "written": f.written,
            "conversion": f.conversion.as_dict() if config.output_format == "mmprm" else None,
        }
        per_file.append(entry)
        for key in keys:
            totals[key] += entry[key]
        conv_total.add(f.conversion)
    group_docs = [{"group": g.name, "candidates": g.candidates, "ratio": config.ratio_for(g.name), "k": g.k,
                   "threshold": g.threshold, "ties_kept_at_threshold": g.ties_kept} for g in groups]
    reconcile([{**e, "conversion": e["conversion"] or {"dropped": 0}} for e in per_file], group_docs,
              config.output_format)
    return {
        "tool": TOOL_VERSION,
        "output": {"path": str(output), "resolved": str(Path(output).resolve()), "format": config.output_format},
        "rejects": str(rejects) if rejects else None,
        "settings": {**config.settings(), "plan": plan},
        "skipped_inputs": skipped,
        "warnings": warnings,
        "files": per_file,
        "groups": group_docs,
        "totals": totals,
        "conversion": conv_total.as_dict() if config.output_format == "mmprm" else None,
        "seconds": {k2: round(v, 4) for k2, v in timings.items()},
    }
