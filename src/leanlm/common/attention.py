"""Dense attention in its fastest CPU form for padded GQA batches: the query group folded into the query length.

Transformers' ``sdpa`` attention calls ``scaled_dot_product_attention`` with ``enable_gqa`` only when no attention
mask is given; a padded batch (every batched rollout turn, every left-padded decode step) has a mask, so it first
copies each layer's keys and values ``num_key_value_groups`` times (``repeat_kv``) and the kernel then reads the
copies. Here the ``G`` query heads that share a KV head are stacked along the query length instead,
``(B, H, q, d) -> (B, H_kv, G * q, d)``, with the mask repeated over the stacked rows, so the kernel reads every
key and value once. Same arithmetic per (query, key) pair; outputs equal ``sdpa``'s up to rounding (tests).

Use it with ``model.set_attn_implementation(FOLDED_SDPA)`` after :func:`register_folded_sdpa`; the rollout backend
of :mod:`leanlm.wideseek.rollout` does so by default.
"""

from __future__ import annotations

from typing import Any

import torch

FOLDED_SDPA = "leanlm_folded_sdpa"
"""The name under which :func:`folded_sdpa_attention_forward` is registered in transformers' AttentionInterface."""


def folded_sdpa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                  value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                  scaling: float | None = None, is_causal: bool | None = None,
                                  **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Transformers attention-function signature. ``query`` (B, H, q, d), ``key``/``value`` (B, H_kv, T, d),
    ``attention_mask`` None or (B, 1|H, q, T) boolean / additive. Returns (B, q, H, d), like ``sdpa``.

    Without a mask (causal or not) transformers' own ``sdpa`` already avoids the copy (``enable_gqa``), so
    that case and models without GQA are passed to it unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    group = getattr(module, "num_key_value_groups", 1)
    if attention_mask is None or group == 1 or attention_mask.shape[1] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    b, h, q, d = query.shape
    n_kv = key.shape[1]
    folded = query.reshape(b, n_kv, group * q, d)  # heads kv*G + g: query rows (g, q) of KV head kv
    mask = attention_mask[:, :, :, : key.shape[-2]]  # (B, 1, q, T), as transformers' sdpa slices it
    mask = mask[:, :, None].expand(b, 1, group, q, mask.shape[-1]).reshape(b, 1, group * q, mask.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(
        folded, key, value, attn_mask=mask, dropout_p=dropout if module.training else 0.0, scale=scaling)
    return out.reshape(b, h, q, d).transpose(1, 2).contiguous(), None


def register_folded_sdpa() -> str:
    """Register :func:`folded_sdpa_attention_forward` (and ``sdpa``'s mask builder) under :data:`FOLDED_SDPA`
    in transformers; idempotent. Returns the name to pass to ``model.set_attn_implementation``."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(FOLDED_SDPA, folded_sdpa_attention_forward)
    AttentionMaskInterface.register(FOLDED_SDPA, sdpa_mask)
    return FOLDED_SDPA
