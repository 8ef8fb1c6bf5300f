"""The subagents' tools over the offline world: ``search`` and ``access`` (one item each).

Paper/RLinf (``rlinf/agents/wideseek_r1/tools.py``, docs ``tools.rst``): search returns
``[Doc k](url):`` followed by the document text cut to 5,000 characters, top 3 by default; RLinf's
offline retriever serves Wiki-2018 passages of about 100 words, so a result is a passage, not a page.
Here a hit is the page title plus the first ``snippet_chars`` (600, about 100 words) characters of its
body, never more than 5,000. ``access`` cuts the page to 25,000 characters and has the judge LLM
summarise it against ``info_to_extract`` (``use_access_summary: True``, the paper's setting): the model
sees only the summary, which keeps subagent contexts small. The default here does the same
(``access_mode="summary"``) with an extractive summary (bm25s over the page's sentences, the best ones in
page order) as a documented stand-in for the LLM; pass ``summarizer=`` to use a model, or
``access_mode="page"`` / ``"summary+page"`` to return the (cut) page text as well.

Results are data: :class:`SearchResult` and :class:`PageResult` carry the hits / the page (URL, title,
kind, summary and the structured ``facts`` the page was rendered from); ``str()`` gives what the model
reads. The runtime puts ``as_data()`` on the tool message (``data``, stripped before anything is sent to
a server) and into the trace, so scripted policies read results without parsing the wording.

``access`` serves corpus URLs only, unless ``allow_network=True``; even then it refuses every address that
is private, loopback, link-local, multicast, reserved or unspecified (all resolved addresses are checked),
and anything but http(s). Fetched HTML is turned into text by the standard library's HTML parser
(:class:`html.parser.HTMLParser`; script, style and other non-content elements dropped).
"""

from __future__ import annotations

import html.parser
import ipaddress
import re
import socket
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

from leanlm.wideseek.corpus import Corpus
from leanlm.wideseek.index import SearchIndex, build_index

MAX_PAGE_CHARS = 25_000
MAX_SNIPPET_CHARS = 5_000
SNIPPET_CHARS = 600
ACCESS_MODES = ("summary", "summary+page", "page")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


class AccessDenied(PermissionError):
    """``access`` refused a URL (not in the corpus with network off, or a private/loopback address)."""


def check_public_url(url: str, resolver: Callable[[str], list[str]] | None = None) -> None:
    """Raise :class:`AccessDenied` unless ``url`` is http(s) and every address its host resolves to is public."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise AccessDenied(f"only http(s) URLs with a host can be accessed: {url!r}")
    host = parsed.hostname
    if resolver is None:
        def resolver(h: str) -> list[str]:
            return [info[4][0] for info in socket.getaddrinfo(h, parsed.port or 443, proto=socket.IPPROTO_TCP)]
    try:
        addresses = [host] if _is_ip(host) else resolver(host)
    except OSError as exc:
        raise AccessDenied(f"cannot resolve {host}: {exc}") from exc
    if not addresses:
        raise AccessDenied(f"{host} resolves to no address")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or not ip.is_global):
            raise AccessDenied(f"refusing {url}: {host} resolves to non-public address {address}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def extractive_summary(text: str, info: str, sentences: int = 3) -> str:
    """Sentences of ``text`` relevant to ``info`` by BM25 (``bm25s``, English stop words removed), in their
    original order: for every query term its best sentence, then the best remaining ones up to ``sentences``;
    the first sentences when nothing matches."""
    import bm25s

    parts = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
    if not parts:
        return ""
    query = bm25s.tokenize([info], stopwords="en", show_progress=False, return_ids=False)[0]
    docs = bm25s.tokenize(parts, stopwords="en", show_progress=False, return_ids=False)
    vocab = {w for d in docs for w in d}
    query = [w for w in query if w in vocab]
    if not query or not vocab:
        return " ".join(parts[:sentences])
    retriever = bm25s.BM25()
    retriever.index(docs, show_progress=False)
    scores = retriever.get_scores(query)
    chosen: list[int] = []
    for term in dict.fromkeys(query):  # coverage first: the best sentence for each requested term
        per_term = retriever.get_scores([term])
        best_i = max(range(len(parts)), key=lambda i: (per_term[i], scores[i], -i))
        if per_term[best_i] > 0 and best_i not in chosen:
            chosen.append(best_i)
    for i in sorted(range(len(parts)), key=lambda i: (scores[i], -i), reverse=True):
        if len(chosen) >= sentences or scores[i] <= 0:
            break
        if i not in chosen:
            chosen.append(i)
    return " ".join(parts[i] for i in sorted(chosen)) or " ".join(parts[:sentences])


class _TextExtractor(html.parser.HTMLParser):
    """Visible text of an HTML document: data outside script/style/head-like elements, blocks on new lines."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "head", "svg", "iframe"})
    _BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
                        "table", "ul", "ol", "header", "footer", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Readable text of an HTML page (standard-library parser; whitespace squeezed, one block per line)."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


