"""The fast MM-PRM line writer gives the general path's bytes and counts on every kind of record."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from leanlm.bis.convert import ConversionCounts, encode_mmprm, mmprm_line, to_mmprm
from leanlm.bis.schema import Fields

_text = st.one_of(st.none(), st.just(""), st.just("  "), st.text(max_size=12), st.integers(0, 3))
_score = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, -0.0, 2]), st.floats(allow_nan=True, allow_infinity=False))
_step = st.fixed_dictionaries({"step": _text, "score": _score})
_rec = st.fixed_dictionaries(
    {"image": st.one_of(st.just(""), st.text(max_size=6), st.lists(st.text(max_size=3), max_size=2)),
     "steps_with_score": st.one_of(st.none(), st.lists(_step, max_size=5)),
     "question": st.one_of(st.none(), st.text(max_size=10)), "question_orig": st.one_of(st.just(""), st.text(max_size=5))})


@settings(max_examples=200, deadline=None)
@given(rec=_rec, mode=st.sampled_from(["official", "default"]))
def test_fast_line_equals_general_path(rec: dict, mode: str) -> None:
    fields = Fields()
    c1, c2 = ConversionCounts(), ConversionCounts()
    prm = to_mmprm(rec, fields, mode, c1)
    want = None if prm is None else encode_mmprm(prm)
    assert mmprm_line(rec, fields, mode, c2) == want
    assert c1 == c2


def test_unicode_and_control_characters() -> None:
    rec = {"image": "é/ü.png", "question": ' "q"\t\u2028 ', "steps_with_score": [
        {"step": "a\nb \\ \x01 ✓", "score": 0.25}, {"step": "c", "score": 0}]}
    c = ConversionCounts()
    assert mmprm_line(rec, Fields(), "official", c) == encode_mmprm(to_mmprm(rec, Fields(), "official",
                                                                            ConversionCounts()))


@settings(max_examples=200, deadline=None)
@given(recs=st.lists(_rec, min_size=1, max_size=4), mode=st.sampled_from(["official", "default"]),
       extra=st.booleans())
def test_struct_writer_equals_general_path(recs: list, mode: str, extra: bool) -> None:
    """The writer's struct decoder, from the JSON lines, gives the general path's bytes and counts."""
    import io
    import json

    import numpy as np

    from leanlm.bis.writers import MmprmWriter

    lines = [json.dumps({**r, "response": "x" * 5} if extra else r, ensure_ascii=False).encode() + b"\n"
             for r in recs]
    data = b"".join(lines)
    ends = np.cumsum([len(x) for x in lines])
    out = io.BytesIO()
    w = MmprmWriter(out, Fields(), mode)
    w.write_spans(data, np.concatenate(([0], ends[:-1])), ends)
    c = ConversionCounts()
    want = [encode_mmprm(p) for r in recs if (p := to_mmprm(json.loads(json.dumps(r)), Fields(), mode, c))]
    assert out.getvalue().decode() == "".join(want)
    assert w.conversion == c and w.written == len(want)
