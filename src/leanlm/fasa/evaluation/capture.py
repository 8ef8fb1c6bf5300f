"""Offline query/key statistics for the static-subspace baselines (Double Sparsity channels, Loki PCA).

One dense forward pass per calibration text with an attention hook
(:func:`leanlm.fasa.hooks.attention_handler`) that folds every layer's post-RoPE queries and keys into a
:class:`~leanlm.fasa.selectors.KeyQueryStats`. Same text as FASA's calibration, so the three offline
methods see the same data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from leanlm.fasa.calibration import model_geometry
from leanlm.fasa.hooks import attention_handler, dense_attention_forward
from leanlm.fasa.selectors import KeyQueryStats


def capture_stats(model: Any, tokenizer: Any, texts: Iterable[str] | str, max_tokens: int = 2048) -> KeyQueryStats:
    """Run each text (truncated to ``max_tokens``) densely and accumulate q/k statistics of every layer."""
    geo = model_geometry(model)
    stats = KeyQueryStats.empty(geo["num_layers"], geo["num_heads"], geo["num_kv_heads"], geo["head_dim"])

    def handler(module, query, key, value, attention_mask, **kwargs):
        out = dense_attention_forward(module, query, key, value, attention_mask, **kwargs)
        with torch.no_grad():
            stats.add(module.layer_idx, query[0], key[0])
        return out

    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("capture_stats() needs at least one text")
    with attention_handler(model, handler), torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens]
            model(ids, use_cache=False)
    return stats
