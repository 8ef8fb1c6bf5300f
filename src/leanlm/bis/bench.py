"""``leanlm bis bench``: selection contenders side by side, like for like, with checked outputs.

Two kinds of output are compared separately, never against each other:

* **raw**: the kept original lines, in file order (what ``leanlm bis select`` writes by default);
* **mmprm**: the kept rollouts converted to the official MM-PRM training format (``--format mmprm --compat
  official``, what the official ``scripts/build_bis_subset.py`` writes).

Contenders (each run as its own process, wall time measured outside it, so interpreter start-up and imports
count for everyone):

* ``official-script`` (mmprm): the official script itself, from a fetched copy (``--official-script``; never
  part of leanlm), with its own defaults for everything but the corpus, α, ratio and output;
* ``reference`` / ``reference-raw``: :mod:`leanlm.bis.reference`, our plain-Python reading of the official
  algorithm, writing MM-PRM or the kept lines;
* ``duckdb-copy`` (raw): a hand-written DuckDB query that reads the lines as text, scores them with
  ``json_extract`` and list lambdas (the positive scores summed left to right like Python's ``sum``), keeps
  the top ``max(1, floor(m·ratio))`` per file with ties broken by row index, and writes the kept lines with
  ``COPY ... TO``;
* ``ours:<engine>[+mmprm][/two-pass][/<n>w]``: :func:`leanlm.bis.select.select` with that configuration.

Protocol: one untimed run of every contender first, whose output must equal its kind's reference bytes
(``reference-raw`` for raw; the official script's, else ``reference``'s, for mmprm), then ``repeats`` timed
rounds, the contenders interleaved and their order rotated each round. Reported: median, min and max wall
seconds; the median CPU seconds (user + system, workers included: the load-independent view on a shared
machine); the median of the per-round paired ratios; the peak RSS of the largest process of each contender
(``ru_maxrss`` as reported by ``/usr/bin/time``, which includes waited-for worker processes).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leanlm.bis.scan import sha256_file
from leanlm.common.progress import get_logger

log = get_logger("leanlm.bis.bench")

DEFAULT_CONTENDERS = ["official-script", "reference", "reference-raw", "duckdb-copy", "ours:stream",
                      "ours:stream/1w", "ours:stream/two-pass", "ours:duckdb", "ours:stream+mmprm"]


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


#: The DuckDB contender. Lines are read as text (a delimiter byte that JSON text cannot hold unescaped), so
#: the kept lines are written back unchanged; ``gi`` is the row index in read order (files in name order).
DUCKDB_COPY_SQL = """
COPY (
  WITH raw AS (
    SELECT filename AS f, line, row_number() OVER () AS gi
    FROM read_csv('{glob}', columns={{'line': 'VARCHAR'}}, header=false, delim='\\x01', quote='', escape='',
                  filename=true, auto_detect=false)
  ), s AS (
    SELECT f, line, gi, list_filter(CAST(json_extract(line, '$.steps_with_score[*].score') AS DOUBLE[]),
                                    lambda x: x IS NOT NULL) AS sc FROM raw
  ), b AS (
    SELECT f, line, gi, len(sc) AS n, list_filter(sc, lambda x: x > 0) AS ps FROM s WHERE len(sc) > 0
  ), k AS (
    SELECT f, line, gi,
           row_number() OVER (PARTITION BY f ORDER BY
             (len(ps) / n * (1 - len(ps) / n) + {alpha})
             * CASE WHEN len(ps) > 0 THEN list_reduce(list_prepend(0.0, ps), lambda a, b: a + b) / len(ps)
                    ELSE 1.0 END DESC, gi) AS pos,
           count(*) OVER (PARTITION BY f) AS m
    FROM b
  )
  SELECT line FROM k WHERE pos <= greatest(1, floor(m * {ratio})) ORDER BY f, gi
) TO '{out}' (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\\x01')
"""


def contender_config(name: str, alpha: float, ratio: float) -> Any:
    """The :class:`SelectConfig` of an ``ours:`` contender: ``ours:<engine>[+mmprm][/two-pass][/<n>w]``, e.g.
    ``ours:stream`` (the defaults), ``ours:stream/1w`` (one process), ``ours:stream/two-pass``,
    ``ours:stream+mmprm`` (MM-PRM output, ``--compat official``)."""
    from leanlm.bis.config import SelectConfig
    from leanlm.bis.score import BIS

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


def kind_of(name: str) -> str:
    """``raw`` or ``mmprm``: what a contender writes."""
    if name in ("official-script", "reference") or name.endswith("+mmprm") or "+mmprm/" in name:
        return "mmprm"
    if name in ("reference-raw", "duckdb-copy") or name.startswith("ours:"):
        return "raw"
    raise ValueError(f"unknown contender {name!r}")


def child(name: str, corpus: str, out: str, alpha: float, ratio: float) -> None:
    """Run one in-house contender in this process (``python -m leanlm.bis.bench child ...``)."""
    if name in ("reference", "reference-raw"):
        from leanlm.bis import reference

        reference.build_subset(reference.select_paths(corpus), alpha, ratio, out, raw=name == "reference-raw")
    elif name == "duckdb-copy":
        import duckdb

        glob = os.path.join(corpus, "*.jsonl").replace("'", "''")
        duckdb.sql(DUCKDB_COPY_SQL.format(glob=glob, alpha=alpha, ratio=ratio, out=out.replace("'", "''")))
    else:
        from leanlm.bis.select import select

        select([corpus], out, contender_config(name, alpha, ratio), spill_dir=os.path.dirname(out))


def command(name: str, corpus: Path, out: Path, alpha: float, ratio: float, official_script: Path | None
            ) -> list[str]:
    if name == "official-script":
        if official_script is None:
            raise ValueError("the official-script contender needs --official-script PATH")
        return [sys.executable, str(official_script), "--annotations-dir", str(corpus), "--alpha", str(alpha),
                "--top-ratio", str(ratio), "--output", str(out)]
    return [sys.executable, "-m", "leanlm.bis.bench", "child", name, str(corpus), str(out), str(alpha), str(ratio)]


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float = float("nan")  # user + system, the process and its waited-for workers


def run_once(cmd: list[str], work: Path, timeout: float = 3600) -> Run:
    """Run ``cmd`` under ``/usr/bin/time`` (its ``ru_maxrss``: the largest process, workers included)."""
    rss_file = work / "rss.txt"
    env = {**os.environ, "LEANLM_NO_PROGRESS": "1", "LEANLM_LOG_LEVEL": "WARNING"}
    timer = shutil.which("time") or "/usr/bin/time"
    full = [timer, "-f", "%M %U %S", "-o", str(rss_file), *cmd] if Path(timer).exists() else cmd
    t0 = time.perf_counter()
    proc = subprocess.run(full, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
                          check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')[-3000:]}")
    if not rss_file.exists():
        return Run(seconds=seconds, peak_rss_mb=float("nan"))
    rss, user, system = (float(x) for x in rss_file.read_text().split()[-3:])
    return Run(seconds=seconds, peak_rss_mb=rss / 1024, cpu_seconds=user + system)


@dataclass
class Result:
    name: str
    kind: str
    runs: list[Run] = field(default_factory=list)
    sha256: str = ""
    rows_out: int = 0
    identical: bool = False

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def cpu_median(self) -> float:
        return statistics.median(r.cpu_seconds for r in self.runs)

    @property
    def peak_rss_mb(self) -> float:
        return max(r.peak_rss_mb for r in self.runs)


def _line_count(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 22), b""))


def run_benchmark(corpus: Path, work: Path, contenders: list[str], alpha: float = 0.05, ratio: float = 0.25,
                  repeats: int = 5, official_script: Path | None = None) -> dict[str, Any]:
    """Check every contender's output, then time ``repeats`` interleaved rounds; returns the report data."""
    work.mkdir(parents=True, exist_ok=True)
    if official_script is None and "official-script" in contenders:
        log.warning("no --official-script given: the official-script contender is left out")
        contenders = [c for c in contenders if c != "official-script"]
    results = {c: Result(c, kind_of(c)) for c in contenders}

    def out_path(name: str) -> Path:
        return work / f"out-{name.replace(':', '-').replace('+', '-').replace('/', '-')}.jsonl"

    def one(name: str) -> Run:
        out = out_path(name)
        for p in (out, Path(str(out) + ".manifest.json")):
            p.unlink(missing_ok=True)
        return run_once(command(name, corpus, out, alpha, ratio, official_script), work)

    # 1. untimed check run: every output must equal its kind's reference bytes
    for name in contenders:
        one(name)
        res = results[name]
        res.sha256, res.rows_out = sha256_file(out_path(name)), _line_count(out_path(name))
    refs = {"raw": "reference-raw", "mmprm": "official-script" if official_script else "reference"}
    for res in results.values():
        ref = results.get(refs[res.kind])
        res.identical = ref is not None and res.sha256 == ref.sha256
    # 2. timed rounds, interleaved, order rotated each round
    load_before = os.getloadavg()
    for r in range(repeats):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for name in order:
            run = one(name)
            results[name].runs.append(run)
            log.info("round %d %-24s %.2f s, peak RSS %.0f MB", r + 1, name, run.seconds, run.peak_rss_mb)
    load_after = os.getloadavg()
    for name in contenders:
        out_path(name).unlink(missing_ok=True)
    return {"corpus": str(corpus), "corpus_bytes": sum(p.stat().st_size for p in corpus.glob("*.jsonl")),
            "files": len(list(corpus.glob("*.jsonl"))), "alpha": alpha, "ratio": ratio, "repeats": repeats,
            "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
            "official_script": str(official_script) if official_script else None,
            "official_commit": _official_commit(official_script), "results": results}


def _official_commit(script: Path | None) -> str | None:
    """The commit of the fetched official copy, from a ``COMMIT`` file beside or above ``scripts/``."""
    if script is None:
        return None
    for d in (script.parent, script.parent.parent):
        if (d / "COMMIT").exists():
            return (d / "COMMIT").read_text().strip()
    return None


def ratios(data: dict[str, Any], slow: str, fast: str) -> dict[str, float] | None:
    """Speed-up of ``fast`` over ``slow``: ratio of medians, and median/min/max of the per-round ratios."""
    res = data["results"]
    if slow not in res or fast not in res:
        return None
    a, b = res[slow], res[fast]
    paired = [x.seconds / y.seconds for x, y in zip(a.runs, b.runs, strict=True)]
    return {"of_medians": a.median / b.median, "paired_median": statistics.median(paired),
            "paired_min": min(paired), "paired_max": max(paired)}


GOALS = [  # (label, slow, fast, at least)
    ("raw: ours (default) vs DuckDB COPY", "duckdb-copy", "ours:stream", 1.5),
    ("raw: ours (default) vs reference (plain Python)", "reference-raw", "ours:stream", None),
    ("MM-PRM: ours vs the official script", "official-script", "ours:stream+mmprm", 4.0),
    ("MM-PRM: ours vs reference (plain Python)", "reference", "ours:stream+mmprm", None),
    ("ours: MM-PRM time / raw time (goal ≤ 1.5)", "ours:stream+mmprm", "ours:stream", None),
]


def to_markdown(data: dict[str, Any], command_line: str) -> str:
    res: dict[str, Result] = data["results"]
    lines = [f"Command: `{command_line}`", "",
             f"Corpus: `{data['corpus']}`: {data['files']} files, {data['corpus_bytes'] / 1e6:.0f} MB; "
             f"α = {data['alpha']}, top {data['ratio']:.0%} per file. {data['repeats']} timed rounds, interleaved. "
             f"CPUs: {data['cpus']}; load average before/after: "
             f"{', '.join(f'{x:.2f}' for x in data['loadavg_before'])} / "
             f"{', '.join(f'{x:.2f}' for x in data['loadavg_after'])}.",
             f"Official script: `{data['official_script']}` at commit `{data['official_commit']}`."
             if data["official_script"] else "Official script: not given (contender left out).", ""]
    for kind, title in (("raw", "Raw output (the kept original lines)"),
                        ("mmprm", "MM-PRM output (the official training format)")):
        lines += [f"### {title}", "",
                  "| contender | median s | min–max s | median CPU s | peak RSS MB | rows out | output |",
                  "|---|---|---|---|---|---|---|"]
        for r in res.values():
            if r.kind != kind:
                continue
            lines.append(f"| {r.name} | {r.median:.2f} | {min(x.seconds for x in r.runs):.2f}–"
                         f"{max(x.seconds for x in r.runs):.2f} | {r.cpu_median:.2f} | {r.peak_rss_mb:.0f} | "
                         f"{r.rows_out:,} | "
                         f"{'identical' if r.identical else '**DIFFERENT**'} (`{r.sha256[:12]}`) |")
        lines.append("")
    lines += ["### Ratios (like for like)", "",
              "| comparison | ratio of medians | per-round ratio: median (min–max) | goal |", "|---|---|---|---|"]
    for label, slow, fast, goal in GOALS:
        q = ratios(data, slow, fast)
        if q is None:
            continue
        if slow == "ours:stream+mmprm":  # a time ratio, not a speed-up
            lines.append(f"| {label} | {q['of_medians']:.2f} | {q['paired_median']:.2f} ({q['paired_min']:.2f}–"
                         f"{q['paired_max']:.2f}) | {'met' if q['of_medians'] <= 1.5 else 'not met'} |")
            continue
        verdict = "" if goal is None else ("met" if q["of_medians"] >= goal else "not met") + f" (≥ {goal}x)"
        lines.append(f"| {label} | {q['of_medians']:.2f}x | {q['paired_median']:.2f}x ({q['paired_min']:.2f}–"
                     f"{q['paired_max']:.2f}) | {verdict} |")
    ours = [r for r in res.values() if r.name.startswith("ours:")]
    if ours:
        worst = max(r.peak_rss_mb for r in ours)
        lines += ["", f"Largest peak RSS of any of our processes: {worst:.0f} MB "
                      f"({'met' if worst < 1024 else 'not met'}: goal < 1 GB)."]
    return "\n".join(lines) + "\n"


def to_json(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k != "results"}
    out["results"] = {n: {**asdict(r), "median": r.median, "cpu_median": r.cpu_median, "peak_rss_mb": r.peak_rss_mb}
                      for n, r in data["results"].items()}
    out["ratios"] = {label: ratios(data, slow, fast) for label, slow, fast, _ in GOALS}
    return out


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6]))
    else:
        raise SystemExit("usage: python -m leanlm.bis.bench child NAME CORPUS OUT ALPHA RATIO")
