"""The Triton TIP and FAC kernels equal the torch path (CUDA, or Triton's CPU interpreter)."""

from __future__ import annotations

import pytest
import torch

from leanlm.fasa import kernels
from leanlm.fasa.attention import focused_attention
from leanlm.fasa.selectors import FASASelector, top_budget

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="needs CUDA + triton (or TRITON_INTERPRET=1)")


@needs_kernels
@pytest.mark.parametrize("t", [37, 300])
def test_tip_and_fac_kernels_match_torch(t):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(t)
    q = torch.randn(2, 6, 1, 32, generator=gen).to(device)
    k = torch.randn(2, 3, t, 32, generator=gen).to(device)
    v = torch.randn(2, 3, t, 32, generator=gen).to(device)
    fcs = torch.stack([torch.randperm(16, generator=gen)[:4] for _ in range(6)])[None]
    sel = FASASelector.from_fcs(fcs, 32, "half")
    sel.dims = sel.dims.to(device)
    ref_scores = sel.scores(q, k, 0)
    got_scores = kernels.tip_scores(q, k, sel.dims[0])
    assert torch.allclose(got_scores, ref_scores, atol=1e-4, rtol=1e-4)
    idx = top_budget(ref_scores, 20)
    ref = focused_attention(q, k, v, idx, 32**-0.5)
    got = kernels.focused_attention(q, k, v, idx, 32**-0.5, block_n=16)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)


@needs_kernels
def test_model_decode_through_kernels_equals_dense():
    """``apply(..., backend="triton")``: TIP and FAC kernels inside generate(); budget >= context == dense."""
    from leanlm.common.models import tiny_llama
    from leanlm.fasa import apply

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = tiny_llama(seed=2).to(device)
    cfg = model.config
    fcs = torch.stack([torch.randperm(8, generator=torch.Generator().manual_seed(i))[:2] for i in range(8)])
    sel = FASASelector.from_fcs(fcs.view(cfg.num_hidden_layers, cfg.num_attention_heads, 2), 16, "half")
    sel.dims = sel.dims.to(device)
    ids = torch.randint(1, 128, (1, 40), generator=torch.Generator().manual_seed(0)).to(device)

    def logits():
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                                 do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
        return torch.stack(out.logits)

    dense = logits()
    with apply(model, selector=sel, budget=64, dense_layers=(), backend="triton") as fasa:
        sparse = logits()
    assert fasa.stats.sparse_calls == 4
    assert torch.allclose(dense, sparse, atol=1e-5, rtol=1e-5)


def test_gpu_script_cpu_part_runs_under_the_triton_interpreter():
    """``bench/gpu_fasa.sh --cpu``: label-buffer TIP and gather-attend FAC kernels == torch FASA-C (interpreter),
    and ``generate()`` through the kernels gives the reference path's tokens on tiny Llama / Qwen2."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(["bash", str(root / "bench" / "gpu_fasa.sh"), "--cpu"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": ok") == 4, proc.stdout  # 2 kernel shapes + generate() tokens on 2 tiny models
