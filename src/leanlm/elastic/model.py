"""The elastic sparse MoE decoder as transformers classes (ERNIE 5.0, arXiv 2602.04705, §2 and §3.3).

- Decoder: pre-norm RMSNorm, RoPE, grouped-query attention (``torch.nn.functional.scaled_dot_product_attention``),
  KV cache through transformers' ``Cache`` objects so ``generate`` works.
- MoE FFN (:class:`ElasticMoe`): E fine-grained routed SwiGLU experts + optional shared experts. The router is an
  FP32 softmax over the experts; top-k is taken on ``probs + bias`` where ``bias`` is the selection-only
  correction bias of auxiliary-loss-free balancing; the combine weights are the *unbiased* probabilities of the
  chosen experts renormalised to sum 1 (denominator clamped at ``moe_norm_min``) -- as ERNIE 4.5 /
  ``Ernie4_5_Moe``. No capacity limit, so no token is ever dropped (§2, "training never drops tokens").
- Decoding: a single new position without gradients runs a fused step (:meth:`DecoderLayer.decode`: one q/k/v
  projection, RoPE in 3 ops from cached cos / signed-sin tables, fused RMSNorm, routed and shared experts in one
  gathered matmul chain, no per-module call overhead); training, evaluation and prefill run the plain modules.
- Elastic execution (§3.3): a :class:`~leanlm.elastic.subnet.SubNet` skips layers (identity on the residual),
  masks removed experts with -inf *before* the softmax and top-k (they can never receive a token), and sets k.
- MTP (§2, next-group prediction for text): one DeepSeek-V3-style module, ``h' = W [norm(h_t); norm(E(x_{t+1}))]``,
  a SwiGLU block, the shared output head, predicting x_{t+2}. For the grouped modality (groups of 2 codes) the
  main head and the MTP head together predict the whole next group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from leanlm.elastic.config import ElasticMoeConfig
from leanlm.elastic.subnet import SubNet


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (computed in fp32)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for positions ``[B, T]`` -> ``[B, 1, T, head_dim]`` (half-split rotation as Llama)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


class RopeCache:
    """cos/sin of every position up to a length, computed once and grown on demand (shared by all layers).

    Indexing the table gives exactly the values :func:`rope_cos_sin` computes for the same positions (the same
    fp32 operations on the same inputs), so caching changes no logit.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        self.head_dim, self.theta = head_dim, theta
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None
        self.signed_sin: torch.Tensor | None = None

    def _ensure(self, need: int, device: torch.device, dtype: torch.dtype) -> None:
        if self.cos is None or self.cos.shape[0] < need or self.cos.device != device or self.cos.dtype != dtype:
            size = max(need, 2 * self.cos.shape[0] if self.cos is not None else 256)
            table = torch.arange(size, device=device)[None]
            cos, sin = rope_cos_sin(table, self.head_dim, self.theta, dtype)
            self.cos, self.sin = cos[0, 0], sin[0, 0]
            self.signed_sin = None

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``length`` (an upper bound of the positions, known on the host) avoids reading ``positions.max()``."""
        need = length if length is not None else (int(positions.max()) + 1 if positions.numel() else 1)
        self._ensure(need, positions.device, dtype)
        return self.cos[positions][:, None], self.sin[positions][:, None]

    def _signed(self) -> torch.Tensor:
        if self.signed_sin is None:
            half = self.head_dim // 2
            self.signed_sin = torch.cat([-self.sin[:, :half], self.sin[:, half:]], dim=-1)
        return self.signed_sin

    def span(self, start: int, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and *signed* sin of positions ``start .. start+length-1`` for every sequence (``[1, 1, length,
        head_dim]``, views of the tables, no index gather), for :func:`apply_rope_rolled`: the sin table's first
        half negated, so that ``rotate_half(x) * sin == x.roll(half) * signed_sin`` exactly."""
        self._ensure(start + length, device, dtype)
        return self.cos[start:start + length][None, None], self._signed()[start:start + length][None, None]

    def rolled(self, positions: torch.Tensor, dtype: torch.dtype, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`span` for explicit ``positions`` ``[B, T]`` (e.g. from ``generate``): ``[B, 1, T, head_dim]``."""
        need = length if length is not None else (int(positions.max()) + 1 if positions.numel() else 1)
        self._ensure(need, positions.device, dtype)
        return self.cos[positions][:, None], self._signed()[positions][:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def apply_rope_rolled(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` in 3 ops instead of 7: ``rotate_half(x) = cat(-x2, x1)``, so ``rotate_half(x) * sin ==
    cat(x2, x1) * cat(-sin1, sin2) == x.roll(half) * signed_sin`` (sign flips are exact)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


def _weights_key(tensors: tuple[torch.Tensor, ...]) -> tuple:
    """Identity of a set of weights' current values: in-place version counter, storage address, dtype (a new
    device, dtype or shape means new storage). Cheap enough to check on every decoded token."""
    return tuple((w._version, w.data_ptr(), w.dtype) for w in tensors)


def _weight(module: nn.Module, name: str) -> torch.Tensor:
    """``module.<name>.weight`` by plain dict lookups (``nn.Module.__getattr__`` costs ~0.5 us per access, which
    adds up over the few hundred accesses of a decoded token)."""
    return module._modules[name]._parameters["weight"]


def _rms_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` through the fused ``torch.rms_norm`` kernel where that is the same computation (fp32)."""
    weight = norm._parameters["weight"]
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return torch.rms_norm(x, (x.shape[-1],), weight, norm.eps)
    return norm(x)


