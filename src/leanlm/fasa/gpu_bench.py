"""GPU check of the FASA-C kernels (run by ``bench/gpu_fasa.sh``): correctness, then TIP+top-k+FAC vs dense.

``python -m leanlm.fasa.gpu_bench`` on a CUDA machine:

1. correctness: Triton label-buffer TIP (:mod:`leanlm.fasa.kernels.label_tip`) and gather-attend FAC
   (:mod:`leanlm.fasa.kernels.triton_fasa`) against the torch FASA-C path, on SmolLM2-like and
   Llama-3.1-8B-like shapes; exits 1 on any mismatch;
2. timing (CUDA events, median over iterations) of one layer's decode attention at 8K-64K, fp16: dense SDPA
   with the GQA group folded into q_len (flash/efficient kernels) and with ``enable_gqa``, FASA-C torch
   path, FASA-C with the Triton kernels, and the kernels' parts; one Markdown table on stdout (and ``--out``).

``--smoke`` runs part 1 only, on small tensors, on the CPU under ``TRITON_INTERPRET=1`` (what the test
suite runs). Shapes: SmolLM2-135M (9 q / 3 KV heads, d = 64, the bundled calibration's dims of layer 15)
and Llama-3.1-8B (32 q / 8 KV heads, d = 128, 16 random FCs per head: random dims overlap less within a
group than calibrated ones, so the label buffer is wider than a real calibration's; stated in the table).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import torch

from leanlm.fasa.cache import FasaCache, LabelSpec
from leanlm.fasa.decode import fasa_c_attention, masked_queries, tip_scores
from leanlm.fasa.topk import exact_topk


def _shapes() -> dict[str, dict[str, Any]]:
    from leanlm.fasa.chunks import dims_of
    from leanlm.fasa.perf import calibration_dims

    gen = torch.Generator().manual_seed(0)
    llama = torch.stack([torch.randperm(64, generator=gen)[:16] for _ in range(32)])
    return {
        "SmolLM2-135M (9/3 heads, d=64)": {"n_q": 9, "n_kv": 3, "d": 64, "dims": calibration_dims(256)[0][15]},
        "Llama-3.1-8B (32/8 heads, d=128)": {"n_q": 32, "n_kv": 8, "d": 128, "dims": dims_of(llama, 128, "half")},
    }


def _layer(shape: dict[str, Any], t: int, device: str, dtype: torch.dtype, gen: torch.Generator):
    spec = LabelSpec.from_head_dims(shape["dims"], shape["n_kv"])
    cache = FasaCache(specs=[spec], capacity=t)
    k = torch.randn(1, shape["n_kv"], t, shape["d"], generator=gen).to(device, dtype)
    v = torch.randn(1, shape["n_kv"], t, shape["d"], generator=gen).to(device, dtype)
    keys, values = cache.update(k, v, 0)
    q = torch.randn(1, shape["n_q"], 1, shape["d"], generator=gen).to(device, dtype)
    return cache, cache.layers[0], q, keys, values


def correctness(device: str, t: int = 300, budget: int = 40) -> list[str]:
    """Kernel vs torch FASA-C; returns failure messages (empty = all passed)."""
    from leanlm.fasa.kernels.label_tip import label_tip_scores
    from leanlm.fasa.kernels.triton_fasa import focused_attention as fac_kernel

    failures = []
    gen = torch.Generator().manual_seed(1)
    for name, shape in _shapes().items():
        _, layer, q, _, _ = _layer(shape, t, device, torch.float32, gen)
        for pooled in (False, True):
            ref = tip_scores(q, layer, pooled)
            got = label_tip_scores(masked_queries(q, layer, pooled), layer.label(), layer.length)
            if not torch.allclose(got, ref, atol=1e-3, rtol=1e-3):
                failures.append(f"{name} TIP pooled={pooled}: max err {(got - ref).abs().max():.2e}")
            idx = exact_topk(ref, budget)
            per_head = idx.repeat_interleave(shape["n_q"] // shape["n_kv"], 1) if pooled else idx
            out_ref, _ = fasa_c_attention(q, layer, budget, shape["d"] ** -0.5, pooled=pooled)
            out = fac_kernel(q, layer._keys, layer._values, per_head, shape["d"] ** -0.5)
            if not torch.allclose(out, out_ref, atol=1e-4, rtol=1e-3):
                failures.append(f"{name} FAC pooled={pooled}: max err {(out - out_ref).abs().max():.2e}")
            out_k, _ = fasa_c_attention(q, layer, budget, shape["d"] ** -0.5, pooled=pooled, kernels=True)
            if not torch.allclose(out_k, out_ref, atol=1e-4, rtol=1e-3):
                failures.append(f"{name} FASA-C kernels pooled={pooled}: max err {(out_k - out_ref).abs().max():.2e}")
        print(f"correctness {name}: {'ok' if not failures else 'FAILED'}", flush=True)
    return failures


def model_tokens(device: str) -> list[str]:
    """Greedy tokens through ``apply(..., backend="triton")`` == the reference path, tiny Llama / Qwen2 models."""
    from leanlm.common.models import tiny_llama, tiny_qwen2
    from leanlm.fasa import FASASelector, apply

    failures = []
    for factory in (tiny_llama, tiny_qwen2):
        model = factory(seed=3).to(device)
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        gen = torch.Generator().manual_seed(0)
        fcs = torch.stack([torch.randperm(head_dim // 2, generator=gen)[:2]
                           for _ in range(cfg.num_hidden_layers * cfg.num_attention_heads)])
        ids = torch.randint(1, 128, (1, 90), generator=gen).to(device)
        for pooled in (False, True):
            sel = FASASelector.from_fcs(fcs.view(cfg.num_hidden_layers, cfg.num_attention_heads, 2), head_dim, "half",
                                        pooled=pooled)
            sel.dims = sel.dims.to(device)
            outs = []
            for backend in ("reference", "triton"):
                with torch.no_grad(), apply(model, selector=sel, budget=6, backend=backend) as fasa:
                    outs.append(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                               min_new_tokens=5, do_sample=False, pad_token_id=0))
            if not torch.equal(outs[0], outs[1]) or fasa.stats.fast_calls == 0:
                failures.append(f"{factory.__name__} pooled={pooled}: Triton tokens differ from the reference path")
        print(f"tokens {factory.__name__}: {'ok' if not failures else 'FAILED'}", flush=True)
    return failures


def _cuda_ms(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def timing(contexts: list[int], budget: int = 256, iters: int = 50) -> str:
    from leanlm.fasa.kernels.label_tip import label_tip_scores
    from leanlm.fasa.kernels.triton_fasa import focused_attention as fac_kernel

    sdpa = torch.nn.functional.scaled_dot_product_attention
    lines = ["| shape | context | U (label dims) | dense SDPA folded ms | dense enable_gqa ms | FASA-C torch ms | "
             "FASA-C Triton ms | Triton pooled ms | TIP kernel ms | topk ms | FAC kernel ms | speedup (Triton vs "
             "folded) |", "|" + "---|" * 12]
    gen = torch.Generator().manual_seed(2)
    for name, shape in _shapes().items():
        for t in contexts:
            cache, layer, q, keys, values = _layer(shape, t, "cuda", torch.float16, gen)
            scale = shape["d"] ** -0.5
            group = shape["n_q"] // shape["n_kv"]
            qf = q.view(1, shape["n_kv"], group, shape["d"])
            q_label = masked_queries(q, layer)
            scores = label_tip_scores(q_label, layer.label(), t)
            idx = scores.topk(budget, dim=-1, sorted=False).indices
            row = {  # each lambda runs inside this iteration (timed at once), so late binding is harmless
                "folded": _cuda_ms(lambda qf=qf, k=keys, v=values: sdpa(qf, k, v, scale=scale), iters),  # noqa: B023
                "gqa": _cuda_ms(lambda q=q, k=keys, v=values: sdpa(q, k, v, scale=scale, enable_gqa=True), iters),  # noqa: B023
                "torch": _cuda_ms(lambda q=q, f=layer: fasa_c_attention(q, f, budget, scale), iters),  # noqa: B023
                "triton": _cuda_ms(lambda q=q, f=layer: fasa_c_attention(q, f, budget, scale, kernels=True), iters),  # noqa: B023
                "pooled": _cuda_ms(lambda q=q, f=layer: fasa_c_attention(q, f, budget, scale, pooled=True,  # noqa: B023
                                                                         kernels=True), iters),
                "tip": _cuda_ms(lambda ql=q_label, f=layer: label_tip_scores(ql, f.label(), t), iters),  # noqa: B023
                "topk": _cuda_ms(lambda s=scores: s.topk(budget, dim=-1, sorted=False), iters),
                "fac": _cuda_ms(lambda q=q, f=layer, i=idx: fac_kernel(q, f._keys, f._values, i, scale), iters),  # noqa: B023
            }
            lines.append(f"| {name} | {t} | {layer.spec.width} | " + " | ".join(
                f"{row[k]:.4f}" for k in ("folded", "gqa", "torch", "triton", "pooled", "tip", "topk", "fac"))
                + f" | {row['folded'] / row['triton']:.2f}x |")
            print(lines[-1], flush=True)
            del cache, layer, keys, values
            torch.cuda.empty_cache()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="correctness only, small, CPU under TRITON_INTERPRET=1")
    parser.add_argument("--contexts", default="8192,16384,32768,65536")
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--out", default=None, help="also write the timing table (Markdown) here")
    args = parser.parse_args(argv)
    from leanlm.fasa import kernels

    device = "cpu" if args.smoke else "cuda"
    if not kernels.available(device):
        print("Triton kernels unavailable (need CUDA + triton, or TRITON_INTERPRET=1 with --smoke)", file=sys.stderr)
        return 2
    failures = correctness(device, t=130 if args.smoke else 4096, budget=24) + model_tokens(device)
    for failure in failures:
        print("FAIL", failure, file=sys.stderr)
    if failures or args.smoke:
        return 1 if failures else 0
    table = timing([int(x) for x in args.contexts.split(",")], args.budget)
    print("\n" + table)
    if args.out:
        from leanlm.common.atomic import atomic_write_text

        atomic_write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
