"""The ``leanlm`` command line: ``info``, ``reproduce``, and one sub-command group per module.

Each module contributes ``leanlm/<module>/cli.py`` exposing a ``typer.Typer`` named ``app``; it is mounted
here as ``leanlm <module> ...``. A module whose CLI fails to import is listed with the error instead of
breaking the whole command.
"""

from __future__ import annotations

import importlib
import os
import platform
import traceback
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

app = typer.Typer(
    name="leanlm",
    help="leanlm: five 2026 methods that make LLMs cheaper, with laptop-scale reproductions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.command()
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


@app.command()
def reproduce(
    quick: bool = typer.Option(True, "--quick/--full", help="Laptop-scale quick configs (default) or full configs."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Experiment or module name; repeatable."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report directory (default reports/<timestamp>)."),
    seed: int = typer.Option(0, help="Seed for every random number generator."),
    list_only: bool = typer.Option(False, "--list", help="List registered experiments and exit."),
) -> None:
    """Rerun each paper's headline experiment and write a report (index.md + self-contained index.html)."""
    from leanlm import reproduce as repro

    if list_only:
        for experiment in repro.discover().values():
            typer.echo(f"{experiment.name:<28} {experiment.module:<10} {experiment.title}")
        return
    try:
        index, records = repro.reproduce("quick" if quick else "full", only=only, out=out, seed=seed)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0]), param_hint="--only") from exc
    for record in records:
        typer.echo(f"{record.status:>6}  {record.seconds:7.1f} s  {record.name}")
    typer.echo(f"Report: {index}")
    typer.echo(f"        {index.with_name('index.md')}")
    if any(r.status != "ok" for r in records):
        raise typer.Exit(code=1)


def _mount_modules() -> None:
    for name, help_text in MODULES.items():
        try:
            module = importlib.import_module(f"leanlm.{name}.cli")
            sub = module.app
        except Exception:
            error = traceback.format_exc(limit=3)
            sub = typer.Typer(help=f"{help_text} [unavailable: its CLI failed to import]")

            @sub.callback(invoke_without_command=True)
            def _broken(error: str = typer.Option(error, hidden=True)) -> None:
                typer.echo(error, err=True)
                raise typer.Exit(code=2)

        app.add_typer(sub, name=name, help=help_text)


_mount_modules()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
