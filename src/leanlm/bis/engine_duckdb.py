"""The DuckDB engine: DuckDB's multi-threaded JSON/Parquet reader computes (n, n_pos, sum_pos) per row in SQL.

The positive scores are summed with ``list_reduce`` (a left fold, the same order as Python's ``sum``), so the
scores, and the cut, are the stream engine's bit for bit. A file DuckDB cannot read (bad JSON, wrong types,
NaN scores), or one with a rollout without scores under ``strict_scores``, is re-scanned by the stream engine,
which names the bad line or skips it under ``skip_invalid``; the manifest says which engine read each file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leanlm.bis.config import SelectConfig, initial_group_names
from leanlm.bis.engine_stream import StreamEngine
from leanlm.bis.scan import FileCounts, is_parquet, sha256_file
from leanlm.bis.score import RolloutStats
from leanlm.bis.spill import FileScores, SpillWriter, spill_path
from leanlm.common.progress import get_logger

log = get_logger("leanlm.bis.engine_duckdb")


class _Fallback(Exception):
    """This file needs the stream engine (it names bad lines and applies every option)."""


def _duckdb_sql(path: Path, config: SelectConfig) -> str:
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


@dataclass(frozen=True)
class DuckDBEngine:
    name: str = "duckdb"

    def scan(self, path: str, index: int, config: SelectConfig, spill_dir: str) -> FileScores:
        import duckdb

        try:
            return self._scan(duckdb, Path(path), index, config, spill_dir)
        except (duckdb.InvalidInputException, duckdb.ConversionException, _Fallback) as exc:
            log.info("duckdb could not read %s (%s); scanning it with the stream engine", path, str(exc)[:200])
            res = StreamEngine().scan(path, index, config, spill_dir)
            res.engine = "stream (duckdb could not read the file)"
            return res

    def _scan(self, duckdb, path: Path, index: int, config: SelectConfig, spill_dir: str) -> FileScores:
        con = duckdb.connect()
        writer = SpillWriter(spill_path(spill_dir, index), config.scorer, initial_group_names(config.group_by, path))
        counts = FileCounts(bytes=path.stat().st_size)
        try:
            reader = con.sql(_duckdb_sql(path, config)).to_arrow_reader(1 << 17)
            row0 = 0
            for batch in reader:
                nrows = batch.num_rows
                stats = RolloutStats(
                    n=batch.column("n").to_numpy(zero_copy_only=False).astype(np.int32),
                    n_pos=batch.column("n_pos").to_numpy(zero_copy_only=False).astype(np.int32),
                    sum_pos=batch.column("sum_pos").to_numpy(zero_copy_only=False).astype(np.float64),
                    row=np.arange(row0, row0 + nrows, dtype=np.int64), file_index=index)
                groups = batch.column("grp").to_pylist() if config.fields.group else None
                if groups is not None and any(g is None for g in groups):
                    raise _Fallback(f"missing group field {config.fields.group!r}")
                if config.strict_scores and not stats.candidate.all():
                    raise _Fallback("a rollout without scores under strict_scores")
                writer.write(stats, groups)
                counts.rows += nrows
                counts.candidates += int(np.count_nonzero(stats.n > 0))
                counts.without_scores += int(np.count_nonzero(stats.n == 0))
                row0 += nrows
        finally:
            writer.close()
            con.close()
        if config.hash_input:
            counts.sha256 = sha256_file(path)
        return writer.result(str(path), counts, None, self.name)
