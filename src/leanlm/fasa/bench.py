"""Side-by-side measurements: retrieval answers under a decode budget, top-K recall, attention cost.

- Per-step selectors (FASA, oracle, Quest, sinks+recent) share one dense prefill: the prompt's cache is
  computed once, deep-copied, and each method decodes greedily from it (paper protocol, §B.1: no KV
  optimisation during prefill).
- kvpress presses (SnapKV, StreamingLLM, Knorm) evict at prefill (their own protocol): the prompt is
  re-prefilled under each press with ``compression_ratio = 1 - budget / prompt_len``, then decoded densely.
- :func:`attention_cost` times one decode step of attention (dense sdpa vs TIP + gather + FAC) on random
  tensors of a given geometry, and reports Eq. 8's analytic fraction of bytes read.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from leanlm.fasa.attention import focused_attention
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


def analytic_fraction(n_tip: int, head_dim: int, budget: int, context: int) -> float:
    """Eq. 8: bytes read per decode step relative to dense, ``N_tip/d·2 ... = 2N_tip/d·½ + N_fac/t``.

    TIP reads ``2·N_tip`` of the ``d`` key dims for all ``t`` tokens; FAC reads full keys and values of
    ``N_fac`` tokens; dense reads ``2·t·d`` elements: ``(2·N_tip·t + 2·N_fac·d) / (2·t·d)``.
    """
    return (2 * n_tip * context + 2 * min(budget, context) * head_dim) / (2 * context * head_dim)


@dataclass
class CostRow:
    context: int
    dense_ms: float
    fasa_ms: float
    tip_ms: float
    analytic_fraction: float

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.fasa_ms


def _time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def attention_cost(contexts: list[int], n_q: int = 9, n_kv: int = 3, head_dim: int = 64, n_tip: int = 8,
                   budget: int = 256, repeats: int = 5, seed: int = 0, device: str = "cpu",
                   dtype: torch.dtype = torch.float32) -> list[CostRow]:
    """Time one layer's decode attention: dense sdpa vs FASA (TIP + top-k + gather + FAC), same tensors."""
    from leanlm.fasa.selectors import FASASelector

    gen = torch.Generator().manual_seed(seed)
    rows = []
    fcs = torch.stack([torch.randperm(head_dim // 2, generator=gen)[:n_tip] for _ in range(n_q)])[None]
    selector = FASASelector.from_fcs(fcs, head_dim, "half")
    selector.dims = selector.dims.to(device)
    for t in contexts:
        q = torch.randn(1, n_q, 1, head_dim, generator=gen).to(device, dtype)
        k = torch.randn(1, n_kv, t, head_dim, generator=gen).to(device, dtype)
        v = torch.randn(1, n_kv, t, head_dim, generator=gen).to(device, dtype)
        scale = head_dim**-0.5

        def dense(q=q, k=k, v=v, scale=scale):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)

        def tip(q=q, k=k):
            return top_budget(selector.scores(q, k, 0), budget)

        def fasa(q=q, k=k, v=v, scale=scale):
            return focused_attention(q, k, v, top_budget(selector.scores(q, k, 0), budget), scale)

        with torch.inference_mode():
            rows.append(CostRow(t, _time(dense, repeats), _time(fasa, repeats), _time(tip, repeats),
                                analytic_fraction(n_tip, head_dim, budget, t)))
    return rows
