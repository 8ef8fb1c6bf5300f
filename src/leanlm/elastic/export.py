"""Export an elastic model (or one of its sub-models) to transformers' own ``Ernie4_5_Moe`` classes.

A saved :class:`~leanlm.elastic.model.ElasticMoeForCausalLM` has ``model_type = "leanlm_elastic_moe"``, which
transformers only knows after ``import leanlm.elastic``. :func:`export_pretrained` writes the same network as an
``Ernie4_5_MoeForCausalLM`` checkpoint (model type ``ernie4_5_moe``, part of transformers 5.x), so a plain
``AutoModelForCausalLM.from_pretrained(path)`` loads and runs it with no leanlm installed and no
``trust_remote_code``.

Why the architecture maps exactly: our MoE block was built to ERNIE 4.5's rules (FP32 softmax router, top-k on
``probs + e_score_correction_bias``, renormalised unbiased weights clamped at ``moe_norm_min``, shared experts
fused into one SwiGLU, dense first layers via ``moe_layer_start_index``), and the decoder is Llama-style
(RMSNorm, GQA, SwiGLU). Two things are converted:

- RoPE layout: ours rotates the two *halves* of each head (Llama / GPT-NeoX style); transformers' Ernie 4.5
  rotates *interleaved* pairs (GPT-J style). Permuting the rows of ``q_proj`` and ``k_proj`` per head
  (``new[2i] = old[i]``, ``new[2i+1] = old[i + h/2]``) makes the interleaved rotation compute exactly our
  rotation, up to the order of the dot product's terms (the same pairs use the same frequency).
- Expert layout: ours is ``[E, d, f]`` per projection; theirs is ``gate_up_proj [E, 2f, d]``,
  ``down_proj [E, d, f]``.

Not exported: the MTP module (transformers' Ernie 4.5 ignores MTP weights too; it is only used in training),
``expert_usage`` and the provenance fields, which are kept in ``leanlm_elastic.json`` next to the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leanlm.common.atomic import atomic_write_json
from leanlm.elastic.extract import extract
from leanlm.elastic.model import ElasticMoeForCausalLM
from leanlm.elastic.subnet import SubNet


def ernie45_config(model: ElasticMoeForCausalLM) -> Any:
    """The ``Ernie4_5_MoeConfig`` with the shape of ``model``."""
    from transformers import Ernie4_5_MoeConfig

    c = model.config
    if c.head_dim % 2:
        raise ValueError(f"head_dim {c.head_dim} is odd: RoPE needs an even head size")
    n_moe = len(c.moe_layers)
    return Ernie4_5_MoeConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.dense_intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps, use_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_word_embeddings, moe_num_experts=c.num_experts, moe_k=c.num_experts_per_tok,
        moe_intermediate_size=c.moe_intermediate_size, moe_num_shared_experts=c.num_shared_experts,
        moe_layer_start_index=c.first_k_dense_layers if n_moe else c.num_hidden_layers,
        moe_layer_end_index=c.num_hidden_layers - 1, moe_layer_interval=1, moe_norm_min=c.moe_norm_min,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
        use_cache=True,
    )


def _half_to_interleaved(weight: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder the output rows of a q/k projection from half-split to interleaved RoPE pairs, per head."""
    half = head_dim // 2
    order = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)  # 0, h/2, 1, h/2+1, ...
    w = weight.view(n_heads, head_dim, -1)[:, order]
    return w.reshape(n_heads * head_dim, -1)


@torch.no_grad()
def to_ernie45(model: ElasticMoeForCausalLM, subnet: SubNet | None = None) -> nn.Module:
    """An ``Ernie4_5_MoeForCausalLM`` computing what ``model`` computes under ``subnet`` (extracted first)."""
    from transformers import Ernie4_5_MoeForCausalLM

    src = extract(model, subnet) if subnet is not None else model
    c = src.config
    peer = Ernie4_5_MoeForCausalLM(ernie45_config(src)).to(dtype=next(src.parameters()).dtype).eval()
    peer.model.embed_tokens.weight.copy_(src.model.embed_tokens.weight)
    peer.model.norm.weight.copy_(src.model.norm.weight)
    peer.lm_head.weight.copy_(src.lm_head.weight)
    for ours, theirs in zip(src.model.layers, peer.model.layers, strict=True):
        theirs.input_layernorm.weight.copy_(ours.input_norm.weight)
        theirs.post_attention_layernorm.weight.copy_(ours.post_attn_norm.weight)
        a, b = ours.attn, theirs.self_attn
        b.q_proj.weight.copy_(_half_to_interleaved(a.q_proj.weight, c.num_attention_heads, c.head_dim))
        b.k_proj.weight.copy_(_half_to_interleaved(a.k_proj.weight, c.num_key_value_heads, c.head_dim))
        b.v_proj.weight.copy_(a.v_proj.weight)
        b.o_proj.weight.copy_(a.o_proj.weight)
        if not ours.is_moe:
            theirs.mlp.load_state_dict(ours.mlp.state_dict())
            continue
        m, p = ours.mlp, theirs.mlp
        p.gate.weight.copy_(m.router.weight)
        p.gate.moe_statics.e_score_correction_bias.copy_(m.router_bias[None].float())
        p.experts.gate_up_proj.copy_(torch.cat([m.w_gate, m.w_up], dim=2).transpose(1, 2))
        p.experts.down_proj.copy_(m.w_down.transpose(1, 2))
        if m.shared is not None:
            p.shared_experts.load_state_dict(m.shared.state_dict())
    return peer


def export_pretrained(model: ElasticMoeForCausalLM, directory: str | Path, subnet: SubNet | None = None) -> Path:
    """Save ``model`` (or its ``subnet``, extracted) as a transformers ``ernie4_5_moe`` checkpoint in ``directory``
    (atomically), plus ``leanlm_elastic.json`` with the provenance (source layers/experts) and what was left out."""
    from leanlm.elastic.train import save_model

    src = extract(model, subnet) if subnet is not None else model
    small_cfg = src.config
    out = save_model(to_ernie45(src), Path(directory))
    atomic_write_json(out / "leanlm_elastic.json", {
        "exported_from": "leanlm.elastic.ElasticMoeForCausalLM",
        "subnet": subnet.describe() if subnet is not None else "full",
        "source_layers": small_cfg.source_layers, "source_experts": small_cfg.source_experts,
        "not_exported": ["mtp (training-only multi-token-prediction head)", "expert_usage buffer"],
        "elastic_config": json.loads(small_cfg.to_json_string()),
    })
    return out


__all__ = ["ernie45_config", "export_pretrained", "to_ernie45"]
