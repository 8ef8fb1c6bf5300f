"""Training checkpoints with exact resume: weights (or LoRA adapter), optimizer, RNG states and step.

A checkpoint is a directory ``<out>/checkpoints/step-NNNNNN`` written under a temporary name and renamed
into place (so a kill never leaves a half-written one); ``latest`` finds the newest complete one and
``keep`` old ones are pruned.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state(rng: random.Random | None = None) -> dict[str, Any]:
    """Every RNG a training step draws from: torch (CPU), numpy, Python's global and ``rng`` if given."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "rng": rng.getstate() if rng is not None else None}


def set_rng_state(state: dict[str, Any], rng: random.Random | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if rng is not None and state.get("rng") is not None:
        rng.setstate(state["rng"])


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The parameters that train (all of them for full fine-tuning, the adapter for LoRA)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


def save(out: str | os.PathLike[str], step: int, model: Any, optimizer: Any, extra: dict[str, Any],
         rng: random.Random | None = None, keep: int = 1) -> Path:
    """Write checkpoint ``step`` atomically; prune to the newest ``keep``."""
    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        torch.save(trainable_state(model), staging / "model.pt")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(rng_state(rng), staging / "rng.pt")
        (staging / "state.json").write_text(json.dumps({"step": step, **extra}, indent=1, default=str))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest(out: str | os.PathLike[str]) -> Path | None:
    root = Path(out) / "checkpoints"
    found = sorted(p for p in root.glob("step-*") if (p / "state.json").exists()) if root.exists() else []
    return found[-1] if found else None


def load(path: str | os.PathLike[str], model: Any, optimizer: Any, rng: random.Random | None = None) -> dict[str, Any]:
    """Restore ``model`` (trainable parameters), ``optimizer`` and RNGs from a checkpoint; returns state.json."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    weights = torch.load(path / "model.pt", weights_only=True)
    missing = set(trainable_state(model)) - set(weights)
    if missing:
        raise ValueError(f"{path}/model.pt lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}): "
                         "was it written with another model or LoRA setting?")
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False), rng)
    return state
