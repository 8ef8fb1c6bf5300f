"""The subagents' tools over the offline world: ``search`` and ``access`` (one item each).

Paper/RLinf (``rlinf/agents/wideseek_r1/tools.py``, docs ``tools.rst``): search returns
``[Doc k](url):`` followed by the title and a snippet (cut to 5,000 characters), top 3 by default;
access cuts the page to 25,000 characters and has the judge LLM summarise it against
``info_to_extract``. Here the summary is extractive (BM25 over the page's sentences, top sentences in
page order), a documented stand-in for the LLM summariser; pass ``summarizer=`` to use a model instead.

``access`` serves corpus URLs only, unless ``allow_network=True``; even then it refuses every address that
is private, loopback, link-local, multicast, reserved or unspecified (all resolved addresses are checked),
and anything but http(s).
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

from leanlm.wideseek.corpus import Corpus
from leanlm.wideseek.index import SearchIndex, build_index

MAX_PAGE_CHARS = 25_000
MAX_SNIPPET_CHARS = 5_000
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w+")
_STOP = frozenset(["a", "an", "the", "of", "in", "on", "at", "to", "for", "and", "or", "is", "are", "was", "were", "be", "by", "with", "as", "from", "that", "this", "it", "its", "what", "which", "who", "whom", "how", "when", "where", "find", "list", "extract", "give", "all", "each", "every", "their", "there", "about"])


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
    """The ``sentences`` sentences of ``text`` most relevant to ``info`` by BM25, in their original order."""
    parts = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
    if not parts:
        return ""
    query = [w for w in _WORD.findall(info.lower()) if w not in _STOP]
    if not query:
        return " ".join(parts[:sentences])
    docs = [Counter(_WORD.findall(p.lower())) for p in parts]
    avg = sum(sum(d.values()) for d in docs) / len(docs)
    df = Counter(w for d in docs for w in set(d))
    n, k1, b = len(docs), 1.2, 0.75
    scores = []
    for i, d in enumerate(docs):
        length = sum(d.values())
        s = 0.0
        for w in query:
            if d[w]:
                idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
                s += idf * d[w] * (k1 + 1) / (d[w] + k1 * (1 - b + b * length / avg))
        scores.append((s, -i))
    best = sorted(range(len(parts)), key=lambda i: scores[i], reverse=True)[:sentences]
    return " ".join(parts[i] for i in sorted(best) if scores[i][0] > 0) or " ".join(parts[:sentences])


@dataclass
class WorldTools:
    """``search``/``access`` over a :class:`Corpus` (see module doc). Thread-safe; used by every subagent."""

    corpus: Corpus
    index: SearchIndex | None = None
    allow_network: bool = False
    summarizer: Callable[[str, str], str] | None = None
    summary_sentences: int = 3
    fetch_timeout: float = 10.0
    resolver: Callable[[str], list[str]] | None = None
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = build_index(self.corpus)

    def search(self, query: str, count: int = 3) -> str:
        self.stats["search"] += 1
        hits = self.index.search(query, k=count)  # type: ignore[union-attr]
        if not hits:
            return f"No results for {query!r}."
        blocks = []
        for k, hit in enumerate(hits, start=1):
            body = hit.page.text.split("\n\n", 1)[-1].strip().replace("\n", " ")
            snippet = (hit.page.title + "\n" + body[:400])[:MAX_SNIPPET_CHARS]
            blocks.append(f"[Doc {k}]({hit.page.url}):\n{snippet}")
        return f"Results for {query!r}:\n" + "\n\n".join(blocks)

    def access(self, url: str, info_to_extract: str = "") -> str:
        self.stats["access"] += 1
        page = self.corpus.get(url)
        if page is not None:
            title, text = page.title, page.text
        elif not self.allow_network:
            raise AccessDenied(f"{url} is not a page of the offline corpus and network access is disabled")
        else:
            title, text = url, self._fetch(url)
        text = text[:MAX_PAGE_CHARS]
        summary = (self.summarizer(text, info_to_extract) if self.summarizer
                   else extractive_summary(text, info_to_extract, self.summary_sentences))
        return f"Page: {title} ({url})\n\nRelevant to {info_to_extract!r}: {summary}\n\nFull text:\n{text}"

    def _fetch(self, url: str) -> str:
        check_public_url(url, self.resolver)
        request = urllib.request.Request(url, headers={"User-Agent": "leanlm-wideseek/0.1"})
        opener = urllib.request.build_opener(_NoRedirect)
        with opener.open(request, timeout=self.fetch_timeout) as response:
            raw = response.read(MAX_PAGE_CHARS * 4)
        html = raw.decode("utf-8", errors="replace")
        html = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", html)
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: a public URL must not bounce the fetch to a private address."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        raise AccessDenied(f"redirect to {newurl} refused")
