"""Extraction: cut a genuinely smaller standalone model out of an elastic super-network (ERNIE 5.0 §3.3).

The extracted model keeps the chosen layers (renumbered), the chosen routed experts of every MoE layer (expert
weights, router rows and correction-bias entries sliced), the shared experts, embeddings, head and MTP module,
and a new default k. Its config records the provenance (``source_layers``, ``source_experts``). Running it
gives exactly the logits of the parent run with the same :class:`SubNet` (tested).

The report presents extracted models as starting points for further (mid-/post-)training; see
``leanlm.elastic.train`` for continued training of an extracted model.
"""

from __future__ import annotations

import copy

import torch

from leanlm.elastic.config import ElasticMoeConfig
from leanlm.elastic.elastic import even_layers
from leanlm.elastic.model import ElasticMoeForCausalLM
from leanlm.elastic.subnet import SubNet


def plan_subnet(
    model: ElasticMoeForCausalLM,
    depth: int | None = None,
    experts: int | None = None,
    top_k: int | None = None,
    expert_rule: str = "usage",
) -> SubNet:
    """A deployment sub-network: ``depth`` evenly spaced layers (first and last kept), ``experts`` per MoE layer
    chosen by ``expert_rule`` (``"usage"``: the most used in training, from ``expert_usage``; ``"index"``: the
    first n), and ``top_k``. ``None`` keeps that axis full."""
    cfg = model.config
    layers = even_layers(cfg.num_hidden_layers, depth) if depth is not None else None
    kept_experts = None
    if experts is not None:
        if not 1 <= experts <= cfg.num_experts:
            raise ValueError(f"experts must be in [1, {cfg.num_experts}], got {experts}")
        if expert_rule not in ("usage", "index"):
            raise ValueError(f"expert_rule must be 'usage' or 'index', got {expert_rule!r}")
        kept_experts = {}
        for i, block in model.moe_blocks().items():
            if layers is not None and i not in layers:
                continue
            if expert_rule == "usage" and float(block.expert_usage.sum()) > 0:
                order = torch.argsort(block.expert_usage, descending=True, stable=True)[:experts]
                kept_experts[i] = sorted(order.tolist())
            else:
                kept_experts[i] = list(range(experts))
    k = top_k
    if k is not None and experts is not None and k > experts:
        raise ValueError(f"top_k={k} is larger than the {experts} experts kept")
    if k is None and experts is not None and experts < cfg.num_experts_per_tok:
        k = experts
    subnet = SubNet.make(layers=layers, experts=kept_experts, top_k=k)
    subnet.validate(cfg.num_hidden_layers, cfg.num_experts, cfg.moe_layers, cfg.num_experts_per_tok)
    return subnet


@torch.no_grad()
def extract(model: ElasticMoeForCausalLM, subnet: SubNet) -> ElasticMoeForCausalLM:
    """A standalone :class:`ElasticMoeForCausalLM` with only the parts of ``model`` that ``subnet`` runs."""
    cfg: ElasticMoeConfig = model.config
    subnet.validate(cfg.num_hidden_layers, cfg.num_experts, cfg.moe_layers, cfg.num_experts_per_tok)
    layers = list(subnet.layers) if subnet.layers is not None else list(range(cfg.num_hidden_layers))
    moe_kept = [i for i in layers if i in cfg.moe_layers]
    per_layer = {i: list(subnet.experts_for(i) or range(cfg.num_experts)) for i in moe_kept}
    sizes = {len(v) for v in per_layer.values()}
    if len(sizes) > 1:
        raise ValueError(f"extraction needs the same number of experts in every kept MoE layer, got {sorted(sizes)}")
    n_experts = sizes.pop() if sizes else cfg.num_experts
    top_k = subnet.top_k if subnet.top_k is not None else min(cfg.num_experts_per_tok, n_experts)
    source_layers = [cfg.source_layers[i] for i in layers] if cfg.source_layers else layers
    source_experts = [
        [cfg.source_experts[cfg.moe_layers.index(i)][e] for e in per_layer[i]] if cfg.source_experts else per_layer[i]
        for i in moe_kept
    ]
    new_cfg = copy.deepcopy(cfg)
    new_cfg.num_hidden_layers = len(layers)
    new_cfg.first_k_dense_layers = sum(1 for i in layers if i < cfg.first_k_dense_layers)
    new_cfg.num_experts = n_experts
    new_cfg.num_experts_per_tok = top_k
    new_cfg.source_layers = source_layers
    new_cfg.source_experts = source_experts
    small = ElasticMoeForCausalLM(new_cfg).to(dtype=next(model.parameters()).dtype)
    small.model.embed_tokens.load_state_dict(model.model.embed_tokens.state_dict())
    small.model.norm.load_state_dict(model.model.norm.state_dict())
    small.lm_head.load_state_dict(model.lm_head.state_dict())
    if model.mtp is not None and small.mtp is not None:
        small.mtp.load_state_dict(model.mtp.state_dict())
    for new_i, old_i in enumerate(layers):
        src, dst = model.model.layers[old_i], small.model.layers[new_i]
        dst.input_norm.load_state_dict(src.input_norm.state_dict())
        dst.post_attn_norm.load_state_dict(src.post_attn_norm.state_dict())
        dst.attn.load_state_dict(src.attn.state_dict())
        if not src.is_moe:
            dst.mlp.load_state_dict(src.mlp.state_dict())
            continue
        idx = torch.tensor(per_layer[old_i], dtype=torch.long)
        s, d = src.mlp, dst.mlp
        d.router.weight.copy_(s.router.weight[idx])
        d.w_gate.copy_(s.w_gate[idx])
        d.w_up.copy_(s.w_up[idx])
        d.w_down.copy_(s.w_down[idx])
        d.router_bias.copy_(s.router_bias[idx])
        d.expert_usage.copy_(s.expert_usage[idx])
        if s.shared is not None:
            d.shared.load_state_dict(s.shared.state_dict())
    return small.eval()
