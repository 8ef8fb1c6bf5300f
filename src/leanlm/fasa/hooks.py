"""The one attention hook FASA needs, through transformers' public extension points (a leaf module).

One attention function is registered in ``transformers.AttentionInterface`` (and the matching mask builder
in ``AttentionMaskInterface``) under the name ``"fasa"``. :func:`attention_handler` switches a model to it
with ``model.set_attn_implementation`` for the duration of a ``with`` block and restores the previous
implementation on exit; the function finds the per-model settings (a *handler*) through the attention
module's config. Nothing in transformers is monkey-patched.

Both the decode path (:mod:`leanlm.fasa.integration`) and calibration (:mod:`leanlm.fasa.calibration`)
install handlers here; this module imports neither, so imports flow one way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from leanlm.fasa.chunks import UnsupportedModelError, detect_pairing

FASA_IMPL = "fasa"

#: id(attention module config) -> handler called with the attention function's arguments.
_HANDLERS: dict[int, Callable[..., tuple[torch.Tensor, Any]]] = {}


def dense_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """The dense path (prefill, dense layers, calibration): transformers' sdpa attention.

    sdpa has no logit soft-capping, so when the model passes ``softcap`` (Gemma 2) transformers' eager
    attention is used instead, which applies ``softcap * tanh(logits / softcap)`` as the model was trained.
    """
    if kwargs.get("softcap") is not None:
        from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

        q_len, kv_len = query.shape[2], key.shape[2]
        if attention_mask is None and q_len > 1:  # sdpa's mask builder leaves causality to ``is_causal``
            rows = torch.arange(kv_len - q_len, kv_len, device=query.device)[:, None]
            attention_mask = torch.arange(kv_len, device=query.device)[None, :] <= rows
        if attention_mask is not None and attention_mask.dtype == torch.bool:  # "fasa" masks are sdpa's booleans
            attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~attention_mask, torch.finfo(query.dtype).min)
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _dispatch(module, query, key, value, attention_mask, dropout=0.0, **kwargs):
    handler = _HANDLERS.get(id(module.config))
    if handler is None:
        raise RuntimeError(
            "attn_implementation 'fasa' is set but no FASA settings are active for this model; "
            "use `with leanlm.fasa.apply(model, calibration, budget=...)`"
        )
    # ``dropout`` may arrive positionally: kvpress wraps every registered attention function at import and
    # calls it as ``func(module, query, key, value, attention_mask, dropout, **kwargs)``
    return handler(module, query, key, value, attention_mask, dropout=dropout, **kwargs)


def register() -> None:
    """Register the ``"fasa"`` attention and mask functions with transformers (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(FASA_IMPL, _dispatch)
    AttentionMaskInterface.register(FASA_IMPL, sdpa_mask)


def attention_configs(model: Any) -> set[int]:
    """ids of the configs seen by the model's attention modules (one for a plain causal LM)."""
    ids = {id(m.config) for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")}
    if not ids:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no transformers attention modules (with layer_idx and "
            "num_key_value_groups); FASA supports decoder LMs such as Llama, Qwen2 and Mistral"
        )
    return ids


@contextlib.contextmanager
def attention_handler(model: Any, handler: Callable[..., tuple[torch.Tensor, Any]]) -> Iterator[None]:
    """Route the model's attention through ``handler`` inside the block, restoring the old implementation."""
    detect_pairing(model)  # raises a clear error for models without (full) RoPE
    if not getattr(model, "_can_set_attn_implementation", lambda: False)():
        raise UnsupportedModelError(
            f"{type(model).__name__} does not use transformers' AttentionInterface, so FASA cannot hook it"
        )
    ids = attention_configs(model)
    if any(i in _HANDLERS for i in ids):
        raise RuntimeError("FASA (or FASA calibration) is already active on this model; nested apply() is not allowed")
    register()
    previous = model.config._attn_implementation
    for i in ids:
        _HANDLERS[i] = handler
    try:
        model.set_attn_implementation(FASA_IMPL)
        yield
    finally:
        for i in ids:
            _HANDLERS.pop(i, None)
        model.set_attn_implementation(previous)
