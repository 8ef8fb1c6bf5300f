"""Side-by-side benchmark of the selection engines, the plain-Python official algorithm and a DuckDB SQL query.

Every contender runs in its own fresh interpreter on the same corpus, one after the other; the child reports
its own high-water RSS (``VmHWM``; with ``--workers``, also its largest worker's) and its work time
(interpreter start-up excluded); the wall time is measured outside (included). Outputs are compared
byte for byte: all our engines with each other, our ``mmprm --compat official`` output with the official
algorithm's, and the DuckDB query's per-source kept counts with ours.

Contenders:

* ``official``: :mod:`leanlm.bis.reference`, the official script's algorithm in plain Python (whole files in
  memory, ``json.loads`` per line, stable sort), writing the MM-PRM subset like the script;
* ``duckdb-sql``: a hand-written DuckDB query computing the same per-source selection (row_number over a
  partition), the issue's peer; it computes the kept set and counts it, writing nothing;
* ``ours:<engine>``: :func:`leanlm.bis.select.select` writing the kept original lines (default ``jsonl``), and
  ``ours:stream+mmprm`` writing the official training format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanlm.common.progress import get_logger

log = get_logger("leanlm.bis.bench")


def ensure_corpus(root: str | os.PathLike[str], rollouts: int, sources: int = 38, seed: int = 0) -> Path:
    """Generate (once) a synthetic corpus under ``root/bis-<rollouts>-<sources>-<seed>``; returns its dir."""
    from leanlm.bis.synth import SynthConfig, write_corpus

    out = Path(root) / f"bis-{rollouts}-{sources}-{seed}"
    marker = out / ".complete"
    if not marker.exists():
        log.info("generating %d synthetic rollouts over %d sources in %s", rollouts, sources, out)
        write_corpus(out, SynthConfig(rollouts=rollouts, sources=sources, seed=seed))
        marker.write_text("ok\n")
    return out


#: The issue's peer, a hand-written per-source selection in DuckDB SQL. ``{source}`` is one of the two readers
#: below: DuckDB's ``read_json`` with a declared column, or ``read_json_objects`` + ``json_transform`` (faster
#: here: ``read_json`` pays a large fixed cost per file on this machine).
DUCKDB_SQL = """
WITH r AS (
  SELECT f, row_number() OVER (PARTITION BY f) AS rn,
         list_filter(list_transform(steps_with_score, lambda s: s.score), lambda x: x IS NOT NULL) AS sc
  FROM {source}
), b AS (
  SELECT f, rn, len(sc) AS n, len(list_filter(sc, lambda x: x > 0)) AS np,
         list_sum(list_filter(sc, lambda x: x > 0)) AS sp
  FROM r WHERE len(sc) > 0
), s AS (
  SELECT f, rn, (np / n * (1 - np / n) + {alpha}) * CASE WHEN np > 0 THEN sp / np ELSE 1.0 END AS bis FROM b
), k AS (
  SELECT f, rn, row_number() OVER (PARTITION BY f ORDER BY bis DESC, rn) AS pos, count(*) OVER (PARTITION BY f) AS m
  FROM s
)
SELECT f, count(*) AS kept FROM k WHERE pos <= greatest(1, floor(m * {ratio})) GROUP BY f ORDER BY f
"""
DUCKDB_SOURCES = {
    "duckdb-sql": ("(SELECT filename AS f, json_transform(json, '{{\"steps_with_score\":[{{\"score\":\"DOUBLE\"}}]}}')"
                   ".steps_with_score AS steps_with_score FROM read_json_objects('{glob}', "
                   "format='newline_delimited', filename=true))"),
    "duckdb-sql-read_json": ("(SELECT filename AS f, steps_with_score FROM read_json('{glob}', "
                             "format='newline_delimited', filename=true, "
                             "columns={{'steps_with_score': 'STRUCT(score DOUBLE)[]'}}))"),
}


def contender_config(name: str, alpha: float, ratio: float) -> Any:
    """The :class:`SelectConfig` of an ``ours:`` contender: ``ours:<engine>[+mmprm][/two-pass][/<n>w]``, e.g.
    ``ours:stream`` (the defaults), ``ours:stream/1w`` (one process), ``ours:stream/two-pass``,
    ``ours:stream+mmprm`` (MM-PRM output, ``--compat official``)."""
    from leanlm.bis.score import BIS
    from leanlm.bis.select import SelectConfig

    engine, *opts = name.split(":", 1)[1].split("/")
    fmt = "jsonl"
    if engine.endswith("+mmprm"):
        engine, fmt = engine.removesuffix("+mmprm"), "mmprm"
    workers, plan = 0, "auto"
    for opt in opts:
        if opt.endswith("w") and opt[:-1].isdigit():
            workers = int(opt[:-1])
        elif opt in ("two-pass", "single-pass"):
            plan = opt
        else:
            raise ValueError(f"unknown contender option {opt!r} in {name!r}")
    return SelectConfig(ratio=ratio, scorer=BIS(alpha), engine=engine, output_format=fmt, workers=workers,
                        compat="official", plan=plan)


def _child(name: str, corpus: str, out: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one contender in this (child) process; returns its timing and result summary."""
    alpha, ratio = params["alpha"], params["ratio"]
    t0 = time.perf_counter()
    if name == "official":
        from leanlm.bis import reference

        written = reference.build_subset(reference.select_paths(corpus), alpha, ratio, out)
        result: dict[str, Any] = {"written": written}
    elif name in DUCKDB_SOURCES:
        import duckdb

        source = DUCKDB_SOURCES[name].format(glob=os.path.join(corpus, "*.jsonl"))
        rows = duckdb.sql(DUCKDB_SQL.format(source=source, alpha=alpha, ratio=ratio)).fetchall()
        result = {"kept_per_file": {Path(f).name: int(k) for f, k in rows}}
    else:
        from leanlm.bis.select import select

        cfg = contender_config(name, alpha, ratio)
        doc = select([corpus], out, cfg)
        result = {"kept_per_file": {Path(f["file"]).name: f["kept"] for f in doc["files"]},
                  "written": doc["totals"]["written"], "phases": doc["seconds"]}
    result["seconds"] = time.perf_counter() - t0
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def _peak_rss_mb() -> float:
    """This process's high-water RSS (``VmHWM``, reset at exec, unlike ``ru_maxrss`` which Linux carries over
    from the forking parent) or, if larger, that of its largest waited-for child (``--workers`` processes)."""
    import resource

    hwm = 0.0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return max(hwm, children)


