"""The WideSearch scorer: answer-table parsing, per-column metrics, item/row P/R/F1, success, avg/max/pass@N.

Reference: WideSearch (arXiv 2508.07999) ``src/evaluation/{evaluation,data_loader,metric_utils}.py``
(ByteDance-Seed/WideSearch), which WideSeek-R1 (arXiv 2602.04634, Sec. 4.1) reports on. Semantics:

1. **Parse** (:func:`extract_table`): the *first* fenced ````` ```markdown ````` block, else a bare pipe
   table spanning the first to the last ``|`` of the text; the header row loses its spaces and is
   lower-cased, separator rows are dropped, cells are stripped, and the rows are read as ``|``-separated
   CSV by pandas (so numeric columns get numeric dtypes, exactly as WideSearch sees them).
   ``block="last"`` reads the last block instead, as RLinf's training reward does.
2. **Columns**: names are normalised (``strip().lower()``, spaces removed); if they differ from the
   required set they are aligned by the aligner; still different means every score is 0.
3. **Cells** become strings (an int column facing a float column is first turned into floats); both tables
   are de-duplicated on the key columns (first row kept); key values are aligned to the gold keys when the
   key column is scored by ``exact_match`` or ``llm_judge``; then each column's preprocessors run
   (``extract_number``, ``norm_str``, ``norm_date``).
4. **Success** = 1 when both tables have the same shape and are equal after sorting by all columns, or when
   item and row P/R/F1 are all 1.
5. **Inner join on the key**: key cells score 1; every other required column scores 0/1 per metric
   (``exact_match``, ``in_match``, ``url_match``, ``number_near`` with ``criterion``, ``date_near`` (31 days),
   ``llm_judge`` through a pluggable hook). Item TP = sum of cell scores; row TP = rows whose minimum cell
   score is 1. P = TP / (predicted rows x required columns), R = TP / (gold rows x required columns)
   (item level) or over rows (row level); F1 = 2PR / (P + R), 0 when P + R < 1e-9.
6. **Over N trials** (:func:`summarize`): per task mean, max and min of each metric, then the mean over tasks:
   ``avg_n`` (Avg@N), ``max_n`` (Max@N; for success this is Pass@N) and ``min_n``.

Divergences, all documented in ``docs/wideseek.md``:

- WideSearch aligns column names and key values with an LLM; the default here is
  :class:`NormalizedAligner` (exact, then ``norm_str``, then an alias table, then a difflib ratio), and any
  callable with the same signature (e.g. an LLM) can be plugged in.
- When one side of a column is int and the other float, WideSearch converts one side to float *after* the
  other was already turned into strings, so a metric can receive a float and crash the whole evaluation
  (every score 0). We convert both sides to float strings, which is what the code means to do.
- ``llm_judge`` columns without a judge hook fall back to ``exact_match`` on ``norm_str`` values (noted in
  the result's ``msg``); WideSearch has no fallback.
- Invalid evaluation specs (a required non-key column without a pipeline, ``number_near`` without a
  criterion, unknown metric names) raise :class:`EvalSpecError` naming the field instead of silently scoring 0.
"""

from __future__ import annotations

import difflib
import functools
import io
import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import pandas as pd

Aligner = Callable[[Sequence[str], Sequence[str]], dict[str, str]]
Judge = Callable[[Sequence[str], Sequence[str], Any], Sequence[float]]

PREPROCESSORS = ("extract_number", "norm_str", "norm_date")
METRICS = ("exact_match", "in_match", "url_match", "number_near", "date_near", "llm_judge")


class EvalSpecError(ValueError):
    """An evaluation spec (WideSearch ``evaluation`` JSON) that cannot be scored."""


# --------------------------------------------------------------------------------------------- parsing
def norm_column(name: Any) -> str:
    """WideSearch ``norm_column``: strip, lower-case, remove spaces."""
    return str(name).strip().lower().replace(" ", "")


_MARKDOWN_BLOCK = re.compile(r"```markdown(.*?)```", re.DOTALL)
_PIPE_RUN = re.compile(r"(?:\|.*\n?)+")


