"""Real offline text for calibration and the retrieval task (Wikipedia summaries, CPython sources).

Wraps :mod:`leanlm.common.data` (read in place from the installed packages, never copied into the repo).
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def wiki_articles() -> tuple[tuple[str, str], ...]:
    """(title, text) pairs of the offline Wikipedia summaries, in file order."""
    from leanlm.common import data

    items = tuple(data.wiki_summaries().items())
    if not items:
        raise data.DataMissing(f"no Wikipedia summaries could be read from {data.wiki_summaries_path()}")
    return items


def wiki_text(n_articles: int = 50, offset: int = 0) -> str:
    """``n_articles`` consecutive summaries from ``offset``, as ``title\\ntext`` blocks."""
    items = wiki_articles()[offset : offset + n_articles]
    if not items:
        raise ValueError(f"offset {offset} is past the {len(wiki_articles())} Wikipedia summaries")
    return "\n\n".join(f"{title}\n{text}" for title, text in items)
