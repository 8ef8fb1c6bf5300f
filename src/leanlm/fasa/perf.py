"""The honest speed benchmark (``leanlm fasa bench --perf``): FASA-C vs the strongest dense decode paths.

Three measurements, all in one process with interleaved repeats (every repeat runs every method once, in
turn, so load drifts hit all methods alike), reported as median and inter-quartile range, with the
speedup taken as the median of the per-repeat paired ratios:

(a) :func:`attention_bench`: one layer's decode attention on SmolLM2 shapes (9 q / 3 KV heads, d = 64),
    the dominant dims of the bundled SmolLM2 calibration: dense SDPA with the GQA group folded into the
    query length (the fastest dense path we have), dense SDPA with ``enable_gqa``, FASA-C per head (the
    paper's rule), FASA-C pooled per KV group, and the previous reference path (row-major gather).
(b) :func:`decode_bench`: end-to-end decode ms/token of a 30-layer model with SmolLM2-135M's shapes and
    **random weights** (so contexts beyond the real model's 8K window are possible), with a synthetic
    prefill (random post-RoPE K/V written into the caches; timing does not depend on their values):
    transformers' ``StaticCache`` (sdpa), full KV on the same preallocated :class:`FasaCache` (sdpa, and
    with the GQA group folded into q_len), FASA-C per head and pooled on that same cache.
(c) analytic bytes per step (:func:`step_bytes`, GQA-aware and counting what the code reads) beside the
    measured time fraction; (d) FASA-M resident memory (:mod:`leanlm.fasa.offload`).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa

from leanlm.fasa.cache import FasaCache, FasaLayer, LabelSpec
from leanlm.fasa.decode import fasa_c_attention

SMOL = {"n_q": 9, "n_kv": 3, "head_dim": 64, "layers": 30, "hidden": 576, "intermediate": 1536, "vocab": 49152}


def _stats(values: list[float]) -> tuple[float, float, float]:
    """(median, 25th percentile, 75th percentile)."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q[0], q[2]


