"""Masked optimizer steps: what a step's sub-network did not run stays exactly as it was (ERNIE 5.0 §3.3).

Experts removed by elastic width receive zero gradient, but they live stacked in one ``[E, d, f]`` parameter (and
their router rows in one ``[E, d]`` matrix), so a plain AdamW step would still move them: weight decay shrinks
them and the running moments decay and keep pushing them. Under elastic training that is wrong -- a removed
expert is *not part of* the step's network. :func:`frozen_slices` lists the removed parts and
:func:`keep_frozen` restores their weights and optimizer moments bit-for-bit around ``optimizer.step()``.

Covered: the routed-expert weights (``w_gate``/``w_up``/``w_down``) and router rows of experts removed in a
layer, and every parameter of a layer skipped by elastic depth (those have ``grad=None``, which AdamW already
skips; restoring them too makes it hold whatever the optimizer does). Router *biases* are buffers updated by
:func:`leanlm.elastic.balance.update_router_biases`, which already leaves removed experts alone.

One thing cannot be sliced: AdamW keeps a single ``step`` count per tensor, so an expert that sat out some
steps uses the tensor's step count in its bias correction (the count of steps its *tensor* was updated). This
only changes the early-step bias-correction factor and is documented in ``docs/elastic.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from leanlm.elastic.model import ElasticMoeForCausalLM
from leanlm.elastic.subnet import SubNet

_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")
Slice = tuple[nn.Parameter, torch.Tensor | None]  # (parameter, rows along dim 0; None = the whole parameter)


def frozen_slices(model: ElasticMoeForCausalLM, subnets: Sequence[SubNet]) -> list[Slice]:
    """The parameter slices that none of ``subnets`` (the sub-networks run in one optimizer step) uses."""
    cfg = model.config
    n_experts = cfg.num_experts
    slices: list[Slice] = []
    for i, layer in enumerate(model.model.layers):
        if all(s.layers is not None and i not in s.layers for s in subnets):
            slices += [(p, None) for p in layer.parameters()]
            continue
        if not layer.is_moe:
            continue
        unused = set(range(n_experts))
        for s in subnets:
            if s.layers is not None and i not in s.layers:
                continue
            kept = s.experts_for(i)
            unused &= set(range(n_experts)) - set(kept if kept is not None else range(n_experts))
        if unused:
            rows = torch.tensor(sorted(unused), dtype=torch.long, device=layer.mlp.w_gate.device)
            block = layer.mlp
            slices += [(block.w_gate, rows), (block.w_up, rows), (block.w_down, rows), (block.router.weight, rows)]
    return slices


def _take(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return (t if rows is None else t[rows]).detach().clone()


@contextmanager
def keep_frozen(optimizer: torch.optim.Optimizer, slices: Sequence[Slice]) -> Iterator[None]:
    """Run the body (``optimizer.step()``) and then put back the weights and optimizer state of ``slices``.

    A moment tensor that did not exist before the step (the optimizer's first step for that parameter) is reset
    to zeros on the frozen rows, which is the value the optimizer initialises it with.
    """
    saved = []
    for p, rows in slices:
        state = optimizer.state.get(p, {})
        moments = {k: _take(state[k], rows) for k in _MOMENTS if k in state}
        step = state["step"].clone() if rows is None and torch.is_tensor(state.get("step")) else state.get("step")
        saved.append((p, rows, _take(p, rows), moments, step, bool(state)))
    yield
    with torch.no_grad():
        for p, rows, weight, moments, step, had_state in saved:
            if rows is None:
                p.copy_(weight)
            else:
                p[rows] = weight
            state = optimizer.state.get(p)
            if not state:
                continue
            if rows is None and not had_state:  # the whole tensor sat out: leave no optimizer state behind
                del optimizer.state[p]
                continue
            for key in _MOMENTS:
                if key not in state:
                    continue
                old = moments.get(key)
                if rows is None:
                    state[key].copy_(old if old is not None else torch.zeros_like(state[key]))
                else:
                    state[key][rows] = old if old is not None else 0
            if rows is None and step is not None:
                state["step"] = step


__all__ = ["frozen_slices", "keep_frozen"]
