"""Where the MC annotations live in a rollout record, and the typed decoder that reads only those fields.

The defaults are the VisualPRM400K-v1.1-Raw layout (brief §1.3): ``steps_with_score`` = [{``step``,
``score``}], ``image``, ``question_orig`` falling back to ``question``. Other MC-annotated datasets work by
renaming fields, or by giving per-step ``num_mc_correct``/``num_mc_total`` counts (VL-PRM300K style), in which
case a step's score is ``correct / total``.

Pass 1 decodes each line with a msgspec decoder built from these names: it parses only the steps' scores (and
the group field if grouping by a field), skipping every other byte of the line without building it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec


@dataclass(frozen=True)
class Fields:
    """Field names of the annotation layout (defaults: VisualPRM400K-v1.1-Raw)."""

    steps: str = "steps_with_score"
    score: str = "score"
    step_text: str = "step"
    image: str = "image"
    question: tuple[str, ...] = ("question_orig", "question")
    #: Per-step MC counts; when both are set, score = correct / total and ``score`` is ignored.
    mc_correct: str | None = None
    mc_total: str | None = None
    #: Field holding the stratum (source) when one file mixes sources; ``None`` = one stratum per file.
    group: str | None = None

    @property
    def counts_mode(self) -> bool:
        return self.mc_correct is not None and self.mc_total is not None

    def __post_init__(self) -> None:
        if (self.mc_correct is None) != (self.mc_total is None):
            raise ValueError("give both mc_correct and mc_total field names, or neither")


def build_decoder(fields: Fields) -> msgspec.json.Decoder:
    """A decoder of one rollout to a Struct holding only ``steps`` (scores or MC counts) and ``group``.

    Unknown fields are skipped by msgspec without being materialised; ``gc=False`` structs keep the garbage
    collector out of the hot loop (they hold no reference cycles).
    """
    if fields.counts_mode:
        step_fields: list[Any] = [
            ("c", int | None, None),
            ("t", int | None, None),
        ]
        rename = {"c": fields.mc_correct, "t": fields.mc_total}
    else:
        step_fields = [("s", float | None, None)]
        rename = {"s": fields.score}
    step = msgspec.defstruct("Step", step_fields, rename=rename, gc=False)
    roll_fields: list[Any] = [("steps", list[step] | None, None)]
    roll_rename = {"steps": fields.steps}
    if fields.group is not None:
        roll_fields.append(("group", str | int | None, None))
        roll_rename["group"] = fields.group
    roll = msgspec.defstruct("Rollout", roll_fields, rename=roll_rename, gc=False)
    return msgspec.json.Decoder(roll)
