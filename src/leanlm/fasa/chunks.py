"""Frequency chunks (FCs): which head dimensions form one RoPE rotation plane (paper §3, Eq. 1).

A head of dimension ``d`` has ``d/2`` FCs, one per rotation plane with angular frequency
``θ_i = B^{-2i/d}`` (FC 0 is the highest frequency). The post-RoPE logit splits exactly into a sum over
FCs, ``q R k^T = Σ_i q^[i] R_i (k^[i])^T``, so a partial dot product over the dims of a set of FCs is a
sum of whole per-FC logits.

Pairings:

- ``"half"``: transformers' ``rotate_half`` layout (Llama, Qwen2, Mistral, SmolLM2, Gemma, Phi-3):
  FC ``i`` is dims ``(i, i + d/2)``. This is a true rotation plane and the default for those models.
- ``"interleaved"``: GPT-J / Cohere / GLM layout, FC ``i`` is dims ``(2i, 2i + 1)``.
- ``"adjacent"``: the official FASA code's behaviour on HF tensors (it slices ``[2i:2i+2]`` regardless of
  layout). On a ``rotate_half`` model that is half of two neighbouring planes, not a rotation plane; kept
  only as a comparison ablation (research brief §1, App. D.2 of the paper says FCs are indivisible).
"""

from __future__ import annotations

from typing import Any

import torch

PAIRINGS = ("half", "interleaved", "adjacent")

#: transformers model types whose attention applies RoPE with ``rotate_half`` on the full head.
ROTATE_HALF_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
     "phi3", "olmo", "olmo2", "granite", "starcoder2", "smollm3", "helium", "internlm2"}
)
#: model types whose RoPE rotates adjacent pairs (2i, 2i+1).
INTERLEAVED_MODEL_TYPES = frozenset({"gptj", "cohere", "cohere2", "glm", "glm4", "chatglm"})
#: model types with multi-head latent attention (MLA): RoPE covers only a ``qk_rope_head_dim`` slice of each
#: head, so frequency chunks over the whole head would mostly point at the no-RoPE part.
MLA_MODEL_TYPES = frozenset({"deepseek_v2", "deepseek_v3", "kimi_k2", "longcat_flash"})
#: model types known to use no rotary embedding at all (absolute positions or ALiBi).
NO_ROPE_MODEL_TYPES = frozenset({"gpt2", "opt", "bloom", "mpt", "falcon_alibi", "bert", "roberta", "t5", "gpt_bigcode"})


class UnsupportedModelError(ValueError):
    """The model has no RoPE, partial RoPE, or an attention layout FASA cannot use."""


def fc_dims(fc: int, head_dim: int, pairing: str) -> tuple[int, int]:
    """The two head dimensions of frequency chunk ``fc`` under ``pairing``."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    n_fc = head_dim // 2
    if not 0 <= fc < n_fc:
        raise ValueError(f"FC index {fc} out of range [0, {n_fc}) for head_dim {head_dim}")
    if pairing == "half":
        return fc, fc + n_fc
    if pairing in ("interleaved", "adjacent"):
        return 2 * fc, 2 * fc + 1
    raise ValueError(f"unknown pairing {pairing!r}; expected one of {PAIRINGS}")


def fc_dim_table(head_dim: int, pairing: str) -> torch.Tensor:
    """``(d/2, 2)`` long tensor: row ``i`` holds the dims of FC ``i``."""
    return torch.tensor([fc_dims(i, head_dim, pairing) for i in range(head_dim // 2)], dtype=torch.long)


def dims_of(fcs: torch.Tensor, head_dim: int, pairing: str) -> torch.Tensor:
    """Map FC indices ``(..., n)`` to their head dims ``(..., 2n)`` (the set D of Eq. 6)."""
    table = fc_dim_table(head_dim, pairing).to(fcs.device)
    return table[fcs.long()].flatten(-2)


def split_fcs(x: torch.Tensor, pairing: str) -> torch.Tensor:
    """Reshape ``(..., d)`` into ``(..., d/2, 2)`` so that ``[..., i, :]`` is FC ``i``."""
    d = x.shape[-1]
    if pairing == "half":
        return torch.stack((x[..., : d // 2], x[..., d // 2 :]), dim=-1)
    if pairing in ("interleaved", "adjacent"):
        return x.unflatten(-1, (d // 2, 2))
    raise ValueError(f"unknown pairing {pairing!r}; expected one of {PAIRINGS}")


def _rope_theta(config: Any) -> float | None:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return float(theta) if theta is not None else None


def detect_pairing(model_or_config: Any) -> str:
    """The FC pairing of a transformers model, from its ``model_type``; raises for models without full RoPE."""
    config = getattr(model_or_config, "config", model_or_config)
    text_config = getattr(config, "get_text_config", lambda: config)()
    model_type = getattr(text_config, "model_type", None)
    if model_type in NO_ROPE_MODEL_TYPES or getattr(text_config, "alibi", False) or (
        model_type not in ROTATE_HALF_MODEL_TYPES | INTERLEAVED_MODEL_TYPES and _rope_theta(text_config) is None
    ):
        raise UnsupportedModelError(
            f"model_type {model_type!r} has no rotary position embedding (RoPE); FASA's frequency chunks "
            "are defined only for RoPE models (Llama, Qwen2, Mistral, ...)"
        )
    if model_type in MLA_MODEL_TYPES or getattr(text_config, "qk_rope_head_dim", None) is not None:
        raise UnsupportedModelError(
            f"model_type {model_type!r} uses multi-head latent attention (MLA) with partial RoPE "
            f"(qk_rope_head_dim={getattr(text_config, 'qk_rope_head_dim', '?')} of each head); FASA's frequency "
            "chunks need RoPE over the whole head, so this model is not supported"
        )
    partial = getattr(text_config, "partial_rotary_factor", 1.0) or 1.0
    if float(partial) != 1.0:
        raise UnsupportedModelError(
            f"model_type {model_type!r} uses partial RoPE (partial_rotary_factor={partial}); not supported"
        )
    if model_type in ROTATE_HALF_MODEL_TYPES:
        return "half"
    if model_type in INTERLEAVED_MODEL_TYPES:
        return "interleaved"
    raise UnsupportedModelError(
        f"cannot tell the RoPE layout of model_type {model_type!r}; pass pairing='half' (rotate_half) "
        "or pairing='interleaved' explicitly"
    )


def head_dim_of(config: Any) -> int:
    text_config = getattr(config, "get_text_config", lambda: config)()
    head_dim = getattr(text_config, "head_dim", None)
    return int(head_dim or text_config.hidden_size // text_config.num_attention_heads)
