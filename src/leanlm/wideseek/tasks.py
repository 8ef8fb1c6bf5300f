"""WideSearch-style tasks with exact gold tables from the offline world, plus multi-hop QA, and file IO.

A *table* task is WideSearch's format (arXiv 2508.07999, Sec. 3; ``data_loader.py``): a query naming the
columns of the markdown table to return, a gold CSV, and an ``evaluation`` object (``required`` columns,
``unique_columns`` key, per-column ``eval_pipeline``). The generators filter and join the same records
the corpus pages are rendered from, so every gold cell is on some page. A *QA* task (the paper's
depth-style benchmarks, Sec. 4.3) has a question and accepted answers, scored by exact match on the
``\\boxed{}`` answer.

Files (:func:`write_tasks` / :func:`load_tasks`): ``tasks.jsonl`` with one record per line
(``instance_id``, ``query``, ``evaluation`` as an object or a JSON string, ``language``; QA records carry
``answer`` instead) and gold tables in ``<gold_dir>/<instance_id>.csv``, the layout of WideSearch's
``widesearch.jsonl`` + ``widesearch_gold/``. Extra fields (``kind``, ``aliases``) are ours and optional.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import pandas as pd

from leanlm.common.atomic import atomic_write, atomic_write_text
from leanlm.common.records import RecordError, read_jsonl
from leanlm.wideseek import corpus as world
from leanlm.wideseek.agents import extract_boxed
from leanlm.wideseek.scorer import (
    EvalSpec,
    EvalSpecError,
    NormalizedAligner,
    TableScore,
    read_gold_csv,
    score_qa,
    score_table,
)


@dataclass
class Task:
    instance_id: str
    query: str
    kind: str = "table"
    evaluation: dict[str, Any] | None = None
    gold_csv: str | None = None
    answers: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    language: str = "en"
    family: str = ""
    split: str = "train"
    listing: str | None = None
    sources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Ours, for the oracle policy and the no-entity-dropped checks: per gold row key, the pages that hold its
    cells (``url``, ``query`` that finds it, ``cells``: column -> :data:`CELLS` format); ``listing``: the first
    page of the listing that enumerates the rows (None: the rows are named by the query)."""

    def gold(self) -> pd.DataFrame:
        if self.gold_csv is None:
            raise ValueError(f"task {self.instance_id} has no gold table")
        spec = EvalSpec.from_dict(self.evaluation or {}, where=f"{self.instance_id}.evaluation")
        return read_gold_csv(self.gold_csv, spec.required)

    def score(self, response: str | None, *, aligner: Any = None, judge: Any = None, block: str = "first",
              numbers: str = "official") -> TableScore:
        """WideSearch metrics for table tasks; for QA, exact match of the boxed answer in every field."""
        if self.kind == "qa":
            em = score_qa(extract_boxed(response or "") or (response or "").strip() or None, self.answers)
            return TableScore(em, em, em, em, em, em, em, msg="exact match of the boxed answer")
        aligner = aligner or NormalizedAligner(aliases=self.aliases)
        return score_table(response, self.gold(), EvalSpec.from_dict(self.evaluation or {}), aligner=aligner,
                           judge=judge, block=block, numbers=numbers)


# --------------------------------------------------------------------------------------------- generators
def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _query(intro: str, columns: Sequence[str], extra: str = "") -> str:
    cols = ", ".join(f"`{c}`" for c in columns)
    return (f"{intro} Return one row per item as a markdown table inside a ```markdown block, with exactly these "
            f"columns in this order: {cols}. {extra}".strip())


_EXACT = {"preprocess": ["norm_str"], "metric": ["exact_match"]}


def _number(criterion: float) -> dict[str, Any]:
    return {"preprocess": ["extract_number"], "metric": ["number_near"], "criterion": criterion}


UNKNOWN = "unknown"


def _first(values: Any) -> Any:
    return values[0] if values else UNKNOWN


