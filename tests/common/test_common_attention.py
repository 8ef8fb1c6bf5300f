"""The folded-GQA attention function equals transformers' sdpa (function level and whole padded generate)."""

from types import SimpleNamespace

import pytest
import torch

from leanlm.common.attention import FOLDED_SDPA, folded_sdpa_attention_forward, register_folded_sdpa


def _padded_mask(batch: int, q: int, t: int, kind: str) -> torch.Tensor:
    """Causal over the last ``q`` positions, odd rows left-padded by t // 3; boolean or additive float."""
    allowed = torch.ones(batch, 1, q, t, dtype=torch.bool).tril(t - q)
    allowed[1::2, :, :, : t // 3] = False
    if kind == "bool":
        return allowed
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize(("q", "t"), [(1, 37), (5, 40), (12, 12)])
def test_folded_equals_sdpa_with_repeated_kv(kind, q, t):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, training=False, is_causal=True)
    # distinct scales per query head so that a wrong head-to-KV-group mapping changes the output
    query = torch.randn(4, 6, q, 8) * torch.arange(1, 7).view(1, 6, 1, 1)
    key, value = torch.randn(4, 2, t, 8), torch.randn(4, 2, t, 8)
    mask = _padded_mask(4, q, t, kind)
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    got, _ = folded_sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert got.shape == want.shape == (4, q, 6, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_without_a_mask_or_without_gqa_it_is_sdpa_itself():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(1)
    query, key, value = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    gqa = SimpleNamespace(num_key_value_groups=2, training=False, is_causal=True)
    assert torch.equal(folded_sdpa_attention_forward(gqa, query, key, value, None)[0],
                       sdpa_attention_forward(gqa, query, key, value, None)[0])
    mha = SimpleNamespace(num_key_value_groups=1, training=False, is_causal=True)
    key4, value4 = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    mask = _padded_mask(2, 6, 6, "bool")
    assert torch.equal(folded_sdpa_attention_forward(mha, query, key4, value4, mask)[0],
                       sdpa_attention_forward(mha, query, key4, value4, mask)[0])


def test_padded_generate_gives_the_same_tokens_and_scores_as_sdpa():
    from leanlm.common.models import tiny_llama

    torch.manual_seed(0)
    ids = torch.randint(3, 120, (3, 14))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding of different lengths: the case transformers' sdpa handles with repeat_kv
    mask[2, :2] = 0
    outputs = {}
    for impl in ("sdpa", register_folded_sdpa()):
        model = tiny_llama(vocab_size=128, num_attention_heads=6, num_key_value_heads=2, hidden_size=48, seed=3)
        model.set_attn_implementation(impl)
        assert model.config._attn_implementation == impl
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        outputs[impl] = out
    ref, folded = outputs["sdpa"], outputs[FOLDED_SDPA]
    assert torch.equal(ref.sequences, folded.sequences)
    torch.testing.assert_close(torch.stack(folded.scores), torch.stack(ref.scores), rtol=1e-5, atol=1e-5)


def test_register_is_idempotent():
    assert register_folded_sdpa() == register_folded_sdpa() == FOLDED_SDPA
