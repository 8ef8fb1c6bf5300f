"""``leanlm reproduce``: a registry of each paper's headline experiment, run at laptop scale into one report.

A module registers its experiment(s) in ``leanlm/<module>/experiments.py`` with :func:`register`::

    from leanlm.reproduce import AtLeast, Claim, RunContext, register
    from leanlm.common.report import ExperimentResult, Table

    @register(
        name="fasa-retrieval",
        module="fasa",
        title="FASA keeps full-KV answers at a small token budget",
        claims=[Claim("LongBench score at budget 256, % of full KV", paper="99.6%", metric="pct_full",
                      rule=AtLeast("pct_full", 99, partly=90), setting="135M model, 2K context")],
        quick={"prompts": 4},
        full={"prompts": 50},
    )
    def run(config: dict, ctx: RunContext) -> ExperimentResult:
        ...

The runner imports every module's ``experiments`` file, runs the selected experiments in order, records
failures (with the traceback) without stopping the others, and writes ``index.md`` / ``index.html``.

Each claim's verdict is computed by its ``rule`` (:mod:`leanlm.common.verdicts`: ``AtLeast``, ``AtMost``,
``Within``, ``Equals``, ``Interval``, ``RatioAtMost``, ``NotTestable``, all re-exported here) from the
experiment's own metrics; the report opens with every claim's verdict and, when an earlier run's
``results.json`` is found (the one ``--out`` already holds, else the newest sibling report directory), what
changed since then (:mod:`leanlm.common.compare`).
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leanlm.common.compare import find_previous, load_previous
from leanlm.common.progress import get_logger, progress
from leanlm.common.report import ClaimRow, ExperimentRecord, ExperimentResult, format_cell, write_report
from leanlm.common.seeding import seed_everything
from leanlm.common.verdicts import (
    AtLeast,
    AtMost,
    Equals,
    Interval,
    NotTestable,
    RatioAtMost,
    Rule,
    Within,
    judge,
)

#: Modules whose ``experiments`` submodule is imported to fill the registry, in report order.
EXPERIMENT_MODULES = ("common", "fasa", "bis", "wideseek", "elastic", "omnisift")
#: The paper each module reproduces, as the claims table names it.
PAPERS = {
    "common": "baseline (no paper)",
    "fasa": "FASA (2602.03152)",
    "bis": "BIS (2602.04145)",
    "wideseek": "WideSeek-R1 (2602.04634)",
    "elastic": "ERNIE 5.0 elastic (2602.04705)",
    "omnisift": "OmniSIFT (2602.04804)",
}

log = get_logger("leanlm.reproduce")


@dataclass
class Claim:
    """A headline number from the paper and the metric key (in ``ExperimentResult.metrics``) that is ours.

    ``rule`` (a :class:`leanlm.common.verdicts.Rule`) computes the verdict from the metrics; without one the
    claim shows "not judged". ``setting`` says in a few words how our setting differs from the paper's
    (e.g. "135M model, 2K context"). ``spread`` names a metric shown as ``± value`` beside ours (a seed
    std or a CI half-width; ``spread_label`` says which)."""

    text: str
    paper: str
    metric: str | None = None
    rule: Rule | None = None
    setting: str = ""
    spread: str | None = None
    spread_label: str = ""

    def __post_init__(self) -> None:
        if self.rule is not None and not isinstance(self.rule, Rule):
            raise TypeError(f"claim {self.text!r}: rule must be a leanlm.common.verdicts.Rule, got {self.rule!r}")


@dataclass
class RunContext:
    """What a run function gets besides its config: where to put artifacts, the mode and the seed."""

    out_dir: Path
    mode: str
    seed: int = 0

    @property
    def quick(self) -> bool:
        return self.mode == "quick"


RunFunction = Callable[[dict[str, Any], RunContext], ExperimentResult]


@dataclass
class Experiment:
    name: str
    module: str
    title: str
    run: RunFunction
    claims: list[Claim] = field(default_factory=list)
    quick: dict[str, Any] = field(default_factory=dict)
    full: dict[str, Any] = field(default_factory=dict)

    def config(self, mode: str) -> dict[str, Any]:
        return dict(self.quick if mode == "quick" else self.full)


REGISTRY: dict[str, Experiment] = {}
_IMPORT_ERRORS: dict[str, str] = {}


def register(
    *,
    name: str,
    module: str,
    title: str,
    claims: list[Claim] | None = None,
    quick: dict[str, Any] | None = None,
    full: dict[str, Any] | None = None,
) -> Callable[[RunFunction], RunFunction]:
    """Decorator adding a run function to the registry under ``name`` (re-registering replaces)."""

    def decorate(fn: RunFunction) -> RunFunction:
        REGISTRY[name] = Experiment(
            name=name, module=module, title=title, run=fn, claims=list(claims or []),
            quick=dict(quick or {}), full=dict(full or quick or {}),
        )
        return fn

    return decorate


def discover() -> dict[str, Experiment]:
    """Import each module's ``experiments`` file; a module that fails to import is remembered as failed."""
    for module in EXPERIMENT_MODULES:
        target = f"leanlm.{module}.experiments"
        try:
            importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name in (target, f"leanlm.{module}"):
                continue
            _IMPORT_ERRORS[module] = traceback.format_exc()
        except Exception:
            _IMPORT_ERRORS[module] = traceback.format_exc()
    return REGISTRY


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd or Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def environment() -> dict[str, Any]:
    import leanlm

    env: dict[str, Any] = {
        "leanlm": leanlm.__version__,
        "git commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu cores": os.cpu_count(),
        "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch threads"] = torch.get_num_threads()
        env["GPU"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        env["torch"] = "not installed"
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = "not installed"
    return env


def _claim_rows(experiment: Experiment, result: ExperimentResult | None) -> list[ClaimRow]:
    """Each claim beside our value (with its spread) and the verdict its rule computes from the metrics."""
    rows = []
    metrics = None if result is None else result.metrics
    for claim in experiment.claims:
        ours = "n/a"
        if metrics is not None and claim.metric and claim.metric in metrics:
            ours = format_cell(metrics[claim.metric])
            if claim.spread and claim.spread in metrics:
                label = f" ({claim.spread_label})" if claim.spread_label else ""
                ours += f" ± {format_cell(metrics[claim.spread])}{label}"
        judgement = judge(claim.rule, metrics)
        rows.append(ClaimRow(
            claim.text, claim.paper, ours, verdict=judgement.verdict, reason=judgement.reason,
            rule=claim.rule.describe() if claim.rule is not None else "", setting=claim.setting, metric=claim.metric,
            source=PAPERS.get(experiment.module, experiment.module),
        ))
    return rows


def run_experiment(experiment: Experiment, mode: str, out_dir: Path, seed: int = 0) -> ExperimentRecord:
    """Run one experiment, turning any exception into a failed record."""
    config = experiment.config(mode)
    ctx = RunContext(out_dir=out_dir / experiment.name, mode=mode, seed=seed)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    start = time.perf_counter()
    try:
        result = experiment.run(config, ctx)
        if not isinstance(result, ExperimentResult):
            raise TypeError(f"{experiment.name} returned {type(result).__name__}, expected ExperimentResult")
        status, error = "ok", None
    except Exception:
        result, status, error = None, "failed", traceback.format_exc()
        log.error("experiment %s failed:\n%s", experiment.name, error)
    seconds = time.perf_counter() - start
    return ExperimentRecord(
        name=experiment.name, title=experiment.title, module=experiment.module, status=status, seconds=seconds,
        config=config, claims=_claim_rows(experiment, result), result=result, error=error,
    )


def select(only: list[str] | None = None) -> list[Experiment]:
    """Registered experiments, optionally filtered by experiment name or module name."""
    experiments = list(discover().values())
    if not only:
        return experiments
    wanted = set(only)
    chosen = [e for e in experiments if e.name in wanted or e.module in wanted]
    known = {e.name for e in experiments} | {e.module for e in experiments} | set(_IMPORT_ERRORS)
    unknown = wanted - known
    if unknown:
        raise KeyError(f"unknown experiment or module: {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return chosen


def reproduce(
    mode: str = "quick", only: list[str] | None = None, out: Path | None = None, seed: int = 0,
    compare: Path | bool = True,
) -> tuple[Path, list[ExperimentRecord]]:
    """Run the selected experiments and write the report; returns (path of index.html, records).

    ``compare``: True finds the previous run by itself (the ``results.json`` that ``out`` already holds, else
    the newest sibling report directory's); a path (a ``results.json`` or a report directory) names it;
    False leaves the comparison out."""
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', got {mode!r}")
    experiments = select(only)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out) if out else Path("reports") / stamp
    previous = None
    if compare is not False:
        source = find_previous(out_dir) if compare is True else Path(compare)
        previous = load_previous(source, strict=compare is not True) if source is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[ExperimentRecord] = []
    wanted = set(only or [])
    for module, error in _IMPORT_ERRORS.items():
        if not only or module in wanted:
            records.append(ExperimentRecord(
                name=f"{module}-import", title=f"leanlm.{module}.experiments failed to import", module=module,
                status="failed", seconds=0.0, config={}, claims=[], error=error,
            ))
    for experiment in progress(experiments, desc="reproduce", unit="exp"):
        log.info("running %s (%s)", experiment.name, mode)
        records.append(run_experiment(experiment, mode, out_dir, seed=seed))
    env = environment()
    env["mode"] = mode
    env["seed"] = seed
    index = write_report(out_dir, records, env, previous=previous)
    return index, records


__all__ = [
    "PAPERS", "REGISTRY", "AtLeast", "AtMost", "Claim", "Equals", "Experiment", "ExperimentResult", "Interval",
    "NotTestable", "RatioAtMost", "Rule", "RunContext", "Within", "discover", "register", "reproduce",
    "run_experiment", "select",
]
