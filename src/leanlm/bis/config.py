"""Selection settings (:class:`SelectConfig`) and the group-naming rules every part of selection shares.

A leaf module: it imports only the schema, the scorers and the scanner's chunk size, so every other module of
:mod:`leanlm.bis` can import it without a circle.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from leanlm.bis.scan import CHUNK_BYTES
from leanlm.bis.schema import Fields
from leanlm.bis.score import BIS, Scorer

ENGINES = ("stream", "duckdb", "ray")
FORMATS = ("jsonl", "mmprm", "parquet")
PLANS = ("auto", "single-pass", "two-pass")
COMPAT = ("default", "official")


@dataclass(frozen=True)
class SelectConfig:
    """Selection settings; defaults are the official CLI's (α = 0.05, ratio 0.25, per source file)."""

    ratio: float = 0.25
    scorer: Scorer = field(default_factory=BIS)
    #: ``"file"`` (one stratum per input file, the official behaviour), ``"global"``, or a field name.
    group_by: str = "file"
    #: Per-group ratio overrides, by group name (file stem or field value).
    ratios: dict[str, float] = field(default_factory=dict)
    fields: Fields = field(default_factory=Fields)
    #: Pass-1 engine (``stream`` or ``duckdb``); ``ray`` = the stream engine's tasks run by Ray Data.
    engine: str = "stream"
    output_format: str = "jsonl"
    #: ``"default"`` or ``"official"``: the official script's behaviour where it differs (MM-PRM drops,
    #: NaN step scores counted as negative steps).
    compat: str = "default"
    skip_invalid: bool = False
    #: Reject (file:line) rollouts with no scored step instead of counting them as ``without_scores``.
    strict_scores: bool = False
    #: Accept a run that read no row at all (by default it is an error: nothing to select from).
    allow_empty: bool = False
    #: Worker processes over files; 0 = one per available CPU (a single process below 32 MB of input).
    workers: int = 0
    hash_input: bool = True
    chunk_bytes: int = CHUNK_BYTES
    #: ``"auto"`` (single pass where it applies), ``"single-pass"`` (an error where it does not apply) or
    #: ``"two-pass"``.
    plan: str = "auto"

    def __post_init__(self) -> None:
        for name, r in [("ratio", self.ratio), *self.ratios.items()]:
            if not (0.0 < float(r) <= 1.0):
                raise ValueError(f"ratio for {name!r} must be in (0, 1], got {r}")
        for what, value, allowed in [("engine", self.engine, ENGINES), ("output format", self.output_format, FORMATS),
                                     ("plan", self.plan, PLANS), ("compat", self.compat, COMPAT)]:
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
        if self.group_by not in ("file", "global") and self.fields.group != self.group_by:
            object.__setattr__(self, "fields", Fields(**{**asdict(self.fields), "group": self.group_by}))

    @property
    def nan_scores_negative(self) -> bool:
        """Whether a NaN step score counts as a scored, negative step (the official script's ``float()``)."""
        return self.compat == "official"

    def ratio_for(self, group: str) -> float:
        return float(self.ratios.get(group, self.ratio))

    def with_(self, **changes: Any) -> SelectConfig:
        """A copy with some settings changed (the config is frozen)."""
        return replace(self, **changes)

    def settings(self) -> dict[str, Any]:
        """The settings as recorded in the manifest."""
        return {"scorer": self.scorer.name, **self.scorer.params(), "ratio": self.ratio, "ratios": self.ratios,
                "group_by": self.group_by, "engine": self.engine, "compat": self.compat,
                "skip_invalid": self.skip_invalid, "strict_scores": self.strict_scores, "workers": self.workers,
                "fields": asdict(self.fields)}


def config_fields() -> list[str]:
    return [f.name for f in fields(SelectConfig)]


def source_name(path: str | os.PathLike[str]) -> str:
    """The group name of a file: its name without ``.jsonl``/``.gz``/``.zst``/``.parquet``."""
    name = Path(path).name
    for suffix in (".gz", ".zst", ".zstd"):
        name = name.removesuffix(suffix)
    for suffix in (".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def initial_group_names(group_by: str, path: str | os.PathLike[str]) -> dict[Any, int]:
    """The group-name -> local index map a file's pass 1 starts from: its own name when grouping by file,
    one ``all`` group in global mode, empty (filled as values are seen) when grouping by a field."""
    if group_by == "file":
        return {source_name(path): 0}
    if group_by == "global":
        return {"all": 0}
    return {}