def table_text(response: str, block: str = "first") -> str | None:
    """The raw table text WideSearch would read from ``response`` (or None): see module doc, step 1."""
    if block not in ("first", "last"):
        raise ValueError(f"block must be 'first' or 'last', got {block!r}")
    blocks = _MARKDOWN_BLOCK.findall(response)
    if blocks:
        return blocks[0 if block == "first" else -1]
    pipes = [i for i, ch in enumerate(response) if ch == "|"]
    if len(pipes) < 4:
        return None
    start = response.rfind("\n", 0, pipes[0])
    start = max(start, 0)
    end = response.find("\n", pipes[-1])
    end = len(response) if end == -1 else end
    runs = _PIPE_RUN.findall(response[start:end])
    return runs[0] if runs else None


def extract_table(response: str | None, block: str = "first") -> pd.DataFrame | None:
    """Parse the answer table of a response as WideSearch does; None when there is none or it is unreadable."""
    if not response:
        return None
    text = table_text(response, block)
    if text is None:
        return None
    lines = [line.strip() for line in text.strip().split("\n")]
    lines[0] = lines[0].replace(" ", "").lower()
    rows = []
    for line in lines:
        if "|" not in line or set(line) <= set("|- :"):
            continue
        rows.append("|".join(cell.strip() for cell in line.split("|")))
    if not rows:
        return None
    try:
        df = pd.read_csv(io.StringIO("\n".join(rows)), sep="|")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return None
    return df.loc[:, ~df.columns.astype(str).str.startswith("Unnamed")]


def read_gold_csv(source: str | Any, required: Sequence[str] | None = None) -> pd.DataFrame:
    """A gold table as WideSearch loads it: ``pd.read_csv``, normalised column names, required columns only."""
    df = pd.read_csv(io.StringIO(source) if isinstance(source, str) and "\n" in source else source)
    df.columns = [norm_column(c) for c in df.columns]
    if required is not None:
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise EvalSpecError(f"gold table lacks required column(s) {missing}; it has {list(df.columns)}")
        df = df[list(required)]
    return df


# --------------------------------------------------------------------------------------------- cell functions
_NUMBER = re.compile(r"[-+]?(?:\d*\.\d+|\d+\.?\d*)%?")
_URL = re.compile(r"https?://(?:[a-zA-Z0-9$-_@.&+!*\\(),]|%[0-9a-fA-F]{2})+")


def extract_number(content: Any) -> str:
    """First number in the text (thousands commas removed, a trailing ``%`` kept), or ``"NULL"``."""
    found = _NUMBER.findall(str(content).replace(",", ""))
    return found[0] if found else "NULL"


def norm_str(content: Any) -> str:
    """Lower-case, strip, remove spaces and ``*`` (markdown bold)."""
    return str(content).lower().strip().replace(" ", "").replace("*", "")


@functools.lru_cache(maxsize=65_536)
def _dateparse(text: str) -> Any:
    """``dateparser.parse`` with WideSearch's settings, memoised per text: an unparseable cell ("none",
    "unknown") makes dateparser try every language, about 0.2-0.35 s each on this machine, and tables repeat such
    values. Exceptions are not memoised. (Relative dates such as "yesterday" are resolved at the first call.)"""
    import dateparser

    return dateparser.parse(text, settings={"PREFER_DAY_OF_MONTH": "first"})


def _parse_date(text: Any, *, strict: bool = False) -> Any:
    """``dateparser.parse`` with WideSearch's settings; ``strict`` lets its exceptions through (``norm_date``
    in WideSearch does not catch them, so the whole evaluation fails), otherwise they mean "no date"."""
    if strict:
        return _dateparse(str(text))
    try:
        return _dateparse(str(text))
    except Exception:
        return None


def norm_date(content: Any, *, strict: bool = False) -> Any:
    """``YYYY-MM-DD`` when dateparser understands the text (day defaults to the first), else unchanged.

    ``strict=True`` raises what dateparser raises, as WideSearch's ``norm_date`` does."""
    parsed = _parse_date(content, strict=strict)
    return content if parsed is None else parsed.strftime("%Y-%m-%d")


def exact_match(response: str, target: str) -> float:
    return 1.0 if str(response).lower() == str(target).lower() else 0.0


def in_match(response: str, target: str) -> float:
    """1 when the response is a substring of the target (case-sensitive, as in WideSearch)."""
    return 1.0 if str(response) in str(target) else 0.0


def url_match(response: str, target: str) -> float:
    """1 when both cells name the same set of hosts (netlocs); two cells without URLs also match."""
    hosts = [{urlparse(u).netloc for u in _URL.findall(str(x))} for x in (response, target)]
    return 1.0 if hosts[0] == hosts[1] else 0.0


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace("%", "")) / 100.0 if "%" in text else float(text)
    except (TypeError, ValueError):
        return None


