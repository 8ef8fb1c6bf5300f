"""One-epoch PRM training (``epochs`` > 1 only for the study's equal-steps control) with checkpoints and exact
resume, and step scoring (brief §1.4).

Optimisation follows the official recipe scaled down: one epoch, AdamW, weight decay 0.05, cosine schedule
with 5% warmup; the loss is cross-entropy of the (Yes, No) logits at each ``<prm>`` against [y, 1 - y] with
y = 1[MC > 0] (hard, the paper's main setting) or y = MC (``soft``). Steps without a score are left out of the
loss. The data order is a permutation drawn from ``seed``, so a run resumed from a checkpoint (model, optimizer,
scheduler, RNG state, step) replays exactly the batches and losses the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leanlm.bis.config import source_name
from leanlm.bis.inputs import discover_inputs
from leanlm.bis.prm.model import PRM, ModelSpec, build, load_spec, save_spec
from leanlm.common.progress import progress


@dataclass
class Example:
    source: str
    question: str
    steps: list[str]
    scores: list[float | None]
    truth: list[int] | None


def load_examples(inputs: Sequence[str | os.PathLike[str]]) -> list[Example]:
    """Rollouts from JSONL files or directories (VisualPRM400K layout; ``source`` field wins over the file name)."""
    out = []
    for path in discover_inputs(inputs):
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    steps = r["steps_with_score"]
                    ex = Example(str(r.get("source") or source_name(path)), str(r.get("question", "")),
                                 [str(s.get("step", "")) for s in steps],
                                 [None if s.get("score") is None else float(s["score"]) for s in steps],
                                 [int(t) for t in r["truth"]] if "truth" in r else None)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise ValueError(f"{path}:{line_no}: not a rollout with steps_with_score ({exc})") from exc
                if ex.truth is not None and len(ex.truth) != len(ex.steps):
                    raise ValueError(f"{path}:{line_no}: 'truth' has {len(ex.truth)} labels for {len(ex.steps)} steps")
                out.append(ex)
    return out


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    lr: float = 1e-3
    batch: int = 32
    weight_decay: float = 0.05
    warmup: float = 0.05
    soft: bool = False
    seed: int = 0
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end
    keep_last_checkpoint: bool = False  # delete step-<n> checkpoints once a later one is written (big backbones)
    max_steps: int | None = None  # stop early (tests); the schedule still spans the full epoch
    epochs: int = 1  # the official recipe is one; the study's equal-steps control trains small subsets longer
    device: str = "cpu"  # or "cuda"


def _batch(model: PRM, exs: Sequence[Example], soft: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs = [model.encode(e.question, e.steps) for e in exs]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    targets: list[float] = []
    for i, (s, e) in enumerate(zip(seqs, exs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        kept = sum(1 for t in s if t == model.prm_id)  # markers that survived truncation
        for sc in e.scores[:kept]:
            targets.append(float("nan") if sc is None else (sc if soft else float(sc > 0)))
    return ids, mask, torch.tensor(targets)


def step_loss(model: PRM, exs: Sequence[Example], soft: bool) -> torch.Tensor:
    """Mean cross-entropy of the (Yes, No) logits against [y, 1 - y] over the scored steps of ``exs``."""
    ids, mask, y = _batch(model, exs, soft)
    dev = next(model.parameters()).device
    ids, mask, y = ids.to(dev), mask.to(dev), y.to(dev)
    logits = model.step_logits(ids, mask)
    keep = ~torch.isnan(y)
    logp = torch.log_softmax(logits[keep].float(), dim=-1)
    yk = y[keep]
    return -(yk * logp[:, 0] + (1 - yk) * logp[:, 1]).mean()


def _schedule(total: int, warmup: float):
    w = max(1, math.ceil(total * warmup))

    def f(step: int) -> float:
        if step < w:
            return (step + 1) / w
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))

    return f


def _save(path: Path, model: PRM, opt: Any, sched: Any, step: int, cfg: TrainConfig, losses: list[float]) -> None:
    """An atomic checkpoint directory: weights, optimizer, scheduler, RNG, step, config, losses so far."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": torch.get_rng_state()}, tmp / "state.pt")
    save_spec(tmp / "model.json", cfg.model)
    cfg_doc = asdict(cfg)
    cfg_doc.pop("model")
    (tmp / "train.json").write_text(json.dumps({"step": step, "config": cfg_doc, "losses": losses}, indent=1))
    if path.exists():
        old = path.with_name(path.name + ".old")
        path.rename(old)
        tmp.rename(path)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(path)


