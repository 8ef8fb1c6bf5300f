"""Decode with TIP + FAC (Eq. 6-7): dense equivalence, oracle == hand masking, integration behaviour."""

from __future__ import annotations

import pytest
import torch

from leanlm.common.models import tiny_llama, tiny_qwen2
from leanlm.fasa import (
    FASASelector,
    OracleSelector,
    QuestSelector,
    StreamingSelector,
    apply,
    dense_attention,
    fc_logits,
    focused_attention,
)
from leanlm.fasa.integration import attention_handler, dense_attention_forward


def tiny_mistral(seed: int = 0):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=None)
    torch.manual_seed(seed)
    return MistralForCausalLM(config).eval()


def random_selector(model, n_tip: int = 2, seed: int = 0) -> FASASelector:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    gen = torch.Generator().manual_seed(seed)
    fcs = torch.stack([torch.randperm(head_dim // 2, generator=gen)[:n_tip]
                       for _ in range(cfg.num_hidden_layers * cfg.num_attention_heads)])
    return FASASelector.from_fcs(fcs.view(cfg.num_hidden_layers, cfg.num_attention_heads, n_tip), head_dim, "half")


def greedy_logits(model, ids, steps=4, **kwargs):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=kwargs.pop("attention_mask", torch.ones_like(ids)),
                             max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0,
                             return_dict_in_generate=True, output_logits=True)
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2, tiny_mistral], ids=["llama", "qwen2", "mistral"])
def test_budget_at_least_context_equals_dense(factory):
    model = factory(seed=3)
    ids = torch.randint(1, 128, (1, 60), generator=torch.Generator().manual_seed(0))
    seq_dense, logits_dense = greedy_logits(model, ids)
    with apply(model, selector=random_selector(model), budget=64, dense_layers=()) as fasa:
        seq_fasa, logits_fasa = greedy_logits(model, ids)
    assert fasa.stats.sparse_calls == 3 * model.config.num_hidden_layers  # every decode step, every layer
    assert model.config._attn_implementation == "sdpa"  # restored
    assert torch.equal(seq_dense, seq_fasa)
    assert torch.allclose(logits_dense, logits_fasa, atol=1e-5, rtol=1e-5)
    # and a budget well below the context really changes the computation
    with apply(model, selector=random_selector(model), budget=4, dense_layers=()):
        _, logits_small = greedy_logits(model, ids)
    assert (logits_small[1:] - logits_dense[1:]).abs().max() > 1e-3


def test_left_padded_batch_budget_at_least_context_equals_dense():
    model = tiny_llama(seed=4)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (2, 40), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :15] = 0  # left padding in the second row
    ids[1, :15] = 0
    _, dense = greedy_logits(model, ids, attention_mask=mask)
    with apply(model, selector=random_selector(model), budget=1000, dense_layers=()):
        _, fasa = greedy_logits(model, ids, attention_mask=mask)
    assert torch.allclose(dense, fasa, atol=1e-5, rtol=1e-5)


def _hand_masked_topk(module, query, key, value, attention_mask, scaling=None, budget=0, **kwargs):
    """Eager attention with every key outside the true top-``budget`` logits masked by hand."""
    if query.shape[2] != 1:
        return dense_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    n_rep = query.shape[1] // key.shape[1]
    out = torch.empty_like(query)
    for b in range(query.shape[0]):
        for h in range(query.shape[1]):
            q, k, v = query[b, h, 0], key[b, h // n_rep], value[b, h // n_rep]
            logits = [float(q @ k[j]) for j in range(k.shape[0])]
            keep = sorted(range(len(logits)), key=lambda j: -logits[j])[:budget]
            mask = torch.full((k.shape[0],), float("-inf"))
            mask[keep] = 0.0
            weights = torch.softmax((k @ q) * scaling + mask, dim=-1)
            out[b, h, 0] = weights @ v
    return out.transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
def test_oracle_selector_equals_hand_masking(factory):
    model = factory(seed=5)
    ids = torch.randint(1, 128, (1, 50), generator=torch.Generator().manual_seed(2))
    budget = 7
    with apply(model, selector=OracleSelector(), budget=budget, dense_layers=()):
        seq_oracle, logits_oracle = greedy_logits(model, ids)

    def handler(*args, **kwargs):
        return _hand_masked_topk(*args, budget=budget, **kwargs)

    with attention_handler(model, handler):
        seq_hand, logits_hand = greedy_logits(model, ids)
    assert torch.equal(seq_oracle, seq_hand)
    assert torch.allclose(logits_oracle, logits_hand, atol=1e-5, rtol=1e-5)


def test_focused_attention_with_all_tokens_is_dense_and_subset_is_masked_softmax():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 1, 16, generator=gen), torch.randn(2, 2, 30, 16, generator=gen),
               torch.randn(2, 2, 30, 16, generator=gen))
    everything = torch.arange(30).flip(0).expand(2, 6, 30)
    assert torch.allclose(focused_attention(q, k, v, everything, 0.25), dense_attention(q, k, v, 0.25), atol=1e-6)
    idx = torch.tensor([0, 5, 29])
    mask = torch.zeros(30, dtype=torch.bool)
    mask[idx] = True
    sub = focused_attention(q, k, v, idx.expand(2, 6, 3), 0.25)
    ref = dense_attention(q, k, v, 0.25, valid=mask.expand(2, 6, 30))
    assert torch.allclose(sub, ref, atol=1e-6)


