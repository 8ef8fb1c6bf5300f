"""Exact top-k selection (leanlm.fasa.topk) against ``torch.topk`` brute force: ties, -inf, k = 1, k >= t."""

from __future__ import annotations

import pytest
import torch

from leanlm.fasa.topk import block_size_for, exact_topk, numba_ok, numba_topk

needs_numba = pytest.mark.skipif(not numba_ok(torch.zeros(1)), reason="numba is not installed")


def _rows(kind: str, shape: tuple[int, ...], gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    t = shape[-1]
    if kind == "randn":
        return torch.randn(shape, generator=gen, dtype=dtype)
    if kind == "ties":  # few distinct values: ties at the k-th value in every row
        return torch.randint(0, 5, shape, generator=gen).to(dtype)
    if kind == "constant":
        return torch.full(shape, 3.0, dtype=dtype)
    if kind == "increasing":  # the top k all in the last groups: the pre-filter keeps many survivors
        return torch.arange(t, dtype=dtype).expand(shape).clone()
    if kind == "neg_inf":  # mostly -inf (masked keys): fewer finite entries than k in some rows
        x = torch.full(shape, float("-inf"), dtype=dtype)
        keep = torch.rand(shape, generator=gen) < 0.02
        x[keep] = torch.randn(int(keep.sum()), generator=gen, dtype=dtype)
        return x
    if kind == "forced":  # +inf for forced tokens (sinks, recent window) among random scores
        x = torch.randn(shape, generator=gen, dtype=dtype)
        x[..., :4] = float("inf")
        x[..., -8:] = float("inf")
        return x
    raise ValueError(kind)


def _same_values(scores: torch.Tensor, got: torch.Tensor, k: int) -> None:
    k = min(k, scores.shape[-1])
    ref = scores.topk(k, dim=-1).values
    assert got.shape == ref.shape and got.dtype == torch.long
    assert torch.equal(scores.gather(-1, got).sort(-1).values, ref.sort(-1).values)  # same multiset of values
    assert all(len(set(row.tolist())) == row.numel() for row in got.reshape(-1, got.shape[-1]))  # no duplicates


KINDS = ["randn", "ties", "constant", "increasing", "neg_inf", "forced"]
SIZES = [(5000, 64), (4099, 100), (777, 7), (300, 256), (64, 64), (33, 5), (1000, 1), (8192, 256), (517, 1)]


@needs_numba
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t,k", SIZES)
def test_numba_topk_equals_brute_force_with_lowest_position_tie_rule(kind, t, k):
    gen = torch.Generator().manual_seed(t * 31 + k)
    scores = _rows(kind, (2, 3, t), gen)
    got = numba_topk(scores, k)
    _same_values(scores, got, k)
    # the documented tie rule: a stable descending sort keeps lower positions first among equal values
    order = scores.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    assert torch.equal(got.sort(-1).values, order.sort(-1).values)
    if k < t:
        assert torch.equal(exact_topk(scores, k), got)  # auto picks numba on CPU fp32


@needs_numba
def test_numba_topk_fp64_nan_fallback_and_argument_checks():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 3000, generator=gen, dtype=torch.float64)
    _same_values(scores, numba_topk(scores, 50), 50)
    scores[2, 17] = float("nan")  # NaN rows: numba declines, exact_topk falls back to torch (NaN ranks highest)
    assert numba_topk(scores, 50) is None
    got = exact_topk(scores, 50)
    assert 17 in got[2].tolist()
    _same_values(scores[[0, 1, 3]], got[[0, 1, 3]], 50)
    with pytest.raises(ValueError):
        numba_topk(scores, 0)
    with pytest.raises(ValueError):
        numba_topk(scores, 3001)
    with pytest.raises(ValueError):
        exact_topk(scores, 3, backend="cuda")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t,k,block", [(5000, 64, None), (4099, 100, 4), (777, 7, 8), (300, 256, None),
                                       (64, 64, 4), (33, 5, 32), (8192, 256, None), (32768, 256, None),
                                       (1000, 1, 16), (2000, 3000, None)])
def test_torch_group_prefilter_equals_brute_force(kind, t, k, block):
    gen = torch.Generator().manual_seed(t + k)
    scores = _rows(kind, (2, 3, t), gen)
    _same_values(scores, exact_topk(scores, k, block, backend="torch"), k)


def test_k_at_least_t_returns_every_index():
    scores = torch.randn(2, 3, 40)
    for backend in ("auto", "torch"):
        got = exact_topk(scores, 40, backend=backend)
        assert torch.equal(got.sort(-1).values, torch.arange(40).expand(2, 3, 40))
        assert exact_topk(scores, 100, backend=backend).shape == (2, 3, 40)


def test_block_size_rule():
    assert block_size_for(2048, 256) == 0  # t/k < 16: plain topk
    assert [block_size_for(t, 256) for t in (4096, 8192, 16384, 32768)] == [4, 8, 8, 16]
