"""Side-by-side measurements: retrieval answers under a decode budget, top-K recall, attention cost.

- Per-step selectors (FASA, oracle, Quest, sinks+recent) share one dense prefill: the prompt's cache is
  computed once, deep-copied, and each method decodes greedily from it (paper protocol, §B.1: no KV
  optimisation during prefill).
- kvpress presses (SnapKV, StreamingLLM, Knorm) evict at prefill (their own protocol): the prompt is
  re-prefilled under each press with ``compression_ratio = 1 - budget / prompt_len``, then decoded densely.
- :func:`analytic_fraction`: the GQA-aware byte fraction of a decode step (timings: :mod:`leanlm.fasa.perf`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from leanlm.fasa.integration import apply
from leanlm.fasa.selectors import OracleSelector, TokenSelector, top_budget


def prefill(model: Any, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Dense prefill: the cache and the logits of the last prompt position."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model(ids, past_key_values=cache, use_cache=True)
    return out.past_key_values, out.logits[:, -1]


def greedy_from_cache(model: Any, cache: Any, last_logits: torch.Tensor, start: int, steps: int,
                      eos_id: int | None = None) -> list[int]:
    """Greedy decode ``steps`` tokens from a prefilled cache (stops at ``eos_id``)."""
    tokens: list[int] = []
    logits = last_logits
    with torch.inference_mode():
        for i in range(steps):
            token = int(logits[0].argmax())
            tokens.append(token)
            if eos_id is not None and token == eos_id:
                break
            pos = torch.tensor([[start + i]])
            out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True, position_ids=pos,
                        cache_position=pos[0])
            logits = out.logits[:, -1]
    return tokens


def decode_with_selector(model: Any, cache: Any, last_logits: torch.Tensor, start: int, steps: int,
                         selector: TokenSelector | None, budget: int, eos_id: int | None = None,
                         dense_layers: tuple[int, ...] = (0,)) -> list[int]:
    """Greedy decode from a private copy of ``cache``; ``selector=None`` is the full-KV reference."""
    cache = copy.deepcopy(cache)
    if selector is None:
        return greedy_from_cache(model, cache, last_logits, start, steps, eos_id)
    with apply(model, selector=selector, budget=budget, dense_layers=dense_layers):
        return greedy_from_cache(model, cache, last_logits, start, steps, eos_id)


def decode_with_press(model: Any, ids: torch.Tensor, press: Any, steps: int, eos_id: int | None = None) -> list[int]:
    """Prefill under a kvpress press (it evicts at prefill), then dense greedy decode."""
    with press(model):
        cache, last = prefill(model, ids)
    return greedy_from_cache(model, cache, last, ids.shape[1], steps, eos_id)


@dataclass
class RecallProbe(TokenSelector):
    """Wraps a selector and records |selected ∩ oracle top-k| / k per call (the compound CA of Table 1)."""

    inner: TokenSelector = field(default_factory=OracleSelector)
    budget: int = 256
    hits: float = 0.0
    calls: int = 0

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        scores = self.inner.scores(query, keys, layer_idx)
        k = min(self.budget, keys.shape[2])
        if k < keys.shape[2]:
            truth = OracleSelector().scores(query, keys, layer_idx)
            chosen = top_budget(scores, k)
            best = torch.zeros_like(truth, dtype=torch.bool).scatter_(-1, top_budget(truth, k), True)
            self.hits += float(best.gather(-1, chosen).float().mean())
            self.calls += 1
        return scores

    @property
    def recall(self) -> float:
        return self.hits / self.calls if self.calls else float("nan")


def analytic_fraction(n_tip: int, head_dim: int, budget: int, context: int, *, n_q: int = 1, n_kv: int = 1,
                      label_width: float | None = None, pooled: bool = False) -> float:
    """Bytes FASA reads per decode step relative to dense attention, GQA-aware (Eq. 8 generalised).

    Dense reads every KV head once for its whole group: ``2·H_kv·t·d`` elements. Per-query-head TIP over
    the ``2·N_tip`` dominant dims reads ``H_q·t·2N_tip`` (the reference path; with ``label_width=U`` the
    FASA-C label buffer, ``H_kv·t·U``), and FAC ``R·N_fac·2d`` (``R = H_q``, or ``H_kv`` when ``pooled``):

        (H_q·2N_tip)/(2·H_kv·d) + H_q·N_fac/(H_kv·t)        (per head, reference path)

    With ``n_q = n_kv = 1`` this is the paper's Eq. 8, ``N_tip/d·... = (2·N_tip·t + 2·N_fac·d)/(2·t·d)``.
    The top-k's score traffic is left out here (:func:`leanlm.fasa.perf.step_bytes` counts it).
    """
    k = min(budget, context)
    rows = n_kv if pooled else n_q
    tip = n_kv * context * label_width if label_width is not None else n_q * context * 2 * n_tip
    return (tip + rows * k * 2 * head_dim) / (2 * n_kv * context * head_dim)