class Attention(nn.Module):
    def __init__(self, config: ElasticMoeConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self._qkv: tuple[tuple, torch.Tensor] | None = None

    def fused_qkv_weight(self) -> torch.Tensor:
        """``[q; k; v]`` weights stacked for one projection per decoded token; rebuilt whenever a source weight
        changes (its storage or in-place version counter), so training or loading weights never leaves it stale."""
        srcs = (_weight(self, "q_proj"), _weight(self, "k_proj"), _weight(self, "v_proj"))
        key = _weights_key(srcs)
        if self._qkv is None or self._qkv[0] != key:
            self._qkv = (key, torch.cat([w.detach() for w in srcs], 0))
        return self._qkv[1]

    def decode(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: Cache | None, cache_index: int) -> torch.Tensor:
        """One decoded position (``x``: ``[B, 1, d]``, no gradients): one fused q/k/v projection, RoPE applied to q
        and k together (``rope`` = :meth:`RopeCache.span`: cos, signed sin), cache append, attention, output
        projection. Same maths as :meth:`forward`."""
        b = x.shape[0]
        nq, nkv = self.n_heads, self.n_kv
        qkv = F.linear(x, self.fused_qkv_weight()).view(b, nq + 2 * nkv, 1, self.head_dim)  # t = 1: heads-major
        cos, sin = rope
        qk, v = qkv.split([nq + nkv, nkv], dim=1)
        q, k = apply_rope_rolled(qk, cos, sin).split([nq, nkv], dim=1)
        if cache is not None:
            k, v = cache.update(k, v, cache_index)
        if nkv != nq:
            k = k.repeat_interleave(nq // nkv, dim=1)
            v = v.repeat_interleave(nq // nkv, dim=1)
        out = F.scaled_dot_product_attention(q, k, v)
        return F.linear(out.reshape(b, 1, nq * self.head_dim), _weight(self, "o_proj"))

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: Cache | None, cache_index: int,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, cache_index)
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        s = k.shape[2]
        if t == 1:
            out = F.scaled_dot_product_attention(q, k, v)
        elif t == s:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a chunk appended after cached tokens: causal with an offset
            mask = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=s - t)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class RouterChoice:
    """The router's decision for ``N`` tokens: chosen experts ``[N, k]`` and their combine weights ``[N, k]``."""

    indices: torch.Tensor
    weights: torch.Tensor
    probs: torch.Tensor  # [N, E] fp32, masked experts have probability 0


class _Permute(torch.autograd.Function):
    """``x[perm]`` whose backward is the gather ``grad[inverse]`` (no scatter-add: bit-deterministic on any
    number of threads, unlike the ``index_put_(accumulate=True)`` autograd uses for a plain index)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x[perm]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad[inverse], None, None


def permute_rows(x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` reordered by the permutation ``perm`` (``inverse`` = its inverse), deterministic backward."""
    return _Permute.apply(x, perm, inverse)


class ElasticMoe(nn.Module):
    """Routed experts (stacked weights ``[E, d, f]``) + shared experts, with elastic width and sparsity.

    The correction bias ``router_bias`` is a buffer: it only affects *which* experts are chosen, never the
    weights, and is updated outside the optimizer by :func:`leanlm.elastic.balance.update_router_biases`.
    ``expert_usage`` accumulates the tokens routed to each expert while training (used by extraction).

    Dispatch (``config.moe_dispatch``): ``"auto"`` (default) uses ``"gather"`` when the call's (token, expert)
    pairs are few and their weights small (at most ``GATHER_MAX_PAIRS`` pairs and ``GATHER_MAX_ELEMENTS``
    copied weights: decoding a small model), else ``"grouped"`` (``torch._grouped_mm``) for inference where torch
    has it, else ``"gather"`` up to ``GATHER_MAX_PAIRS`` pairs and ``"sorted"`` beyond. Without gradients,
    ``"gather"`` runs :meth:`fused_gather_experts` (routed and shared experts in one chain) unless ``fused`` is off.
    """

    GATHER_MAX_PAIRS = 64
    GATHER_MAX_ELEMENTS = 1 << 18  # weights copied by "gather" (fp32: 1 MiB, about an L2 cache)

    def __init__(self, config: ElasticMoeConfig) -> None:
        super().__init__()
        d, f, e = config.hidden_size, config.moe_intermediate_size, config.num_experts
        self.num_experts = e
        self.top_k = config.num_experts_per_tok
        self.norm_min = config.moe_norm_min
        self.dispatch = config.moe_dispatch
        self.router = nn.Linear(d, e, bias=False)
        self.w_gate = nn.Parameter(torch.empty(e, d, f))
        self.w_up = nn.Parameter(torch.empty(e, d, f))
        self.w_down = nn.Parameter(torch.empty(e, f, d))
        self.register_buffer("router_bias", torch.zeros(e, dtype=torch.float32))
        self.register_buffer("expert_usage", torch.zeros(e, dtype=torch.float64))
        self.shared = SwiGLU(d, f * config.num_shared_experts) if config.num_shared_experts else None
        self._last_indices: torch.Tensor | None = None
        self._last_counts: torch.Tensor | None = None
        self._fused: tuple[tuple, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.fused = True  # inference "gather" runs fused_gather_experts (see ElasticMoeForCausalLM.set_fused_decode)

    @property
    def last_counts(self) -> torch.Tensor | None:
        """Tokens routed to each expert in the last forward (for balancing); computed on first access."""
        if self._last_counts is None and self._last_indices is not None:
            self._last_counts = self._counts(self._last_indices)
        return self._last_counts

    def route(self, x: torch.Tensor, expert_mask: torch.Tensor | None, top_k: int) -> RouterChoice:
        """FP32 softmax router; top-k on probs + bias (selection only); renormalised unbiased weights."""
        logits = F.linear(x.float(), self.router.weight.float())
        scores_bias = self.router_bias
        if expert_mask is not None:
            logits = logits.masked_fill(~expert_mask, float("-inf"))
            scores_bias = scores_bias.masked_fill(~expert_mask, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        indices = torch.topk(probs + scores_bias, top_k, dim=-1).indices
        chosen = probs.gather(-1, indices)
        weights = chosen / chosen.sum(-1, keepdim=True).clamp_min(self.norm_min)
        return RouterChoice(indices=indices, weights=weights, probs=probs)

    def expert_ffn(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return (F.silu(x @ self.w_gate[e]) * (x @ self.w_up[e])) @ self.w_down[e]

    def forward(self, x: torch.Tensor, expert_mask: torch.Tensor | None = None, top_k: int | None = None) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        k = top_k or self.top_k
        choice = self.route(flat, expert_mask, k)
        mode = self.dispatch
        if mode == "auto":
            pairs = flat.shape[0] * k
            _, d, f = self.w_gate.shape
            if pairs <= self.GATHER_MAX_PAIRS and pairs * 3 * d * f <= self.GATHER_MAX_ELEMENTS:
                mode = "gather"  # few, small experts: copying their weights is cheaper than sorting
            elif not (torch.is_grad_enabled() and self.w_gate.requires_grad) and self._grouped_ok(flat):
                mode = "grouped"
            else:
                mode = "gather" if pairs <= self.GATHER_MAX_PAIRS else "sorted"
        if mode == "gather" and self.fused and not torch.is_grad_enabled():
            return self.fused_gather_experts(flat, choice).reshape(shape)  # shared experts included
        if mode == "grouped":
            out = self.grouped_experts(flat, choice)
        elif mode == "gather":
            out = self.gather_experts(flat, choice)
        else:
            out = self.dispatch_experts(flat, choice)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.reshape(shape)

    def _counts(self, indices: torch.Tensor) -> torch.Tensor:
        """Tokens per expert, as an exact integer scatter (no host sync, deterministic)."""
        flat = indices.reshape(-1)
        return torch.zeros(self.num_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))

    def _grouped_ok(self, flat: torch.Tensor) -> bool:
        """``torch._grouped_mm`` exists and the row strides are multiples of 16 bytes (its requirement)."""
        size = flat.element_size()
        return (hasattr(torch, "_grouped_mm") and flat.dtype == self.w_gate.dtype
                and (self.w_gate.shape[1] * size) % 16 == 0 and (self.w_gate.shape[2] * size) % 16 == 0)

    def grouped_experts(self, flat: torch.Tensor, choice: RouterChoice) -> torch.Tensor:
        """Inference dispatch: (token, expert) pairs sorted by expert on the device, then one grouped GEMM per
        projection (``torch._grouped_mm`` with device-side group offsets). No host sync, no Python loop over
        experts, each used expert's weights read once: the cost follows the pairs (k per token) actually routed.
        Forward only (its CPU backward is not usable in torch 2.13); training uses ``"sorted"``."""
        n, k = choice.indices.shape
        flat_experts = choice.indices.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        self._last_indices, self._last_counts = choice.indices.detach(), None
        counts = torch.zeros(self.num_experts, dtype=torch.long, device=flat.device).scatter_add_(
            0, flat_experts, torch.ones_like(flat_experts))
        offs = torch.cumsum(counts, 0).to(torch.int32)
        xs = flat.index_select(0, order // k)
        h = F.silu(torch._grouped_mm(xs, self.w_gate, offs=offs)) * torch._grouped_mm(xs, self.w_up, offs=offs)
        ys = torch._grouped_mm(h, self.w_down, offs=offs)
        y = torch.empty_like(ys).index_copy_(0, order, ys).view(n, k, -1)
        return (y * choice.weights.to(flat.dtype)[..., None]).sum(1)

    def gather_experts(self, flat: torch.Tensor, choice: RouterChoice) -> torch.Tensor:
        """Decode-time dispatch: gather the chosen experts' weights (``[N, k, d, f]``) and run one batched matmul
        chain. No sort, no counts read on the host, no per-expert Python loop: the cost is the k experts each
        token actually uses, so it scales with k (and with N; use ``"sorted"`` for large batches)."""
        idx = choice.indices
        n, k = idx.shape
        self._last_indices, self._last_counts = idx.detach(), None  # counted only if read (not per decoded token)
        flat_idx = idx.reshape(-1)

        def take(w: torch.Tensor) -> torch.Tensor:  # index_select: its backward is index_add_, deterministic on CPU
            return w.index_select(0, flat_idx).view(n, k, *w.shape[1:])

        x = flat[:, None, None, :]  # [N, 1, 1, d]
        h = F.silu(x @ take(self.w_gate)) * (x @ take(self.w_up))  # [N, k, 1, f]
        y = (h @ take(self.w_down)).squeeze(2)  # [N, k, d]
        return (y * choice.weights.to(flat.dtype)[..., None]).sum(1)

    def fused_expert_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inference copies of the expert weights for :meth:`fused_gather_experts`: gate and up side by side
        (``[E + S, d, 2f]``), down (``[E + S, f, d]``), with the shared expert's hidden units appended as ``S``
        always-chosen pseudo-experts of width f (a SwiGLU of width S*f is exactly the sum of S SwiGLUs of width f
        over its slices), and the pseudo-experts' ids ``[S]``. Rebuilt whenever a source weight changes (storage
        or in-place version counter), so training or loading weights never leaves it stale."""
        params, shared = self._parameters, self._modules["shared"]
        srcs: tuple[torch.Tensor, ...] = (params["w_gate"], params["w_up"], params["w_down"])
        if shared is not None:
            srcs += (_weight(shared, "gate_proj"), _weight(shared, "up_proj"), _weight(shared, "down_proj"))
        key = _weights_key(srcs)
        if self._fused is None or self._fused[0] != key:
            e, d, f = self.w_gate.shape
            gate_up = torch.cat([self.w_gate.detach(), self.w_up.detach()], dim=2)
            down = self.w_down.detach()
            n_shared = 0
            if self.shared is not None:
                n_shared = self.shared.gate_proj.weight.shape[0] // f
                sg = self.shared.gate_proj.weight.detach().view(n_shared, f, d).transpose(1, 2)
                su = self.shared.up_proj.weight.detach().view(n_shared, f, d).transpose(1, 2)
                sd = self.shared.down_proj.weight.detach().view(d, n_shared, f).permute(1, 2, 0)
                gate_up = torch.cat([gate_up, torch.cat([sg, su], dim=2)], dim=0)
                down = torch.cat([down, sd], dim=0)
            ids = torch.arange(e, e + n_shared, device=down.device)
            self._fused = (key, gate_up.contiguous(), down.contiguous(), ids)
        return self._fused[1], self._fused[2], self._fused[3]

    def fused_gather_experts(self, flat: torch.Tensor, choice: RouterChoice) -> torch.Tensor:
        """Inference form of :meth:`gather_experts` (no gradients), routed *and* shared experts in one chain:
        gather each token's k chosen experts plus the shared pseudo-experts from :meth:`fused_expert_weights`,
        one batched matmul for gate and up together, the combine weights applied to the hidden activations, and
        the down projection of all k + S experts as one matmul whose inner sum is the weighted sum over experts.
        Per token: 2 weight gathers and 2 matmuls whatever k is, against 3 gathers, 3 matmuls and 3 shared-expert
        projections unfused; the FLOPs are the same."""
        gate_up, down, shared_ids = self.fused_expert_weights()
        idx = choice.indices
        self._last_indices, self._last_counts = idx.detach(), None
        n, k = idx.shape
        d, f = flat.shape[1], down.shape[1]
        if shared_ids.numel():
            idx = torch.cat([idx, shared_ids.expand(n, -1)], dim=1)
        m = idx.shape[1]
        flat_idx = idx.view(-1)
        h = flat.view(n, 1, 1, d) @ gate_up.index_select(0, flat_idx).view(n, m, d, 2 * f)  # [N, m, 1, 2f]
        a = F.silu(h[..., :f]) * h[..., f:]  # [N, m, 1, f], a fresh tensor
        a[:, :k].mul_(choice.weights.view(n, k, 1, 1))  # combine weights (in place); shared experts weigh 1
        out = a.view(n, 1, m * f) @ down.index_select(0, flat_idx).view(n, m * f, d)  # sums over the m experts
        return out.view(n, d)

    def dispatch_experts(self, flat: torch.Tensor, choice: RouterChoice) -> torch.Tensor:
        """Sort the (token, expert) pairs by expert and run each expert once on its contiguous block.

        ``"sorted"``: one matmul chain per non-empty expert (a loop over experts, never over tokens);
        ``"bmm"``: the blocks padded to the largest one and run as one batched matmul over all experts.
        The pairs are permuted into expert order and back with gathers only (:func:`permute_rows`), and each
        token's k outputs are summed in a fixed order, so forward and backward are bit-deterministic for a
        given thread count (no scatter-add / ``index_add_``).
        """
        n, k = choice.indices.shape
        flat_experts = choice.indices.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        counts = self._counts(flat_experts)
        self._last_indices, self._last_counts = None, counts.detach()
        pairs = flat[:, None, :].expand(n, k, flat.shape[-1]).reshape(n * k, -1)
        xs = permute_rows(pairs, order, inverse)
        if self.dispatch == "bmm":
            ys = self._bmm_blocks(xs, counts)
        else:
            # unbind once (one stacked gradient in backward, not one full-size zero tensor per expert)
            w_gate, w_up, w_down = self.w_gate.unbind(0), self.w_up.unbind(0), self.w_down.unbind(0)
            outs = [
                (F.silu(chunk @ w_gate[e]) * (chunk @ w_up[e])) @ w_down[e]
                for e, chunk in enumerate(xs.split(counts.tolist()))
                if chunk.shape[0]
            ]
            ys = torch.cat(outs) if outs else xs.new_zeros(0, xs.shape[-1])
        y = permute_rows(ys, inverse, order).view(n, k, -1)
        return (y * choice.weights.to(flat.dtype)[..., None]).sum(1)

    def _bmm_blocks(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        e = self.num_experts
        cap = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(xs.shape[0], device=xs.device) - torch.repeat_interleave(starts, counts)
        owner = torch.repeat_interleave(torch.arange(e, device=xs.device), counts)
        padded = xs.new_zeros(e, cap, xs.shape[-1])
        padded[owner, slot] = xs
        h = F.silu(torch.bmm(padded, self.w_gate)) * torch.bmm(padded, self.w_up)
        return torch.bmm(h, self.w_down)[owner, slot]

    def dense_reference(self, x: torch.Tensor, expert_mask: torch.Tensor | None = None, top_k: int | None = None) -> torch.Tensor:
        """Brute force: run *every* expert on every token and mix with the router's combine weights (tests)."""
        flat = x.reshape(-1, x.shape[-1])
        choice = self.route(flat, expert_mask, top_k or self.top_k)
        gates = torch.zeros(flat.shape[0], self.num_experts, dtype=flat.dtype, device=flat.device)
        gates.scatter_(1, choice.indices, choice.weights.to(flat.dtype))
        all_out = torch.stack([self.expert_ffn(e, flat) for e in range(self.num_experts)], dim=1)
        out = (gates[..., None] * all_out).sum(1)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.reshape(x.shape)


class DecoderLayer(nn.Module):
    def __init__(self, config: ElasticMoeConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.post_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = index >= config.first_k_dense_layers
        self.mlp: nn.Module = ElasticMoe(config) if self.is_moe else SwiGLU(config.hidden_size, config.dense_intermediate_size)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: Cache | None, cache_index: int,
        expert_mask: torch.Tensor | None, top_k: int | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.input_norm(x), rope, cache, cache_index)
        h = self.post_attn_norm(x)
        return x + (self.mlp(h, expert_mask, top_k) if self.is_moe else self.mlp(h))

    def decode(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: Cache | None, cache_index: int,
        expert_mask: torch.Tensor | None, top_k: int | None,
    ) -> torch.Tensor:
        """:meth:`forward` for one decoded position without gradients, calling the submodules' computations
        directly (no per-module call overhead, no hooks) with fused norms and the fused q/k/v projection."""
        mods = self._modules
        x = x + mods["attn"].decode(_rms_norm(mods["input_norm"], x), rope, cache, cache_index)
        h = _rms_norm(mods["post_attn_norm"], x)
        return x + (mods["mlp"].forward(h, expert_mask, top_k) if self.is_moe else mods["mlp"].forward(h))


class MTPModule(nn.Module):
    """DeepSeek-V3-style MTP depth 1: combine h_t with the embedding of x_{t+1} to predict x_{t+2}."""

    def __init__(self, config: ElasticMoeConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.hidden_norm = RMSNorm(d, config.rms_norm_eps)
        self.embed_norm = RMSNorm(d, config.rms_norm_eps)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.block_norm = RMSNorm(d, config.rms_norm_eps)
        self.block = SwiGLU(d, config.moe_intermediate_size * 2)
        self.final_norm = RMSNorm(d, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, next_embeds: torch.Tensor) -> torch.Tensor:
        h = self.proj(torch.cat([self.hidden_norm(hidden), self.embed_norm(next_embeds)], dim=-1))
        h = h + self.block(self.block_norm(h))
        return self.final_norm(h)


@dataclass
class ElasticMoeOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the next-token loss, the MTP loss and per-layer expert token counts."""

    lm_loss: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None
    expert_counts: dict[int, torch.Tensor] | None = None


class ElasticMoePreTrainedModel(PreTrainedModel):
    config_class = ElasticMoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules: ClassVar[list[str]] = ["DecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # transformers.initialization skips tensors already loaded from a checkpoint (``_is_hf_initialized``)
        from transformers import initialization as init

        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, 0.0, std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, ElasticMoe):
            for p in (module.w_gate, module.w_up, module.w_down):
                init.normal_(p, 0.0, std)
            init.zeros_(module.router_bias)
            init.zeros_(module.expert_usage)


class ElasticMoeModel(ElasticMoePreTrainedModel):
    """The decoder stack (embeddings, layers, final norm)."""

    def __init__(self, config: ElasticMoeConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rope = RopeCache(config.head_dim, config.rope_theta)
        self._checked: dict[tuple[SubNet, str], dict[int, torch.Tensor]] = {}  # validated sub-network -> masks
        self.fused_decode = True  # see forward; False runs every decoded token through the plain modules
        self.post_init()

    def expert_masks(self, subnet: SubNet | None, device: torch.device) -> dict[int, torch.Tensor]:
        if subnet is None or subnet.experts is None:
            return {}
        masks = {}
        for layer, kept in subnet.experts:
            mask = torch.zeros(self.config.num_experts, dtype=torch.bool, device=device)
            mask[list(kept)] = True
            masks[layer] = mask
        return masks

    def _prepare(self, subnet: SubNet, device: torch.device) -> dict[int, torch.Tensor]:
        """Validate ``subnet`` and build its expert masks once; later calls with the same sub-network (every
        decoding step of ``generate``) reuse them instead of re-validating per forward."""
        key = (subnet, str(device))
        masks = self._checked.get(key)
        if masks is None:
            subnet.validate(len(self.layers), self.config.num_experts, self.config.moe_layers, self.config.num_experts_per_tok)
            masks = self.expert_masks(subnet, device)
            if len(self._checked) > 256:  # elastic training draws many sub-networks; keep the cache small
                self._checked.clear()
            self._checked[key] = masks
        return masks

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None,
        cache: Cache | None = None,
        subnet: SubNet | None = None,
        length: int | None = None,
        want_counts: bool = True,
        start: int | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``length``: an upper bound of ``positions`` known on the host (no device read for the RoPE table);
        ``want_counts``: also return the tokens routed to each expert per MoE layer; ``start``: the positions are
        ``start, start+1, ...`` for every sequence (known on the host).

        A single decoded position without gradients (``T = 1``, the step of ``generate``) runs the fused decode
        step (:meth:`DecoderLayer.decode`, RoPE as a view of the table) unless ``fused_decode`` is off; training,
        evaluation and prefill always run the plain modules."""
        x = self.embed_tokens(input_ids)
        masks = self._prepare(subnet, x.device) if subnet is not None else {}
        top_k = subnet.top_k if subnet is not None else None
        run = subnet.layers if subnet is not None and subnet.layers is not None else range(len(self.layers))
        decode = self.fused_decode and input_ids.shape[1] == 1 and not torch.is_grad_enabled()
        if decode:
            rope = self.rope.span(start, 1, x.device, x.dtype) if start is not None else self.rope.rolled(positions, x.dtype, length)
        else:
            if positions is None:
                positions = torch.arange(start, start + input_ids.shape[1], device=x.device).expand(input_ids.shape)
            rope = self.rope(positions, x.dtype, length)
        counts: dict[int, torch.Tensor] = {}
        for slot, i in enumerate(run):
            layer = self.layers[i]
            if decode:
                x = layer.decode(x, rope, cache, slot, masks.get(i), top_k)
            else:
                x = layer(x, rope, cache, slot, masks.get(i), top_k)
            if layer.is_moe and want_counts:
                counts[i] = layer.mlp.last_counts
        return (_rms_norm(self.norm, x) if decode else self.norm(x)), counts


class ElasticMoeForCausalLM(ElasticMoePreTrainedModel, GenerationMixin):
    """Causal LM with an elastic MoE decoder, an optional MTP module and a (re)settable active sub-network.

    ``forward(..., subnet=SubNet(...))`` runs a sub-network for one call; ``model.active_subnet`` sets the
    default used when ``subnet`` is not given (so ``generate`` can decode with a sub-network).
    """

    def __init__(self, config: ElasticMoeConfig) -> None:
        super().__init__(config)
        self.model = ElasticMoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.mtp = MTPModule(config) if config.num_mtp_modules else None
        self.active_subnet: SubNet | None = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_fused_decode(self, enabled: bool) -> None:
        """Turn the fused decode step (one decoded token without gradients: fused q/k/v, fused norms, routed and
        shared experts in one gathered chain) on (default) or off (every token through the plain modules and
        the unfused gather, the previous decode path; same logits up to float rounding, tested)."""
        self.model.fused_decode = enabled
        for block in self.moe_blocks().values():
            block.fused = enabled

    def moe_blocks(self) -> dict[int, ElasticMoe]:
        """Layer index -> its :class:`ElasticMoe`."""
        return {i: layer.mlp for i, layer in enumerate(self.model.layers) if layer.is_moe}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        subnet: SubNet | None = None,
        logits_to_keep: int = 0,
        return_expert_counts: bool | None = None,
        **kwargs: object,
    ) -> ElasticMoeOutput:
        """``return_expert_counts`` (default: when training or given ``labels``) fills ``expert_counts`` with the
        tokens routed to each expert per MoE layer; decoding leaves it off (no counting per token)."""
        subnet = subnet if subnet is not None else self.active_subnet
        if return_expert_counts is None:
            return_expert_counts = self.training or labels is not None
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        # checked on the prompt only: a decoding step appends ones to the mask (no device read per token)
        if attention_mask is not None and past == 0 and not bool(attention_mask.all()):
            raise ValueError("ElasticMoeForCausalLM does not support padding: attention_mask must be all ones")
        t = input_ids.shape[1]
        length = start = None
        if position_ids is None:  # positions past, past+1, ...: built by the decoder only where it needs them
            length, start = past + t, past
        hidden, counts = self.model(input_ids, position_ids, past_key_values, subnet, length, return_expert_counts, start)
        kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        if t == 1 and self.model.fused_decode and not torch.is_grad_enabled():
            logits = F.linear(kept, _weight(self, "lm_head"))  # decoding: no module-call overhead
        else:
            logits = self.lm_head(kept)
        loss = lm_loss = mtp_loss = None
        if labels is not None:
            lm_loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100)
            loss = lm_loss
            if self.mtp is not None and t > 2:
                # position t sees h_t and the embedding of x_{t+1}; it predicts x_{t+2}
                next_emb = self.model.embed_tokens(input_ids[:, 1:-1])
                mtp_hidden = self.mtp(hidden[:, :-2], next_emb)
                mtp_logits = self.lm_head(mtp_hidden)
                mtp_loss = F.cross_entropy(
                    mtp_logits.reshape(-1, mtp_logits.shape[-1]).float(), labels[:, 2:].reshape(-1), ignore_index=-100
                )
                loss = lm_loss + self.config.mtp_loss_weight * mtp_loss
        return ElasticMoeOutput(
            loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None,
            lm_loss=lm_loss, mtp_loss=mtp_loss, expert_counts=counts,
        )
