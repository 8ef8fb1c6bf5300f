"""``apply()``: decode a transformers model with FASA inside a ``with`` block (paper §3.2, §B.1).

The attention hook itself lives in :mod:`leanlm.fasa.hooks` (shared with calibration). Here: the decode
handler :class:`FasaAttention` (dense prefill and dense layers; at decode steps the FASA-C fast path of
:mod:`leanlm.fasa.decode` over a :class:`~leanlm.fasa.cache.FasaCache`, or the per-head reference path of
:mod:`leanlm.fasa.selectors` + :mod:`leanlm.fasa.attention` for other caches and selectors), and
:func:`apply`, which also gives ``generate()`` a ``FasaCache`` by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from leanlm.fasa.attention import focused_attention, key_validity
from leanlm.fasa.cache import FasaCache, LabelSpec, find_layer
from leanlm.fasa.calibration import Calibration
from leanlm.fasa.decode import fasa_c_attention
from leanlm.fasa.hooks import FASA_IMPL, attention_handler, dense_attention_forward, register
from leanlm.fasa.offload import FasaMCache
from leanlm.fasa.selectors import FASASelector, TokenSelector, top_budget
from leanlm.fasa.selectors.window import force_window

__all__ = ["FASA_IMPL", "DecodeStats", "FasaAttention", "apply", "attention_handler", "dense_attention_forward",
           "register"]

BACKENDS = ("auto", "torch", "triton", "reference")


@dataclass
class DecodeStats:
    """Counts of what the FASA attention did (for reports and for checking that it really ran)."""

    sparse_calls: int = 0
    dense_calls: int = 0
    fast_calls: int = 0  # sparse calls that ran FASA-C over a FasaCache's label buffer
    keys_seen: int = 0
    keys_attended: int = 0

    @property
    def attended_fraction(self) -> float:
        return self.keys_attended / self.keys_seen if self.keys_seen else float("nan")


@dataclass
class FasaAttention:
    """The decode-time handler (paper §3.2, Eq. 6-7): dense prefill, TIP + FAC at each decode step.

    - ``selector``: ranks tokens (FASA's TIP by default; any :class:`TokenSelector` for baselines/oracle).
    - ``budget``: N_fac, tokens attended per query head per step.
    - ``dense_layers``: layers that always attend densely (official code: layer 0).
    - ``n_sink`` / ``n_recent``: tokens always kept (default 0: the paper forces none).
    - ``backend``: ``"auto"`` (FASA-C on a :class:`~leanlm.fasa.cache.FasaCache`: Triton kernels on CUDA
      when installed, else torch), ``"torch"`` (FASA-C in torch), ``"triton"`` (kernels, error if
      unavailable), ``"reference"`` (the per-head reference path over whatever cache is used; slow).

    The fast path needs the keys to come from a :class:`~leanlm.fasa.cache.FasaCache` (``apply`` gives
    ``generate`` one by default) and a :class:`FASASelector`; anything else runs the reference path.
    """

    selector: TokenSelector
    budget: int
    dense_layers: frozenset[int] = frozenset({0})
    n_sink: int = 0
    n_recent: int = 0
    backend: str = "auto"
    offload: bool = False
    window: int = 64
    stats: DecodeStats = field(default_factory=DecodeStats)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def _triton(self, query: torch.Tensor) -> bool:  # imports triton (slow) only when the kernels may run
        if self.backend in ("torch", "reference"):
            return False
        from leanlm.fasa import kernels

        ok = kernels.available(query.device)
        if self.backend == "triton" and not ok:
            raise RuntimeError("backend='triton' needs CUDA and the 'triton' package")
        return ok and (self.backend == "triton" or query.is_cuda)

    # ------------------------------------------------------------------ the cache FASA-C reads
    def label_specs(self, num_layers: int, n_kv: int) -> list[LabelSpec | None]:
        """Per layer: the label layout of a FASA layer, ``None`` for dense layers and non-FASA selectors."""
        if not isinstance(self.selector, FASASelector) or self.backend == "reference":
            return [None] * num_layers
        return [None if layer in self.dense_layers else LabelSpec.from_head_dims(self.selector.dims[layer], n_kv)
                for layer in range(num_layers)]

    def new_cache(self, config: Any, capacity: int | None = None) -> FasaCache | FasaMCache:
        """A cache laid out for this handler (pass it as ``past_key_values``): :class:`FasaCache` (FASA-C), or
        with ``offload`` a :class:`~leanlm.fasa.offload.FasaMCache` (FASA-M)."""
        text = config.get_text_config(decoder=True)
        n_kv = int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
        specs = self.label_specs(int(text.num_hidden_layers), n_kv)
        if self.offload:
            if all(spec is None for spec in specs):
                raise ValueError("FASA-M (offload=True) needs a FASASelector and backend other than 'reference'")
            return FasaMCache(specs, capacity=capacity, window=self.window)
        return FasaCache(specs=specs, capacity=capacity)

    # ------------------------------------------------------------------ reference path
    def choose(self, query: torch.Tensor, key: torch.Tensor, layer: int, valid: torch.Tensor | None = None,
               triton: bool = False) -> torch.Tensor:
        """Reference selection: indices ``(B, H_q, min(budget, T))`` of the tokens attended at this step."""
        if (triton and isinstance(self.selector, FASASelector) and not self.selector.pooled
                and kernel_supports(self.selector.dims.shape[-1])):
            from leanlm.fasa.kernels import tip_scores

            scores = tip_scores(query, key, self.selector.dims[layer])  # TIP, Eq. 6 (GPU kernel)
        else:
            scores = self.selector.scores(query, key, layer)  # TIP, Eq. 6
        return top_budget(force_window(scores, self.n_sink, self.n_recent), self.budget, valid)

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer = module.layer_idx
        if query.shape[2] != 1 or layer in self.dense_layers:
            self.stats.dense_calls += 1
            return dense_attention_forward(
                module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
            )
        b, t = key.shape[0], key.shape[2]
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        softcap = kwargs.get("softcap")
        valid = key_validity(attention_mask, b, t)
        fast = find_layer(key) if self.backend != "reference" else None
        triton = self._triton(query)
        if fast is not None and fast.spec is not None:  # FASA-C: TIP over the label buffer, gather, SDPA
            pooled = bool(getattr(self.selector, "pooled", False))
            out, indices = fasa_c_attention(query, fast, self.budget, scaling, pooled=pooled, valid=valid,
                                            softcap=softcap, n_sink=self.n_sink, n_recent=self.n_recent,
                                            kernels=triton)
            attended = indices.shape[-1]
        else:
            indices = self.choose(query, key, layer, valid, triton)  # TIP (Eq. 6) + T_t = TopK-I(S_t, N_fac)
            if triton and valid is None and softcap is None and kernel_supports(query.shape[-1]):  # else: the torch path
                from leanlm.fasa.kernels import focused_attention as fac_kernel

                out = fac_kernel(query, key, value, indices, scaling)  # FAC, Eq. 7 (GPU kernel)
            else:
                out = focused_attention(query, key, value, indices, scaling, valid, softcap)  # FAC, Eq. 7
            attended = indices.shape[-1]
        self.stats.sparse_calls += 1
        self.stats.fast_calls += int(fast is not None and fast.spec is not None)
        self.stats.keys_seen += t * query.shape[1] * b
        self.stats.keys_attended += attended * query.shape[1] * b
        return out.transpose(1, 2).contiguous(), None


def kernel_supports(n: int) -> bool:
    from leanlm.fasa.kernels import supports

    return supports(n)


@contextlib.contextmanager
def _default_cache(model: Any, handler: FasaAttention) -> Iterator[None]:
    """Inside the block, ``model.generate()`` without ``past_key_values`` gets ``handler.new_cache(...)``.

    transformers builds generate()'s default cache in ``_prepare_cache_for_generation``; we shadow that
    method on this model *instance* only (the class is untouched) and remove the shadow on exit. A cache
    passed by the caller, ``cache_implementation=...`` or ``use_cache=False`` are left to transformers.
    """
    original = getattr(model, "_prepare_cache_for_generation", None)
    if original is None:  # another transformers: generate() keeps its own cache (reference path)
        yield
        return

    def prepare(generation_config, model_kwargs, *args, **kwargs):
        mode = args[0] if args else kwargs.get("generation_mode")
        wants_default = (model_kwargs.get("past_key_values") is None and generation_config.use_cache is not False
                         and generation_config.cache_implementation is None
                         and getattr(mode, "name", "") not in ("ASSISTED_GENERATION", "CONTRASTIVE_SEARCH"))
        if not wants_default:
            return original(generation_config, model_kwargs, *args, **kwargs)
        capacity = kwargs.get("max_cache_length", args[2] if len(args) > 2 else None)
        model_kwargs["past_key_values"] = handler.new_cache(model.config, capacity if isinstance(capacity, int) else None)
        return None

    model._prepare_cache_for_generation = prepare
    try:
        yield
    finally:
        model.__dict__.pop("_prepare_cache_for_generation", None)


@contextlib.contextmanager
def apply(
    model: Any,
    calibration: Any = None,
    budget: int = 256,
    *,
    selector: TokenSelector | None = None,
    dense_layers: tuple[int, ...] | frozenset[int] = (0,),
    pooled: bool = False,
    n_sink: int = 0,
    n_recent: int = 0,
    backend: str = "auto",
    cache: bool = True,
    offload: bool = False,
    window: int = 64,
    check: bool = True,
) -> Iterator[FasaAttention]:
    """Decode ``model`` with FASA inside the block: ``with apply(model, calib, budget=256): model.generate(...)``.

    ``calibration`` is a :class:`~leanlm.fasa.calibration.Calibration` (or a path to one); its dominant FCs
    come from the CA table whose K best matches ``budget`` (official-code behaviour). Pass ``selector``
    instead to run another selector (oracle, Quest, ...) through the same path. ``pooled``: one token set
    per KV group (faster, not the paper's per-head rule). ``cache``: ``generate()`` calls without their own
    ``past_key_values`` get a :class:`~leanlm.fasa.cache.FasaCache` (preallocated K/V plus label buffer), so
    the FASA-C fast path runs with no other change; with ``offload=True`` it is a FASA-M cache
    (:mod:`leanlm.fasa.offload`: label buffer and a ``window`` of recent rows resident, full K/V in pinned CPU
    memory or a memory-mapped file, selected rows fetched per step). ``backend``: see :class:`FasaAttention`. ``check``
    verifies that the calibration was made on a model with the same attention geometry. Yields the handler,
    whose ``stats`` count sparse and dense attention calls and ``new_cache(config)`` builds a cache.
    """
    if selector is None:
        if calibration is None:
            raise ValueError("apply() needs a calibration (or an explicit selector)")
        if not isinstance(calibration, Calibration):
            calibration = Calibration.load(calibration)
        if check:
            calibration.check_model(model)
        selector = FASASelector.from_calibration(calibration, budget=budget, pooled=pooled)
    handler = FasaAttention(selector=selector, budget=int(budget), dense_layers=frozenset(dense_layers),
                            n_sink=n_sink, n_recent=n_recent, backend=backend, offload=offload, window=window)
    with attention_handler(model, handler), (_default_cache(model, handler) if cache else contextlib.nullcontext()):
        yield handler
