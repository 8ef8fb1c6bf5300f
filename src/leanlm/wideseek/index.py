"""Full-text search over the offline corpus: SQLite FTS5 (default), bm25s and tantivy, behind one interface.

Both rank with Okapi BM25 (k1 = 1.2, b = 0.75). :func:`measure` compares them on the same corpus and
known-item queries (build time, query latency, hit@k, MRR); ``docs/results/wideseek.md`` records the
numbers that picked FTS5 as the default. The paper's offline tool is dense retrieval (e5-base-v2 in
Qdrant); a dense encoder is not available offline here, so this is a documented substitution.
"""

from __future__ import annotations

import re
import sqlite3
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from leanlm.wideseek.corpus import Corpus, Page

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Hit:
    page: Page
    score: float


class SearchIndex(Protocol):
    name: str

    def search(self, query: str, k: int = 3) -> list[Hit]: ...


class FTS5Index:
    """SQLite FTS5 (stdlib ``sqlite3``), in memory; title weighted 5x body in ``bm25()``.

    The query is split into words, each quoted, and OR-ed, so any text is a valid query. One connection is
    shared under a lock (``check_same_thread=False``): queries take well under a millisecond.
    """

    name = "sqlite-fts5"

    def __init__(self, corpus: Corpus, title_weight: float = 5.0):
        self.pages = list(corpus)
        self.title_weight = title_weight
        self._lock = threading.Lock()
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.execute("CREATE VIRTUAL TABLE docs USING fts5(title, body, tokenize='unicode61 remove_diacritics 2')")
        self.conn.executemany("INSERT INTO docs(rowid, title, body) VALUES (?, ?, ?)",
                              ((i, p.title, p.text) for i, p in enumerate(self.pages)))
        self.conn.commit()

    def search(self, query: str, k: int = 3) -> list[Hit]:
        words = _WORD.findall(query.lower())
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', "") + '"' for w in dict.fromkeys(words))
        with self._lock:
            rows = self.conn.execute(
                "SELECT rowid, bm25(docs, ?, 1.0) AS s FROM docs WHERE docs MATCH ? ORDER BY s LIMIT ?",
                (self.title_weight, match, k),
            ).fetchall()
        return [Hit(self.pages[r], -s) for r, s in rows]


class BM25sIndex:
    """``bm25s`` (numpy/scipy sparse BM25, English stop words); the title is repeated to weight it."""

    name = "bm25s"

    def __init__(self, corpus: Corpus, title_repeat: int = 3):
        import bm25s

        self._bm25s = bm25s
        self.pages = list(corpus)
        texts = [(" " + p.title) * title_repeat + "\n" + p.text for p in self.pages]
        self.retriever = bm25s.BM25(k1=1.2, b=0.75)
        self.retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def search(self, query: str, k: int = 3) -> list[Hit]:
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return []
        k = min(k, len(self.pages))
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [Hit(self.pages[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]


class TantivyIndex:
    """``tantivy`` (Rust Lucene-like engine, in RAM, default tokenizer); title boosted 5x. Optional:
    ``pip install tantivy``; measured beside the others by :func:`measure` when installed."""

    name = "tantivy"

    def __init__(self, corpus: Corpus, title_weight: float = 5.0):
        import tantivy

        self.pages = list(corpus)
        self.title_weight = title_weight
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("title", stored=False)
        builder.add_text_field("body", stored=False)
        builder.add_integer_field("rowid", stored=True, indexed=False)
        self.index = tantivy.Index(builder.build())
        writer = self.index.writer(heap_size=100_000_000, num_threads=1)
        for i, page in enumerate(self.pages):
            writer.add_document(tantivy.Document(title=page.title, body=page.text, rowid=i))
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.searcher = self.index.searcher()

    def search(self, query: str, k: int = 3) -> list[Hit]:
        words = _WORD.findall(query.lower())
        if not words:
            return []
        parsed = self.index.parse_query(" ".join(dict.fromkeys(words)), ["title", "body"],
                                        field_boosts={"title": self.title_weight})
        result = self.searcher.search(parsed, k)
        return [Hit(self.pages[self.searcher.doc(addr)["rowid"][0]], float(score)) for score, addr in result.hits]


INDEXES = {"sqlite-fts5": FTS5Index, "bm25s": BM25sIndex, "tantivy": TantivyIndex}


def available_indexes() -> list[str]:
    """Index names whose library is importable (FTS5 always is)."""
    import importlib.util

    return [n for n, mod in (("sqlite-fts5", "sqlite3"), ("bm25s", "bm25s"), ("tantivy", "tantivy"))
            if importlib.util.find_spec(mod) is not None]


def build_index(corpus: Corpus, name: str = "sqlite-fts5") -> SearchIndex:
    if name not in INDEXES:
        raise ValueError(f"unknown index {name!r}; choose one of {sorted(INDEXES)}")
    return INDEXES[name](corpus)


def known_item_queries(corpus: Corpus, per_kind: int = 40) -> list[tuple[str, str]]:
    """(query, expected URL) pairs: an entity's name plus the attribute a subagent would look for."""
    templates = {"country": "{} capital population currency", "city": "{} population city",
                 "element": "{} atomic weight discovery", "wiki": "{}"}
    out, seen = [], dict.fromkeys(templates, 0)
    for page in corpus:
        if page.kind in templates and seen[page.kind] < per_kind:
            name = page.facts.get("name") or page.facts.get("title") or page.title
            out.append((templates[page.kind].format(name), page.url))
            seen[page.kind] += 1
    return out


def measure(corpus: Corpus, names: Sequence[str] | None = None, k: int = 3,
            queries: list[tuple[str, str]] | None = None) -> list[dict[str, float | str]]:
    """Build each index on ``corpus`` and run known-item queries: build s, median query ms, hit@k, MRR@10.

    ``names`` defaults to every installed index (:func:`available_indexes`)."""
    queries = queries or known_item_queries(corpus)
    names = list(names) if names is not None else available_indexes()
    rows = []
    for name in names:
        t0 = time.perf_counter()
        index = build_index(corpus, name)
        build = time.perf_counter() - t0
        times, hits, rr = [], 0, 0.0
        for query, url in queries:
            t0 = time.perf_counter()
            result = index.search(query, k=10)
            times.append(time.perf_counter() - t0)
            urls = [h.page.url for h in result]
            hits += url in urls[:k]
            rr += 1.0 / (urls.index(url) + 1) if url in urls else 0.0
        rows.append({"index": name, "pages": len(corpus), "queries": len(queries), "build_s": build,
                     "query_ms_median": 1000 * statistics.median(times), f"hit@{k}": hits / len(queries),
                     "mrr@10": rr / len(queries)})
    return rows
