"""Exact per-group top-ratio selection: the driver. Resolves a frozen :class:`Plan` once, runs it, writes the
manifest.

Semantics (the official ``scripts/build_bis_subset.py``, brief §1.1): in each group (source file by default,
a field's value with ``group_by=<field>``, or the whole corpus with ``group_by="global"``) let m be the number of
rollouts with at least one scored step; keep ``max(1, int(m * ratio))`` of them by score descending, ties
broken by original order (a stable sort), and write the kept rollouts in original order (files in name order).

Module map (imports flow one way, top to bottom):

* :mod:`~leanlm.bis.config` settings; :mod:`~leanlm.bis.inputs` discovery; :mod:`~leanlm.bis.cut` the rules;
* :mod:`~leanlm.bis.scan` decoding; :mod:`~leanlm.bis.spill` pass-1 results; :mod:`~leanlm.bis.engines`
  (``stream``, ``duckdb``) by name; :mod:`~leanlm.bis.executor` serial / process pool / Ray;
  :mod:`~leanlm.bis.writers` one per format; :mod:`~leanlm.bis.manifest` one manifest type;
* :mod:`~leanlm.bis.single_pass` and :mod:`~leanlm.bis.two_pass` the plans; this module picks one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanlm.bis import single_pass, two_pass
from leanlm.bis.config import ENGINES, FORMATS, PLANS, SelectConfig, source_name
from leanlm.bis.cut import find_cut, keep_count, sortable_keys  # noqa: F401 - public re-exports
from leanlm.bis.executor import available_cpus
from leanlm.bis.inputs import Discovered, discover, discover_inputs
from leanlm.bis.manifest import FileOutcome, GroupOutcome, build_manifest
from leanlm.bis.scan import FileCounts, is_parquet
from leanlm.bis.score import External
from leanlm.bis.spill import SPILL_DTYPE
from leanlm.common.atomic import atomic_write, atomic_write_json
from leanlm.common.progress import get_logger, progress_bar

__all__ = ["ENGINES", "FORMATS", "PLANS", "Plan", "SelectConfig", "discover_inputs", "resolve_plan", "select",
           "source_name", "spill_dtype"]

log = get_logger("leanlm.bis.select")

#: Below this much input in all, worker processes cost more than they save.
PARALLEL_MIN_BYTES = 32 << 20


def spill_dtype() -> Any:
    return SPILL_DTYPE


class OutputExistsError(FileExistsError):
    """An output, manifest or rejects file exists and ``overwrite`` is off (``--force`` on the CLI)."""


@dataclass(frozen=True)
class Plan:
    """Everything a selection run decides before it reads a row."""

    config: SelectConfig
    files: tuple[Path, ...]
    skipped: tuple[dict[str, str], ...]
    kind: str  # "single-pass" | "two-pass" | "parquet-via-jsonl"
    executor: str  # "serial" | "process" | "ray"
    workers: int
    output: Path
    manifest: Path
    rejects: Path
    rejects_explicit: bool


def worker_count(files: Sequence[Path], config: SelectConfig) -> int:
    """``config.workers`` (0 = one per available CPU), capped by the number of files; 1 for small corpora."""
    wanted = config.workers if config.workers > 0 else available_cpus()
    if config.workers <= 0 and sum(p.stat().st_size for p in files) < PARALLEL_MIN_BYTES:
        wanted = 1
    return max(1, min(wanted, len(files)))


def resolve_plan(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str],
                 config: SelectConfig | None = None, *, manifest: str | os.PathLike[str] | None = None,
                 rejects: str | os.PathLike[str] | None = None, overwrite: bool = True) -> Plan:
    """Check the inputs and outputs and choose how to run (see :class:`Plan`)."""
    config = config or SelectConfig()
    out = Path(output)
    man = Path(manifest) if manifest is not None else Path(str(output) + ".manifest.json")
    rej = Path(rejects) if rejects is not None else Path(str(output) + ".rejects.jsonl")
    found: Discovered = discover(inputs, exclude=[out, man, rej])
    files = found.files
    resolved = {p.resolve() for p in files}
    for what, p in (("output", out), ("manifest", man), ("rejects file", rej)):
        if p.resolve() in resolved:
            raise ValueError(f"{what} {p} is one of the inputs")
    if not overwrite:
        existing = [f"{what} {p}" for what, p in (("output", out), ("manifest", man), ("rejects file", rej))
                    if p.exists()]
        if existing:
            raise OutputExistsError(f"{', '.join(existing)} already exist(s); pass --force (overwrite=True) to "
                                    "replace them")
    if isinstance(config.scorer, External):
        config = config.with_(scorer=dataclasses.replace(config.scorer, file_names=[p.name for p in files]))
    if config.output_format == "parquet" and not all(is_parquet(p) for p in files):
        kind = "parquet-via-jsonl"
    elif config.plan == "two-pass":
        kind = "two-pass"
    else:
        why = single_pass.ineligible_reason(files, config)
        if config.plan == "single-pass" and why:
            raise ValueError(f"the single-pass plan does not apply here: {why}")
        kind = "two-pass" if why else "single-pass"
    workers = worker_count(files, config)
    executor = "ray" if config.engine == "ray" else ("process" if workers > 1 else "serial")
    return Plan(config=config, files=tuple(files), skipped=tuple(found.skipped), kind=kind, executor=executor,
                workers=workers, output=out, manifest=man, rejects=rej, rejects_explicit=rejects is not None)


def select(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    config: SelectConfig | None = None,
    *,
    manifest: str | os.PathLike[str] | None = None,
    rejects: str | os.PathLike[str] | None = None,
    spill_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Select the top ratio of each group of ``inputs`` into ``output``; return (and write) the manifest.

    ``manifest`` defaults to ``<output>.manifest.json``; ``rejects`` (with ``skip_invalid``) to
    ``<output>.rejects.jsonl``. All files are written atomically; with ``overwrite=False`` an existing one
    is an error (:class:`OutputExistsError`) and nothing is written.
    """
    plan = resolve_plan(inputs, output, config, manifest=manifest, rejects=rejects, overwrite=overwrite)
    if plan.kind == "parquet-via-jsonl":
        return _select_to_parquet_via_jsonl(plan, spill_dir)
    return run_plan(plan, spill_dir)


