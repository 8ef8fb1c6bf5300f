"""Differential testing of :func:`leanlm.wideseek.scorer.score_table` against WideSearch's own code.

WideSearch's evaluation (ByteDance-Seed/WideSearch ``src/evaluation/``) is not vendored: point
:func:`load_official` (or ``LEANLM_WIDESEARCH_DIR`` / ``leanlm wideseek difftest --official DIR``) at a
checkout of that repository and it is imported from there, run beside ours, never copied. Its
imports that only matter for its LLM calls and logging (``loguru``, ``pandarallel``, ``datasets``,
``huggingface_hub``, its ``src.utils.llm``) are stubbed when not installed, and its two LLM steps are
replaced by our rules so both sides align the same way: ``primary_key_preprocess`` (column / key
alignment) by the same :class:`~leanlm.wideseek.scorer.NormalizedAligner`, and ``llm_judge_column`` (not
generated here) by nothing.

:func:`random_case` draws a gold table and an evaluation spec (int, float, blank-holding, year, date,
URL and text columns; every metric but ``llm_judge``) and a response derived from the gold table by random
mutations: dropped, duplicated, near-duplicate and extra rows, wrong cells, number noise, float-formatted
integers (``2001.0``), blanks, markdown bold, case, renamed and missing columns, time-zone suffixes on
dates, stray fences, pipes, tags and control characters, bare pipe tables and no table.
:func:`compare` scores every case both ways and returns the differences.
"""

from __future__ import annotations

import importlib
import io
import random
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from leanlm.wideseek.scorer import SUMMARY_METRICS, NormalizedAligner, TableScore, score_table

ENV_VAR = "LEANLM_WIDESEARCH_DIR"
_STUBBED = ("loguru", "pandarallel", "datasets", "huggingface_hub")


class _Quiet:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


def _stub(name: str, **attrs: Any) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


@dataclass
class Official:
    """WideSearch's ``evaluate_single_query`` loaded from a checkout, with our aligner in place of its LLM."""

    root: Path
    commit: str
    evaluation: Any
    data_loader: Any

    def score(self, response: str, gold: pd.DataFrame, spec: dict[str, Any], aligner: Callable[..., dict]) -> TableScore:
        self.evaluation.primary_key_preprocess = lambda response, reference, *_: aligner(list(map(str, response)),
                                                                                            list(map(str, reference)))
        query = self.data_loader.WideSearchQuery("case", "q", spec, gold.copy(), "en")
        result = self.evaluation.evaluate_single_query(query, self.data_loader.WideSearchResponse("case", response))
        return TableScore(**{m: float(getattr(result, m)) for m in SUMMARY_METRICS}, msg=str(result.msg)[:200])


def load_official(root: str | Path) -> Official:
    """Import WideSearch's ``src.evaluation`` from ``root`` (a checkout of ByteDance-Seed/WideSearch)."""
    root = Path(root).resolve()
    if not (root / "src" / "evaluation" / "evaluation.py").is_file():
        raise FileNotFoundError(f"{root} is not a WideSearch checkout (no src/evaluation/evaluation.py)")
    for name in _STUBBED:
        try:
            importlib.import_module(name)
        except ImportError:
            if name == "loguru":
                _stub(name, logger=_Quiet())
            elif name == "pandarallel":
                _stub(name, pandarallel=types.SimpleNamespace(initialize=lambda **k: None))
            elif name == "datasets":
                _stub(name, load_dataset=lambda *a, **k: None)
            else:
                _stub(name, snapshot_download=lambda *a, **k: None, try_to_load_from_cache=lambda *a, **k: None)
    if "loguru" in sys.modules and not isinstance(getattr(sys.modules["loguru"], "logger", None), _Quiet):
        sys.modules["loguru"].logger.remove()  # type: ignore[attr-defined]  # silence its per-row logging
    _stub("src.utils.llm", llm_completion=lambda *a, **k: None)
    if "src" in sys.modules and Path(getattr(sys.modules["src"], "__file__", "") or "").parent != root / "src":
        del sys.modules["src"]
    sys.path.insert(0, str(root))
    try:
        evaluation = importlib.import_module("src.evaluation.evaluation")
        data_loader = importlib.import_module("src.evaluation.data_loader")
    finally:
        sys.path.remove(str(root))
    head = root / "COMMIT"
    commit = head.read_text().strip() if head.exists() else "unknown"
    return Official(root, commit, evaluation, data_loader)


# --------------------------------------------------------------------------------------------- cases
_NAMES = ["France", "Germany", "Italy", "Spain", "Portugal", "Greece", "Austria", "Belgium", "Sweden", "Norway",
          "Côte d'Ivoire", "São Tomé", "New York", "Los Angeles", "Rio de Janeiro", "Mexico City", "Oslo", "Bern"]
_HOSTS = ["https://a.org/x", "http://b.com/y", "https://c.net", "https://en.wikipedia.org/wiki/X"]
_TAGS = ["<think>", "</think>", "<b>", "<tool_call>", "</answer>"]
_CONTROL = ["\x00", "\x07", "\x0b", "\x0c", "\r", "\t", "\x1b", "\u200b", "\x7f"]