def number_near(response: str, target: str, criterion: float) -> float:
    """1 when ``|r - t| <= criterion * |t|`` (``%`` values divided by 100); two equal non-numbers also match."""
    r, t = _as_number(str(response)), _as_number(str(target))
    if r is None or t is None:
        return 1.0 if r is None and t is None and str(response) == str(target) else 0.0
    return 1.0 if abs(r - t) <= abs(t) * float(criterion) else 0.0


def _naive_utc(moment: Any) -> Any:
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment
    return (moment - moment.utcoffset()).replace(tzinfo=None)


def date_near(response: str, target: str, *, mixed_tz: str = "utc") -> float:
    """1 when both dates parse and are at most 31 days apart, or when neither parses.

    A date with a time-zone suffix ("2020-01-01 UTC") parses to an aware datetime. ``mixed_tz="utc"``
    (default) compares aware and naive datetimes with both taken as UTC; ``mixed_tz="error"`` raises the
    ``TypeError`` that Python raises for ``aware - naive``, which is what WideSearch's ``date_near`` does
    (its evaluation then scores the whole table 0)."""
    if mixed_tz not in ("utc", "error"):
        raise ValueError(f"mixed_tz must be 'utc' or 'error', got {mixed_tz!r}")
    r, t = _parse_date(response), _parse_date(target)
    if r is None or t is None:
        return 1.0 if r is None and t is None else 0.0
    if mixed_tz == "utc":
        r, t = _naive_utc(r), _naive_utc(t)
    return 1.0 if abs((r - t).days) <= 31 else 0.0


PREPROCESS_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "extract_number": extract_number, "norm_str": norm_str, "norm_date": norm_date,
}


# --------------------------------------------------------------------------------------------- spec
@dataclass
class ColumnEval:
    preprocess: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    criterion: Any = None


@dataclass
class EvalSpec:
    """WideSearch's per-task ``evaluation`` object: required columns, key columns, per-column pipelines."""

    required: list[str]
    unique_columns: list[str]
    eval_pipeline: dict[str, ColumnEval]

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "evaluation") -> EvalSpec:
        if not isinstance(obj, Mapping):
            raise EvalSpecError(f"{where}: expected an object, got {type(obj).__name__}")
        for key in ("required", "unique_columns", "eval_pipeline"):
            if key not in obj:
                raise EvalSpecError(f"{where}: missing field '{key}'")
        required = [norm_column(c) for c in obj["required"]]
        unique = [norm_column(c) for c in obj["unique_columns"]]
        if not required or not unique:
            raise EvalSpecError(f"{where}: 'required' and 'unique_columns' must be non-empty lists")
        if not set(unique) <= set(required):
            raise EvalSpecError(f"{where}.unique_columns {unique} must be among required {required}")
        pipeline: dict[str, ColumnEval] = {}
        for raw_col, item in dict(obj["eval_pipeline"]).items():
            col = norm_column(raw_col)
            path = f"{where}.eval_pipeline.{raw_col}"
            if not isinstance(item, Mapping):
                raise EvalSpecError(f"{path}: expected an object")
            pre, met = list(item.get("preprocess") or []), list(item.get("metric") or [])
            for name in pre:
                if name not in PREPROCESSORS:
                    raise EvalSpecError(f"{path}.preprocess: unknown preprocessor {name!r} (known: {PREPROCESSORS})")
            for name in met:
                if name not in METRICS:
                    raise EvalSpecError(f"{path}.metric: unknown metric {name!r} (known: {METRICS})")
            if "number_near" in met:
                try:
                    float(item.get("criterion"))
                except (TypeError, ValueError):
                    raise EvalSpecError(f"{path}.criterion: number_near needs a numeric criterion, got "
                                        f"{item.get('criterion')!r}") from None
            if col not in required:
                raise EvalSpecError(f"{path}: column {col!r} is not in required {required}")
            pipeline[col] = ColumnEval(pre, met, item.get("criterion"))
        for col in required:
            if col not in unique and (col not in pipeline or not pipeline[col].metric):
                raise EvalSpecError(f"{where}.eval_pipeline: required column {col!r} has no metric")
        return cls(required, unique, pipeline)

    def to_dict(self) -> dict[str, Any]:
        return {"required": self.required, "unique_columns": self.unique_columns,
                "eval_pipeline": {c: {k: v for k, v in asdict(e).items() if v not in (None, [])}
                                  for c, e in self.eval_pipeline.items()}}