def _check_rows(plan: Plan, counts: list[FileCounts], warnings: list[str]) -> None:
    """Warn per file that had no row; fail when no file had one (unless ``allow_empty``)."""
    for p, c in zip(plan.files, counts, strict=True):
        if c.rows == 0:
            warnings.append(f"{p}: empty (no rows)" + (f", {c.blank} blank lines" if c.blank else ""))
    if sum(c.rows for c in counts) == 0 and not plan.config.allow_empty:
        raise ValueError(f"nothing to select: no rows in {len(plan.files)} input file(s) "
                         f"({', '.join(map(str, plan.files[:5]))}{', ...' if len(plan.files) > 5 else ''}); "
                         "pass --allow-empty to write an empty selection")


def run_plan(plan: Plan, spill_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run a resolved plan; returns the manifest (also written to ``plan.manifest``)."""
    config = plan.config
    warnings: list[str] = []
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="bis-work-", dir=spill_dir)
    try:
        if plan.kind == "single-pass":
            files, groups, reject_parts, timings = _single_pass(plan, tmp, warnings)
        else:
            scans, files, groups, timings = two_pass.run([str(p) for p in plan.files], config, plan.output, tmp,
                                                         plan.executor, plan.workers,
                                                         check_rows=lambda c: _check_rows(plan, c, warnings))
            reject_parts = [s.rejects for s in scans if s.rejects]
        rpath = _gather_rejects(reject_parts, plan)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t0
    without = sum(f.counts.without_scores for f in files)
    if without:
        warnings.append(f"{without} rollouts have no scored step: not candidates (the official behaviour); "
                        "--strict-scores rejects them with file:line")
    doc = build_manifest(config, plan.kind, files, groups, plan.output, rpath, list(plan.skipped), warnings,
                         {**timings, "total": total})
    atomic_write_json(plan.manifest, doc)
    for w in warnings:
        log.warning("%s", w)
    t = doc["totals"]
    log.info("bis select: kept %d of %d candidates (%d rows read) from %d files in %.2f s (%s) -> %s",
             t["kept"], t["candidates"], t["rows"], len(files), total, plan.kind, plan.output)
    return doc


def _single_pass(plan: Plan, tmp: str, warnings: list[str]
                 ) -> tuple[list[FileOutcome], list[GroupOutcome], list[str], dict[str, float]]:
    config = plan.config
    t0 = time.perf_counter()
    ratios = [config.ratio_for(source_name(p)) for p in plan.files]
    with progress_bar(desc="bis select", unit="rows") as bar, atomic_write(plan.output, "wb") as out:
        results = single_pass.run(list(plan.files), config, tmp, out, ratios, plan.executor, plan.workers,
                                  on_done=lambda r: bar.update(r.counts.rows))
        _check_rows(plan, [r.counts for r in results], warnings)  # inside: an error leaves no output
    files = [FileOutcome(path=r.path, counts=r.counts, engine="stream", kept=r.kept, not_kept=r.not_kept,
                         written=r.written, conversion=r.conversion) for r in results]
    groups = [GroupOutcome(name=source_name(r.path), candidates=r.candidates, k=r.k, threshold=r.threshold,
                           ties_kept=r.ties_kept) for r in results]
    return files, groups, [r.rejects for r in results if r.rejects], {"single_pass": time.perf_counter() - t0}


def _gather_rejects(parts: list[str], plan: Plan) -> Path | None:
    """Concatenate the per-file rejects (in file order) into the rejects file, written atomically; its path, or
    ``None`` when there is none (an empty one is written when ``skip_invalid`` names a rejects path). A stale
    rejects file from an earlier run at the default path is removed, so it cannot be mistaken for this run's."""
    if not parts and not (plan.config.skip_invalid and plan.rejects_explicit):
        if not plan.rejects_explicit and plan.rejects.exists():
            plan.rejects.unlink()
        return None
    with atomic_write(plan.rejects, "wb") as fh:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 22)
    return plan.rejects


def _select_to_parquet_via_jsonl(plan: Plan, spill_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """JSONL input, Parquet output: select to a temporary JSONL, then let Arrow's JSON reader convert it."""
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    out = plan.output
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        jsonl = Path(tmp) / "kept.jsonl"
        cfg = plan.config.with_(output_format="jsonl")
        sub = dataclasses.replace(plan, config=cfg, output=jsonl, kind=resolve_plan(
            plan.files, jsonl, cfg, manifest=plan.manifest, rejects=plan.rejects).kind)
        doc = run_plan(sub, spill_dir)
        table = pj.read_json(jsonl) if jsonl.stat().st_size else None
        with atomic_write(out, "wb") as fh:
            if table is not None:
                pq.write_table(table, fh)
    doc["output"] = {"path": str(out), "resolved": str(out.resolve()), "format": "parquet"}
    doc["skipped_inputs"] = list(plan.skipped)
    atomic_write_json(plan.manifest, doc)
    return doc