@dataclass
class Measurement:
    name: str
    seconds: float
    wall_seconds: float
    peak_rss_mb: float
    result: dict[str, Any]
    output: str


def measure(name: str, corpus: Path, out_dir: Path, params: dict[str, Any], timeout: float = 3600) -> Measurement:
    """Run ``name`` in a fresh interpreter and read its peak RSS from ``wait4``."""
    out = out_dir / f"{name.replace(':', '-').replace('+', '-')}.jsonl"
    res_file = out_dir / f"{out.stem}.result.json"
    cmd = [sys.executable, "-m", "leanlm.bis.bench", name, str(corpus), str(out), json.dumps(params), str(res_file)]
    env = {**os.environ, "LEANLM_NO_PROGRESS": "1", "LEANLM_LOG_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            raise TimeoutError(f"{name} ran over {timeout} s")
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark contender {name} failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(res_file.read_text())
    del usage  # ru_maxrss of a forked child includes the parent's image (Linux keeps it across exec)
    return Measurement(name=name, seconds=result["seconds"], wall_seconds=wall, peak_rss_mb=result["peak_rss_mb"],
                       result=result, output=str(out))


def run_benchmark(corpus: Path, out_dir: Path, contenders: list[str], alpha: float = 0.05, ratio: float = 0.25,
                  repeats: int = 1) -> list[Measurement]:
    """Measure each contender ``repeats`` times (interleaved) and keep each one's fastest run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    best: dict[str, Measurement] = {}
    params = {"alpha": alpha, "ratio": ratio}
    for _ in range(repeats):
        for name in contenders:
            m = measure(name, corpus, out_dir, params)
            log.info("%-22s %.2f s (wall %.2f s), peak RSS %.0f MB", name, m.seconds, m.wall_seconds, m.peak_rss_mb)
            if name not in best or m.seconds < best[name].seconds:
                best[name] = m
    return [best[n] for n in contenders]


def main(argv: list[str]) -> None:
    name, corpus, out, params, res_file = argv
    result = _child(name, corpus, out, json.loads(params))
    Path(res_file).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