def test_tip_score_is_sum_of_dominant_fc_logits():
    """Eq. 6: S = q[D]·K[D]^T equals the sum of the single-FC logits α^(i) over I_dom."""
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 1, 16, generator=gen, dtype=torch.float64), torch.randn(1, 2, 25, 16, generator=gen,
                                                                                    dtype=torch.float64)
    fcs = torch.tensor([[[1, 6], [0, 7], [2, 3], [5, 4]]])
    sel = FASASelector.from_fcs(fcs, 16, "half")
    scores = sel.scores(q, k, 0)
    per_fc = fc_logits(q[0, :, 0:1], k[0].repeat_interleave(2, 0), "half")[:, 0]  # (H, F, T)
    expected = torch.stack([per_fc[h, fcs[0, h]].sum(0) for h in range(4)])
    assert torch.allclose(scores[0], expected, atol=1e-12)
    pooled = FASASelector.from_fcs(fcs, 16, "half", pooled=True).select(q, k, 5)
    assert set(pooled[0, 0].tolist()) == set(pooled[0, 1].tolist())  # one set per KV group
    assert set(pooled[0, 2].tolist()) == set(pooled[0, 3].tolist())


def test_forced_sink_and_recent_tokens_are_attended():
    from leanlm.fasa.integration import FasaAttention

    class Worst(OracleSelector):
        def scores(self, query, keys, layer_idx):
            return -super().scores(query, keys, layer_idx)  # ranks the best tokens last

    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 40, 16)
    truth = OracleSelector().scores(q, k, 0)
    forced = FasaAttention(selector=Worst(), budget=8, n_sink=2, n_recent=3).choose(q, k, 1)
    plain = FasaAttention(selector=Worst(), budget=8).choose(q, k, 1)
    for h in range(4):
        chosen = set(forced[0, h].tolist())
        assert {0, 1, 37, 38, 39} <= chosen and len(chosen) == 8
        worst = set(truth[0, h].argsort()[:8].tolist())
        assert set(plain[0, h].tolist()) == worst
        assert chosen - {0, 1, 37, 38, 39} <= worst
    model = tiny_llama(seed=6)
    ids = torch.randint(1, 128, (1, 40), generator=torch.Generator().manual_seed(3))
    with apply(model, selector=Worst(), budget=6, dense_layers=(), n_sink=2, n_recent=3) as fasa:
        greedy_logits(model, ids, steps=3)
    assert fasa.stats.sparse_calls == 4 and fasa.stats.keys_attended == 6 * 4 * 4


def test_quest_bound_and_streaming_selection():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 1, 16, generator=gen), torch.randn(1, 2, 45, 16, generator=gen)
    bound = QuestSelector(page_size=16).scores(q, k, 0)
    logits = (q @ k.repeat_interleave(2, 1).transpose(-1, -2))[:, :, 0]
    assert (bound >= logits - 1e-5).all()  # a page bound never underestimates a token's logit
    assert torch.equal(bound[..., 32:45], bound[..., 32:33].expand(-1, -1, 13))  # partial last page shares it
    idx = StreamingSelector(n_sink=2).select(q, k, 6)
    assert set(idx[0, 0].tolist()) == {0, 1, 41, 42, 43, 44}


def test_apply_errors_and_restores_on_exception():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = tiny_llama()
    with pytest.raises(ValueError, match="calibration"), apply(model, budget=8):
        pass
    with pytest.raises(RuntimeError, match="boom"), apply(model, selector=OracleSelector(), budget=8):
        assert model.config._attn_implementation == "fasa"
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    outer = apply(model, selector=OracleSelector(), budget=8)
    with outer, pytest.raises(RuntimeError, match="already active"), apply(model, selector=OracleSelector(), budget=8):
        pass
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="rotary"), apply(gpt2, selector=OracleSelector(), budget=8):
        pass


def test_fasa_survives_kvpress_wrapping_the_attention_functions():
    """kvpress wraps every registered attention function at import and passes ``dropout`` positionally."""
    patch = pytest.importorskip("kvpress.attention_patch")
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from leanlm.fasa.integration import FASA_IMPL, register

    register()
    original = ALL_ATTENTION_FUNCTIONS[FASA_IMPL]
    ALL_ATTENTION_FUNCTIONS[FASA_IMPL] = patch.attention_patch(original)
    try:
        model = tiny_llama(seed=7)
        ids = torch.randint(1, 128, (1, 30), generator=torch.Generator().manual_seed(4))
        _, dense = greedy_logits(model, ids, steps=2)
        with apply(model, selector=random_selector(model), budget=100, dense_layers=()) as fasa:
            _, sparse = greedy_logits(model, ids, steps=2)
        assert fasa.stats.sparse_calls == 2 and torch.allclose(dense, sparse, atol=1e-5)
    finally:
        ALL_ATTENTION_FUNCTIONS[FASA_IMPL] = original
