"""A harder synthetic PRM corpus with ground truth (``leanlm bis synth --with-truth``, issue #16, brief §4.2).

Each source is a family of multi-step problems whose every step applies one *bijective* operation to a state:

* ``modchain``: x ← (x + d) mod m (moduli and lengths vary by source);
* ``wordarith``: a word problem with integer gains and losses (x ← x ± d);
* ``listops``: a short digit list under reverse / rotate / add-k-to-each (mod 10) / swap.

A noisy *policy* writes the solution: each step goes wrong with probability ``eps_policy`` and later steps
continue from what it wrote, so errors propagate. A wrong step never lands on the true state (the error value
excludes it), so a step's ground truth ``truth`` = "no error so far" = "the written state equals the true one"
(cumulative correctness, the primary VisualProcessBench-style label of brief §4.2; ``truth_local`` is the
step's own arithmetic).

MC annotation as in VisualPRM400K (brief §1.3): from each prefix, K continuations of a noisy *completer*
(per-step error ``eps_completer``) finish the problem; the step's score is the share whose final state equals
the true answer. Completer errors give false negatives (low MC on a correct prefix); a completer error can also
undo a policy error by luck (false positives from wrong prefixes, the low-MC pseudo-positives the paper's
reliability term targets). Because every operation is a bijection, a *perfect* completer gives MC > 0 exactly
when the prefix is correct (tested).

The JSONL layout is VisualPRM400K-v1.1-Raw's, one file per source, so ``leanlm bis select`` runs unchanged;
``truth``/``truth_local`` are extra fields for evaluation only (training reads only the MC scores).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leanlm.common.atomic import atomic_write
from leanlm.common.progress import progress


@dataclass(frozen=True)
class Source:
    """One problem family: kind, its size parameters, and the noise of the policy and the completer."""

    name: str
    kind: str  # "modchain" | "wordarith" | "listops"
    min_steps: int
    max_steps: int
    modulus: int = 7
    eps_policy: float = 0.12
    eps_completer: float = 0.08
    k: int = 8
    weight: float = 1.0


DEFAULT_SOURCES: tuple[Source, ...] = (
    Source("modchain_m3_easy", "modchain", 2, 4, modulus=3, eps_policy=0.15, eps_completer=0.05, k=8),
    Source("modchain_m7", "modchain", 3, 7, modulus=7, eps_policy=0.10, eps_completer=0.08, k=8),
    Source("modchain_m11_long", "modchain", 5, 10, modulus=11, eps_policy=0.08, eps_completer=0.10, k=16),
    Source("wordarith", "wordarith", 3, 7, eps_policy=0.10, eps_completer=0.10, k=8),
    Source("listops", "listops", 3, 6, eps_policy=0.10, eps_completer=0.08, k=16),
)


@dataclass
class TruthConfig:
    """Corpus shape: rollouts per split (train is what selection and training see; val/test carry truth)."""

    train: int = 20_000
    val: int = 2_000
    test: int = 4_000
    seed: int = 0
    sources: tuple[Source, ...] = field(default=DEFAULT_SOURCES)


_NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay"]
_ITEMS = ["coins", "apples", "cards", "stamps", "marbles"]
_LIST_OPS = ["reverse", "rotate", "add", "swap"]


def _apply(kind: str, src: Source, state: Any, op: tuple) -> Any:
    if kind == "modchain":
        return (state + op[0]) % src.modulus
    if kind == "wordarith":
        return state + op[0]
    name = op[0]
    lst = list(state)
    if name == "reverse":
        return tuple(reversed(lst))
    if name == "rotate":
        return tuple(lst[op[1]:] + lst[:op[1]])
    if name == "add":
        return tuple((v + op[1]) % 10 for v in lst)
    i, j = op[1], op[2]
    lst[i], lst[j] = lst[j], lst[i]
    return tuple(lst)


def _corrupt(rng: random.Random, kind: str, src: Source, value: Any, avoid: set) -> Any:
    """A wrong result near ``value``, never in ``avoid`` (the locally right value and, for the policy, the truth)."""
    for _ in range(100):
        if kind == "modchain":
            cand: Any = rng.randrange(src.modulus)
        elif kind == "wordarith":
            cand = value + rng.choice((-3, -2, -1, 1, 2, 3, 10, -10))
        else:
            lst = list(value)
            i = rng.randrange(len(lst))
            if rng.random() < 0.5 and len(lst) > 1:
                j = (i + 1) % len(lst)
                lst[i], lst[j] = lst[j], lst[i]
            else:
                lst[i] = (lst[i] + rng.choice((1, 9))) % 10
            cand = tuple(lst)
        if cand not in avoid:
            return cand
    raise RuntimeError(f"{src.name}: could not draw a wrong value")  # only for degenerate sources (modulus < 3)


def _problem(rng: random.Random, src: Source) -> tuple[Any, list[tuple], str, list[str]]:
    """Start state, operations, question text, and the text of each operation."""
    n = rng.randint(src.min_steps, src.max_steps)
    if src.kind == "modchain":
        x0 = rng.randrange(src.modulus)
        ops = [(rng.randrange(1, src.modulus),) for _ in range(n)]
        q = f"Start at {x0}. Add {', '.join(str(o[0]) for o in ops)} in turn, modulo {src.modulus}. Final value?"
        return x0, ops, q, [f"+{o[0]}" for o in ops]
    if src.kind == "wordarith":
        who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        x0 = rng.randint(5, 40)
        ops = [(rng.choice((1, -1)) * rng.randint(1, 19),) for _ in range(n)]
        parts = [("gets" if o[0] > 0 else "gives away") + f" {abs(o[0])}" for o in ops]
        q = f"{who} has {x0} {item}. Then {who} " + ", then ".join(parts) + f". How many {item} now?"
        return x0, ops, q, [f"{o[0]:+d}" for o in ops]
    size = rng.randint(3, 5)
    x0 = tuple(rng.randrange(10) for _ in range(size))
    ops = []
    for _ in range(n):
        name = rng.choice(_LIST_OPS)
        if name == "reverse":
            ops.append(("reverse",))
        elif name == "rotate":
            ops.append(("rotate", rng.randrange(1, size)))
        elif name == "add":
            ops.append(("add", rng.randrange(1, 10)))
        else:
            i, j = rng.sample(range(size), 2)
            ops.append(("swap", i, j))
    texts = [" ".join(str(p) for p in o) for o in ops]
    q = f"List {list(x0)}. Apply: {'; '.join(texts)}. Final list?"
    return x0, ops, q, texts


def _fmt(kind: str, state: Any) -> str:
    return "[" + ",".join(str(v) for v in state) + "]" if kind == "listops" else str(state)


def _step_text(kind: str, src: Source, prev: Any, op_text: str, value: Any) -> str:
    if kind == "modchain":
        return f"{prev} {op_text} = {value} (mod {src.modulus})"
    if kind == "wordarith":
        return f"{prev} {op_text} = {value}"
    return f"{op_text}: {_fmt(kind, prev)} -> {_fmt(kind, value)}"


def mc_score(rng: random.Random, src: Source, state: Any, ops: list[tuple], answer: Any, eps_completer: float,
             k: int) -> int:
    """How many of ``k`` noisy completions from ``state`` through ``ops`` end on ``answer``."""
    hits = 0
    for _ in range(k):
        s = state
        for op in ops:
            good = _apply(src.kind, src, s, op)
            s = _corrupt(rng, src.kind, src, good, {good}) if rng.random() < eps_completer else good
        hits += s == answer
    return hits


def rollout(rng: random.Random, src: Source, index: int, *, eps_completer: float | None = None) -> dict[str, Any]:
    """One rollout in the VisualPRM400K-v1.1-Raw layout plus ``truth``/``truth_local`` (evaluation only)."""
    eps_c = src.eps_completer if eps_completer is None else eps_completer
    x0, ops, question, op_texts = _problem(rng, src)
    true_states, s = [], x0
    for op in ops:
        s = _apply(src.kind, src, s, op)
        true_states.append(s)
    answer = true_states[-1]
    written, truth, local, texts = [], [], [], []
    prev = x0
    for j, op in enumerate(ops):
        good = _apply(src.kind, src, prev, op)
        if rng.random() < src.eps_policy:
            value = _corrupt(rng, src.kind, src, good, {good, true_states[j]})
        else:
            value = good
        texts.append(_step_text(src.kind, src, prev, op_texts[j], value))
        local.append(int(value == good))
        truth.append(int(value == true_states[j]))
        written.append(value)
        prev = value
    steps = []
    for j in range(len(ops)):
        hits = mc_score(rng, src, written[j], ops[j + 1:], answer, eps_c, src.k)
        steps.append({"step": texts[j], "score": hits / src.k})
    return {
        "image": f"synthetic/{src.name}/{index:07d}.png",
        "question": question,
        "answer": _fmt(src.kind, answer),
        "response": "\n\n".join(texts),
        "steps_with_score": steps,
        "num_mc_sequences": src.k,
        "truth": truth,
        "truth_local": local,
    }


def write_truth_corpus(out_dir: str | os.PathLike[str], cfg: TruthConfig) -> dict[str, Any]:
    """Write ``train/``, ``val/`` and ``test/`` directories of ``<source>.jsonl`` files; returns a summary.

    Rollouts are spread over sources by ``Source.weight``; each split has its own seed stream, so a larger
    ``train`` never changes ``val``/``test``.
    """
    out = Path(out_dir)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    summary: dict[str, Any] = {"dir": str(out), "splits": {}}
    for split_i, (split, n) in enumerate((("train", cfg.train), ("val", cfg.val), ("test", cfg.test))):
        rng = random.Random(f"{cfg.seed}-{split_i}")
        weights = [s.weight for s in cfg.sources]
        assign = rng.choices(range(len(cfg.sources)), weights=weights, k=n)
        per: dict[str, list[str]] = {s.name: [] for s in cfg.sources}
        for i, a in enumerate(progress(assign, desc=f"synth {split}", unit="rollout")):
            src = cfg.sources[a]
            per[src.name].append(dumps(rollout(rng, src, i)))
        d = out / split
        d.mkdir(parents=True, exist_ok=True)
        counts = {}
        for name, lines in per.items():
            with atomic_write(d / f"{name}.jsonl") as fh:
                fh.write("".join(line + "\n" for line in lines))
            counts[name] = len(lines)
        summary["splits"][split] = counts
    return summary