def interleaved(methods: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time every method once per repeat, in turn (ms per call); returns the raw per-repeat times."""
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return times


def paired_speedup(base: list[float], other: list[float]) -> float:
    """Median over repeats of ``base[r] / other[r]`` (paired: same repeat, adjacent in time)."""
    return statistics.median(b / o for b, o in zip(base, other, strict=True))


def calibration_dims(budget: int = 256) -> tuple[torch.Tensor, Any]:
    """``(layers, H_q, |D|)`` dominant dims of the bundled SmolLM2-135M calibration, and the calibration."""
    from leanlm.fasa.calibration import Calibration
    from leanlm.fasa.selectors import FASASelector

    calib = Calibration.load("embedded")
    return FASASelector.from_calibration(calib, budget=budget).dims, calib


def mean_union_width(dims: torch.Tensor, n_kv: int) -> float:
    """Mean over layers and KV groups of the size of the union of the group's dominant dims."""
    n_q = dims.shape[1]
    group = n_q // n_kv
    sizes = [len(set(dims[layer, g * group : (g + 1) * group].flatten().tolist()))
             for layer in range(dims.shape[0]) for g in range(n_kv)]
    return sum(sizes) / len(sizes)


def step_bytes(context: int, budget: int, *, n_q: int = 9, n_kv: int = 3, head_dim: int = 64, n_dims: int = 16,
               label_width: float | None = None, pooled: bool = False, elem: int = 4) -> dict[str, float]:
    """Bytes one layer's decode step reads (GQA-aware), for dense and for FASA as the code runs it.

    - dense: ``2 · H_kv · t · d`` (each KV head read once for its whole group).
    - FASA TIP: per-query-head columns, ``H_q · t · N_dims`` (the paper's rule read per head, the old
      path), or the label buffer, ``H_kv · t · U`` (FASA-C); plus the score row written and read by the
      top-k, ``2 · R · t`` (R = H_q rows per head, H_kv pooled).
    - FASA FAC: ``R · N_fac · 2d`` gathered K and V elements.
    """
    k = min(budget, context)
    rows = n_kv if pooled else n_q
    tip = (n_kv * context * label_width) if label_width is not None else n_q * context * n_dims
    scores = 2 * rows * context
    fac = rows * k * 2 * head_dim
    dense = 2 * n_kv * context * head_dim
    return {"dense": dense * elem, "tip": tip * elem, "scores": scores * elem, "fac": fac * elem,
            "fasa": (tip + scores + fac) * elem, "fraction": (tip + scores + fac) / dense}


# ---------------------------------------------------------------------------------------------- (a)
@dataclass
class AttentionRow:
    context: int
    method: str
    median_ms: float
    q25_ms: float
    q75_ms: float
    speedup: float  # paired, vs dense SDPA with the GQA group folded into q_len
    analytic_fraction: float | None


def attention_bench(contexts: list[int], budget: int = 256, repeats: int = 9, layer: int = 15, seed: int = 0,
                    reference_max: int = 8192) -> tuple[list[AttentionRow], dict[str, Any]]:
    """One layer's decode attention, FASA-C (per head, pooled) vs dense, SmolLM2 shapes, fp32 (see module doc)."""
    from leanlm.fasa.attention import focused_attention
    from leanlm.fasa.selectors import FASASelector, top_budget

    dims, _ = calibration_dims(budget)
    n_q, n_kv, d = SMOL["n_q"], SMOL["n_kv"], SMOL["head_dim"]
    group = n_q // n_kv
    spec = LabelSpec.from_head_dims(dims[layer], n_kv)
    selector = FASASelector(dims=dims)
    gen = torch.Generator().manual_seed(seed)
    scale = d**-0.5
    rows: list[AttentionRow] = []
    breakdown: dict[int, dict[str, float]] = {}
    for t in contexts:
        q = torch.randn(1, n_q, 1, d, generator=gen)
        cache = FasaCache(specs=[spec], capacity=t)
        keys, values = cache.update(torch.randn(1, n_kv, t, d, generator=gen), torch.randn(1, n_kv, t, d,
                                                                                          generator=gen), 0)
        fast: FasaLayer = cache.layers[0]
        q_folded = q.view(1, n_kv, group, d)
        methods: dict[str, Callable[[], Any]] = {
            "dense SDPA, GQA folded into q_len": lambda q_folded=q_folded, k=keys, v=values: sdpa(
                q_folded, k, v, scale=scale),
            "dense SDPA, enable_gqa": lambda q=q, k=keys, v=values: sdpa(q, k, v, scale=scale, enable_gqa=True),
            "FASA-C per head (paper rule)": lambda q=q, f=fast: fasa_c_attention(q, f, budget, scale),
            "FASA-C pooled per KV group": lambda q=q, f=fast: fasa_c_attention(q, f, budget, scale, pooled=True),
        }
        if t <= reference_max:
            methods["reference path (row-major gather + topk)"] = lambda q=q, k=keys, v=values: focused_attention(
                q, k, v, top_budget(selector.scores(q, k, layer), budget), scale)
        with torch.inference_mode():
            times = interleaved(methods, repeats)
        base = times["dense SDPA, GQA folded into q_len"]
        width = spec.width
        fractions = {
            "dense SDPA, GQA folded into q_len": 1.0, "dense SDPA, enable_gqa": 1.0,
            "FASA-C per head (paper rule)": step_bytes(t, budget, label_width=width)["fraction"],
            "FASA-C pooled per KV group": step_bytes(t, budget, label_width=width, pooled=True)["fraction"],
            "reference path (row-major gather + topk)": step_bytes(t, budget, n_dims=dims.shape[-1])["fraction"],
        }
        for name, values_ms in times.items():
            med, lo, hi = _stats(values_ms)
            rows.append(AttentionRow(t, name, med, lo, hi, paired_speedup(base, values_ms), fractions.get(name)))
        breakdown[t] = {name: _stats(v)[0] for name, v in times.items()}
        del cache, keys, values, fast
    return rows, {"layer": layer, "label_width": spec.width, "mean_union_width": mean_union_width(dims, n_kv),
                  "n_dims": int(dims.shape[-1]), "budget": budget, "repeats": repeats}


# ---------------------------------------------------------------------------------------------- (e)
#: The profile's components, in the order :func:`leanlm.fasa.decode.fasa_c_attention` runs them.
PARTS = ("masked queries q̃ (index_select + mask)", "TIP matmul over the label (G,U)@(U,t)",
         "selection: exact top-k", "index: flat row offsets", "gather: index_select K and V",
         "FAC: SDPA over the gathered rows")


def step_profile(contexts: list[int], budget: int = 256, repeats: int = 15, layer: int = 15,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Where one decode attention step's time goes ("what limits it"), per head and pooled, vs dense.

    Every component of :func:`~leanlm.fasa.decode.fasa_c_attention`'s common path (:data:`PARTS`) is timed
    on its own, on the same tensors the step uses, interleaved with the whole step, the step through the
    attention hook (:class:`~leanlm.fasa.integration.FasaAttention`, what ``generate()`` calls per layer),
    the cache append of one token (K/V + label columns), ``torch.topk`` for comparison, and dense SDPA with
    the GQA group folded into q_len (+ its append). ``overhead`` = whole step minus the sum of the parts'
    medians (Python, dispatch, allocation; can be negative within noise). Rows: ``{context, mode,
    component, median_us, q25_us, q75_us, share}`` (``share`` = of the whole FASA-C step; dense rows: of the
    dense step).
    """
    dims, _ = calibration_dims(budget)
    spec = LabelSpec.from_head_dims(dims[layer], SMOL["n_kv"])
    gen = torch.Generator().manual_seed(seed)
    return [row for t in contexts for row in _profile_one(t, dims, spec, budget, repeats, gen)]


class _Module:
    """What the attention hook reads from an attention module (a sparse layer)."""

    layer_idx = 1


def _profile_one(t: int, dims: torch.Tensor, spec: LabelSpec, budget: int, repeats: int,
                 gen: torch.Generator) -> list[dict[str, Any]]:
    """:func:`step_profile` at one context ``t``."""
    from leanlm.fasa.decode import masked_queries
    from leanlm.fasa.integration import FasaAttention
    from leanlm.fasa.selectors import FASASelector
    from leanlm.fasa.topk import exact_topk

    n_q, n_kv, d = SMOL["n_q"], SMOL["n_kv"], SMOL["head_dim"]
    group = n_q // n_kv
    scale = d**-0.5
    q = torch.randn(1, n_q, 1, d, generator=gen)
    k_new, v_new = torch.randn(1, n_kv, 1, d, generator=gen), torch.randn(1, n_kv, 1, d, generator=gen)
    cache, dense_cache = FasaCache(specs=[spec], capacity=t + 1), FasaCache(num_layers=1, capacity=t + 1)
    k_all, v_all = torch.randn(1, n_kv, t, d, generator=gen), torch.randn(1, n_kv, t, d, generator=gen)
    keys, values = cache.update(k_all, v_all, 0)
    dense_cache.update(k_all, v_all, 0)
    fast: FasaLayer = cache.layers[0]
    plain: FasaLayer = dense_cache.layers[0]
    q_folded = q.view(1, n_kv, group, d)

    def append(lay: FasaLayer) -> None:
        lay.update(k_new, v_new)
        lay.crop(t)

    methods: dict[str, Callable[[], Any]] = {
        "dense: SDPA, GQA folded into q_len": lambda: sdpa(q_folded, keys, values, scale=scale),
        "dense: cache append (1 token, K/V)": lambda: append(plain),
    }
    for pooled in (False, True):
        mode = "pooled" if pooled else "per head"
        rows_per_kv = 1 if pooled else group
        handler = FasaAttention(selector=FASASelector(dims=dims, pooled=pooled), budget=budget, backend="torch")
        q_label = masked_queries(q, fast, pooled)
        scores = (q_label @ fast.label_columns()).view(1, -1, t)
        idx = exact_topk(scores, budget)
        flat = fast.flat_index(idx, rows_per_kv)
        k_sel, v_sel = (x.clone() for x in fast.gather(idx, rows_per_kv))
        q_fac = q_folded if pooled else q
        parts = dict(zip(PARTS, (
            lambda p=pooled: masked_queries(q, fast, p),
            lambda ql=q_label: ql @ fast.label_columns(),
            lambda s=scores: exact_topk(s, budget),
            lambda i=idx, r=rows_per_kv: fast.flat_index(i, r),
            lambda f=flat, b=fast.row_buffer(flat.numel()): (
                torch.index_select(fast.flat_keys(), 0, f, out=b[0]),
                torch.index_select(fast.flat_values(), 0, f, out=b[1])),
            lambda qf=q_fac, ks=k_sel, vs=v_sel: sdpa(qf, ks, vs, scale=scale),
        ), strict=True))
        methods |= {f"{mode}: {name}": fn for name, fn in parts.items()}
        methods[f"{mode}: whole FASA-C step (fasa_c_attention)"] = (
            lambda p=pooled: fasa_c_attention(q, fast, budget, scale, pooled=p))
        methods[f"{mode}: whole step via the attention hook"] = (
            lambda h=handler: h(_Module, q, keys, values, None, scaling=scale))
        methods[f"{mode}: (torch.topk over the same scores, for comparison)"] = (
            lambda s=scores: s.topk(budget, dim=-1, sorted=False))
    methods["FASA: cache append (1 token, K/V + label columns)"] = lambda: append(fast)
    with torch.inference_mode():
        times = interleaved(methods, repeats)
    med = {name: _stats(v)[0] for name, v in times.items()}
    out: list[dict[str, Any]] = []

    def row(mode: str, component: str, key: str | None, total: float, value: float = 0.0) -> None:
        m, lo, hi = (value, value, value) if key is None else _stats(times[key])
        out.append({"context": t, "mode": mode, "component": component, "median_us": m * 1000,
                    "q25_us": lo * 1000, "q75_us": hi * 1000, "share": m / total})

    dense_total = med["dense: SDPA, GQA folded into q_len"]
    row("dense", "SDPA, GQA folded into q_len (the step)", "dense: SDPA, GQA folded into q_len", dense_total)
    row("dense", "cache append (1 token, K/V)", "dense: cache append (1 token, K/V)", dense_total)
    for mode in ("per head", "pooled"):
        whole = med[f"{mode}: whole FASA-C step (fasa_c_attention)"]
        for name in PARTS:
            row(mode, name, f"{mode}: {name}", whole)
        row(mode, "overhead (whole step - sum of parts)", None, whole,
            whole - sum(med[f"{mode}: {name}"] for name in PARTS))
        row(mode, "whole FASA-C step", f"{mode}: whole FASA-C step (fasa_c_attention)", whole)
        row(mode, "whole step via the attention hook", f"{mode}: whole step via the attention hook", whole)
        row(mode, "(torch.topk over the same scores)", f"{mode}: (torch.topk over the same scores, for comparison)",
            whole)
    row("FASA", "cache append (1 token, K/V + label columns)", "FASA: cache append (1 token, K/V + label columns)",
        med["per head: whole FASA-C step (fasa_c_attention)"])
    return out


# ---------------------------------------------------------------------------------------------- (b)
def smol_shaped_model(max_positions: int, seed: int = 0, layers: int | None = None):
    """A LlamaForCausalLM with SmolLM2-135M's shapes and random weights (rope base 1e5)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=SMOL["vocab"], hidden_size=SMOL["hidden"], intermediate_size=SMOL["intermediate"],
                         num_hidden_layers=layers or SMOL["layers"], num_attention_heads=SMOL["n_q"],
                         num_key_value_heads=SMOL["n_kv"], head_dim=SMOL["head_dim"], rope_theta=100000.0,
                         max_position_embeddings=max_positions, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def folded_dense_handler(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Dense attention with the GQA group folded into q_len at decode steps (the strongest dense baseline)."""
    from leanlm.fasa.hooks import dense_attention_forward

    b, n_q, q_len, d = query.shape
    if q_len != 1 or attention_mask is not None:
        return dense_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    n_kv = key.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(query.view(b, n_kv, n_q // n_kv, d), key, value,
                                                           scale=scaling)
    return out.reshape(b, n_q, 1, d).transpose(1, 2), None


@dataclass
class DecodeRow:
    context: int
    method: str
    median_ms: float
    q25_ms: float
    q75_ms: float
    speedup_vs_static: float
    speedup_vs_best_dense: float


def _fill(caches: list[Any], model: Any, context: int, gen: torch.Generator) -> None:
    """Synthetic prefill: random post-RoPE K/V of ``context`` tokens written into every cache, layer by layer."""
    cfg = model.config
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(1, cfg.num_key_value_heads, context, cfg.head_dim, generator=gen)
        v = torch.randn(1, cfg.num_key_value_heads, context, cfg.head_dim, generator=gen)
        for cache in caches:
            cache.update(k, v, layer, {"cache_position": torch.arange(context)})


def _decode_methods(model: Any, t: int, steps: int, budget: int, dims: torch.Tensor, gen: torch.Generator,
                    offload: bool, static: bool = True) -> tuple[dict[str, Callable[[], None]], list[Any]]:
    """The decode methods compared at context ``t`` (closures over freshly filled caches)."""
    from transformers import StaticCache

    from leanlm.fasa.hooks import attention_handler
    from leanlm.fasa.integration import apply
    from leanlm.fasa.selectors import FASASelector

    per_head, pooled = FASASelector(dims=dims), FASASelector(dims=dims, pooled=True)
    with apply(model, selector=per_head, budget=budget, cache=False) as handler:
        fasa_cache = handler.new_cache(model.config, capacity=t + steps)
    static_cache = StaticCache(config=model.config, max_cache_len=t + steps) if static else None
    caches: list[Any] = [fasa_cache] + ([static_cache] if static else [])
    if offload:
        with apply(model, selector=per_head, budget=budget, cache=False, offload=True) as handler:
            caches.append(handler.new_cache(model.config, capacity=t + steps))
    _fill(caches, model, t, gen)
    token = torch.tensor([[1]])

    def run(cache: Any, context: Callable[[], Any] = contextlib.nullcontext) -> Callable[[], None]:
        def go() -> None:
            if not isinstance(cache, StaticCache):  # FasaCache / FasaMCache: back to t tokens
                cache.crop(t)  # (StaticCache: positions t.. are overwritten, and masked beyond the current one)
            with context():
                for i in range(steps):
                    pos = torch.tensor([t + i])
                    model(input_ids=token, past_key_values=cache, cache_position=pos, position_ids=pos[None],
                          use_cache=True)
        return go

    methods = {"full KV, transformers StaticCache (sdpa)": run(static_cache)} if static else {}
    methods |= {
        "full KV, FasaCache (sdpa)": run(fasa_cache),
        "full KV, FasaCache, GQA folded into q_len": run(
            fasa_cache, lambda: attention_handler(model, folded_dense_handler)),
        "FASA-C per head (paper rule)": run(
            fasa_cache, lambda: apply(model, selector=per_head, budget=budget, cache=False)),
        "FASA-C pooled per KV group": run(
            fasa_cache, lambda: apply(model, selector=pooled, budget=budget, cache=False)),
    }
    if offload:
        methods["FASA-M per head (memory-mapped tier)"] = run(
            caches[-1], lambda: apply(model, selector=per_head, budget=budget, cache=False))
    return methods, caches


def decode_bench(contexts: list[int], steps: int = 4, repeats: int = 3, budget: int = 256, seed: int = 0,
                 layers: int | None = None, offload: bool = False, static_max: int | None = None,
                 progress: Callable[[str], None] | None = None) -> list[DecodeRow]:
    """End-to-end decode ms/token on SmolLM2 shapes (random weights), FASA-C vs dense caches (module doc)."""
    dims, _ = calibration_dims(budget)
    model = smol_shaped_model(max(contexts) + steps + 8, seed, layers)
    dims = dims[: model.config.num_hidden_layers]
    gen = torch.Generator().manual_seed(seed)
    rows: list[DecodeRow] = []
    for t in contexts:
        static = static_max is None or t <= static_max  # StaticCache+sdpa repeats K/V per head: slow at 32K
        methods, caches = _decode_methods(model, t, steps, budget, dims, gen, offload, static)
        with torch.inference_mode():
            times = interleaved(methods, repeats)
        del methods, caches
        per_token = {name: [x / steps for x in v] for name, v in times.items()}
        dense_names = [n for n in per_token if n.startswith("full KV")]
        best_dense = min(dense_names, key=lambda n: statistics.median(per_token[n]))
        for name, values in per_token.items():
            med, lo, hi = _stats(values)
            vs_static = (paired_speedup(per_token["full KV, transformers StaticCache (sdpa)"], values) if static
                         else float("nan"))
            rows.append(DecodeRow(t, name, med, lo, hi, vs_static, paired_speedup(per_token[best_dense], values)))
        if progress:
            progress(f"decode bench: context {t} done")
    return rows


# ---------------------------------------------------------------------------------------------- (d)
def memory_bench(contexts: list[int], budget: int = 256, window: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """FASA-M residency on SmolLM2 shapes (30 layers, fp32, layer 0 dense): resident vs dense K/V bytes."""
    from leanlm.fasa.integration import FasaAttention
    from leanlm.fasa.offload import FasaMCache
    from leanlm.fasa.selectors import FASASelector

    dims, _ = calibration_dims(budget)
    handler = FasaAttention(selector=FASASelector(dims=dims), budget=budget)
    specs = handler.label_specs(SMOL["layers"], SMOL["n_kv"])
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t in contexts:
        cache = FasaMCache(specs, capacity=t, window=window)
        for layer in range(SMOL["layers"]):
            k = torch.randn(1, SMOL["n_kv"], t, SMOL["head_dim"], generator=gen)
            cache.update(k, torch.randn_like(k), layer)
        dense = 2 * SMOL["layers"] * SMOL["n_kv"] * t * SMOL["head_dim"] * 4
        fetched = SMOL["n_q"] * budget * 2 * SMOL["head_dim"] * 4  # one layer's gathered rows (transient)
        rows.append({"context": t, "dense_bytes": dense, "resident_bytes": cache.resident_bytes(),
                     "tier_bytes": cache.tier_bytes(), "fetched_per_layer_step": fetched,
                     "resident_fraction": cache.resident_bytes() / dense})
        del cache
    return rows


# ---------------------------------------------------------------------------------------------- report
QUICK = {"attention_contexts": [2048, 8192, 32768], "attention_repeats": 7, "decode_contexts": [8192, 32768],
         "decode_steps": 3, "decode_repeats": 3, "offload": False, "memory_contexts": [32768], "budget": 256,
         "static_max": 8192, "profile_contexts": [8192, 32768], "profile_repeats": 9}
FULL = {"attention_contexts": [2048, 4096, 8192, 16384, 32768], "attention_repeats": 15,
        "decode_contexts": [4096, 8192, 16384, 32768], "decode_steps": 4, "decode_repeats": 5, "offload": True,
        "memory_contexts": [8192, 32768], "budget": 256, "static_max": 16384,
        "profile_contexts": [2048, 8192, 16384, 32768], "profile_repeats": 21}
#: ``leanlm fasa bench --profile``: only table (e), the profile (~20 s idle).
PROFILE = {"profile_contexts": [2048, 8192, 16384, 32768], "profile_repeats": 21, "budget": 256, "only_profile": True}


def profile_table(rows: list[dict[str, Any]], budget: int, repeats: int) -> Any:
    """Table (e) from :func:`step_profile` rows."""
    from leanlm.common.report import Table

    def us(x: float) -> str:
        return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}"

    body = [[r["context"], r["mode"], r["component"], us(r["median_us"]), f"{us(r['q25_us'])}-{us(r['q75_us'])}",
             f"{100 * r['share']:.0f}%"] for r in rows]
    return Table(
        "(e) Profile of one decode attention step (what limits it), SmolLM2 shapes, fp32",
        ["context", "mode", "component", "median µs", "IQR µs", "share of the step"], body,
        caption=f"budget {budget}, {repeats} interleaved repeats, one layer (9 q / 3 KV heads, d=64, label U = 24). "
        "Parts are the steps of FASA-C's common path (leanlm.fasa.decode.fasa_c_attention), each timed alone on "
        "the tensors the step uses; 'overhead' = whole step minus the sum of the parts' medians (Python, "
        "dispatch, allocation; within noise it can be negative). 'via the attention hook' is the whole step as "
        "generate() runs it per layer (FasaAttention). Shares: of the whole FASA-C step (dense rows: of the "
        "dense step). The cache append runs once per layer and token in both dense and FASA decoding.")


def run_perf(config: dict[str, Any], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (a)-(d) and return ``{"tables": [Table...], "metrics": {...}, "raw": {...}}``."""
    from leanlm.common.report import Table

    say = log or (lambda _msg: None)
    budget = config["budget"]
    profile = step_profile(config["profile_contexts"], budget, config["profile_repeats"]) \
        if config.get("profile_contexts") else []
    say("profile done")
    if config.get("only_profile"):
        return {"tables": [profile_table(profile, budget, config["profile_repeats"])], "metrics": {},
                "raw": {"profile": profile, "config": config}}
    attn, meta = attention_bench(config["attention_contexts"], budget, config["attention_repeats"])
    say("attention bench done")
    decode = decode_bench(config["decode_contexts"], config["decode_steps"], config["decode_repeats"], budget,
                          layers=config.get("decode_layers"), offload=config["offload"],
                          static_max=config.get("static_max"), progress=say)
    memory = memory_bench(config["memory_contexts"], budget)
    say("memory bench done")
    width = meta["label_width"]

    def cell(x: float) -> str:
        return f"{x:.3f}" if x < 10 else f"{x:.1f}"

    attn_rows = [[r.context, r.method, cell(r.median_ms), f"{cell(r.q25_ms)}-{cell(r.q75_ms)}", f"{r.speedup:.2f}x",
                  "" if r.analytic_fraction is None else f"{r.analytic_fraction:.3f}",
                  "" if r.analytic_fraction is None else f"{1 / r.analytic_fraction:.2f}x"] for r in attn]
    decode_rows = [[r.context, r.method, cell(r.median_ms), f"{cell(r.q25_ms)}-{cell(r.q75_ms)}",
                    "n/a" if r.speedup_vs_static != r.speedup_vs_static else f"{r.speedup_vs_static:.2f}x", f"{r.speedup_vs_best_dense:.2f}x"] for r in decode]
    byte_rows = []
    for t in config["attention_contexts"]:
        folded = next(r for r in attn if r.context == t and r.method.startswith("dense SDPA, GQA folded"))
        for name, kwargs in (("FASA-C per head (paper rule)", {"label_width": width}),
                             ("FASA-C pooled per KV group", {"label_width": width, "pooled": True}),
                             ("reference path (row-major gather + topk)", {"n_dims": meta["n_dims"]})):
            row = next((r for r in attn if r.context == t and r.method == name), None)
            if row is None:
                continue
            b = step_bytes(t, budget, **kwargs)
            byte_rows.append([t, name, f"{b['dense'] / 1e6:.2f}", f"{b['fasa'] / 1e6:.2f}", f"{b['fraction']:.3f}",
                              f"{row.median_ms / folded.median_ms:.3f}"])
    mem_rows = [[m["context"], f"{m['dense_bytes'] / 2**20:.0f}", f"{m['resident_bytes'] / 2**20:.0f}",
                 f"{m['tier_bytes'] / 2**20:.0f}", f"{m['resident_fraction']:.3f}",
                 f"{1 / m['resident_fraction']:.1f}x"] for m in memory]
    tables = [
        Table("(a) One layer's decode attention, SmolLM2 shapes (9 q / 3 KV heads, d=64), fp32", [
            "context", "method", "median ms", "IQR ms", "speedup vs dense (GQA folded), paired",
            "analytic bytes fraction", "analytic ideal speedup"], attn_rows,
            caption=f"budget {budget}; dominant dims of layer {meta['layer']} of the bundled SmolLM2 calibration "
            f"(16 dims per head; label buffer U = {width} of 64 dims; mean union over layers "
            f"{meta['mean_union_width']:.1f}); {meta['repeats']} interleaved repeats. 'part:' rows time the pieces "
            "of FASA-C per head separately."),
        Table("(b) End-to-end decode, 30-layer model with SmolLM2-135M shapes, random weights, fp32", [
            "context", "method", "median ms/token", "IQR ms/token", "speedup vs StaticCache",
            "speedup vs best dense"], decode_rows,
            caption=f"synthetic prefill (random K/V written into the caches), {config['decode_steps']} decode steps "
            f"x {config['decode_repeats']} interleaved repeats; FASA: budget {budget}, layer 0 dense. Random weights "
            "(contexts beyond the real model's 8K window); weights are 540 MB of fp32 read per token."
            + (f" StaticCache timed only up to {config['static_max']} tokens (transformers' sdpa repeats K/V per "
               "query head when a mask is present: seconds per token at 32K)." if config.get("static_max") else "")),
        Table("(c) Bytes read per decode step, one layer: analytic (GQA-aware, as the code reads) vs measured time", [
            "context", "method", "dense MB", "FASA MB", "analytic fraction", "measured time fraction"], byte_rows,
            caption="analytic: label buffer (or per-head scattered dims for the reference path) + score row "
            "written and read by top-k + gathered K/V rows; dense: 2·H_kv·t·d. Measured: median FASA / median dense "
            "(GQA folded) time."),
        Table("(d) FASA-M resident memory, SmolLM2 shapes, 30 layers (layer 0 dense), fp32", [
            "context", "dense K/V MiB", "resident MiB", "slow tier MiB", "resident fraction", "reduction"], mem_rows,
            caption=f"resident = label buffers (U = union dims per KV group) + 64-token recent window per sparse "
            f"layer + layer 0's full K/V; slow tier = memory-mapped file (CPU run). Budget {budget} rows fetched "
            "per layer and step (transient)."),
    ]
    if profile:
        tables.append(profile_table(profile, budget, config["profile_repeats"]))

    def pick(rows: list[Any], t: int, name: str, attr: str) -> float | None:
        row = next((r for r in rows if r.context == t and r.method == name), None)
        return None if row is None else round(getattr(row, attr), 2)

    longest_a, longest_d = max(config["attention_contexts"]), max(config["decode_contexts"])
    metrics = {
        "attn_speedup_per_head_longest": pick(attn, longest_a, "FASA-C per head (paper rule)", "speedup"),
        "attn_speedup_per_head_8k": pick(attn, 8192, "FASA-C per head (paper rule)", "speedup"),
        "attn_speedup_pooled_8k": pick(attn, 8192, "FASA-C pooled per KV group", "speedup"),
        "e2e_speedup_per_head_8k": pick(decode, 8192, "FASA-C per head (paper rule)", "speedup_vs_best_dense"),
        "e2e_speedup_per_head_longest": pick(decode, longest_d, "FASA-C per head (paper rule)",
                                             "speedup_vs_best_dense"),
        "e2e_speedup_pooled_longest": pick(decode, longest_d, "FASA-C pooled per KV group", "speedup_vs_best_dense"),
        "fasa_m_reduction_longest": round(1 / memory[-1]["resident_fraction"], 2),
        "longest_attention_context": longest_a,
        "longest_decode_context": longest_d,
    }
    raw = {"attention": [r.__dict__ for r in attn], "attention_meta": meta, "decode": [r.__dict__ for r in decode],
           "memory": memory, "profile": profile, "config": config}
    return {"tables": tables, "metrics": metrics, "raw": raw}
