"""Logging and progress bars, shared so that no module prints progress with ``print``.

Progress bars go to stderr and switch off when ``LEANLM_NO_PROGRESS=1`` or stderr is not a terminal
(unless ``LEANLM_PROGRESS=1`` forces them on).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_CONFIGURED = False


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``leanlm`` namespace, configured once to print ``level name: message`` to stderr."""
    global _CONFIGURED
    if not _CONFIGURED:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("leanlm")
        root.addHandler(handler)
        root.setLevel(os.environ.get("LEANLM_LOG_LEVEL", "INFO"))
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("leanlm") else f"leanlm.{name}")


def progress_enabled() -> bool:
    if os.environ.get("LEANLM_NO_PROGRESS") == "1":
        return False
    if os.environ.get("LEANLM_PROGRESS") == "1":
        return True
    return sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, *, desc: str = "", total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a tqdm progress bar (disabled when not interactive)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress_enabled(), dynamic_ncols=True, leave=False)


def progress_bar(*, desc: str = "", total: int | None = None, unit: str = "it") -> tqdm:
    """A manual progress bar (``bar.update(n)``), disabled when not interactive; use as a context manager."""
    return tqdm(desc=desc, total=total, unit=unit, disable=not progress_enabled(), dynamic_ncols=True, leave=False)
