"""Conversion of kept rollouts to the MM-PRM training format the official code writes (brief §1.1, output).

``{"image": …, "conversations": [{"from": "human", "value": "Question: q\\nProcess: step1<prm>\\n\\nstep2<prm>…"},
{"from": "gpt", "value": [1.0, 0.0, …]}]}`` with hard labels y = 1.0 iff score > 0, the question taken from
``question_orig`` falling back to ``question`` and stripped, step texts stripped, serialised like the official
script (``json.dumps(..., ensure_ascii=False)``) so the bytes match.

Two modes:

* ``official`` (``--compat official``): exactly ``build_prm_from_rec`` of ``scripts/build_bis_subset.py``: a
  rollout is silently dropped when it has no image, no steps, or any step with empty text or no score.
* ``default``: nothing is dropped. A rollout without an image is written without the ``image`` key (a
  text-only sample in the InternVL format); an empty step keeps its ``<prm>`` and label; a step without a score
  keeps its text as context but gets no ``<prm>`` marker and no label (there is nothing to supervise it with).

Either way every such case is counted (:class:`ConversionCounts`) and reported in the manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from operator import attrgetter
from typing import Any

from leanlm.bis.schema import Fields

_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


@dataclass
class ConversionCounts:
    """What conversion met among the kept rollouts; ``dropped_*`` are only non-zero in official mode."""

    converted: int = 0
    no_image: int = 0
    empty_step: int = 0
    unscored_step: int = 0
    dropped_no_image: int = 0
    dropped_no_steps: int = 0
    dropped_bad_step: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_no_image + self.dropped_no_steps + self.dropped_bad_step

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "dropped": self.dropped}

    def add(self, other: ConversionCounts) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


def _question(rec: dict[str, Any], fields: Fields) -> str:
    q: Any = ""
    for name in fields.question:
        q = rec.get(name)
        if q:
            break
    return str(q or "").strip()


def _score(step: dict[str, Any], fields: Fields) -> float | None:
    if fields.counts_mode:
        c, t = step.get(fields.mc_correct), step.get(fields.mc_total)  # type: ignore[arg-type]
        return None if c is None or not t else float(c) / float(t)
    s = step.get(fields.score)
    return None if s is None else float(s)


def to_mmprm(rec: dict[str, Any], fields: Fields, mode: str, counts: ConversionCounts) -> dict[str, Any] | None:
    """Convert one rollout (``mode`` = ``official`` or ``default``); ``None`` means dropped (official only)."""
    image = rec.get(fields.image, "")
    steps = rec.get(fields.steps) or []
    official = mode == "official"
    if not image:
        counts.no_image += 1
        if official:
            counts.dropped_no_image += 1
            return None
    if not steps and official:
        counts.dropped_no_steps += 1
        return None
    pieces: list[str] = []
    labels: list[float] = []
    empty = unscored = False
    for step in steps:
        text = str(step.get(fields.step_text) or "").strip()
        score = _score(step, fields)
        if not text:
            empty = True
        if score is None:
            unscored = True
        if official and (not text or score is None):
            counts.empty_step += int(not text)
            counts.unscored_step += int(score is None)
            counts.dropped_bad_step += 1
            return None
        if score is None:
            pieces.append(text)
        else:
            pieces.append(text + "<prm>")
            labels.append(1.0 if score > 0.0 else 0.0)
    counts.empty_step += int(empty)
    counts.unscored_step += int(unscored)
    human = {"from": "human", "value": f"Question: {_question(rec, fields)}\nProcess: " + "\n\n".join(pieces)}
    out: dict[str, Any] = {"image": image} if image else {}
    out["conversations"] = [human, {"from": "gpt", "value": labels}]
    counts.converted += 1
    return out


def encode_mmprm(rec: dict[str, Any]) -> str:
    """Serialise like the official script: ``json.dumps(prm, ensure_ascii=False) + "\\n"``."""
    return _ENCODE(rec) + "\n"


#: ``json.dumps(..., ensure_ascii=False)``'s own string encoder (C): the fast path below emits its bytes.
_ESC = json.encoder.encode_basestring


def mmprm_line(rec: dict[str, Any], fields: Fields, mode: str, counts: ConversionCounts) -> str | None:
    """``encode_mmprm(to_mmprm(rec, ...))`` in one step, without building the intermediate dicts.

    The output record has a fixed shape, so it is assembled from its strings (encoded by the same C function
    ``json.dumps`` uses) and its labels (``1.0``/``0.0``): byte-identical to the general path, which it falls
    back to for anything unusual (a non-string image or step text, per-step MC counts).
    """
    image = rec.get(fields.image, "")
    if fields.counts_mode or (image and type(image) is not str):
        return _general(rec, fields, mode, counts)
    steps = rec.get(fields.steps) or []
    official = mode == "official"
    if official and not image:
        counts.no_image += 1
        counts.dropped_no_image += 1
        return None
    if official and not steps:
        counts.dropped_no_steps += 1
        return None
    text_key, score_key = fields.step_text, fields.score
    pieces: list[str] = []
    labels: list[str] = []
    empty = unscored = False
    for step in steps:
        text = step.get(text_key)
        if type(text) is not str:
            if text:  # a truthy non-string (the general path's str())
                return _general(rec, fields, mode, counts)
            text = ""
        text = text.strip()
        s = step.get(score_key)
        if not text:
            empty = True
        if s is None:
            unscored = True
        if official and (not text or s is None):
            counts.empty_step += int(not text)
            counts.unscored_step += int(s is None)
            counts.dropped_bad_step += 1
            return None
        if s is None:
            pieces.append(text)
        else:
            pieces.append(text + "<prm>")
            labels.append("1.0" if float(s) > 0.0 else "0.0")
    counts.no_image += int(not image)
    counts.empty_step += int(empty)
    counts.unscored_step += int(unscored)
    counts.converted += 1
    human = f"Question: {_question(rec, fields)}\nProcess: " + "\n\n".join(pieces)
    head = '{"image": ' + _ESC(image) + ", " if image else "{"
    return (head + '"conversations": [{"from": "human", "value": ' + _ESC(human)
            + '}, {"from": "gpt", "value": [' + ", ".join(labels) + "]}]}\n")


def _general(rec: dict[str, Any], fields: Fields, mode: str, counts: ConversionCounts) -> str | None:
    prm = to_mmprm(rec, fields, mode, counts)
    return None if prm is None else encode_mmprm(prm)


_TEXT, _SCORE = attrgetter("t"), attrgetter("s")


class StructConverter:
    """The MM-PRM conversion straight from a msgspec-decoded line (typed structs, only the fields it reads).

    Decoding into structs is about twice as fast as into dicts, and the common case (string texts, every step
    scored) is built with a few joins. Anything else (a non-string image or text, NaN scores that msgspec
    refuses) goes through :func:`mmprm_line` on a dict, so the bytes are always the general path's.
    """

    def __init__(self, fields: Fields, mode: str):
        import msgspec

        if fields.counts_mode:
            raise ValueError("per-step MC counts take the general path")
        self.fields, self.mode = fields, mode
        self.questions = [q for q in dict.fromkeys(fields.question) if q not in (fields.image, fields.steps)]
        if len(self.questions) != len(fields.question) or fields.step_text == fields.score:
            raise ValueError("overlapping field names take the general path")
        # Typed: anything else (a non-string text or image, a non-number score, NaN) fails to decode and
        # takes the general path on a dict.
        step = msgspec.defstruct("MMPRMStep", [("t", str | None, None), ("s", float | None, None)],
                                 rename={"t": fields.step_text, "s": fields.score}, gc=False)
        spec: list[Any] = [("img", str, ""), ("steps", list[step] | None, None)]
        spec += [(f"q{i}", object, None) for i in range(len(self.questions))]
        rename = {"img": fields.image, "steps": fields.steps, **{f"q{i}": q for i, q in enumerate(self.questions)}}
        self.decoder = msgspec.json.Decoder(msgspec.defstruct("MMPRMRollout", spec, rename=rename, gc=False))
        self.qslots = [f"q{i}" for i in range(len(self.questions))]
        self.errors = (msgspec.DecodeError,)

    def line(self, raw: Any, counts: ConversionCounts) -> str | None:
        try:
            obj = self.decoder.decode(raw)
        except self.errors:
            return mmprm_line(json.loads(bytes(raw)), self.fields, self.mode, counts)
        image = obj.img
        steps = obj.steps or []
        official = self.mode == "official"
        if official and not image:
            counts.no_image += 1
            counts.dropped_no_image += 1
            return None
        if official and not steps:
            counts.dropped_no_steps += 1
            return None
        texts = list(map(_TEXT, steps))
        stripped = list(map(str.strip, texts)) if None not in texts else [t.strip() if t else "" for t in texts]
        scores = list(map(_SCORE, steps))
        unscored = None in scores
        empty = "" in stripped
        if official and (empty or unscored):
            for t, s in zip(stripped, scores, strict=True):
                if not t or s is None:
                    counts.empty_step += int(not t)
                    counts.unscored_step += int(s is None)
                    counts.dropped_bad_step += 1
                    return None
        if not unscored:
            body = "<prm>\n\n".join(stripped) + "<prm>" if stripped else ""
            labels = ", ".join(["1.0" if s > 0.0 else "0.0" for s in scores])
        else:
            body = "\n\n".join([t if s is None else t + "<prm>" for t, s in zip(stripped, scores, strict=True)])
            labels = ", ".join(["1.0" if s > 0.0 else "0.0" for s in scores if s is not None])
        counts.no_image += int(not image)
        counts.empty_step += int(empty)
        counts.unscored_step += int(unscored)
        counts.converted += 1
        q: Any = ""
        for slot in self.qslots:
            q = getattr(obj, slot)
            if q:
                break
        human = f"Question: {str(q or '').strip()}\nProcess: " + body
        head = '{"image": ' + _ESC(image) + ", " if image else "{"
        return (head + '"conversations": [{"from": "human", "value": ' + _ESC(human)
                + '}, {"from": "gpt", "value": [' + labels + "]}]}\n")
