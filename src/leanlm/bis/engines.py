"""The other pass-1 engines (DuckDB, Ray Data) and the parallel pass 2 they share with ``--workers``.

Every engine produces the same spill (score and group per row, see :mod:`leanlm.bis.select`) from the same
per-rollout statistics fed to the same scorer, so the cut and the written bytes are identical by
construction; the tests check it on real files anyway.

* ``duckdb``: DuckDB's multi-threaded JSON/Parquet reader computes (n, n_pos, sum_pos) per row in SQL; the
  positive scores are summed with ``list_reduce`` (a left fold, the same order as Python's ``sum``). A file
  DuckDB cannot read (bad JSON, wrong types) is re-scanned by the stream engine, which names the bad line or
  skips it under ``skip_invalid``.
* ``ray``: Ray Data runs the stream engine's per-file pass 1 and pass 2 as tasks (files are the unit of
  parallelism). The spill directory must be visible to every worker (a shared filesystem on a cluster).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from leanlm.bis.scan import FileCounts, is_parquet
from leanlm.bis.score import RolloutStats
from leanlm.common.atomic import atomic_write
from leanlm.common.progress import get_logger, progress

log = get_logger("leanlm.bis.engines")


# ----------------------------------------------------------------------------------------------- DuckDB


def _duckdb_sql(path: Path, config: Any) -> str:
    f = config.fields
    p = str(path).replace("'", "''")
    if f.counts_mode:
        c, t = f'TRY_CAST(s."{f.mc_correct}" AS DOUBLE)', f'TRY_CAST(s."{f.mc_total}" AS DOUBLE)'
        score_expr = (f'list_transform("{f.steps}", lambda s: CASE WHEN {t} IS NULL OR {t} = 0 '
                      f"THEN NULL ELSE {c} / {t} END)")
    elif is_parquet(path):
        score_expr = f'list_transform("{f.steps}", lambda s: s."{f.score}"::DOUBLE)'
    else:
        # The score is read as JSON and type-checked: a string or boolean score is an error (as in the
        # stream engine), not silently cast; the error sends the file to the stream engine, which names the line.
        score_expr = (f'list_transform("{f.steps}", lambda s: CASE WHEN s."{f.score}" IS NULL '
                      f"OR json_type(s.\"{f.score}\") = 'NULL' THEN NULL "
                      f"WHEN json_type(s.\"{f.score}\") IN ('DOUBLE', 'BIGINT', 'UBIGINT') "
                      f'THEN CASE WHEN isfinite(s."{f.score}"::DOUBLE) THEN s."{f.score}"::DOUBLE '
                      f"ELSE error('non-finite step score') END ELSE error('wrong type of step score') END)")
    if is_parquet(path):
        group_sel = f', "{f.group}"::VARCHAR AS grp' if f.group else ""
        source = f"read_parquet('{p}')"
    else:
        # read_json_objects + json_transform_strict: much cheaper per file than read_json's schema machinery,
        # and strict, so a wrong type is an error instead of a silent NULL.
        if f.counts_mode:
            spec = {f.steps: [{f.mc_correct: "JSON", f.mc_total: "JSON"}]}
        else:
            spec = {f.steps: [{f.score: "JSON"}]}
        if f.group:
            spec[f.group] = "JSON"
        spec_sql = json.dumps(spec).replace("'", "''")
        group_sel = (f", CASE WHEN json_type(r.\"{f.group}\") IN ('VARCHAR', 'BIGINT', 'UBIGINT') "
                     f"THEN r.\"{f.group}\" ->> '$' ELSE NULL END AS grp") if f.group else ""
        source = (f"(SELECT json_transform_strict(json, '{spec_sql}') AS r FROM "
                  f"read_json_objects('{p}', format='newline_delimited', maximum_object_size=1073741824))")
        score_expr = score_expr.replace(f'"{f.steps}"', f'r."{f.steps}"')
    return f"""
        WITH s AS (SELECT list_filter(coalesce({score_expr}, []), lambda x: x IS NOT NULL) AS sc{group_sel} FROM {source}),
             t AS (SELECT sc, list_filter(sc, lambda x: x > 0) AS ps{", grp" if f.group else ""} FROM s)
        SELECT len(sc)::INTEGER AS n, len(ps)::INTEGER AS n_pos,
               CASE WHEN len(ps) = 0 THEN 0.0 ELSE list_reduce(ps, lambda a, b: a + b) END AS sum_pos
               {", grp" if f.group else ""}
        FROM t
    """


def _file_sha256(path: Path) -> str:
    import hashlib

    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def duckdb_pass1(files: list[Path], config: Any, spill_dir: str) -> list[Any]:
    """Pass 1 with DuckDB: one SQL query per file, streamed out as Arrow record batches."""
    import duckdb

    from leanlm.bis.select import (
        FileScanResult,
        _chunk_scores,
        _local_groups,
        _tally,
        initial_group_names,
        scan_file_to_spill,
        spill_dtype,
    )

    con = duckdb.connect()
    results = []
    for i, path in enumerate(progress(files, desc="bis pass 1 (duckdb)", unit="file")):
        try:
            reader = con.sql(_duckdb_sql(path, config)).to_arrow_reader(1 << 17)
            spill = os.path.join(spill_dir, f"{i:06d}.spill")
            names = initial_group_names(config.group_by, path)
            counts = FileCounts(bytes=path.stat().st_size)
            cand_counts: dict[int, int] = {}
            row0 = 0
            with open(spill, "wb") as out:
                for batch in reader:
                    nrows = batch.num_rows
                    stats = RolloutStats(
                        n=batch.column("n").to_numpy(zero_copy_only=False).astype(np.int32),
                        n_pos=batch.column("n_pos").to_numpy(zero_copy_only=False).astype(np.int32),
                        sum_pos=batch.column("sum_pos").to_numpy(zero_copy_only=False).astype(np.float64),
                        row=np.arange(row0, row0 + nrows, dtype=np.int64), file_index=i)
                    groups = batch.column("grp").to_pylist() if config.fields.group else None
                    if groups is not None and any(g is None for g in groups):
                        raise duckdb.InvalidInputException(f"missing group field {config.fields.group!r}")
                    score = _chunk_scores(config.scorer, stats)
                    local = _local_groups(groups, nrows, names)
                    _tally(cand_counts, local, score)
                    rec = np.empty(nrows, dtype=spill_dtype())
                    rec["score"], rec["group"] = score, local
                    out.write(rec.tobytes())
                    cand = int(stats.candidate.sum())
                    counts.rows += nrows
                    counts.candidates += cand
                    counts.without_scores += nrows - cand
                    row0 += nrows
        except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
            log.info("duckdb could not read %s (%s); scanning it with the stream engine", path, str(exc)[:200])
            fallback = scan_file_to_spill(str(path), i, config, spill_dir)
            fallback.engine = "stream (duckdb could not read the file)"
            results.append(fallback)
            continue
        if config.hash_input:
            counts.sha256 = _file_sha256(path)
        gnames = [str(n) for n in names]
        results.append(FileScanResult(path=str(path), counts=counts, group_names=gnames,
                                      group_candidates=[cand_counts.get(j, 0) for j in range(len(gnames))],
                                      spill=spill, engine="duckdb"))
    con.close()
    return results


# ----------------------------------------------------------------------------------------------- Ray Data


def _ensure_ray(config: Any) -> Any:
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=config.workers if config.workers > 0 else None, include_dashboard=False, log_to_driver=False)
    return ray


def ray_pass1(files: list[Path], config: Any, spill_dir: str) -> list[Any]:
    """Pass 1 as Ray Data tasks, one per file; results come back as pickled :class:`FileScanResult`."""
    _ensure_ray(config)
    import ray.data

    from leanlm.bis.select import scan_file_to_spill

    blob = pickle.dumps(config)

    def task(row: dict[str, Any]) -> dict[str, Any]:
        cfg = pickle.loads(row["config"])
        res = scan_file_to_spill(row["path"], int(row["index"]), cfg, row["spill_dir"])
        return {"index": int(row["index"]), "result": pickle.dumps(res)}

    items = [{"index": i, "path": str(p), "config": blob, "spill_dir": spill_dir} for i, p in enumerate(files)]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map(task)
    rows = sorted(ds.take_all(), key=lambda r: r["index"])
    return [pickle.loads(r["result"]) for r in rows]


# ----------------------------------------------------------------------------------------------- pass 2


def tie_quotas(scans: list[Any], remaps: list[np.ndarray], cut: Any) -> list[np.ndarray]:
    """Split each group's tie quota at its threshold across files in file order, so files can run apart."""
    from leanlm.bis.select import iter_spill, sortable_keys

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