CELLS: dict[str, Any] = {
    "name": lambda f: f["name"],
    "capital": lambda f: f.get("capital") or UNKNOWN,
    "population": lambda f: UNKNOWN if f.get("population") is None else int(f["population"]),
    "area": lambda f: world.format_area(f.get("area")),
    "currency": lambda f: _first(f.get("currencies")),
    "currency_name": lambda f: f.get("name") or UNKNOWN,
    "languages": lambda f: ", ".join(sorted(f.get("languages") or [])) or UNKNOWN,
    "calling_code": lambda f: ("+" + f["calling_codes"][0]) if f.get("calling_codes") else UNKNOWN,
    "symbol": lambda f: f["symbol"],
    "atomic_number": lambda f: f["atomic_number"],
    "atomic_weight": lambda f: f["atomic_weight"],
    "density": lambda f: UNKNOWN if f.get("density") is None else f"{f['density']} g/cm³",
    "discovery_year": lambda f: f.get("discovery_year") or UNKNOWN,
    "block": lambda f: f["block"],
    "latitude": lambda f: round(float(f["latitude"]), 4),
    "longitude": lambda f: round(float(f["longitude"]), 4),
    "timezone": lambda f: f.get("timezone") or UNKNOWN,
    "dst_start": lambda f: f.get("dst_start") or "none",
    "country": lambda f: f["country"],
}
"""How a gold cell is written from the facts of the page that holds it (shared by gold tables and the oracle)."""


def cell(facts: dict[str, Any], fmt: str) -> Any:
    """The gold-table value of format ``fmt`` (:data:`CELLS`) read from a page's facts."""
    return CELLS[fmt](facts)


def _source(kind_url: str, query: str, cells: dict[str, str]) -> dict[str, Any]:
    return {"url": kind_url, "query": query, "cells": cells}


def _country_url(name: str) -> str:
    return f"{world.BASE_URL}/country/{world.slug(name)}"


def _city_url(c: dict[str, Any]) -> str:
    return f"{world.BASE_URL}/city/{world.slug(c['name'])}-{c['iso2'].lower()}"


def _rows(task_sources: dict[str, list[dict[str, Any]]], columns: Sequence[str],
          facts_of: Any) -> list[list[Any]]:
    """Gold rows: the key, then every column read by :func:`cell` from its source page (``unknown`` when no
    page holds it)."""
    out = []
    for key, sources in task_sources.items():
        values: dict[str, Any] = {columns[0]: key}
        for src in sources:
            for col, fmt in src["cells"].items():
                values[col] = cell(facts_of(src["url"]), fmt)
        out.append([values.get(col, UNKNOWN) for col in columns])
    return out
MULTI_VALUE_RULE = ("If a country has several currencies, give the first one listed on its page. Write unknown where "
                    "the page gives no value.")


def _or_unknown(value: Any) -> Any:
    return UNKNOWN if value is None or value == "" or value == [] else value


@functools.lru_cache(maxsize=1)
def world_pages() -> dict[str, Any]:
    """URLs and facts of the entity pages (no Wikipedia, no listings), for gold tables and sources."""
    corpus = world.build_corpus(kinds=("country", "city", "element", "currency"))
    out: dict[str, Any] = {"facts": {}, "country": {}, "city": {}, "element": {}, "currency": {}}
    for page in corpus:
        out["facts"][page.url] = page.facts
        f = page.facts
        if page.kind == "country":
            out["country"][f["name"]] = page.url
        elif page.kind == "city":
            out["city"][(f["name"], f["iso2"], f["population"])] = page.url
        elif page.kind == "element":
            out["element"][f["name"]] = page.url
        else:
            out["currency"][f["code"]] = page.url
    return out


def _facts(url: str) -> dict[str, Any]:
    return world_pages()["facts"][url]


def _country_sources(c: dict[str, Any], cells: dict[str, str], capital: dict[str, str] | None = None,
                     currency: dict[str, str] | None = None) -> list[dict[str, Any]]:
    pages = world_pages()
    out = [_source(pages["country"][c["name"]], f"{c['name']} country capital population", cells)]
    cap = world.capital_pages().get(c["name"])
    if capital and cap is not None:
        out.append(_source(pages["city"][(cap["name"], cap["iso2"], cap["population"])], f"{cap['name']} {c['name']}",
                           capital))
    if currency and c["currencies"] and c["currencies"][0] in pages["currency"]:
        code = c["currencies"][0]
        page = _facts(pages["currency"][code])
        out.append(_source(pages["currency"][code], f"{page.get('name') or ''} {code} currency".strip(), currency))
    return out


