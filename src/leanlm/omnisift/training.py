"""The optimizer used to fine-tune a thinker with OmniSIFT: the selector gets a parameter group of its own.

Why (measured, ``docs/results/omnisift.md`` §2): the selector learns only through the straight-through
estimator (§3.4), whose gradient ``∂L/∂s_j = ⟨∂L/∂e'_j, e_j⟩`` reaches the scores of the kept tokens only.
On the synthetic study at step 0 its gradient norm was 3.6e-5 against 4.1 for the backbone; one global
clip at 1.0 then scaled it down a further 4×, to a size where AdamW's default eps (1e-8) damps the update.
The paper gives one learning rate (1e-5, full SFT through ms-swift) and no selector-specific settings, so
these are **our deviation**: the selector's group has its own learning rate, its own gradient-norm clip
and its own eps (default 1e-12, far below the selector's per-element gradients), and its gradients are
never rescaled by the backbone's norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class SelectorOptim:
    """Settings of the selector's parameter group (our deviation; the paper does not specify any)."""

    lr: float = 1e-3
    eps: float = 1e-12
    clip: float | None = 1.0
    weight_decay: float = 0.0


def selector_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of the model's compressor (``model.compressor``), if any."""
    comp = getattr(model, "compressor", None)
    return [] if comp is None else [p for p in comp.parameters() if p.requires_grad]


class GroupedAdamW:
    """AdamW with a ``backbone`` and a ``selector`` group, each clipped by its own gradient norm.

    ``step()`` records the pre-clip gradient norm of each group in ``last_norms`` (for logs and tests).
    """

    def __init__(self, model: nn.Module, lr: float, selector: SelectorOptim | None = None,
                 backbone_clip: float | None = 1.0, weight_decay: float = 0.0, eps: float = 1e-8) -> None:
        self.selector_cfg = selector or SelectorOptim()
        sel = selector_parameters(model)
        sel_ids = {id(p) for p in sel}
        backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in sel_ids]
        groups = []
        if backbone:
            groups.append({"params": backbone, "lr": lr, "eps": eps, "weight_decay": weight_decay,
                           "name": "backbone", "clip": backbone_clip})
        if sel:
            s = self.selector_cfg
            groups.append({"params": sel, "lr": s.lr, "eps": s.eps, "weight_decay": s.weight_decay,
                           "name": "selector", "clip": s.clip})
        if not groups:
            raise ValueError("nothing to train: the model has no parameter with requires_grad=True")
        self.optimizer = torch.optim.AdamW(groups)
        self.last_norms: dict[str, float] = {}

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                self.last_norms[group["name"]] = 0.0
                continue
            clip = group["clip"]
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
            self.last_norms[group["name"]] = float(norm)
        self.optimizer.step()

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def warmup_schedule(opt: GroupedAdamW, steps: int, warmup_fraction: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_fraction`` of the steps, then constant (every group scaled alike)."""
    warm = max(1, int(steps * warmup_fraction))
    return torch.optim.lr_scheduler.LambdaLR(opt.optimizer, lambda s: min(1.0, (s + 1) / warm))


def cosine_schedule(opt: GroupedAdamW, steps: int, warmup_fraction: float = 0.05,
                    floor: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_fraction`` of the steps, then cosine decay to ``floor`` × the peak rate at
    the last step (Loshchilov & Hutter, SGDR, 2017; the usual transformer schedule). Every group alike."""
    warm = max(1, int(steps * warmup_fraction))

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        progress = min(1.0, (s - warm) / max(1, steps - 1 - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt.optimizer, factor)
