"""Logging and progress bars, shared so that no module prints progress with ``print``.

Progress bars go to stderr and switch off when ``LEANLM_NO_PROGRESS=1`` or stderr is not a terminal
(unless ``LEANLM_PROGRESS=1`` forces them on).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

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


class _NoBar:
    """What :func:`progress_bar` returns when bars are off: accepts tqdm's calls and does nothing (and does not
    import tqdm, which costs a noticeable share of a short command's start-up)."""

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress(iterable: Iterable[T] | None = None, *, desc: str = "", total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a tqdm progress bar (a plain iterator when not interactive)."""
    if not progress_enabled():
        return iter(iterable if iterable is not None else ())
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)


def progress_bar(*, desc: str = "", total: int | None = None, unit: str = "it") -> Any:
    """A manual progress bar (``bar.update(n)``), a no-op when not interactive; use as a context manager."""
    if not progress_enabled():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)
