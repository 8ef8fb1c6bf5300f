"""The pass-1 engines by name: ``name -> "module:Class"``, imported on first use, with an install hint.

An engine turns one input file into its :class:`~leanlm.bis.spill.FileScores` (``scan(path, index, config,
spill_dir)``). Which process or machine runs each ``scan`` is the executor's business
(:mod:`leanlm.bis.executor`), not the engine's. The ``ray`` setting of :class:`SelectConfig` is the stream
engine run by the Ray executor.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from leanlm.bis.config import SelectConfig
from leanlm.bis.spill import FileScores

#: name -> (import path, what to install when it is missing)
ENGINES: dict[str, tuple[str, str]] = {
    "stream": ("leanlm.bis.engine_stream:StreamEngine", "pip install msgspec"),
    "duckdb": ("leanlm.bis.engine_duckdb:DuckDBEngine", "pip install duckdb"),
}


class Engine(Protocol):
    name: str

    def scan(self, path: str, index: int, config: SelectConfig, spill_dir: str) -> FileScores: ...


def get_engine(name: str) -> Any:
    """An instance of the engine registered as ``name`` (``ray`` maps to ``stream``)."""
    name = "stream" if name == "ray" else name
    try:
        target, hint = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}") from None
    module, _, cls = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"engine {name!r} needs a missing package ({exc}); {hint}") from exc
    return getattr(mod, cls)()
