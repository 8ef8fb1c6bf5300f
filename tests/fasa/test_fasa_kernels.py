"""The Triton TIP and FAC kernels equal the torch path (CUDA, or Triton's CPU interpreter)."""

from __future__ import annotations

import pytest
import torch

from leanlm.fasa import kernels
from leanlm.fasa.attention import focused_attention
from leanlm.fasa.selectors import FASASelector, top_budget

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs CUDA + triton (or TRITON_INTERPRET=1)")


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