def _write_part(path: str, scan: Any, remap: np.ndarray, cut: Any, quota: np.ndarray, config: Any,
                part: str) -> Any:
    from leanlm.bis.select import write_kept

    with open(part, "wb") as out:
        res = write_kept(path, scan, remap, cut, quota.copy(), config, out)
    res.part = part
    return res


def parallel_pass2(files: list[Path], scans: list[Any], remaps: list[np.ndarray], cut: Any, config: Any,
                   output: str | os.PathLike[str]) -> list[Any]:
    """Pass 2 with one task per file writing a part file (local processes, or Ray tasks for ``ray``),
    then the parts are concatenated in file order into ``output`` (atomically)."""
    quotas = tie_quotas(scans, remaps, cut)
    spill_dir = os.path.dirname(scans[0].spill)
    parts = [os.path.join(spill_dir, f"{i:06d}.part") for i in range(len(files))]
    args = list(zip([str(p) for p in files], scans, remaps, [cut] * len(files), quotas, [config] * len(files), parts,
                    strict=True))
    if config.engine == "ray":
        _ensure_ray(config)
        import ray.data

        def task(row: dict[str, Any]) -> dict[str, Any]:
            a = pickle.loads(row["args"])
            return {"index": row["index"], "result": pickle.dumps(_write_part(*a))}

        ds = ray.data.from_items([{"index": i, "args": pickle.dumps(a)} for i, a in enumerate(args)],
                                 override_num_blocks=len(args)).map(task)
        results = [pickle.loads(r["result"]) for r in sorted(ds.take_all(), key=lambda r: r["index"])]
    else:
        from concurrent.futures import ProcessPoolExecutor

        from leanlm.bis.single_pass import worker_count

        with ProcessPoolExecutor(max_workers=worker_count(files, config)) as pool:
            futures = [pool.submit(_write_part, *a) for a in args]
            results = [f.result() for f in progress(futures, desc="bis pass 2", unit="file")]
    with atomic_write(output, "wb") as out:
        for res in results:
            with open(res.part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 22)
            os.unlink(res.part)
    return results
