"""``leanlm fasa bench --eval [--quick]``: run (or resume) the evaluation and write its Markdown, JSON and plots."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from leanlm.common.atomic import atomic_write_bytes, atomic_write_text
from leanlm.common.report import table_markdown


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")[:60]


def write_report(out: Path, head: str, result: dict[str, Any]) -> None:
    """``out`` (Markdown tables + figure links) and one PNG per figure beside it."""
    figures = []
    for fig in result["figures"]:
        path = out.with_name(f"{out.stem}-{_slug(fig.title)}.png")
        atomic_write_bytes(path, fig.png)
        figures.append(f"![{fig.title}]({path.name})")
    body = "\n\n".join(table_markdown(t) for t in result["tables"])
    atomic_write_text(out, head + body + "\n\n" + "\n\n".join(figures) + "\n")


def report_from_checkpoints(run_dir: Path, out: Path) -> dict[str, Any]:
    """Tables and plots of whatever a (possibly partial or paused) run directory holds; runs no model.

    ``python -m leanlm.fasa.evaluation.bench RUN_DIR OUT.md``."""
    from leanlm.fasa.calibration import Calibration
    from leanlm.fasa.evaluation.methods import Offline
    from leanlm.fasa.evaluation.report import plot, tabulate
    from leanlm.fasa.evaluation.run import read_jsonl

    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    calibrations = {p.stem.removeprefix("calibration-"): Calibration.load(p)
                    for p in sorted(run_dir.glob("calibration-*.json"))}
    if "wiki" not in calibrations:
        raise FileNotFoundError(f"{run_dir}: no calibration-wiki.json (the run has not finished its first step)")
    offline = Offline(calibrations=calibrations, seed=config["seed"])
    answers, presses, ppl = (read_jsonl(run_dir / f) for f in ("answers.jsonl", "presses.jsonl", "perplexity.jsonl"))
    tuning_path = run_dir / "task-params.json"
    tuning = json.loads(tuning_path.read_text(encoding="utf-8")) if tuning_path.exists() else None
    tables, metrics, _ = tabulate(answers, presses, ppl, offline, config, tuning)
    result = {"tables": tables, "figures": plot(answers, presses, ppl, offline, config), "metrics": metrics}
    done = len({r["id"] for r in answers})
    write_report(out, f"# FASA evaluation: report of the checkpoints in `{run_dir}`\n\n{done} prompts with rows "
                      f"({len(answers)} (prompt, method, budget) rows; n per cell in the tables); "
                      f"perplexity texts done: {sorted({r['text_kind'] for r in ppl}) or 'none'}. Metrics: "
                      f"`{json.dumps(metrics)}`\n\n", result)
    return result


def bench_eval(out: Path, quick: bool, threads: int, run_dir: Path | None, log: Any,
               min_available_gb: float = 0.0) -> dict[str, Any]:
    """Run the quick or full config with checkpoints in ``run_dir`` (default: ``<out stem>-run/`` beside
    ``out``); write ``out`` (Markdown tables), ``out`` with ``.json`` (metrics) and one PNG per figure."""
    import torch

    from leanlm.fasa.evaluation.run import FULL, QUICK, run_eval

    torch.set_num_threads(threads)
    run_dir = run_dir or out.with_name(out.stem + "-run")
    config = dict(QUICK if quick else FULL)
    t0 = time.perf_counter()
    if min_available_gb > 0:  # not even the model is loaded before the memory is there
        from leanlm.fasa.evaluation.run import wait_for_memory

        wait_for_memory(min_available_gb, log)
    result = run_eval(config, run_dir, log, min_available_gb=min_available_gb)
    seconds = time.perf_counter() - t0
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    command = f"leanlm fasa bench --eval{' --quick' if quick else ''} --threads {threads} --out {out} --run-dir {run_dir}"
    head = (f"# FASA evaluation ({'quick' if quick else 'full'} config)\n\n"
            f"Command: `{command}` (resumes from the checkpoints in `{run_dir}`); "
            f"{platform.processor() or platform.machine()}, {threads} torch thread(s), torch {torch.__version__}, "
            f"load average at the end {load}; {seconds:.0f} s this invocation. Prompts done: "
            f"{result['prompts_done']}/{result['prompts_total']}.\n\n")
    write_report(out, head, result)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"metrics": result["metrics"], "seconds": seconds,
                                                            "threads": threads, "config": config}, indent=1))
    return result


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m leanlm.fasa.evaluation.bench RUN_DIR OUT.md")
    report_from_checkpoints(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