# --------------------------------------------------------------------------------------------- alignment
@dataclass
class NormalizedAligner:
    """Map response strings onto reference strings (stand-in for WideSearch's LLM alignment).

    In order: identical; equal after :func:`norm_str`; equal through ``aliases`` (both sides normalised,
    e.g. ``{"usa": "United States"}``); difflib similarity of the normalised strings >= ``fuzzy`` (set
    ``fuzzy=None`` to disable). Values with no counterpart are left out of the map, as the LLM prompt asks.
    """

    aliases: Mapping[str, str] = field(default_factory=dict)
    fuzzy: float | None = 0.9

    def __call__(self, response: Sequence[str], reference: Sequence[str]) -> dict[str, str]:
        refs = [str(r) for r in reference]
        by_norm = {norm_str(r): r for r in refs}
        aliases = {norm_str(k): norm_str(v) for k, v in self.aliases.items()}
        out: dict[str, str] = {}
        for value in (str(v) for v in response):
            if value in refs:
                out[value] = value
                continue
            key = norm_str(value)
            if key in by_norm:
                out[value] = by_norm[key]
            elif key in aliases and aliases[key] in by_norm:
                out[value] = by_norm[aliases[key]]
            elif self.fuzzy is not None and by_norm:
                best = max(by_norm, key=lambda r: difflib.SequenceMatcher(None, key, r).ratio())
                if difflib.SequenceMatcher(None, key, best).ratio() >= self.fuzzy:
                    out[value] = by_norm[best]
        return out


# --------------------------------------------------------------------------------------------- scoring
@dataclass
class TableScore:
    """WideSearch's ``EvaluationResult`` fields (``score`` is success)."""

    score: float = 0.0
    precision_by_row: float = 0.0
    recall_by_row: float = 0.0
    f1_by_row: float = 0.0
    precision_by_item: float = 0.0
    recall_by_item: float = 0.0
    f1_by_item: float = 0.0
    msg: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 1e-9 else 0.0