@dataclass
class Case:
    gold: pd.DataFrame
    spec: dict[str, Any]
    response: str
    mutations: list[str] = field(default_factory=list)


def _column(rng: random.Random, kind: str, n: int) -> tuple[list[Any], dict[str, Any]]:
    if kind == "int":
        return [rng.randint(1, 10**rng.randint(1, 8)) for _ in range(n)], _metric(rng, "number")
    if kind == "float":
        return [round(rng.uniform(0, 1000), rng.randint(0, 3)) for _ in range(n)], _metric(rng, "number")
    if kind == "year_blank":  # an integer column with one blank cell: pandas reads it as float ("2001.0", "nan")
        values: list[Any] = [rng.randint(1800, 2025) for _ in range(n)]
        values[rng.randrange(n)] = None
        return values, _metric(rng, "number")
    if kind == "date":
        dates = [f"{rng.randint(1950, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}" for _ in range(n)]
        return dates, rng.choice([{"metric": ["date_near"]}, {"preprocess": ["norm_date"], "metric": ["exact_match"]}])
    if kind == "url":
        return [rng.choice(_HOSTS) for _ in range(n)], {"metric": ["url_match"]}
    return [rng.choice(["red", "Green", "blue sky", "N/A", "yellow"]) for _ in range(n)], rng.choice(
        [{"preprocess": ["norm_str"], "metric": ["exact_match"]}, {"metric": ["exact_match"]},
         {"metric": ["in_match"]}])


def _metric(rng: random.Random, _: str) -> dict[str, Any]:
    return rng.choice([
        {"preprocess": ["extract_number"], "metric": ["number_near"], "criterion": rng.choice([0.0, 0.05, 0.1])},
        {"metric": ["number_near"], "criterion": 0.0}, {"metric": ["exact_match"]},
        {"preprocess": ["norm_str"], "metric": ["exact_match"]},
    ])


_KINDS = ["int", "float", "year_blank", "date", "url", "text"]


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def _render(df: pd.DataFrame, columns: list[str], rng: random.Random, fenced: bool) -> str:
    header = "| " + " | ".join(columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_cell_text(v) for v in row) + " |" for row in df.itertuples(index=False)]
    table = "\n".join([header, sep, *body])
    return f"Here is the table.\n```markdown\n{table}\n```\nDone." if fenced else f"Answer:\n{table}\nThanks."


def mutate_text(text: str, rng: random.Random, mutations: list[str]) -> str:
    """Text-level mutations of a response: stray fences, pipes, tags, control characters."""
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["fence", "pipe", "tag", "control", "blank_line", "cut"])
        mutations.append(op)
        i = rng.randrange(len(lines))
        if op == "fence":
            lines.insert(i, rng.choice(["```", "```markdown", "````", "```json"]))
        elif op == "pipe":
            lines[i] = lines[i] + rng.choice(["|", " | |", "||"]) if rng.random() < 0.5 else "|" + lines[i]
        elif op == "tag":
            pos = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:pos] + rng.choice(_TAGS) + lines[i][pos:]
        elif op == "control":
            pos = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:pos] + rng.choice(_CONTROL) + lines[i][pos:]
        elif op == "blank_line":
            lines.insert(i, "")
        else:
            lines = lines[: max(1, i)]
    return "\n".join(lines)


