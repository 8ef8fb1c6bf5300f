"""A toy, fully-known PRM study: does a BIS-selected subset train a better step scorer than a random one?

Brief §4.2 proposes checking the paper's mechanism on CPU with synthetic multi-step tasks whose ground truth
is known. This is a small version of it (our construction, not the paper's experiment):

* task: a chain x_j = (x_{j-1} + d_j) mod m; a noisy policy writes each step's value wrong with probability
  ``eps_policy`` and continues from what it wrote, so the ground truth of step j is *cumulative* correctness;
* MC annotation like VisualPRM's: K completions from each prefix; from a correct prefix each succeeds with
  probability (1 − ``eps_completer``)^(remaining steps); from a wrong prefix only by luck (``p_luck``), which
  produces the low-MC pseudo-positives the paper's reliability term targets; score = successes / K;
* PRM: a one-layer GRU over one-hot (previous value, increment, written value, residual) with a per-step logit, trained
  for one epoch (single pass, as in the paper) with binary cross-entropy on the hard labels y = 1[score > 0];
* evaluation: step-level macro-F1 at threshold 0.5 against the ground truth on held-out rollouts.

Subsets of equal size are selected with :func:`leanlm.bis.select.select` (BIS, random, mixed-only, low-MC).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ToyConfig:
    modulus: int = 7
    min_steps: int = 3
    max_steps: int = 8
    eps_policy: float = 0.12
    eps_completer: float = 0.08
    p_luck: float = 0.04
    k: int = 8
    train: int = 40_000
    test: int = 4_000
    hidden: int = 64
    batch: int = 64
    lr: float = 3e-3
    seed: int = 0


def make_rollouts(cfg: ToyConfig, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` annotated rollouts with ``truth`` (cumulative correctness) beside the MC ``steps_with_score``."""
    rng = random.Random(seed)
    m = cfg.modulus
    out = []
    for i in range(n):
        steps = rng.randint(cfg.min_steps, cfg.max_steps)
        x0 = rng.randrange(m)
        prev, ok = x0, True
        d, v, truth = [], [], []
        for _ in range(steps):
            inc = rng.randrange(1, m)
            value = (prev + inc) % m
            if rng.random() < cfg.eps_policy:
                value = (value + rng.randrange(1, m)) % m
                ok = False
            d.append(inc)
            v.append(value)
            truth.append(int(ok))
            prev = value
        scores = []
        for j in range(steps):
            remaining = steps - j - 1
            p = (1 - cfg.eps_completer) ** remaining if truth[j] else cfg.p_luck
            scores.append(sum(rng.random() < p for _ in range(cfg.k)) / cfg.k)
        out.append({"id": i, "x0": x0, "d": d, "v": v, "truth": truth,
                    "steps_with_score": [{"step": f"x{j + 1} = {v[j]}", "score": s} for j, s in enumerate(scores)]})
    return out


def _tensors(rolls: list[dict[str, Any]], m: int, labels: str) -> tuple[Any, Any, Any]:
    import torch

    n, t = len(rolls), max(len(r["d"]) for r in rolls)
    x = torch.zeros(n, t, 4 * m)
    y = torch.zeros(n, t)
    mask = torch.zeros(n, t, dtype=torch.bool)
    for i, r in enumerate(rolls):
        prev = r["x0"]
        for j, (inc, val) in enumerate(zip(r["d"], r["v"], strict=True)):
            x[i, j, prev] = 1
            x[i, j, m + inc] = 1
            x[i, j, 2 * m + val] = 1
            x[i, j, 3 * m + (prev + inc - val) % m] = 1  # the step's arithmetic residual (0 = locally right)
            prev = val
            mask[i, j] = True
            y[i, j] = r["truth"][j] if labels == "truth" else float(r["steps_with_score"][j]["score"] > 0)
    return x, y, mask


class _PRM:
    def __init__(self, m: int, hidden: int, seed: int):
        import torch

        torch.manual_seed(seed)
        self.gru = torch.nn.GRU(4 * m, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)
        self.params = list(self.gru.parameters()) + list(self.head.parameters())

    def __call__(self, x: Any) -> Any:
        h, _ = self.gru(x)
        return self.head(h).squeeze(-1)


def train_and_eval(train: list[dict[str, Any]], test: list[dict[str, Any]], cfg: ToyConfig, seed: int) -> dict[str, float]:
    """One epoch of single-pass training on ``train`` (hard MC labels), macro-F1/accuracy on ``test`` truth."""
    import torch

    torch.set_num_threads(1)
    model = _PRM(cfg.modulus, cfg.hidden, seed)
    opt = torch.optim.Adam(model.params, lr=cfg.lr)
    x, y, mask = _tensors(train, cfg.modulus, "mc")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(train), cfg.batch):
        idx = order[start : start + cfg.batch]
        logits = model(x[idx])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask[idx]], y[idx][mask[idx]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt, mt = _tensors(test, cfg.modulus, "truth")
    with torch.no_grad():
        pred = (torch.sigmoid(model(xt))[mt] >= 0.5).numpy()
    truth = yt[mt].numpy().astype(bool)
    f1s = []
    for positive in (True, False):
        p, t = pred == positive, truth == positive
        tp = float((p & t).sum())
        prec = tp / max(float(p.sum()), 1.0)
        rec = tp / max(float(t.sum()), 1.0)
        f1s.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    return {"macro_f1": float(np.mean(f1s)), "f1_pos": f1s[0], "f1_neg": f1s[1],
            "accuracy": float((pred == truth).mean()), "steps_trained": int(mask.sum())}


def run_study(cfg: ToyConfig, work: Path, ratio: float = 0.1, seeds: int = 3) -> list[dict[str, Any]]:
    """Full data vs equal-size subsets (BIS α=0.2, random, mixed-only, low-MC), each trained with ``seeds`` seeds."""
    from leanlm.bis.score import BIS, LowMC, MixedOnly, RandomScorer
    from leanlm.bis.select import SelectConfig, select

    work.mkdir(parents=True, exist_ok=True)
    train = make_rollouts(cfg, cfg.train, cfg.seed)
    test = make_rollouts(cfg, cfg.test, cfg.seed + 10_000)
    src = work / "toy_train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in train))
    rows = []

    def subset(scorer: Any) -> list[dict[str, Any]]:
        out = work / "subset.jsonl"
        select([src], out, SelectConfig(ratio=ratio, scorer=scorer, hash_input=False))
        keep = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        return [train[i] for i in keep]

    arms: list[tuple[str, Any]] = [("full data (100%)", None), (f"BIS α=0.2, {ratio:.0%}", BIS(0.2)),
                                   (f"random {ratio:.0%}", "random"), (f"mixed-only {ratio:.0%}", MixedOnly(0)),
                                   (f"low-MC {ratio:.0%}", LowMC())]
    for name, scorer in arms:
        results = []
        for s in range(seeds):
            if scorer is None:
                data = train
            elif scorer == "random":
                data = subset(RandomScorer(seed=s))
            else:
                data = subset(scorer)
            results.append(train_and_eval(data, test, cfg, seed=s))
        f1 = [r["macro_f1"] for r in results]
        mean = float(np.mean(f1))
        half = 1.96 * float(np.std(f1, ddof=1)) / math.sqrt(len(f1)) if len(f1) > 1 else float("nan")
        rows.append({"arm": name, "rollouts": len(train) if scorer is None else int(len(train) * ratio),
                     "macro_f1": mean, "ci95": half, "accuracy": float(np.mean([r["accuracy"] for r in results])),
                     "steps_trained": results[0]["steps_trained"]})
    return rows
