"""The probing decode path every method runs through, greedy decoding and teacher-forced perplexity.

:class:`ProbeAttention` is an attention handler (:func:`leanlm.fasa.hooks.attention_handler`): dense for
prefill and ``dense_layers`` (layer 0 dense **for every method**, as the official code), and at a decode
step of a sparse layer ``indices = selector.select(q, K, budget)`` then FAC over them
(:func:`leanlm.fasa.attention.focused_attention`, Eq. 7), i.e. the same computation as
``leanlm.fasa.apply(..., backend="reference")`` (tests check the logits are equal). With ``probe=True`` it
also computes the dense attention of the same query and records per layer:

- top-K recall: ``|selected ∩ TopK(q K^T)| / K`` (the compound CA of Table 1 against the true top-K),
- captured softmax mass: the dense softmax weight on the selected tokens,
- relative output error ``‖o − ô‖ / ‖o‖`` of the attention output (local: both use this step's q/K/V).

Probes skip steps where the budget covers every key (nothing to select).

Speed without changing a result (the evaluation runs ~55 decodes per prompt from one prefill): the dense
prefill is stored once in a :class:`RewindableCache` (preallocated buffers; every method decodes into the
rows after the prompt and :meth:`RewindableCache.rewind` drops them, instead of a deep copy per method and
a ``torch.cat`` of the whole cache per step), and the probes compute the dense logits once per query head
against the un-expanded GQA keys (no ``repeat_interleave`` copies) and reuse them for the dense reference
output. Each per-head product is the same kernel on the same values as the batched one, so every record
is bit-identical to the straightforward path (``tests/fasa/test_fasa_evaluation.py`` checks it).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from leanlm.fasa.attention import dense_attention, focused_attention, key_validity
from leanlm.fasa.hooks import attention_handler, dense_attention_forward
from leanlm.fasa.selectors import TokenSelector, expand_kv, gqa_logits, gqa_weighted, shared_logits


@contextlib.contextmanager
def flush_denormals():
    """Flush subnormal floats to zero while the evaluation runs (``torch.set_flush_denormal``), restored after.

    Softmax weights of far-away keys underflow into the subnormal range (``exp(x) < 1.2e-38``), and x86
    arithmetic on subnormals is ~100x slower: ``(1, 4000) @ (4000, 64)`` with subnormal weights took 1.9 ms
    instead of 22 us here, and one perplexity row (Loki @64 on code) took 16 minutes instead of ~20 s.
    Flushing changes a result only where a value is itself below 1.2e-38 or a sum's other terms are below
    ~1e-31; on the 8K prompt ``niah_single/7936/0`` all 28 rows and 5 press rows were identical, bit for bit,
    with and without it (``studies/fasa-eval/verify_rows.py``)."""
    supported = torch.set_flush_denormal(True)  # no getter exists: restored to torch's default (off)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(False)


@dataclass
class LayerProbes:
    """Per-layer sums of the three probes and the number of decode steps summed."""

    n_layers: int
    recall: list[float] = field(default_factory=list)
    mass: list[float] = field(default_factory=list)
    rel_err: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("recall", "mass", "rel_err"):
            setattr(self, name, [0.0] * self.n_layers)
        self.steps = [0] * self.n_layers

    def means(self) -> dict[str, list[float | None]]:
        def avg(xs: list[float]) -> list[float | None]:
            return [x / n if n else None for x, n in zip(xs, self.steps, strict=True)]

        return {"recall": avg(self.recall), "mass": avg(self.mass), "rel_err": avg(self.rel_err)}


@dataclass
class ProbeAttention:
    selector: TokenSelector | None  # None: full KV (dense everywhere)
    budget: int
    n_layers: int
    dense_layers: frozenset[int] = frozenset({0})
    probe: bool = True
    reference: bool = False  # probes the straightforward way (expanded GQA copies; what the fast path equals)
    probes: LayerProbes = field(init=False)

    def __post_init__(self) -> None:
        self.probes = LayerProbes(self.n_layers)

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer = module.layer_idx
        if self.selector is None or query.shape[2] != 1 or layer in self.dense_layers:
            return dense_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                           dropout=dropout, **kwargs)
        b, t = key.shape[0], key.shape[2]
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        valid = key_validity(attention_mask, b, t)
        with contextlib.nullcontext() if self.reference else shared_logits():  # selector + probes: one q K^T
            indices = self.selector.select(query, key, self.budget, layer_idx=layer, valid=valid)
            out = focused_attention(query, key, value, indices, scaling, valid, kwargs.get("softcap"))
            if self.probe and indices.shape[-1] < t:
                record = self._record_reference if self.reference else self._record
                record(layer, query, key, value, indices, scaling, valid, out)
        return out.transpose(1, 2).contiguous(), None

    @torch.no_grad()
    def _record(self, layer, query, key, value, indices, scaling, valid, out) -> None:
        k = indices.shape[-1]
        logits = gqa_logits(query, key)[:, :, 0].float()  # (B, H_q, T)
        if valid is not None:
            logits = logits.masked_fill(~valid, float("-inf"))
        best = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
        weights = torch.softmax(logits * scaling, dim=-1)
        dense = gqa_weighted(weights[:, :, None, :].to(value.dtype), value)  # dense attention output
        p = self.probes
        p.recall[layer] += float(best.gather(-1, indices).float().mean())
        p.mass[layer] += float(weights.gather(-1, indices).sum(-1).mean())
        p.rel_err[layer] += float((out.float() - dense.float()).norm() / dense.float().norm().clamp_min(1e-12))
        p.steps[layer] += 1

    @torch.no_grad()
    def _record_reference(self, layer, query, key, value, indices, scaling, valid, out) -> None:
        """:meth:`_record` written plainly (repeat_kv copies, a second dense pass): the equality reference."""
        k = indices.shape[-1]
        logits = (query @ expand_kv(key, query.shape[1] // key.shape[1]).transpose(-1, -2))[:, :, 0].float()
        if valid is not None:
            logits = logits.masked_fill(~valid, float("-inf"))
        best = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
        weights = torch.softmax(logits * scaling, dim=-1)
        dense = dense_attention(query, key, value, scaling, valid)
        p = self.probes
        p.recall[layer] += float(best.gather(-1, indices).float().mean())
        p.mass[layer] += float(weights.gather(-1, indices).sum(-1).mean())
        p.rel_err[layer] += float((out.float() - dense.float()).norm() / dense.float().norm().clamp_min(1e-12))
        p.steps[layer] += 1


def n_layers_of(model: Any) -> int:
    return int(model.config.get_text_config().num_hidden_layers)


def prefill(model: Any, ids: torch.Tensor, last_only: bool = True) -> tuple[Any, torch.Tensor]:
    """Dense prefill shared by every method: ``(cache, logits of the last prompt position)``.

    ``last_only=False`` is the plain path: the model's logits at every prompt position (at 8K tokens and
    SmolLM2's 49K vocabulary a 1.5 GB tensor, ~10 % of the prefill's FLOPs), of which only the last row is
    used, and only through its argmax (the first generated token; perplexity excludes token 0). The
    default computes the last row alone (``logits_to_keep=1``). That row is not bit-identical to the
    full product's (the CPU GEMM sums in another order at M = 1), so :func:`same_argmax` proves that the
    argmax cannot differ (a rounding-error bound on both products); where it cannot prove it (near-ties),
    the plain path is rerun. The cache is the same either way (tests check both)."""
    from transformers import DynamicCache

    if not last_only:
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            out = model(ids, past_key_values=cache, use_cache=True)
        return out.past_key_values, out.logits[:, -1]
    head = model.get_output_embeddings()
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    cache = DynamicCache(config=model.config)
    try:
        with torch.inference_mode():
            out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    finally:
        handle.remove()
    last = out.logits[:, -1]
    if len(seen) == 1 and same_argmax(head, seen[0][:, -1], last):
        return out.past_key_values, last
    return prefill(model, ids, last_only=False)


def same_argmax(head: Any, hidden: torch.Tensor, logits: torch.Tensor) -> bool:
    """True when ``logits = head(hidden)`` (rows of a plain ``nn.Linear``, as the model returned them) have,
    in every row, the argmax that ANY float summation order of the same dot products would give.

    Each logit's rounding error in any order is at most ``γ_n Σ_i |w_i h_i|`` (``γ_n = n u / (1 − n u)``,
    ``u = 2^-24``, ``n`` = terms; Higham, Accuracy and Stability, Eq. 3.5), so two computations differ by
    at most ``β = 2 γ_n Σ|w h|``; if the top logit leads every other by more than ``β_top + β_other``
    (doubled again for the rounding of this check), every order picks the same unique maximum. False
    (unproven) also when ``head`` is not a plain linear map of ``hidden`` to ``logits`` (soft-capping,
    scaling) or the dtype is not float32."""
    weight, bias = getattr(head, "weight", None), getattr(head, "bias", None)
    if not isinstance(head, torch.nn.Linear) or weight.dtype != torch.float32 or hidden.dtype != torch.float32:
        return False
    with torch.inference_mode():
        if not torch.equal(head(hidden[:, None])[:, 0], logits):  # something is applied after the linear map
            return False
        n = weight.shape[1] + (bias is not None)
        u = 2.0**-24
        gamma = n * u / (1 - n * u)
        magnitude = hidden.abs() @ weight.abs().T + (0 if bias is None else bias.abs())  # (rows, vocab)
        beta = 2 * gamma * magnitude * 2  # both products' errors, x2 for this check's own rounding
        top = logits.argmax(-1, keepdim=True)
        lead = logits.gather(-1, top) - logits  # >= 0; 0 at the top
        need = beta.gather(-1, top) + beta
        ok = (lead > need).scatter(-1, top, True)
    return bool(ok.all())


def _rewindable_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class RewindableLayer(DynamicLayer):
        """A :class:`~transformers.cache_utils.DynamicLayer` whose keys/values are views of preallocated
        buffers: ``update`` writes the new rows in place (no ``torch.cat`` of the whole cache) and
        :meth:`rewind` forgets every row after the prefill."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
            super().__init__()
            b, h, t, d = keys.shape
            self.lazy_initialization(keys, values)
            self.prefix = t
            self._k = keys.new_empty(b, h, max(capacity, t), d)
            self._v = values.new_empty(b, values.shape[1], max(capacity, t), values.shape[-1])
            self._k[:, :, :t], self._v[:, :, :t] = keys, values
            self.rewind()

        def rewind(self) -> None:
            self.length = self.prefix
            self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

        def update(self, key_states, value_states, cache_kwargs=None):
            n = key_states.shape[-2]
            if self.length + n > self._k.shape[2]:
                raise ValueError(f"RewindableCache holds {self._k.shape[2]} rows; {self.length + n} needed "
                                 "(raise its capacity)")
            self._k[:, :, self.length : self.length + n] = key_states
            self._v[:, :, self.length : self.length + n] = value_states
            self.length += n
            self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]
            return self.keys, self.values

    return RewindableLayer