def load_prm(ckpt: str | os.PathLike[str], device: str = "cpu") -> PRM:
    """The PRM stored in a checkpoint directory written by :func:`train`."""
    p = Path(ckpt)
    model = build(load_spec(p / "model.json"))
    model.load_state_dict(torch.load(p / "state.pt", weights_only=False, map_location="cpu")["model"])
    return model.to(device).eval()


def step_checkpoints(out: str | os.PathLike[str]) -> list[Path]:
    """The complete ``step-<n>`` checkpoints under ``out``, oldest first (``.tmp``/``.old`` leftovers ignored)."""
    found = [p for p in Path(out).glob("step-*") if p.is_dir() and p.name[5:].isdigit() and (p / "train.json").exists()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def train(examples: Sequence[Example], out: str | os.PathLike[str], cfg: TrainConfig,
          resume: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Train one epoch over ``examples``; checkpoints go to ``out/step-<n>`` and ``out/final``.

    With ``resume`` (a checkpoint directory) the model, optimizer, scheduler and RNG are restored and training
    continues at the next batch of the same data order. Returns the per-step losses and the final checkpoint.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = build(cfg.model).to(cfg.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    per_epoch = math.ceil(len(examples) / cfg.batch)
    total = per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, cfg.warmup))
    gen = torch.Generator().manual_seed(cfg.seed)  # epoch e's order is the e-th permutation drawn from it
    orders = [torch.randperm(len(examples), generator=gen).tolist() for _ in range(cfg.epochs)]
    start, losses = 0, []
    if resume is not None:
        state = torch.load(Path(resume) / "state.pt", weights_only=False, map_location=cfg.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"].cpu())
        meta = json.loads((Path(resume) / "train.json").read_text())
        now = asdict(cfg)
        now.pop("model")
        differs = [k for k in ("lr", "batch", "weight_decay", "warmup", "soft", "seed", "epochs")
                   if meta["config"].get(k, 1 if k == "epochs" else None) != now[k]]
        if load_spec(Path(resume) / "model.json") != cfg.model:
            differs.append("model")
        if differs:
            raise ValueError(f"{resume}: checkpoint was trained with different settings ({', '.join(differs)}); "
                             "resume with the same ones")
        start, losses = int(meta["step"]), list(meta["losses"])
    end = total if cfg.max_steps is None else min(total, cfg.max_steps)
    model.train()
    for step in progress(range(start, end), desc="bis train", unit="step"):
        e, k = divmod(step, per_epoch)
        batch = [examples[i] for i in orders[e][k * cfg.batch:(k + 1) * cfg.batch]]
        loss = step_loss(model, batch, cfg.soft)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < end:
            _save(out / f"step-{step + 1}", model, opt, sched, step + 1, cfg, losses)
            if cfg.keep_last_checkpoint:
                for old in step_checkpoints(out)[:-1]:
                    shutil.rmtree(old)
    _save(out / "final", model, opt, sched, end, cfg, losses)
    return {"steps": end, "epoch_steps": per_epoch, "total_steps": total, "losses": losses,
            "checkpoint": str(out / "final")}


@torch.no_grad()
def score_steps(model: PRM, examples: Sequence[Example], batch: int = 64) -> np.ndarray:
    """Yes-probability of every step of ``examples`` (concatenated; truncated steps score NaN)."""
    model.eval()
    out: list[float] = []
    for i in range(0, len(examples), batch):
        exs = examples[i:i + batch]
        ids, mask, _ = _batch(model, exs, soft=True)
        dev = next(model.parameters()).device
        probs = torch.softmax(model.step_logits(ids.to(dev), mask.to(dev)).float(), dim=-1)[:, 0].tolist()
        k = 0
        for row, e in enumerate(exs):
            kept = min(len(e.steps), int((ids[row] == model.prm_id).sum()))
            out += probs[k:k + kept] + [float("nan")] * (len(e.steps) - kept)
            k += kept
    return np.asarray(out)


def truth_arrays(model: PRM, examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, truth, sources) over every step of ``examples`` with a ``truth`` label, for the metrics."""
    if any(e.truth is None for e in examples):
        raise ValueError("evaluation data must carry 'truth' per step (write it with leanlm bis synth --with-truth)")
    scores = score_steps(model, examples)
    truth = np.asarray([t for e in examples for t in e.truth])  # type: ignore[union-attr]
    sources = np.asarray([e.source for e in examples for _ in e.steps])
    keep = ~np.isnan(scores)
    return scores[keep], truth[keep], sources[keep]