@dataclass
class SearchHit:
    rank: int
    url: str
    title: str
    kind: str
    snippet: str


@dataclass
class SearchResult:
    """One search query's hits; ``str()`` is RLinf's ``[Doc k](url):`` layout."""

    query: str
    hits: list[SearchHit]

    def __str__(self) -> str:
        if not self.hits:
            return f"Search {self.query!r}: no search results are found."
        blocks = [f"[Doc {h.rank}]({h.url}):\n{h.snippet}" for h in self.hits]
        return f"Search {self.query!r}:\n" + "\n\n".join(blocks)

    def as_data(self) -> dict[str, Any]:
        return {"tool": "search", "query": self.query, "hits": [asdict(h) for h in self.hits]}


@dataclass
class PageResult:
    """One page access: the summary for ``info_to_extract`` and, by mode, the cut page text."""

    url: str
    title: str
    kind: str
    info_to_extract: str
    summary: str | None
    text: str | None
    facts: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        head = f"Page {self.url} ({self.title})"
        parts = [head]
        if self.summary is not None:
            parts.append(f"Information on {self.info_to_extract!r}: {self.summary}")
        if self.text is not None:
            parts.append(f"Page text:\n{self.text}")
        return "\n\n".join(parts)

    def as_data(self) -> dict[str, Any]:
        return {"tool": "access", **asdict(self)}


@dataclass
class WorldTools:
    """``search``/``access`` over a :class:`Corpus` (see module doc). Thread-safe; used by every subagent."""

    corpus: Corpus
    index: SearchIndex | None = None
    allow_network: bool = False
    summarizer: Callable[[str, str], str] | None = None
    summary_sentences: int = 3
    access_mode: str = "summary"
    page_chars: int = MAX_PAGE_CHARS
    snippet_chars: int = SNIPPET_CHARS
    fetch_timeout: float = 10.0
    resolver: Callable[[str], list[str]] | None = None
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.access_mode not in ACCESS_MODES:
            raise ValueError(f"access_mode must be one of {ACCESS_MODES}, got {self.access_mode!r}")
        if not 1 <= self.snippet_chars <= MAX_SNIPPET_CHARS:
            raise ValueError(f"snippet_chars must be in 1..{MAX_SNIPPET_CHARS}, got {self.snippet_chars}")
        if self.index is None:
            self.index = build_index(self.corpus)

    def search(self, query: str, count: int = 3) -> SearchResult:
        self.stats["search"] += 1
        hits = []
        for rank, hit in enumerate(self.index.search(query, k=count), start=1):  # type: ignore[union-attr]
            body = hit.page.text.split("\n\n", 1)[-1].strip().replace("\n", " ")
            snippet = (hit.page.title + "\n" + body)[: self.snippet_chars]
            hits.append(SearchHit(rank, hit.page.url, hit.page.title, hit.page.kind, snippet))
        return SearchResult(query, hits)

    def access(self, url: str, info_to_extract: str = "") -> PageResult:
        self.stats["access"] += 1
        page = self.corpus.get(url)
        if page is not None:
            title, text, kind, facts, url = page.title, page.text, page.kind, dict(page.facts), page.url
        elif not self.allow_network:
            raise AccessDenied(f"{url} is not a page of the offline corpus and network access is disabled")
        else:
            title, text, kind, facts = url, self._fetch(url), "web", {}
        text = text[: self.page_chars]
        summary = None
        if self.access_mode != "page":
            # at least one sentence per requested item (plus one), so "capital, population, currency" gets 4
            wanted = len([p for p in re.split(r",|;|\band\b", info_to_extract) if p.strip()]) + 1
            summary = (self.summarizer(text, info_to_extract) if self.summarizer
                       else extractive_summary(text, info_to_extract, max(self.summary_sentences, wanted)))
        return PageResult(url, title, kind, info_to_extract, summary, text if self.access_mode != "summary" else None,
                          facts)

    def _fetch(self, url: str) -> str:
        check_public_url(url, self.resolver)
        request = urllib.request.Request(url, headers={"User-Agent": "leanlm-wideseek/0.1"})
        opener = urllib.request.build_opener(_NoRedirect)
        with opener.open(request, timeout=self.fetch_timeout) as response:
            raw = response.read(MAX_PAGE_CHARS * 4)
        return html_to_text(raw.decode("utf-8", errors="replace"))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: a public URL must not bounce the fetch to a private address."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        raise AccessDenied(f"redirect to {newurl} refused")