class RewindableCache:
    """One dense prefill shared by every method of a prompt without copies.

    ``RewindableCache(cache, capacity)`` moves a prefilled ``DynamicCache``'s rows into buffers of
    ``capacity`` rows (prompt + the longest decode); :meth:`fresh` rewinds it to the prompt and returns it
    for the next method's decode (which writes the rows after the prompt). Decode results are identical to
    decoding from a deep copy (same values; sdpa and the selectors read the views the same way).
    """

    def __init__(self, cache: Any, capacity: int) -> None:
        layer_class = _rewindable_layer_class()
        self.cache = cache
        self.prefix = cache.get_seq_length()
        with torch.inference_mode():
            cache.layers = [layer_class(layer.keys, layer.values, capacity) for layer in cache.layers]

    def fresh(self) -> Any:
        for layer in self.cache.layers:
            layer.rewind()
        return self.cache


def _private(cache: Any) -> Any:
    """The cache a decode may write: the rewound shared buffers, or a deep copy of a plain cache."""
    return cache.fresh() if isinstance(cache, RewindableCache) else copy.deepcopy(cache)


def _step(model: Any, token: int, cache: Any, position: int) -> torch.Tensor:
    pos = torch.tensor([[position]])
    out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True, position_ids=pos,
                cache_position=pos[0])
    return out.logits[:, -1]


