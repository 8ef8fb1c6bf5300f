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

    def gold(self) -> pd.DataFrame:
        if self.gold_csv is None:
            raise ValueError(f"task {self.instance_id} has no gold table")
        spec = EvalSpec.from_dict(self.evaluation or {}, where=f"{self.instance_id}.evaluation")
        return read_gold_csv(self.gold_csv, spec.required)

    def score(self, response: str | None, *, aligner: Any = None, judge: Any = None, block: str = "first") -> TableScore:
        """WideSearch metrics for table tasks; for QA, exact match of the boxed answer in every field."""
        if self.kind == "qa":
            em = score_qa(extract_boxed(response or "") or (response or "").strip() or None, self.answers)
            return TableScore(em, em, em, em, em, em, em, msg="exact match of the boxed answer")
        aligner = aligner or NormalizedAligner(aliases=self.aliases)
        return score_table(response, self.gold(), EvalSpec.from_dict(self.evaluation or {}), aligner=aligner,
                           judge=judge, block=block)


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


def countries_task(subregion: str) -> Task:
    rows = [c for c in world.country_records() if c["subregion"] == subregion and c["capital"]
            and c["population"] and len(c["currencies"]) == 1]
    columns = ["country", "capital", "population", "currency"]
    aliases = {a: c["name"] for c in rows for a in c["aliases"]}
    return Task(
        instance_id=f"ls-countries-{world.slug(subregion)}",
        query=_query(f"List every country in the subregion {subregion} with its capital, its population and the "
                     "ISO 4217 code of its currency.", columns, "Give populations as plain integers."),
        evaluation={"required": columns, "unique_columns": ["country"],
                    "eval_pipeline": {"country": _EXACT, "capital": _EXACT, "population": _number(0.05),
                                      "currency": _EXACT}},
        gold_csv=_csv(columns, ([c["name"], c["capital"], c["population"], c["currencies"][0]] for c in rows)),
        aliases=aliases,
    )


def elements_task(period: int) -> Task:
    rows = [e for e in world.element_records() if e["period"] == period]
    columns = ["element", "symbol", "atomicnumber", "atomicweight"]
    return Task(
        instance_id=f"ls-elements-period-{period}",
        query=_query(f"List every chemical element in period {period} of the periodic table with its symbol, "
                     "atomic number and standard atomic weight.", columns),
        evaluation={"required": columns, "unique_columns": ["element"],
                    "eval_pipeline": {"element": _EXACT, "symbol": _EXACT, "atomicnumber": _number(0.0),
                                      "atomicweight": _number(0.01)}},
        gold_csv=_csv(columns, ([e["name"], e["symbol"], e["atomic_number"], e["atomic_weight"]] for e in rows)),
    )


def cities_task(country: str, min_population: int) -> Task:
    rows = [c for c in world.city_records(min_population) if c["country"] == country]
    columns = ["city", "population"]
    return Task(
        instance_id=f"ls-cities-{world.slug(country)}-{min_population}",
        query=_query(f"List every city in {country} with at least {min_population:,} inhabitants and its population.",
                     columns, "Give populations as plain integers."),
        evaluation={"required": columns, "unique_columns": ["city"],
                    "eval_pipeline": {"city": _EXACT, "population": _number(0.05)}},
        gold_csv=_csv(columns, ([c["name"], c["population"]] for c in rows)),
    )


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


def generate_tasks(n_table: int = 6, n_qa: int = 3, seed: int = 0, min_rows: int = 3, max_rows: int = 12) -> list[Task]:
    """A deterministic mix of table tasks (countries by subregion, elements by period, cities by country)
    with between ``min_rows`` and ``max_rows`` gold rows, and ``n_qa`` two-hop QA tasks."""
    rng = random.Random(seed)
    candidates: list[Task] = []
    subregions = sorted({c["subregion"] for c in world.country_records() if c["subregion"]})
    candidates += [countries_task(s) for s in subregions]
    candidates += [elements_task(p) for p in range(1, 8)]
    per_country: dict[str, int] = defaultdict(int)
    for c in world.city_records(1_000_000):
        per_country[c["country"]] += 1
    candidates += [cities_task(name, 1_000_000) for name, k in sorted(per_country.items()) if k >= min_rows]
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
        tasks.append(Task(iid, record["query"], "table", evaluation=evaluation, gold_csv=gold_text,
                          aliases=dict(aliases) if isinstance(aliases, dict) else {},
                          language=record.get("language", "en")))
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
