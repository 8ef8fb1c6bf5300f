"""A VisualPRM400K-v1.1-Raw-shaped synthetic corpus for tests and benchmarks (no real data is available offline).

Each rollout mimics one annotation line of VisualPRM400K-v1.1-Raw (brief §1.3): ``image``, ``question``,
``question_orig``, ``answer``, ``response``, ``steps_with_score`` = [{``step``, ``score``}], ``num_mc_sequences``.
Scores are Monte-Carlo estimates k/K: a rollout has a first wrong step (or none); before it each continuation
succeeds with a high probability, after it only by luck (the "low-MC pseudo-positives" of the paper), so all
three kinds of rollout (all-positive, all-negative, mixed) occur, with ties, as in the real corpus.
A small share of lines carries the quirks the official converter drops: a missing image, an empty step, a step
without a score.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

from leanlm.common.atomic import atomic_write
from leanlm.common.progress import progress

_WORDS = ["the", "area", "of", "triangle", "is", "angle", "degrees", "so", "we", "compute", "sum", "of", "both", "sides", "then", "divide", "by", "two", "hence", "answer", "chart", "shows", "value", "bar", "highest", "year", "percent", "total", "ratio", "equals", "multiply", "subtract", "figure", "circle", "radius"]


@dataclass
class SynthConfig:
    """Shape of the synthetic corpus. Defaults give about 420 bytes per rollout, as in the issue's benchmark."""

    rollouts: int = 10_000
    sources: int = 38
    min_steps: int = 2
    max_steps: int = 11
    mc_sequences: tuple[int, ...] = (8, 16)
    p_missing_score: float = 0.002
    p_no_image: float = 0.001
    p_empty_step: float = 0.001
    p_no_scored_step: float = 0.001
    seed: int = 0


@functools.lru_cache(maxsize=4096)
def _cdf(n: int, p: float) -> tuple[float, ...]:
    acc, out = 0.0, []
    for k in range(n + 1):
        acc += math.comb(n, k) * p**k * (1.0 - p) ** (n - k)
        out.append(acc)
    return tuple(out)


def _binomial(rng: random.Random, n: int, p: float) -> int:
    """A Binomial(n, p) draw by inverting the CDF (p rounded to 0.01 so the tables cache)."""
    if p <= 0.0:
        return 0
    return min(bisect.bisect_left(_cdf(n, round(p, 2)), rng.random()), n)


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def rollout(rng: random.Random, cfg: SynthConfig, source: str, index: int) -> dict:
    """One synthetic rollout as a dict in the VisualPRM400K-v1.1-Raw layout."""
    n = rng.randint(cfg.min_steps, cfg.max_steps)
    k_total = rng.choice(cfg.mc_sequences)
    difficulty = rng.random()
    first_error = n if rng.random() < 0.35 else rng.randrange(n)
    p_ok = 0.55 + 0.45 * (1.0 - difficulty)
    steps = []
    for j in range(n):
        p = p_ok if j < first_error else rng.choice((0.0, 0.0, 0.0, 0.04, 0.12))
        score: float | None = _binomial(rng, k_total, p) / k_total
        if rng.random() < cfg.p_missing_score:
            score = None
        text = _text(rng, 1, 3)
        if rng.random() < cfg.p_empty_step:
            text = ""
        steps.append({"step": text, "score": score})
    if rng.random() < cfg.p_no_scored_step:
        for s in steps:
            s["score"] = None
    question = _text(rng, 3, 8) + "?"
    image = "" if rng.random() < cfg.p_no_image else f"{source}/{index:07d}.png"
    record = {
        "image": image,
        "question": question,
        "answer": str(rng.randint(0, 99)),
        "response": "\n\n".join(s["step"] for s in steps),
        "steps_with_score": steps,
        "num_mc_sequences": k_total,
    }
    if rng.random() < 0.2:  # some lines carry an edited question_orig, which the official code prefers
        record["question_orig"] = question.upper()
    return record


def source_names(n: int) -> list[str]:
    return [f"source{i:02d}_train_extracted" for i in range(n)]


def write_corpus(
    out_dir: str | os.PathLike[str], cfg: SynthConfig, *, single_file: str | None = None, source_field: str = "source"
) -> list[Path]:
    """Write ``cfg.rollouts`` rollouts over ``cfg.sources`` files ``<source>.jsonl`` (sizes vary by source).

    With ``single_file`` every rollout goes to that one file with its source in ``source_field`` instead.
    Returns the files written (each atomically).
    """
    rng = random.Random(cfg.seed)
    names = source_names(cfg.sources)
    weights = [1.0 + 3.0 * rng.random() for _ in names]
    counts = [0] * len(names)
    assign = rng.choices(range(len(names)), weights=weights, k=cfg.rollouts)
    for a in assign:
        counts[a] += 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    written: list[Path] = []
    if single_file is not None:
        path = out / single_file
        with atomic_write(path) as fh:
            for i, a in enumerate(progress(assign, desc="synth", unit="rollout")):
                rec = rollout(rng, cfg, names[a], i)
                rec[source_field] = names[a]
                fh.write(dumps(rec) + "\n")
        return [path]
    bar = progress(range(len(names)), desc="synth files", unit="file")
    for s in bar:
        path = out / f"{names[s]}.jsonl"
        with atomic_write(path) as fh:
            for i in range(counts[s]):
                fh.write(dumps(rollout(rng, cfg, names[s], i)) + "\n")
        written.append(path)
    return written
