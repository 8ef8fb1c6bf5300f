"""The ``leanlm`` command line: ``info``, ``reproduce``, and one sub-command group per module.

Each module contributes ``leanlm/<module>/cli.py`` exposing a ``typer.Typer`` named ``app``; it is mounted
here as ``leanlm <module> ...``. A module whose CLI fails to import is listed with the error instead of
breaking the whole command.

Module CLIs import torch and transformers, so the console entry point (:func:`main`) mounts only the module
that the command line names (``leanlm bis select ...`` imports ``leanlm.bis.cli`` alone); ``leanlm --help``,
``leanlm info`` and ``leanlm reproduce`` list the modules without importing them. ``leanlm.cli.app``
(for tests and embedding) has every module mounted.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import typer

import leanlm

MODULES = {
    "fasa": "FASA frequency-aware sparse attention (arXiv 2602.03152).",
    "bis": "Balanced-Information Score selection of MC-annotated PRM data (arXiv 2602.04145).",
    "wideseek": "WideSeek-R1 lead/subagent search, offline world and WideSearch scorer (arXiv 2602.04634).",
    "elastic": "ERNIE 5.0 elastic MoE training and sub-model extraction (arXiv 2602.04705).",
    "omnisift": "OmniSIFT modality-asymmetric token compression (arXiv 2602.04804).",
}

#: Help width when stdout is not a terminal (piped into less or a file, CI logs): rich would squeeze it to 80.
HELP_WIDTH = 120


def widen_help_when_piped() -> None:
    """Give Typer's rich help ``HELP_WIDTH`` columns when stdout is not a terminal, unless the user set
    ``COLUMNS`` or ``TERMINAL_WIDTH`` (a real terminal keeps its own width)."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS") or os.environ.get("TERMINAL_WIDTH"):
        return
    try:
        from typer import rich_utils
    except ImportError:  # pragma: no cover - typer without rich
        return
    rich_utils.MAX_WIDTH = HELP_WIDTH


root = typer.Typer(
    name="leanlm",
    help="leanlm: five 2026 methods that make LLMs cheaper, with laptop-scale reproductions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@root.command()
def info() -> None:
    """Versions, threads, the embedded model's state, and whether a GPU is present."""
    from leanlm.common import models

    rows: list[tuple[str, str]] = [("leanlm", leanlm.__version__), ("python", platform.python_version())]
    try:
        import torch

        rows += [
            ("torch", torch.__version__),
            ("torch threads", str(torch.get_num_threads())),
            ("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"),
        ]
    except ImportError:
        rows.append(("torch", "not installed"))
    for name in ("transformers", "kvpress", "duckdb", "ray", "llama_cpp", "openai"):
        try:
            module = importlib.import_module(name)
            rows.append((name, getattr(module, "__version__", "installed")))
        except Exception:
            rows.append((name, "not installed"))
    installed = models.embedded_installed()
    rows.append(("embedded model", f"{models.EMBEDDED_NAME}: " + ("installed" if installed else "not installed")))
    if installed:
        rows.append(("embedded GGUF", str(models.embedded_gguf_path())))
        state = "cached at " + str(models.embedded_cache_path()) if models.embedded_cached() else "not converted yet"
        rows.append(("embedded cache", state))
    rows.append(("cache dir", str(models.cache_dir())))
    rows.append(("CPU cores", str(os.cpu_count())))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


@root.command()
def reproduce(
    quick: bool = typer.Option(True, "--quick/--full", help="Laptop-scale quick configs (default) or full configs."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Experiment or module name; repeatable."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report directory (default reports/<timestamp>)."),
    seed: int = typer.Option(0, help="Seed for every random number generator."),
    list_only: bool = typer.Option(False, "--list", help="List registered experiments and exit."),
    compare: Optional[Path] = typer.Option(
        None, "--compare", help="Previous run to compare with (results.json or its report directory); default: "
        "the run --out already holds, else the newest report directory beside it."),
    no_compare: bool = typer.Option(False, "--no-compare", help="Leave the comparison with the previous run out."),
) -> None:
    """Rerun each paper's headline experiment and write a report (index.md + self-contained index.html).

    The report opens with every registered claim: the paper's number, ours, and the verdict its rule computes."""
    from leanlm import reproduce as repro

    if list_only:
        for experiment in repro.discover().values():
            typer.echo(f"{experiment.name:<28} {experiment.module:<10} {experiment.title}")
        return
    try:
        index, records = repro.reproduce("quick" if quick else "full", only=only, out=out, seed=seed,
                                         compare=False if no_compare else (compare or True))
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0]), param_hint="--only") from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--compare") from exc
    for record in records:
        counts: dict[str, int] = {}
        for claim in record.claims:
            counts[claim.verdict] = counts.get(claim.verdict, 0) + 1
        verdicts = ", ".join(f"{n} {v}" for v, n in counts.items())
        typer.echo(f"{record.status:>6}  {record.seconds:7.1f} s  {record.name}" + (f"  ({verdicts})" if verdicts else ""))
    typer.echo(f"Report: {index}")
    typer.echo(f"        {index.with_name('index.md')}")
    if any(r.status != "ok" for r in records):
        raise typer.Exit(code=1)


def _module_app(name: str, help_text: str) -> typer.Typer:
    """The module's own Typer app, or a group that prints the import error when its CLI cannot load."""
    try:
        return importlib.import_module(f"leanlm.{name}.cli").app
    except Exception:
        error = traceback.format_exc(limit=3)
        broken = typer.Typer(help=f"{help_text} [unavailable: its CLI failed to import]")

        @broken.callback(invoke_without_command=True)
        def _broken(error: str = typer.Option(error, hidden=True)) -> None:
            typer.echo(error, err=True)
            raise typer.Exit(code=2)

        return broken


def _listing_only(help_text: str) -> typer.Typer:
    """A group that only lists the module in ``--help``; used when the command line does not enter it."""
    listing = typer.Typer(help=help_text)

    @listing.callback(invoke_without_command=True)
    def _listed() -> None:
        raise typer.Exit(code=0)

    return listing


def build_app(mount: Iterable[str] | None = None) -> typer.Typer:
    """The CLI with the named modules' groups imported (all when ``mount`` is None), the others listed only."""
    wanted = set(MODULES) if mount is None else set(mount)
    widen_help_when_piped()
    cli = typer.Typer(
        name="leanlm", help=root.info.help, no_args_is_help=True, add_completion=False,
        pretty_exceptions_show_locals=False,
    )
    cli.registered_commands = list(root.registered_commands)
    for name, help_text in MODULES.items():
        sub = _module_app(name, help_text) if name in wanted else _listing_only(help_text)
        cli.add_typer(sub, name=name, help=help_text)
    return cli


def modules_named_by(argv: list[str]) -> set[str] | None:
    """The module a command line enters (``leanlm fasa ...`` -> {"fasa"}); empty for top-level commands and
    ``--help``; None (mount all) when the first word is unknown, so Click reports it as usual."""
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return set()
    first = words[0]
    if first in MODULES:
        return {first}
    if first in {c.name or c.callback.__name__ for c in root.registered_commands if c.callback}:
        return set()
    return None


_FULL_APP: typer.Typer | None = None


def __getattr__(name: str) -> typer.Typer:
    global _FULL_APP
    if name == "app":
        if _FULL_APP is None:
            _FULL_APP = build_app()
        return _FULL_APP
    raise AttributeError(name)


def main() -> None:  # pragma: no cover - console entry point
    build_app(modules_named_by(sys.argv[1:]))()


if __name__ == "__main__":  # pragma: no cover
    main()
