"""Time one attention call on SmolLM2-135M's shapes (9 query heads, 3 KV heads, head dim 64): transformers' sdpa
(which copies K/V per query head when a padding mask is given) against leanlm.common.attention's folded form.

    OMP_NUM_THREADS=1 .venv/bin/python bench/fold_gqa_attention.py

Interleaved repeats, median milliseconds, one thread; rows: decode steps (q = 1) and padded prefills.
"""

import statistics
import time
from types import SimpleNamespace

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from leanlm.common.attention import folded_sdpa_attention_forward


def main() -> None:
    torch.set_num_threads(1)
    module = SimpleNamespace(num_key_value_groups=3, training=False, is_causal=True)
    print("| batch | q | keys | sdpa ms | folded ms | folded / sdpa | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch, q, t, repeats in [(4, 1, 1000, 15), (16, 1, 2000, 15), (32, 1, 1500, 15), (8, 64, 1200, 7),
                                 (4, 300, 1500, 7)]:
        gen = torch.Generator().manual_seed(0)
        query = torch.randn(batch, 9, q, 64, generator=gen)
        key, value = torch.randn(batch, 3, t, 64, generator=gen), torch.randn(batch, 3, t, 64, generator=gen)
        mask = torch.ones(batch, 1, q, t, dtype=torch.bool).tril(t - q)
        mask[::2, :, :, : t // 3] = False  # every other row left-padded
        fns = {"sdpa": sdpa_attention_forward, "folded": folded_sdpa_attention_forward}
        outs = {n: f(module, query, key, value, mask, scaling=0.125)[0] for n, f in fns.items()}
        times: dict[str, list[float]] = {n: [] for n in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(module, query, key, value, mask, scaling=0.125)
                times[name].append(time.perf_counter() - start)
        ms = {n: statistics.median(v) * 1e3 for n, v in times.items()}
        diff = (outs["sdpa"] - outs["folded"]).abs().max().item()
        print(f"| {batch} | {q} | {t} | {ms['sdpa']:.2f} | {ms['folded']:.2f} | {ms['folded'] / ms['sdpa']:.3f} "
              f"| {diff:.1e} |")


if __name__ == "__main__":
    main()
