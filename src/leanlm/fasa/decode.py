"""The FASA-C decode path (paper §4.3 "FASA-C"): TIP over the label buffer, exact top-k, gather, SDPA.

One decode step of one layer, reading a :class:`~leanlm.fasa.cache.FasaLayer`:

1. **TIP** (Eq. 6), one batched matmul per layer: ``S = q̃ · L^T`` where ``L (B, H_kv, t, U)`` is the
   label buffer (union of the KV group's dominant dims) and ``q̃ (B, H_kv, G, U)`` holds each query head's
   query *zeroed outside its own dims*. So ``S[h] = q_h[D_h]·K[D_h]^T`` exactly as in the paper: selection
   stays per query head, yet the label buffer is read once per KV group.
2. ``T_t = TopK-I(S, N_fac)`` with :func:`~leanlm.fasa.topk.exact_topk` (block-maxima pre-filter, exact).
3. **FAC** (Eq. 7): ``index_select`` of the chosen rows from the flattened K/V buffers, then
   ``scaled_dot_product_attention`` over them (original positions: keys are post-RoPE, no re-rotation).

``pooled=True`` sums the group's masked queries into one TIP query per KV group and selects one token set
per KV group (``S_g = Σ_{h∈g} q_h[D_h]·K[D_h]^T``); FAC then folds the group into the query length. That
is faster (one gather per KV head, one SDPA call) but is **not the paper's rule**: heads of a group attend
to the same tokens. The reference (per-head) implementation is :mod:`leanlm.fasa.selectors.fasa` +
:func:`leanlm.fasa.attention.focused_attention`; tests check both give the same tokens.
"""

from __future__ import annotations

import torch

from leanlm.fasa.cache import FasaLayer
from leanlm.fasa.selectors.window import force_window
from leanlm.fasa.topk import exact_topk


def masked_queries(query: torch.Tensor, layer: FasaLayer, pooled: bool = False) -> torch.Tensor:
    """``q̃ (B, H_kv, G, U)``: each head's query on the label columns, zero outside its own ``D_h``
    (``(B, H_kv, 1, U)``, the group's sum, when ``pooled``). One gather with a per-layer cached index."""
    b = query.shape[0]
    index, owned = layer.query_gather(query.dtype)
    q_label = query.reshape(b, -1).index_select(1, index).view(b, *owned.shape) * owned  # q̃: own D_h only
    return q_label.sum(2, keepdim=True) if pooled else q_label


def tip_scores(query: torch.Tensor, layer: FasaLayer, pooled: bool = False, kernel: bool = False) -> torch.Tensor:
    """Eq. 6 over the label buffer: ``(B, H_q, t)`` per-head scores (``(B, H_kv, t)`` when ``pooled``).

    One batched ``(G, U) @ (U, t)`` matmul per layer over the dim-major label (token axis contiguous).
    ``kernel``: the Triton kernel (:mod:`leanlm.fasa.kernels.label_tip`) instead.
    """
    q_label = masked_queries(query, layer, pooled)
    if kernel:
        from leanlm.fasa.kernels.label_tip import label_tip_scores

        return label_tip_scores(q_label, layer.label(), layer.length)
    scores = q_label @ layer.label_columns()  # (B, H_kv, G or 1, t)
    return scores.view(query.shape[0], -1, scores.shape[-1])


def _gather_rows(layer: FasaLayer, indices: torch.Tensor, rows_per_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V rows at ``indices (B, R, k)`` (row ``r`` reads KV head ``r // rows_per_kv``) -> ``(B, R, k, d)``."""
    return layer.gather(indices, rows_per_kv)


def fasa_c_attention(
    query: torch.Tensor,
    layer: FasaLayer,
    budget: int,
    scaling: float,
    *,
    pooled: bool = False,
    valid: torch.Tensor | None = None,
    softcap: float | None = None,
    n_sink: int = 0,
    n_recent: int = 0,
    block: int | None = None,
    kernels: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: returns ``(out (B, H_q, 1, d), indices (B, H_q or H_kv, k))``.

    ``valid (B, 1 or H_q, t)``: keys the query may see (left padding); invisible keys are never preferred
    and get zero weight. ``n_sink``/``n_recent`` force the first/last tokens into the selection.
    ``kernels``: Triton TIP over the label buffer and Triton gather-attend FAC (GPU, or the interpreter);
    FAC falls back to torch with a mask, a softcap or a non-power-of-two head_dim.
    """
    b, n_q, _, d = query.shape
    n_kv = layer.spec.owned.shape[0]
    group = n_q // n_kv
    t = layer.length
    if not (kernels or n_sink or n_recent or valid is not None or softcap is not None):
        # the common case (no padding, nothing forced), with nothing but the five steps:
        scores = (masked_queries(query, layer, pooled) @ layer.label_columns()).view(b, -1, t)  # TIP, Eq. 6
        indices = exact_topk(scores, budget, block)  # T_t = TopK-I(S_t, N_fac)
        keys, values = layer.gather(indices, 1 if pooled else group, reuse=True)  # index_select
        q = query.view(b, n_kv, group, d) if pooled else query  # pooled: the group folds into q_len
        out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, scale=scaling)  # FAC, Eq. 7
        return out.view(b, n_q, 1, d), indices
    scores = force_window(tip_scores(query, layer, pooled, kernels), n_sink, n_recent, inplace=True)  # TIP, Eq. 6
    if valid is not None:  # after forcing: a forced token that is padding is still never preferred
        if pooled and valid.shape[1] != 1:
            valid = valid.view(b, n_kv, group, t).any(2)
        scores = scores.masked_fill(~valid, float("-inf"))
    indices = exact_topk(scores, budget, block)  # T_t = TopK-I(S_t, N_fac)
    if kernels and valid is None and softcap is None and layer.tier_bytes() == 0:
        from leanlm.fasa.kernels import focused_attention as fac_kernel
        from leanlm.fasa.kernels import supports

        if supports(d):
            per_head = indices.repeat_interleave(group, 1) if pooled else indices
            return fac_kernel(query, layer._keys, layer._values, per_head, scaling), indices  # FAC, in-kernel gather
    keys, values = _gather_rows(layer, indices, 1 if pooled else group)
    q = query.view(b, n_kv, group, d) if pooled else query  # pooled: the group folds into q_len
    mask = None
    if valid is not None:
        keep = valid.expand(b, indices.shape[1], t).gather(-1, indices)
        mask = keep[:, :, None, :]
    if softcap is None:
        out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scaling)
    else:  # Gemma 2: softcap * tanh(logits / softcap) before the softmax, as the model's eager attention
        logits = (q @ keys.transpose(-1, -2)).float() * scaling
        logits = softcap * torch.tanh(logits / softcap)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        out = torch.softmax(logits, dim=-1).to(values.dtype) @ values
    return out.reshape(b, n_q, 1, d), indices
