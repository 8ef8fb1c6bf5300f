"""Frequency-chunk layouts: pairs are RoPE rotation planes only under the right pairing."""

from __future__ import annotations

import pytest
import torch

from leanlm.fasa.chunks import (
    UnsupportedModelError,
    detect_pairing,
    dims_of,
    fc_dim_table,
    fc_dims,
    split_fcs,
)


def test_fc_dims_layouts():
    assert fc_dims(0, 8, "half") == (0, 4)
    assert fc_dims(3, 8, "half") == (3, 7)
    assert fc_dims(1, 8, "interleaved") == (2, 3)
    assert fc_dims(1, 8, "adjacent") == (2, 3)
    with pytest.raises(ValueError, match="out of range"):
        fc_dims(4, 8, "half")
    with pytest.raises(ValueError, match="unknown pairing"):
        fc_dims(0, 8, "diagonal")


@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_split_fcs_matches_dim_table(pairing):
    x = torch.arange(16.0)
    pairs = split_fcs(x, pairing)
    table = fc_dim_table(16, pairing)
    assert torch.equal(pairs, x[table])
    fcs = torch.tensor([[2, 5]])
    assert dims_of(fcs, 16, pairing).tolist() == [[*table[2].tolist(), *table[5].tolist()]]


def _rope(x: torch.Tensor, pos: int, theta: float = 10000.0) -> torch.Tensor:
    from transformers.models.llama.modeling_llama import rotate_half

    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.cat([pos * inv, pos * inv])
    return x * ang.cos() + rotate_half(x) * ang.sin()


def test_half_pairs_are_rotation_planes_adjacent_are_not():
    """Under rotate_half RoPE a true FC logit depends only on the relative offset (Eq. 1)."""
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=gen, dtype=torch.float64), torch.randn(16, generator=gen, dtype=torch.float64)

    def per_fc(pairing, m, n):
        return (split_fcs(_rope(q, m), pairing) * split_fcs(_rope(k, n), pairing)).sum(-1)

    half_a, half_b = per_fc("half", 10, 3), per_fc("half", 110, 103)
    assert torch.allclose(half_a, half_b, atol=1e-9)
    adj_a, adj_b = per_fc("adjacent", 10, 3), per_fc("adjacent", 110, 103)
    assert not torch.allclose(adj_a, adj_b, atol=1e-3)
    # both layouts still decompose the full logit exactly (sum over FCs)
    full = _rope(q, 10) @ _rope(k, 3)
    assert torch.allclose(half_a.sum(), full) and torch.allclose(adj_a.sum(), full)


def test_detect_pairing():
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    assert detect_pairing(LlamaConfig()) == "half"
    assert detect_pairing(Qwen2Config()) == "half"
    assert detect_pairing(MistralConfig()) == "half"
    with pytest.raises(UnsupportedModelError, match="no rotary"):
        detect_pairing(GPT2Config())
