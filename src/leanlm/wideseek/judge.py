"""LLM hooks for the scorer: an ``llm_judge`` column scorer and an LLM aligner of column names / key values.

WideSearch (``metric_utils.py``: ``llm_judge_column``, ``primary_key_preprocess``) asks a judge model to
score all cells of a column at once (pairs keyed ``idx_<i>``, criterion text, a fenced ``json`` object of
0/1 scores) and to map response strings onto reference strings (a fenced ``json`` object
``{origin: transform}``). These helpers do the same through any :class:`~leanlm.wideseek.llm.Backend`
(our own prompt wording). A failed or unparseable judge reply scores the column 0, as in WideSearch; a
failed alignment maps nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

from leanlm.common.progress import get_logger
from leanlm.wideseek.llm import Backend

log = get_logger("leanlm.wideseek.judge")

JUDGE_PROMPT = """You grade answers. For each item below you get a response and the standard answer (target). \
Score each item 1 if the response is correct under the grading criterion, else 0 (integers only). Think item by \
item, then give the final scores as a JSON object in a fenced block:
```json
{{"idx_0": 1, "idx_1": 0}}
```

Grading criterion:
{criterion}

Items:
{items}
"""

ALIGN_PROMPT = """Align two vocabularies by meaning, not by position. For each value of the vocabulary to align, \
find the value of the reference vocabulary that names the same thing (differences only in form or format, such \
as markdown, case, abbreviations or alternative names). Identical strings always correspond. Leave out values \
with no counterpart. Answer with a JSON object in a fenced block, keys exactly as in the vocabulary to align, \
values exactly as in the reference:
```json
{{"value to align": "reference value"}}
```

Vocabulary to align:
{response}

Reference vocabulary:
{reference}
"""

_JSON_BLOCK = re.compile(r"```json\s*(\{.*?\})\s*```", re.DOTALL)


def parse_json_block(text: str) -> dict[str, Any] | None:
    """The last fenced ``json`` object in ``text``, or None."""
    blocks = _JSON_BLOCK.findall(text or "")
    if not blocks:
        return None
    try:
        value = json.loads(blocks[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _ask(backend: Backend, prompt: str, agent: str) -> str | None:
    async def go() -> str:
        return (await backend.complete([{"role": "user", "content": prompt}], [], agent=agent)).content

    try:
        return asyncio.run(go())
    except Exception as exc:  # a judge failure scores 0 / aligns nothing, as in WideSearch
        log.warning("%s call failed: %s: %s", agent, type(exc).__name__, exc)
        return None


class LLMJudge:
    """``judge(responses, targets, criterion) -> scores`` for ``score_table(..., judge=)``."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def __call__(self, responses: Sequence[str], targets: Sequence[str], criterion: Any) -> list[float]:
        items = {f"idx_{i}": {"response": r, "target": t} for i, (r, t) in enumerate(zip(responses, targets, strict=True))}
        reply = _ask(self.backend, JUDGE_PROMPT.format(criterion=criterion or "The response means the same as the target.",
                                                       items=json.dumps(items, ensure_ascii=False, indent=1)), "judge")
        scores = parse_json_block(reply or "")
        if scores is None:
            return [0.0] * len(responses)
        out = []
        for i in range(len(responses)):
            value = scores.get(f"idx_{i}", 0)
            out.append(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0)
        return out


class LLMAligner:
    """``aligner(response_values, reference_values) -> {response: reference}`` for ``score_table(..., aligner=)``.

    Values identical in both lists are always mapped to themselves without asking the model."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def __call__(self, response: Sequence[str], reference: Sequence[str]) -> dict[str, str]:
        refs = [str(r) for r in reference]
        out = {str(v): str(v) for v in response if str(v) in refs}
        rest = [str(v) for v in response if str(v) not in out]
        if not rest:
            return out
        reply = _ask(self.backend, ALIGN_PROMPT.format(response=json.dumps(rest, ensure_ascii=False),
                                                       reference=json.dumps(refs, ensure_ascii=False)), "aligner")
        mapping = parse_json_block(reply or "") or {}
        out.update({str(k): str(v) for k, v in mapping.items() if str(k) in rest and isinstance(v, (str, int, float))})
        return out