def countries_task(subregion: str) -> Task:
    """Every country of ``subregion`` (none dropped): capital, population and the *first listed* ISO 4217
    currency code (the multi-valued-cell rule, stated in the query); ``unknown`` where the data has no value
    (``number_near`` scores ``unknown`` against ``unknown`` as equal non-numbers)."""
    rows = [c for c in world.country_records() if c["subregion"] == subregion]
    columns = ["country", "capital", "population", "currency"]
    sources = {c["name"]: _country_sources(c, {"capital": "capital", "population": "population",
                                               "currency": "currency"}) for c in rows}
    return Task(
        instance_id=f"ls-countries-{world.slug(subregion)}",
        query=_query(f"List every country in the subregion {subregion} with its capital, its population and the "
                     "ISO 4217 code of its currency.", columns, "Give populations as plain integers. " + MULTI_VALUE_RULE),
        evaluation={"required": columns, "unique_columns": ["country"],
                    "eval_pipeline": {"country": _EXACT, "capital": _EXACT, "population": _number(0.05),
                                      "currency": _EXACT}},
        gold_csv=_csv(columns, _rows(sources, columns, _facts)),
        aliases={a: c["name"] for c in rows for a in c["aliases"]}, family="countries", sources=sources,
        listing=world.list_page_url(f"countries-{world.slug(subregion)}"),
    )


def elements_task(period: int) -> Task:
    rows = [e for e in world.element_records() if e["period"] == period]
    columns = ["element", "symbol", "atomicnumber", "atomicweight"]
    pages = world_pages()
    sources = {e["name"]: [_source(pages["element"][e["name"]], f"{e['name']} chemical element",
                                   {"symbol": "symbol", "atomicnumber": "atomic_number",
                                    "atomicweight": "atomic_weight"})] for e in rows}
    return Task(
        instance_id=f"ls-elements-period-{period}",
        query=_query(f"List every chemical element in period {period} of the periodic table with its symbol, "
                     "atomic number and standard atomic weight.", columns),
        evaluation={"required": columns, "unique_columns": ["element"],
                    "eval_pipeline": {"element": _EXACT, "symbol": _EXACT, "atomicnumber": _number(0.0),
                                      "atomicweight": _number(0.01)}},
        gold_csv=_csv(columns, _rows(sources, columns, _facts)), family="elements", sources=sources,
        listing=world.list_page_url(f"elements-period-{period}"),
    )


def cities_task(country: str, min_population: int) -> Task:
    rows = [c for c in world.city_records(min_population) if c["country"] == country]
    columns = ["city", "population"]
    pages = world_pages()
    sources = {c["name"]: [_source(pages["city"][(c["name"], c["iso2"], c["population"])], f"{c['name']} {country}",
                                   {"population": "population"})] for c in rows}
    return Task(
        instance_id=f"ls-cities-{world.slug(country)}-{min_population}",
        query=_query(f"List every city in {country} with at least {min_population:,} inhabitants and its population.",
                     columns, "Give populations as plain integers."),
        evaluation={"required": columns, "unique_columns": ["city"],
                    "eval_pipeline": {"city": _EXACT, "population": _number(0.05)}},
        gold_csv=_csv(columns, _rows(sources, columns, _facts)), family="cities", sources=sources,
        listing=world.list_page_url(f"cities-{world.slug(country)}-{min_population}"),
    )


# --------------------------------------------------------------------------------------------- wide families
_TEXT = {"preprocess": ["norm_str"], "metric": ["exact_match"]}
_DATE = {"preprocess": ["norm_date"], "metric": ["exact_match"]}
_DST_RULE = (f"Give the date on which daylight saving time starts in {world.DST_YEAR} as YYYY-MM-DD, or none if there "
             "is none.")