def greedy(model: Any, cache: Any, last_logits: torch.Tensor, start: int, steps: int, handler: ProbeAttention,
           eos_id: int | None = None) -> list[int]:
    """Greedy decode ``steps`` tokens from a private copy of the shared prefilled ``cache`` (a
    :class:`RewindableCache` is rewound instead of copied)."""
    cache = _private(cache)
    tokens: list[int] = []
    logits = last_logits
    with attention_handler(model, handler), torch.inference_mode():
        for i in range(steps):
            token = int(logits[0].argmax())
            tokens.append(token)
            if (eos_id is not None and token == eos_id) or i == steps - 1:
                break
            logits = _step(model, token, cache, start + i)
    return tokens


def teacher_forced_nll(model: Any, cache: Any, last_logits: torch.Tensor, continuation: torch.Tensor, start: int,
                       handler: ProbeAttention) -> list[float]:
    """Negative log-likelihood of each token of ``continuation (n,)`` after the shared dense prefill.

    Token 0 is predicted by the prefill's logits (identical for every method, so excluded); tokens 1..n-1
    are each predicted by one decode step through ``handler`` fed the true previous token (paper Fig. 4,
    ``perplexity/evaluate_ppl.py``). Returns ``n - 1`` NLLs in nats.
    """
    cache = _private(cache)
    nll: list[float] = []
    with attention_handler(model, handler), torch.inference_mode():
        for i in range(continuation.shape[0] - 1):
            logits = _step(model, int(continuation[i]), cache, start + i)
            logp = torch.log_softmax(logits[0].float(), dim=-1)
            nll.append(float(-logp[int(continuation[i + 1])]))
    return nll


def perplexity(nll: list[float]) -> float:
    return math.exp(sum(nll) / len(nll)) if nll else float("nan")
