"""A plain-Python reading of the official selection algorithm, written from its semantics (brief §1.1).

This is the reference the tests and the benchmark hold the engines to: whole files in memory, ``json.loads``
of every line, the score list of each rollout, a stable sort by BIS descending, ``max(1, int(m * ratio))``
kept, output in file order. It deliberately keeps the official script's handling of odd input (blank and
undecodable lines skipped, ``float()`` of each score, a rollout without a scored step not a candidate) and
its output: the kept rollouts converted to the MM-PRM format, silently dropping those the converter drops.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from leanlm.bis.score import bis_value


def scores_of(rec: dict[str, Any]) -> list[float]:
    """Scores of the steps that have one (``float()`` of each; unconvertible or null scores are skipped)."""
    out = []
    for step in rec.get("steps_with_score") or []:
        s = step.get("score")
        if s is None:
            continue
        try:
            out.append(float(s))
        except (TypeError, ValueError):
            continue
    return out


def select_lines(lines: list[str], alpha: float, ratio: float) -> list[int]:
    """Indices (into ``lines``) of the kept rollouts, in file order."""
    scored: list[tuple[int, float]] = []
    for idx, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        sc = scores_of(rec)
        if sc:
            scored.append((idx, bis_value(sc, alpha)))
    if not scored:
        return []
    scored.sort(key=lambda x: x[1], reverse=True)
    k = max(1, int(len(scored) * ratio))
    return sorted(idx for idx, _ in scored[:k])


def convert(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The official ``build_prm_from_rec`` semantics (hard labels, threshold 0)."""
    img = rec.get("image", "")
    steps = rec.get("steps_with_score") or []
    if not img or not steps:
        return None
    texts, labels = [], []
    for step in steps:
        text = (step.get("step") or "").strip()
        s = step.get("score")
        if not text or s is None:
            return None
        try:
            v = float(s)
        except (TypeError, ValueError):
            return None
        texts.append(text + "<prm>")
        labels.append(1.0 if v > 0.0 else 0.0)
    q = str(rec.get("question_orig") or rec.get("question") or "").strip()
    human = {"from": "human", "value": f"Question: {q}\nProcess: " + "\n\n".join(texts)}
    return {"image": img, "conversations": [human, {"from": "gpt", "value": labels}]}


def build_subset(files: list[str | os.PathLike[str]], alpha: float, ratio: float, output: str | os.PathLike[str],
                 raw: bool = False) -> int:
    """Run the whole official pipeline over ``files`` (in the given order) into ``output``; returns rows written.

    ``raw=True`` writes the kept lines themselves (stripped) instead of converting them, which is what our
    default ``jsonl`` output must match.
    """
    written = 0
    with open(output, "w", encoding="utf-8") as out:
        for path in files:
            with open(path, encoding="utf-8") as fh:
                lines = fh.readlines()
            for idx in select_lines(lines, alpha, ratio):
                line = lines[idx].strip()
                if raw:
                    out.write(line + "\n")
                    written += 1
                    continue
                prm = convert(json.loads(line))
                if prm is not None:
                    out.write(json.dumps(prm, ensure_ascii=False) + "\n")
                    written += 1
    return written


def select_paths(directory: str | os.PathLike[str]) -> list[Path]:
    return sorted(Path(directory).glob("*.jsonl"))