WIDE_FAMILIES = {"countries-wide": "train", "elements-wide": "train", "cities-wide": "eval", "capitals-wide": "eval"}
"""Task family -> split. Training never sees the ``eval`` families (held out for evaluation)."""


COUNTRY_PHRASES = {"capital": "its capital", "capitalpopulation": "the population of its capital city",
                   "area": "the country's area in km²", "currency": "the ISO 4217 code of its currency",
                   "currencyname": "the name of its currency",
                   "languages": "its official languages as ISO 639-1 codes"}
ELEMENT_PHRASES = {"symbol": "its symbol", "atomicnumber": "its atomic number",
                   "atomicweight": "its standard atomic weight", "density": "its density in g/cm³",
                   "discoveryyear": "its year of discovery", "block": "its block"}
COLUMN_SETS: dict[str, tuple[tuple[str, ...], ...]] = {
    "countries-wide": (
        ("country", "capital", "capitalpopulation", "area", "currency", "currencyname", "languages"),
        ("country", "capital", "area"),
        ("country", "currency", "currencyname"),
        ("country", "languages", "capital", "area"),
        ("country", "capitalpopulation", "capital"),
    ),
    "elements-wide": (
        ("element", "symbol", "atomicnumber", "atomicweight", "density", "discoveryyear", "block"),
        ("element", "symbol", "atomicnumber"),
        ("element", "block", "density"),
        ("element", "discoveryyear", "atomicweight", "symbol"),
        ("element", "atomicnumber", "block", "density"),
    ),
}
"""Column sets of the training families: the first is the family's task as WideSearch-style queries state it;
the others (``column_set`` 1..) ask the same rows for other columns in other orders, so that a policy trained on
them learns to copy the header from the query rather than remember one (docs/results/wideseek.md, 7e)."""


