"""Measurements on trained models: routing per modality (ERNIE 5.0 §6.4.1) and decode latency vs top-k (Table 12).

- Routing: per layer and per modality, the expert load (tokens routed to each expert) on held-out data; its
  normalised entropy NE = -Σ p log p / log E; the IoU of the top-25% most loaded experts of two modalities.
- Latency: greedy decoding with a KV cache (``transformers`` ``DynamicCache``) under a given sub-network; median
  seconds per generated token over repeats.
"""

from __future__ import annotations

import statistics
import time

import torch

from leanlm.elastic.balance import normalized_entropy
from leanlm.elastic.data import GROUPED, TEXT
from leanlm.elastic.model import ElasticMoeForCausalLM
from leanlm.elastic.subnet import SubNet


@torch.no_grad()
def modality_loads(
    model: ElasticMoeForCausalLM, batches: list[tuple[torch.Tensor, torch.Tensor]], subnet: SubNet | None = None,
) -> dict[int, dict[int, torch.Tensor]]:
    """modality -> layer -> tokens routed to each expert, over ``batches`` (each modality run separately)."""
    model.eval()
    loads: dict[int, dict[int, torch.Tensor]] = {TEXT: {}, GROUPED: {}}
    for ids, kinds in batches:
        for kind in (TEXT, GROUPED):
            sel = ids[kinds == kind]
            if not len(sel):
                continue
            counts = model(sel, subnet=subnet, return_expert_counts=True).expert_counts
            for layer, c in counts.items():
                loads[kind][layer] = loads[kind].get(layer, 0) + c.to(torch.float64)
    return loads


def top_fraction(load: torch.Tensor, fraction: float = 0.25) -> set[int]:
    n = max(1, round(load.numel() * fraction))
    return set(torch.argsort(load, descending=True, stable=True)[:n].tolist())


def iou(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else float("nan")


def routing_report(loads: dict[int, dict[int, torch.Tensor]], fraction: float = 0.25) -> list[dict[str, float]]:
    """Per layer: NE of text load, NE of grouped load, IoU of their top-``fraction`` experts."""
    rows = []
    for layer in sorted(loads[TEXT]):
        text, grouped = loads[TEXT][layer], loads[GROUPED].get(layer)
        rows.append({
            "layer": layer,
            "ne_text": normalized_entropy(text),
            "ne_grouped": normalized_entropy(grouped) if grouped is not None else float("nan"),
            "iou_top": iou(top_fraction(text, fraction), top_fraction(grouped, fraction)) if grouped is not None else float("nan"),
        })
    return rows


@torch.no_grad()
def decode_seconds_per_token(
    model: ElasticMoeForCausalLM, prompt: torch.Tensor, new_tokens: int = 32, subnet: SubNet | None = None, repeats: int = 3,
) -> float:
    """Median wall seconds per greedily decoded token (KV cache; prefill excluded) under ``subnet``."""
    from transformers import DynamicCache

    model.eval()
    times = []
    for _ in range(repeats):
        cache = DynamicCache()
        out = model(prompt, past_key_values=cache, use_cache=True, subnet=subnet)
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(token, past_key_values=cache, use_cache=True, subnet=subnet)
            token = out.logits[:, -1:].argmax(-1)
        times.append((time.perf_counter() - start) / new_tokens)
    return statistics.median(times)


def decode_latency_table(
    models: dict[str, tuple[ElasticMoeForCausalLM, SubNet | None]], prompt: torch.Tensor, new_tokens: int = 32,
    repeats: int = 5,
) -> dict[str, float]:
    """Median seconds per decoded token for several (model, sub-network) pairs, measured round-robin so that all
    of them see the same background load (the CPU here is shared)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, (model, subnet) in models.items():
            times[name].append(decode_seconds_per_token(model, prompt, new_tokens, subnet, repeats=1))
    return {name: statistics.median(v) for name, v in times.items()}