def _kind(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "other"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "other"


def score_table(
    response: str | pd.DataFrame | None,
    gold: pd.DataFrame,
    spec: EvalSpec | Mapping[str, Any],
    *,
    aligner: Aligner | None = None,
    judge: Judge | None = None,
    block: str = "first",
    numbers: str = "official",
    exact_code: bool = False,
) -> TableScore:
    """Score one response (text or an already parsed table) against a gold table (module doc, steps 1-5).

    ``numbers="official"`` (default) compares cells as WideSearch's code does: every column is turned into
    strings, so a column pandas reads as float (an integer column with a blank cell, or ``2001.0``) does not
    equal an integer column under ``exact_match``. ``numbers="lenient"`` turns both sides into floats when
    one is int and the other float (what WideSearch's never-taken branch means to do) and compares dates
    with a time-zone suffix against plain ones in UTC.

    The scorer never raises on a response: anything that fails while scoring gives all-zero metrics with
    ``msg`` starting ``evaluator error:``, as WideSearch's ``evaluate_single_query`` does. Metrics stay in
    [0, 1]: rows whose keys collide after key alignment and preprocessing are de-duplicated again (first kept),
    a column with several metrics counts as one item whose score is the minimum of its metrics, and judge
    scores are clipped to [0, 1]. ``exact_code=True`` drops these three guards and reproduces WideSearch's
    code exactly, including item recall above 1 when a near-duplicate row is matched twice.
    Invalid specs and gold tables raise :class:`EvalSpecError`.
    """
    if numbers not in ("official", "lenient"):
        raise ValueError(f"numbers must be 'official' or 'lenient', got {numbers!r}")
    spec = spec if isinstance(spec, EvalSpec) else EvalSpec.from_dict(spec)
    answer = gold.copy()
    answer.columns = [norm_column(c) for c in answer.columns]
    missing = [c for c in spec.required if c not in answer.columns]
    if missing:
        raise EvalSpecError(f"gold table lacks required column(s) {missing}")
    try:
        pred = extract_table(response, block) if not isinstance(response, pd.DataFrame) else response.copy()
        if pred is None:
            return TableScore(msg="response_df is None")
        return _score(pred, answer[spec.required], spec, aligner or NormalizedAligner(), judge,
                      lenient=numbers == "lenient", exact_code=exact_code)
    except Exception as exc:  # WideSearch: any failure inside the evaluation scores the table 0
        return TableScore(msg=f"evaluator error: {type(exc).__name__}: {exc}")


def _score(pred: pd.DataFrame, answer: pd.DataFrame, spec: EvalSpec, aligner: Aligner, judge: Judge | None,
           *, lenient: bool, exact_code: bool) -> TableScore:
    required, keys = spec.required, spec.unique_columns
    pred.columns = [norm_column(c) for c in pred.columns]
    if set(pred.columns) != set(required):
        pred = pred.rename(columns=aligner([str(c) for c in pred.columns], required))
    if set(pred.columns) != set(required) or len(pred.columns) != len(required):
        return TableScore(msg=f"required_columns {required} != response columns {list(pred.columns)}")
    pred = pred[required].copy()

    for col in required:
        if lenient and {_kind(answer[col]), _kind(pred[col])} == {"int", "float"}:
            answer[col], pred[col] = answer[col].astype(float), pred[col].astype(float)
        answer[col] = answer[col].astype(str)
        pred[col] = pred[col].astype(str)
    pred = pred.drop_duplicates(subset=keys).reset_index(drop=True)
    answer = answer.drop_duplicates(subset=keys).reset_index(drop=True)

    aligned_keys = False
    for col in keys:
        item = spec.eval_pipeline.get(col)
        if item is not None and ("llm_judge" in item.metric or "exact_match" in item.metric):
            mapping = aligner(pred[col].tolist(), answer[col].tolist())
            pred[col] = pred[col].map(lambda x, m=mapping: m.get(x, x))
            aligned_keys = True

    for col, item in spec.eval_pipeline.items():
        for name in item.preprocess:
            fn = (lambda x: norm_date(x, strict=True)) if name == "norm_date" else PREPROCESS_FUNCTIONS[name]
            pred[col] = pred[col].map(fn)
            answer[col] = answer[col].map(fn)

    notes: list[str] = []
    if not exact_code:
        n_pred, n_gold = len(pred), len(answer)
        pred = pred.drop_duplicates(subset=keys).reset_index(drop=True)
        answer = answer.drop_duplicates(subset=keys).reset_index(drop=True)
        if len(pred) < n_pred or len(answer) < n_gold:
            notes.append(f"keys collided after alignment/preprocessing: dropped {n_pred - len(pred)} response and "
                         f"{n_gold - len(answer)} gold rows (exact_code=True keeps them, as WideSearch does)")

    success = 0.0
    # WideSearch adds a ``<key>_before_map`` column to the response when it aligns keys, so its shape test then
    # always fails and success comes only from perfect P/R/F1 below.
    if not aligned_keys and answer.shape == pred.shape:
        a_sorted = answer.sort_values(by=required).reset_index(drop=True)
        p_sorted = pred.sort_values(by=required).reset_index(drop=True)
        if a_sorted.equals(p_sorted):
            success = 1.0

    inner = pd.merge(answer, pred, on=keys, how="inner", suffixes=("_query", "_response"))
    if inner.empty:
        # WideSearch's ``DataFrame.apply`` on an empty join raises, and it scores the table 0
        only_keys = set(required) == set(keys)
        return TableScore(score=success if only_keys else 0.0,
                          msg="; ".join([f"matched 0 of {len(answer)} gold rows", *notes]))
    cells = _cell_scores(inner, spec, judge, lenient=lenient, exact_code=exact_code, notes=notes)

    n_rows = len(inner)
    tp_row = sum(min(v[i] for v in cells.values()) for i in range(n_rows))
    tp_item = sum(sum(v) for v in cells.values())
    n_pred, n_gold = len(pred), len(answer)
    p_row, r_row = tp_row / n_pred, tp_row / n_gold
    p_item, r_item = tp_item / (n_pred * len(required)), tp_item / (n_gold * len(required))
    result = TableScore(
        score=success, precision_by_row=p_row, recall_by_row=r_row, f1_by_row=_f1(p_row, r_row),
        precision_by_item=p_item, recall_by_item=r_item, f1_by_item=_f1(p_item, r_item),
        msg="; ".join([f"matched {n_rows} of {n_gold} gold rows ({n_pred} predicted)", *notes]),
    )
    if p_item == r_item == result.f1_by_item == 1.0 and p_row == r_row == result.f1_by_row == 1.0:
        result.score = 1.0
    return result


def _cell_scores(inner: pd.DataFrame, spec: EvalSpec, judge: Judge | None, *, lenient: bool, exact_code: bool,
                 notes: list[str]) -> dict[str, list[float]]:
    """Per scored cell column of the joined table, the 0/1 scores (keys score 1). With ``exact_code`` each
    metric of a column is its own item, as in WideSearch; otherwise a cell scores the minimum of its metrics."""
    out: dict[str, list[float]] = {}
    for col in spec.required:
        if col in spec.unique_columns:
            out[f"{col}_exact_match"] = [1.0] * len(inner)
            continue
        item = spec.eval_pipeline[col]
        responses = inner[f"{col}_response"].tolist()
        targets = inner[f"{col}_query"].tolist()
        per_metric: list[list[float]] = []
        for name in item.metric:
            if name == "llm_judge":
                if judge is None:
                    notes.append(f"{col}: no llm_judge hook, exact_match on norm_str used")
                    values = [exact_match(norm_str(r), norm_str(t)) for r, t in zip(responses, targets, strict=True)]
                else:
                    values = [float(v or 0.0) for v in judge(responses, targets, item.criterion)]
                    if len(values) != len(responses):
                        notes.append(f"{col}: judge returned {len(values)} scores for {len(responses)} rows; all 0")
                        values = [0.0] * len(responses)
                    if not exact_code:
                        values = [min(max(v, 0.0), 1.0) if v == v else 0.0 for v in values]
            elif name == "number_near":
                values = [number_near(r, t, item.criterion) for r, t in zip(responses, targets, strict=True)]
            elif name == "date_near":
                mixed = "utc" if lenient else "error"
                values = [date_near(r, t, mixed_tz=mixed) for r, t in zip(responses, targets, strict=True)]
            else:
                fn = {"exact_match": exact_match, "in_match": in_match, "url_match": url_match}[name]
                values = [fn(r, t) for r, t in zip(responses, targets, strict=True)]
            per_metric.append(values)
            if exact_code:
                out[f"{col}_{name}"] = values
        if not exact_code:
            out[col] = [min(v) for v in zip(*per_metric, strict=True)]
    return out


# --------------------------------------------------------------------------------------------- QA + aggregation
def normalize_answer(text: str) -> str:
    """SQuAD/Search-R1 answer normalisation: lower-case, drop punctuation and articles, squeeze spaces."""
    text = "".join(ch for ch in str(text).lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def score_qa(answer: str | None, gold: Iterable[str]) -> float:
    """Exact match (0/1) of a QA answer against any accepted gold answer, after :func:`normalize_answer`."""
    if answer is None:
        return 0.0
    pred = normalize_answer(answer)
    return 1.0 if any(pred == normalize_answer(g) for g in gold) else 0.0


SUMMARY_METRICS = ("score", "precision_by_row", "recall_by_row", "f1_by_row",
                   "precision_by_item", "recall_by_item", "f1_by_item")


def summarize(trials: Mapping[str, Sequence[TableScore | Mapping[str, float]]], n: int | None = None) -> dict[str, dict[str, float]]:
    """Avg@N / Max@N / Min@N per metric over tasks (WideSearch ``calc_summary_results``).

    ``trials`` maps a task id to its N trial scores; every task must have exactly ``n`` trials (default: the
    first task's count), as WideSearch requires. ``score``'s ``max_n`` is Pass@N.
    """
    if not trials:
        raise ValueError("summarize: no tasks")
    n = n or len(next(iter(trials.values())))
    per_task: dict[str, list[tuple[float, float, float]]] = {m: [] for m in SUMMARY_METRICS}
    for task_id, results in trials.items():
        if len(results) != n:
            raise ValueError(f"task {task_id}: expected {n} trials, got {len(results)}")
        rows = [r.as_dict() if isinstance(r, TableScore) else dict(r) for r in results]
        for m in SUMMARY_METRICS:
            values = [float(r[m]) for r in rows]
            per_task[m].append((sum(values) / n, max(values), min(values)))
    out = {}
    for m, vals in per_task.items():
        out[m] = {"avg_n": math.fsum(v[0] for v in vals) / len(vals), "max_n": math.fsum(v[1] for v in vals) / len(vals),
                  "min_n": math.fsum(v[2] for v in vals) / len(vals)}
    return out