def _phrase_list(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _column_set(family: str, column_set: int) -> list[str]:
    sets = COLUMN_SETS[family]
    if not 0 <= column_set < len(sets):
        raise ValueError(f"{family} has column sets 0..{len(sets) - 1}, got {column_set}")
    return list(sets[column_set])


def countries_wide_task(group: str, column_set: int = 0) -> Task:
    """Countries of a :data:`~leanlm.wideseek.corpus.REGION_GROUPS` entry (15-40 rows, 7 columns over three
    pages per row: the country page, its capital's city page, its currency's page); ``column_set`` > 0 asks
    another :data:`COLUMN_SETS` entry (only the pages its columns need)."""
    rows = world.group_countries(group)
    columns = _column_set("countries-wide", column_set)
    wanted = set(columns)

    def pick(cells: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in cells.items() if k in wanted}

    sources = {c["name"]: _country_sources(
        c, pick({"capital": "capital", "area": "area", "currency": "currency", "languages": "languages"}),
        capital=pick({"capitalpopulation": "population"}), currency=pick({"currencyname": "currency_name"}))
        for c in rows}
    if column_set == 0:
        intro = (f"List every country of {group} with its capital, the population of that capital city, the "
                 "country's area in km², the ISO 4217 code and the name of its currency, and its official "
                 "languages as ISO 639-1 codes.")
        extra = ("Give the area with its unit (km²). If a country has several currencies, use the first one "
                 "listed on its page. Write all language codes in alphabetical order separated by ', '. Write "
                 "unknown where no page gives a value.")
    else:
        intro = f"List every country of {group} with {_phrase_list([COUNTRY_PHRASES[c] for c in columns[1:]])}."
        rules = ["Give the area with its unit (km²)." if "area" in wanted else "",
                 "If a country has several currencies, use the first one listed on its page."
                 if wanted & {"currency", "currencyname"} else "",
                 "Write all language codes in alphabetical order separated by ', '." if "languages" in wanted else "",
                 "Write unknown where no page gives a value."]
        extra = " ".join(r for r in rules if r)
    pipeline = {"country": _EXACT, "capital": _EXACT, "capitalpopulation": _number(0.05), "area": _number(0.01),
                "currency": _EXACT, "currencyname": _TEXT, "languages": _TEXT}
    return Task(
        instance_id=f"wide-countries-{world.slug(group)}" + (f"-cols{column_set}" if column_set else ""),
        query=_query(intro, columns, extra),
        evaluation={"required": columns, "unique_columns": ["country"],
                    "eval_pipeline": {c: pipeline[c] for c in columns}},
        gold_csv=_csv(columns, _rows(sources, columns, _facts)), aliases={a: c["name"] for c in rows for a in c["aliases"]},
        family="countries-wide", split=WIDE_FAMILIES["countries-wide"], sources=sources,
        listing=world.list_page_url(f"countries-group-{world.slug(group)}"),
    )


def elements_wide_task(period: int, column_set: int = 0) -> Task:
    """Elements of one period (7 columns from the element page); ``column_set`` > 0 asks another
    :data:`COLUMN_SETS` entry."""
    rows = [e for e in world.element_records() if e["period"] == period]
    columns = _column_set("elements-wide", column_set)
    pages = world_pages()
    cells = {"symbol": "symbol", "atomicnumber": "atomic_number", "atomicweight": "atomic_weight",
             "density": "density", "discoveryyear": "discovery_year", "block": "block"}
    sources = {e["name"]: [_source(pages["element"][e["name"]], f"{e['name']} chemical element",
                                   {k: v for k, v in cells.items() if k in columns})] for e in rows}
    if column_set == 0:
        intro = (f"List every chemical element of period {period} with its symbol, atomic number, standard "
                 "atomic weight, density in g/cm³, year of discovery and block.")
        extra = ("Give the density with its unit (g/cm³). Write unknown where no page gives a value (for "
                 "example elements known since antiquity have no discovery year).")
    else:
        intro = (f"List every chemical element of period {period} with "
                 f"{_phrase_list([ELEMENT_PHRASES[c] for c in columns[1:]])}.")
        extra = " ".join(r for r in ["Give the density with its unit (g/cm³)." if "density" in columns else "",
                                     "Write unknown where no page gives a value."] if r)
    pipeline = {"element": _EXACT, "symbol": _EXACT, "atomicnumber": _number(0.0), "atomicweight": _number(0.01),
                "density": _number(0.01), "discoveryyear": _number(0.0), "block": _TEXT}
    return Task(
        instance_id=f"wide-elements-period-{period}" + (f"-cols{column_set}" if column_set else ""),
        query=_query(intro, columns, extra),
        evaluation={"required": columns, "unique_columns": ["element"],
                    "eval_pipeline": {c: pipeline[c] for c in columns}},
        gold_csv=_csv(columns, _rows(sources, columns, _facts)), family="elements-wide",
        split=WIDE_FAMILIES["elements-wide"], sources=sources, listing=world.list_page_url(f"elements-period-{period}"),
    )


def cities_wide_task(country: str, min_population: int = 500_000) -> Task:
    rows = [c for c in world.city_records(min_population) if c["country"] == country]
    columns = ["city", "population", "latitude", "longitude", "timezone", "dststart"]
    pages = world_pages()
    sources = {c["name"]: [_source(pages["city"][(c["name"], c["iso2"], c["population"])], f"{c['name']} {country}", {
        "population": "population", "latitude": "latitude", "longitude": "longitude", "timezone": "timezone",
        "dststart": "dst_start"})] for c in rows}
    return Task(
        instance_id=f"wide-cities-{world.slug(country)}-{min_population}",
        query=_query(f"List every city of {country} with at least {min_population:,} inhabitants, with its "
                     "population, latitude and longitude in decimal degrees, its IANA time zone and the date daylight "
                     f"saving time starts there in {world.DST_YEAR}.", columns,
                     "Give populations as plain integers. " + _DST_RULE),
        evaluation={"required": columns, "unique_columns": ["city"],
                    "eval_pipeline": {"city": _EXACT, "population": _number(0.05), "latitude": _number(0.001),
                                      "longitude": _number(0.001), "timezone": _TEXT, "dststart": _DATE}},
        gold_csv=_csv(columns, _rows(sources, columns, _facts)), family="cities-wide",
        split=WIDE_FAMILIES["cities-wide"], sources=sources,
        listing=world.list_page_url(f"cities-{world.slug(country)}-{min_population}"),
    )


def capitals_wide_task(group: str) -> Task:
    """Capitals of the countries of a region group: the capital's name is on the country page, the rest on
    the capital's city page, whose name other cities share (near-duplicate distractors)."""
    rows = world.group_countries(group)
    columns = ["country", "capital", "capitalpopulation", "latitude", "longitude", "timezone", "dststart"]
    cap = {"capitalpopulation": "population", "latitude": "latitude", "longitude": "longitude", "timezone": "timezone",
           "dststart": "dst_start"}
    sources = {c["name"]: _country_sources(c, {"capital": "capital"}, capital=cap) for c in rows}
    return Task(
        instance_id=f"wide-capitals-{world.slug(group)}",
        query=_query(f"For every country of {group}, give its capital city, the capital's population, its latitude "
                     "and longitude in decimal degrees, its IANA time zone and the date daylight saving time starts "
                     f"there in {world.DST_YEAR}.", columns,
                     "Give populations as plain integers. Several cities share some capitals' names: use the one in "
                     "the right country. " + _DST_RULE + " Write unknown where no page gives a value."),
        evaluation={"required": columns, "unique_columns": ["country"],
                    "eval_pipeline": {"country": _EXACT, "capital": _EXACT, "capitalpopulation": _number(0.05),
                                      "latitude": _number(0.001), "longitude": _number(0.001), "timezone": _TEXT,
                                      "dststart": _DATE}},
        gold_csv=_csv(columns, _rows(sources, columns, _facts)), aliases={a: c["name"] for c in rows for a in c["aliases"]},
        family="capitals-wide", split=WIDE_FAMILIES["capitals-wide"], sources=sources,
        listing=world.list_page_url(f"countries-group-{world.slug(group)}"),
    )


def generate_wide_tasks(split: str | None = None, min_rows: int = 15, max_rows: int = 40,
                        column_sets: int = 1) -> list[Task]:
    """Every wide task (15-40 rows) of the families of ``split`` ("train", "eval" or None for both);
    ``column_sets`` > 1 adds, for the families of :data:`COLUMN_SETS` (the training ones), the same rows asked
    for the next ``column_sets - 1`` column sets (after all first-set tasks, so that a prefix of the list is
    the default task set)."""
    if split not in (None, "train", "eval"):
        raise ValueError(f"split must be 'train', 'eval' or None, got {split!r}")
    if not 1 <= column_sets <= min(len(v) for v in COLUMN_SETS.values()):
        raise ValueError(f"column_sets must be 1..{min(len(v) for v in COLUMN_SETS.values())}, got {column_sets}")
    tasks: list[Task] = []
    for group in world.REGION_GROUPS:
        tasks += [countries_wide_task(group), capitals_wide_task(group)]
    tasks += [elements_wide_task(p) for p in sorted({e["period"] for e in world.element_records()})]
    per_country: dict[str, int] = defaultdict(int)
    for c in world.city_records(500_000):
        per_country[c["country"]] += 1
    for country, k in sorted(per_country.items()):
        names = [c["name"] for c in world.city_records(500_000) if c["country"] == country]
        if min_rows <= k <= max_rows and len(set(names)) == len(names):
            tasks.append(cities_wide_task(country))
    for k in range(1, column_sets):
        tasks += [countries_wide_task(group, k) for group in world.REGION_GROUPS]
        tasks += [elements_wide_task(p, k) for p in sorted({e["period"] for e in world.element_records()})]
    return [t for t in tasks if (split is None or t.split == split)
            and min_rows <= len(t.sources) <= max_rows]


def qa_tasks(rng: random.Random, n: int) -> list[Task]:
    """Two-hop questions: city -> country -> capital; capital -> country -> currency; element facts."""
    countries = {c["name"]: c for c in world.country_records()}
    capital_count: dict[str, int] = defaultdict(int)
    for c in countries.values():
        if c["capital"]:
            capital_count[c["capital"]] += 1
    by_capital = {c["capital"]: c for c in countries.values() if c["capital"] and capital_count[c["capital"]] == 1}
    out: list[Task] = []
    cities = [c for c in world.city_records(1_000_000) if countries.get(c["country"], {}).get("capital")
              and c["name"] != countries[c["country"]]["capital"]]
    capitals = sorted(k for k, c in by_capital.items() if len(c["currencies"]) == 1)
    elements = [e for e in world.element_records() if e["discovery_year"]]
    makers = [
        lambda: (lambda c: (f"qa-city-capital-{world.slug(c['name'])}",
                            f"In which country is the city of {c['name']}, and what is the capital of that country? "
                            "Answer with the capital only.", [countries[c["country"]]["capital"]]))(rng.choice(cities)),
        lambda: (lambda k: (f"qa-capital-currency-{world.slug(k)}",
                            f"What is the ISO 4217 currency code of the country whose capital is {k}?",
                            [by_capital[k]["currencies"][0]]))(rng.choice(capitals)),
        lambda: (lambda e: (f"qa-element-year-{world.slug(e['name'])}",
                            f"In which year was the chemical element with the symbol {e['symbol']} discovered?", [str(e["discovery_year"])]))(rng.choice(elements)),
    ]
    seen: set[str] = set()
    while len(out) < n:
        iid, question, answers = makers[len(out) % len(makers)]()
        if iid in seen:
            continue
        seen.add(iid)
        out.append(Task(instance_id=iid, query=question + " Put the final answer in \\boxed{}.", kind="qa",
                        answers=answers))
    return out


def candidate_tasks(min_city_rows: int = 3) -> list[Task]:
    """Every small table task :func:`generate_tasks` draws from: countries of each subregion, elements of each
    period, cities above 1,000,000 inhabitants of each country that has ``min_city_rows`` of them."""
    candidates: list[Task] = []
    subregions = sorted({c["subregion"] for c in world.country_records() if c["subregion"]})
    candidates += [countries_task(s) for s in subregions]
    candidates += [elements_task(p) for p in range(1, 8)]
    per_country: dict[str, int] = defaultdict(int)
    for c in world.city_records(1_000_000):
        per_country[c["country"]] += 1
    candidates += [cities_task(name, 1_000_000) for name, k in sorted(per_country.items()) if k >= min_city_rows]
    return candidates


def generate_tasks(n_table: int = 6, n_qa: int = 3, seed: int = 0, min_rows: int = 3, max_rows: int = 12) -> list[Task]:
    """A deterministic mix of table tasks (countries by subregion, elements by period, cities by country)
    with between ``min_rows`` and ``max_rows`` gold rows, and ``n_qa`` two-hop QA tasks."""
    rng = random.Random(seed)
    candidates = candidate_tasks(min_rows)
    groups: dict[str, list[Task]] = defaultdict(list)
    for t in candidates:
        if min_rows <= t.gold_csv.count("\n") - 1 <= max_rows:  # type: ignore[union-attr]
            groups[t.instance_id.split("-")[1]].append(t)
    for group in groups.values():
        rng.shuffle(group)
    fitting = [t for batch in zip_longest(*(groups[k] for k in sorted(groups))) for t in batch if t is not None]
    if len(fitting) < n_table:
        raise ValueError(f"only {len(fitting)} table tasks have {min_rows}..{max_rows} rows; asked for {n_table}")
    return fitting[:n_table] + qa_tasks(rng, n_qa)


# --------------------------------------------------------------------------------------------- files
def write_tasks(tasks: Sequence[Task], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``tasks.jsonl`` and ``gold/<id>.csv`` (atomically) in WideSearch's layout; returns the JSONL path."""
    out = Path(out_dir)
    (out / "gold").mkdir(parents=True, exist_ok=True)
    for task in tasks:
        if task.kind == "table":
            atomic_write_text(out / "gold" / f"{task.instance_id}.csv", task.gold_csv or "")
    path = out / "tasks.jsonl"
    with atomic_write(path) as handle:
        for task in tasks:
            record: dict[str, Any] = {"instance_id": task.instance_id, "query": task.query, "language": task.language,
                                      "kind": task.kind}
            if task.kind == "table":
                record["evaluation"] = task.evaluation
                if task.aliases:
                    record["aliases"] = task.aliases
                record.update({k: v for k, v in (("family", task.family), ("split", task.split),
                                                 ("listing", task.listing), ("sources", task.sources)) if v})
            else:
                record["answer"] = task.answers
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def load_tasks(path: str | os.PathLike[str], gold_dir: str | os.PathLike[str] | None = None) -> list[Task]:
    """Read tasks in WideSearch's format (see module doc). Errors name the file and line.

    ``gold_dir`` defaults to ``gold/`` beside the JSONL file, else ``widesearch_gold/``.
    """
    path = Path(path)
    if gold_dir is None:
        gold_dir = next((path.parent / d for d in ("gold", "widesearch_gold") if (path.parent / d).is_dir()),
                        path.parent / "gold")
    gold_dir = Path(gold_dir)
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    for line, record in read_jsonl(path):
        iid = record.get("instance_id")
        if not isinstance(iid, str) or not iid:
            raise RecordError(path, line, "field 'instance_id' must be a non-empty string")
        if iid in seen:
            raise RecordError(path, line, f"instance_id {iid!r} already used on line {seen[iid]}")
        seen[iid] = line
        if not isinstance(record.get("query"), str) or not record["query"].strip():
            raise RecordError(path, line, "field 'query' must be a non-empty string")
        kind = record.get("kind") or ("qa" if "answer" in record and "evaluation" not in record else "table")
        if kind == "qa":
            answers = record.get("answer")
            answers = [answers] if isinstance(answers, str) else answers
            if not isinstance(answers, list) or not answers:
                raise RecordError(path, line, "QA record needs field 'answer' (a string or a list of strings)")
            tasks.append(Task(iid, record["query"], "qa", answers=[str(a) for a in answers],
                              language=record.get("language", "en")))
            continue
        evaluation = record.get("evaluation")
        if isinstance(evaluation, str):
            try:
                evaluation = json.loads(evaluation)
            except json.JSONDecodeError as exc:
                raise RecordError(path, line, f"field 'evaluation' is a string but not valid JSON ({exc.msg})") from exc
        try:
            spec = EvalSpec.from_dict(evaluation, where="evaluation")
        except EvalSpecError as exc:
            raise RecordError(path, line, str(exc)) from exc
        gold_path = gold_dir / f"{iid}.csv"
        if not gold_path.exists():
            raise RecordError(path, line, f"gold table {gold_path} not found")
        gold_text = gold_path.read_text(encoding="utf-8")
        try:
            read_gold_csv(gold_text if "\n" in gold_text else io.StringIO(gold_text), spec.required)
        except (EvalSpecError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise RecordError(gold_path, None, f"gold table unusable: {exc}") from exc
        aliases = record.get("aliases") or {}
        sources = record.get("sources") or {}
        if not isinstance(sources, dict):
            raise RecordError(path, line, "field 'sources' must be an object (row key -> list of pages)")
        tasks.append(Task(iid, record["query"], "table", evaluation=evaluation, gold_csv=gold_text,
                          aliases=dict(aliases) if isinstance(aliases, dict) else {},
                          language=record.get("language", "en"), family=str(record.get("family") or ""),
                          split=str(record.get("split") or "train"), listing=record.get("listing"), sources=sources))
    if not tasks:
        raise RecordError(path, None, "no tasks in file")
    return tasks


def gold_answer_text(task: Task) -> str:
    """The gold table (or boxed answer) written as a perfect response; used by oracles and tests."""
    if task.kind == "qa":
        return f"\\boxed{{{task.answers[0]}}}"
    df = task.gold()
    header = "| " + " | ".join(df.columns) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "```markdown\n" + "\n".join([header, sep, *body]) + "\n```"
