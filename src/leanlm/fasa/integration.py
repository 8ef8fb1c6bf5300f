"""Plugging FASA into transformers through its public extension points.

One attention function is registered in ``transformers.AttentionInterface`` (and the matching mask builder
in ``AttentionMaskInterface``) under the name ``"fasa"``. :func:`apply` switches a model to it with
``model.set_attn_implementation`` for the duration of a ``with`` block and restores the previous
implementation on exit; the function finds the per-model settings (a *handler*) through the attention
module's config. Nothing in transformers is monkey-patched.

The same hook serves calibration: :mod:`leanlm.fasa.calibration` installs a handler that computes dense
attention and records CA from the post-RoPE ``query``/``key`` it receives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from leanlm.fasa.attention import focused_attention, key_validity
from leanlm.fasa.chunks import UnsupportedModelError, detect_pairing
from leanlm.fasa.selectors import FASASelector, TokenSelector, top_budget

FASA_IMPL = "fasa"

#: id(attention module config) -> handler called with the attention function's arguments.
_HANDLERS: dict[int, Callable[..., tuple[torch.Tensor, Any]]] = {}


def dense_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """transformers' own sdpa attention: the dense path (prefill, dense layers, calibration)."""
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


def _pow2(n: int) -> bool:
    """The Triton kernels tile |D| and head_dim with ``tl.arange``, which needs powers of two."""
    return n > 0 and n & (n - 1) == 0


@dataclass
class DecodeStats:
    """Counts of what the FASA attention did (for reports and for checking that it really ran)."""

    sparse_calls: int = 0
    dense_calls: int = 0
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
    """

    selector: TokenSelector
    budget: int
    dense_layers: frozenset[int] = frozenset({0})
    n_sink: int = 0
    n_recent: int = 0
    backend: str = "auto"
    stats: DecodeStats = field(default_factory=DecodeStats)

    def _triton(self, query: torch.Tensor) -> bool:
        if self.backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {self.backend!r}")
        if self.backend == "torch":
            return False
        from leanlm.fasa import kernels

        ok = kernels.available(query.device)
        if self.backend == "triton" and not ok:
            raise RuntimeError("backend='triton' needs CUDA and the 'triton' package")
        return ok and (self.backend == "triton" or query.is_cuda)

    def choose(self, query: torch.Tensor, key: torch.Tensor, layer: int, valid: torch.Tensor | None = None,
               triton: bool = False) -> torch.Tensor:
        """Indices ``(B, H_q, min(budget, T))`` of the tokens attended at this decode step."""
        if (triton and isinstance(self.selector, FASASelector) and not self.selector.pooled
                and _pow2(self.selector.dims.shape[-1])):
            from leanlm.fasa.kernels import tip_scores

            scores = tip_scores(query, key, self.selector.dims[layer])  # TIP, Eq. 6 (GPU kernel)
        else:
            scores = self.selector.scores(query, key, layer)  # TIP, Eq. 6
        if self.n_sink or self.n_recent:
            t = key.shape[2]
            scores = scores.clone()
            scores[..., : self.n_sink] = float("inf")
            if self.n_recent:
                scores[..., max(0, t - self.n_recent) :] = float("inf")
        return top_budget(scores, self.budget, valid)

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer = module.layer_idx
        if query.shape[2] != 1 or layer in self.dense_layers:
            self.stats.dense_calls += 1
            return dense_attention_forward(
                module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
            )
        b, t = key.shape[0], key.shape[2]
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        valid = key_validity(attention_mask, b, t)
        triton = self._triton(query)
        indices = self.choose(query, key, layer, valid, triton)  # TIP (Eq. 6) + T_t = TopK-I(S_t, N_fac)
        if triton and valid is None and _pow2(query.shape[-1]):  # else: the torch path
            from leanlm.fasa.kernels import focused_attention as fac_kernel

            out = fac_kernel(query, key, value, indices, scaling)  # FAC, Eq. 7 (GPU kernel)
        else:
            out = focused_attention(query, key, value, indices, scaling, valid)  # FAC, Eq. 7
        self.stats.sparse_calls += 1
        self.stats.keys_seen += t * query.shape[1] * b
        self.stats.keys_attended += indices.shape[-1] * query.shape[1] * b
        return out.transpose(1, 2).contiguous(), None


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
    check: bool = True,
) -> Iterator[FasaAttention]:
    """Decode ``model`` with FASA inside the block: ``with apply(model, calib, budget=256): model.generate(...)``.

    ``calibration`` is a :class:`~leanlm.fasa.calibration.Calibration` (or a path to one); its dominant FCs
    come from the CA table whose K best matches ``budget`` (official-code behaviour). Pass ``selector``
    instead to run another selector (oracle, Quest, ...) through the same path. ``backend``: ``"auto"``
    uses the Triton kernels on CUDA when installed, ``"torch"`` forces the reference path. ``check`` verifies that
    the calibration was made on a model with the same attention geometry. Yields the handler, whose
    ``stats`` count sparse and dense attention calls.
    """
    if selector is None:
        if calibration is None:
            raise ValueError("apply() needs a calibration (or an explicit selector)")
        from leanlm.fasa.calibration import Calibration

        if not isinstance(calibration, Calibration):
            calibration = Calibration.load(calibration)
        if check:
            calibration.check_model(model)
        selector = FASASelector.from_calibration(calibration, budget=budget, pooled=pooled)
    handler = FasaAttention(selector=selector, budget=int(budget), dense_layers=frozenset(dense_layers),
                            n_sink=n_sink, n_recent=n_recent, backend=backend)
    with attention_handler(model, handler):
        yield handler