def random_case(rng: random.Random) -> Case:
    """One random gold table, spec and mutated response (module doc)."""
    n = rng.randint(1, 8)
    names = rng.sample(_NAMES, n)
    kinds = rng.sample(_KINDS, rng.randint(1, 4))
    columns = ["name"] + [f"{k.replace('_', '')}{i}" for i, k in enumerate(kinds)]
    data: dict[str, list[Any]] = {"name": names}
    pipeline: dict[str, Any] = {"name": rng.choice([{"preprocess": ["norm_str"], "metric": ["exact_match"]},
                                                    {"metric": ["exact_match"]}, {"metric": ["in_match"]}])}
    for col, kind in zip(columns[1:], kinds, strict=True):
        data[col], pipeline[col] = _column(rng, kind, n)
    gold = pd.read_csv(io.StringIO(pd.DataFrame(data).to_csv(index=False)))  # as WideSearch loads a gold CSV
    spec = {"required": columns, "unique_columns": ["name"], "eval_pipeline": pipeline}
    mutations: list[str] = []
    resp = pd.DataFrame(data).astype(object)
    for _ in range(rng.randint(0, 4)):
        op = rng.choice(["drop_row", "dup_row", "near_dup", "extra_row", "wrong_cell", "noise", "float_int",
                         "blank", "bold", "case", "tz", "rename_col", "drop_col", "shuffle"])
        mutations.append(op)
        r = rng.randrange(len(resp)) if len(resp) else 0
        c = rng.choice(columns)
        if not len(resp) and op not in ("extra_row", "rename_col", "drop_col"):
            continue
        if op == "drop_row":
            resp = resp.drop(resp.index[r]).reset_index(drop=True)
        elif op == "dup_row":
            resp = pd.concat([resp, resp.iloc[[r]]], ignore_index=True)
        elif op == "near_dup":
            row = resp.iloc[[r]].copy()
            row.iloc[0, 0] = rng.choice([f"**{row.iloc[0, 0]}**", str(row.iloc[0, 0]).upper(), f" {row.iloc[0, 0]}."])
            resp = pd.concat([resp, row], ignore_index=True)
        elif op == "extra_row":
            resp = pd.concat([resp, pd.DataFrame([{col: rng.choice(["Atlantis", "x", "1", ""]) for col in resp.columns}])],
                             ignore_index=True)
        elif op == "wrong_cell" and c in resp.columns:
            resp.at[r, c] = rng.choice(["wrong", "0", "1999", "https://z.io", "2001-02-30", ""])
        elif op == "noise" and c in resp.columns and isinstance(resp.at[r, c], (int, float)):
            resp.at[r, c] = resp.at[r, c] * rng.choice([0.9, 0.97, 1.0, 1.04, 1.2])
        elif op == "float_int" and c in resp.columns and isinstance(resp.at[r, c], int):
            resp[c] = [f"{v}.0" if isinstance(v, int) else v for v in resp[c]]
        elif op == "blank" and c in resp.columns:
            resp.at[r, c] = None
        elif op == "bold" and c in resp.columns:
            resp.at[r, c] = f"**{_cell_text(resp.at[r, c])}**"
        elif op == "case" and c in resp.columns:
            resp.at[r, c] = _cell_text(resp.at[r, c]).upper()
        elif op == "tz":
            for col, kind in zip(columns[1:], kinds, strict=True):
                if kind == "date" and col in resp.columns:
                    resp.at[r, col] = f"{_cell_text(resp.at[r, col])} {rng.choice(['UTC', '+02:00', 'EST', 'Z'])}"
        elif op == "rename_col" and c in resp.columns:
            resp = resp.rename(columns={c: rng.choice([c.upper(), f"{c} value", f"The {c}", c[:-1]])})
        elif op == "drop_col" and len(resp.columns) > 1 and c in resp.columns:
            resp = resp.drop(columns=[c])
        elif op == "shuffle":
            resp = resp.sample(frac=1.0, random_state=rng.randrange(1 << 30)).reset_index(drop=True)
    text = _render(resp, list(resp.columns), rng, fenced=rng.random() < 0.8)
    if rng.random() < 0.4:
        text = mutate_text(text, rng, mutations)
    if rng.random() < 0.03:
        text, mutations = "I could not find the data.", [*mutations, "no_table"]
    return Case(gold, spec, text, mutations)


# --------------------------------------------------------------------------------------------- compare
@dataclass
class Difference:
    index: int
    metric: str
    ours: float
    official: float
    case: Case
    msg: str


def differences(ours: TableScore, theirs: TableScore, tol: float = 1e-9) -> list[tuple[str, float, float]]:
    out = []
    for m in SUMMARY_METRICS:
        a, b = float(getattr(ours, m)), float(getattr(theirs, m))
        if not (abs(a - b) <= tol or (a != a and b != b)):
            out.append((m, a, b))
    return out


def compare(official: Official, n: int, seed: int = 0, *, exact_code: bool = True,
            progress: Callable[[int, int], None] | None = None) -> tuple[list[Difference], dict[str, int]]:
    """Score ``n`` random cases (seeds ``seed..``) with ours and WideSearch's; returns differences and counts.

    ``exact_code=True`` compares WideSearch's code with ``score_table(..., exact_code=True)``; with False, the
    default scorer is compared and only cases without collided keys / multi-metric columns can agree."""
    rng = random.Random(seed)
    diffs: list[Difference] = []
    counts = {"cases": 0, "nonzero_item_f1": 0, "success": 0, "evaluator_error": 0, "no_table": 0,
              "official_out_of_range": 0}
    for i in range(n):
        case = random_case(rng)
        aligner = NormalizedAligner()
        ours = score_table(case.response, case.gold, case.spec, aligner=aligner, exact_code=exact_code)
        theirs = official.score(case.response, case.gold, case.spec, aligner)
        counts["cases"] += 1
        counts["nonzero_item_f1"] += theirs.f1_by_item > 0
        counts["success"] += theirs.score == 1
        counts["evaluator_error"] += theirs.msg.startswith("evaluator error")
        counts["no_table"] += theirs.msg == "response_df is None"
        counts["official_out_of_range"] += any(not 0 <= getattr(theirs, m) <= 1 for m in SUMMARY_METRICS)
        for metric, a, b in differences(ours, theirs):
            diffs.append(Difference(i, metric, a, b, case, f"ours: {ours.msg[:120]} | official: {theirs.msg[:120]}"))
        if progress is not None:
            progress(i, len({d.index for d in diffs}))
    return diffs, counts
