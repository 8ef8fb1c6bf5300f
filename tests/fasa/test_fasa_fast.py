"""FASA-C: the FasaCache + label-buffer decode path gives the reference path's tokens; exact top-k; edges."""

from __future__ import annotations

import pytest
import torch

from leanlm.common.models import tiny_llama, tiny_qwen2
from leanlm.fasa import FASASelector, StreamingSelector, apply
from leanlm.fasa.cache import FasaCache, LabelSpec, find_layer
from leanlm.fasa.decode import fasa_c_attention, tip_scores
from leanlm.fasa.topk import exact_topk

from .test_fasa_decode import greedy_logits, random_selector, tiny_mistral


@pytest.mark.parametrize("t,k,block", [(5000, 64, None), (4099, 100, 4), (777, 7, 8), (300, 256, None),
                                       (64, 64, 4), (33, 5, 32)])
def test_exact_topk_equals_torch_topk(t, k, block):
    gen = torch.Generator().manual_seed(t)
    scores = torch.randn(2, 3, t, generator=gen)
    scores[0, 0, 10:20] = 7.0  # ties across a block boundary
    got = exact_topk(scores, k, block)
    ref = scores.topk(min(k, t), dim=-1).values
    assert got.shape == ref.shape
    assert torch.equal(scores.gather(-1, got).sort(-1).values, ref.sort(-1).values)  # same multiset of values
    assert all(len(set(row.tolist())) == row.numel() for row in got.view(-1, got.shape[-1]))  # no duplicates


def test_label_spec_and_tip_equal_reference_scores_per_head_and_pooled():
    gen = torch.Generator().manual_seed(0)
    n_q, n_kv, d, t = 6, 2, 16, 50
    fcs = torch.stack([torch.randperm(d // 2, generator=gen)[:3] for _ in range(n_q)])[None]
    sel = FASASelector.from_fcs(fcs, d, "half")
    spec = LabelSpec.from_head_dims(sel.dims[0], n_kv)
    for g in range(n_kv):  # the label columns of a group are the union of its heads' dims
        assert set(spec.dims[g].tolist()) == set(sel.dims[0, g * 3 : g * 3 + 3].flatten().tolist())
        for j in range(3):
            assert set(spec.dims[g][spec.owned[g, j]].tolist()) == set(sel.dims[0, g * 3 + j].tolist())
    cache = FasaCache(specs=[spec], capacity=8)  # starts small: must grow (by doubling) without losing rows
    keys = torch.randn(1, n_kv, t, d, generator=gen, dtype=torch.float64)
    values = torch.randn_like(keys)
    for start in (0, 20, 21, 22, 40):
        end = {0: 20, 20: 21, 21: 22, 22: 40, 40: t}[start]
        k_out, v_out = cache.update(keys[:, :, start:end], values[:, :, start:end], 0)
    layer = cache.layers[0]
    assert torch.equal(k_out, keys) and torch.equal(v_out, values) and layer.capacity >= t
    assert find_layer(k_out) is layer and find_layer(keys) is None
    q = torch.randn(1, n_q, 1, d, generator=gen, dtype=torch.float64)
    assert torch.allclose(tip_scores(q, layer), sel.scores(q, keys, 0), atol=1e-12)
    pooled = FASASelector.from_fcs(fcs, d, "half", pooled=True).scores(q, keys, 0)[:, ::3]
    assert torch.allclose(tip_scores(q, layer, pooled=True), pooled, atol=1e-12)
    # FAC over the gathered rows == the reference focused attention over the same indices
    from leanlm.fasa.attention import focused_attention

    out, idx = fasa_c_attention(q, layer, 9, 0.25)
    assert torch.allclose(out, focused_attention(q, keys, values, idx, 0.25), atol=1e-6)  # reference: fp32 softmax
    out, idx = fasa_c_attention(q, layer, 9, 0.25, pooled=True)
    assert idx.shape == (1, n_kv, 9)
    assert torch.allclose(out, focused_attention(q, keys, values, idx.repeat_interleave(3, 1), 0.25), atol=1e-6)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2, tiny_mistral], ids=["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("pooled", [False, True], ids=["per-head", "pooled"])
def test_fasa_c_gives_reference_tokens(factory, pooled):
    model = factory(seed=3)
    ids = torch.randint(1, 128, (1, 90), generator=torch.Generator().manual_seed(1))
    sel = random_selector(model)
    sel.pooled = pooled
    with apply(model, selector=sel, budget=6, dense_layers=(0,), backend="reference") as ref:
        seq_ref, logits_ref = greedy_logits(model, ids, steps=6)
    with apply(model, selector=sel, budget=6, dense_layers=(0,)) as fast:
        seq_fast, logits_fast = greedy_logits(model, ids, steps=6)
    assert ref.stats.fast_calls == 0 and fast.stats.fast_calls == fast.stats.sparse_calls == 5 * 1
    assert torch.equal(seq_ref, seq_fast)
    assert torch.allclose(logits_ref, logits_fast, atol=1e-5, rtol=1e-5)


def test_fasa_c_left_padded_batch_and_forced_tokens_match_reference():
    model = tiny_llama(seed=4)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (2, 70), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :25] = 0
    ids[1, :25] = 0
    outs = []
    for backend in ("reference", "auto"):
        with apply(model, selector=random_selector(model), budget=9, dense_layers=(), n_sink=2, n_recent=3,
                   backend=backend) as fasa:
            outs.append(greedy_logits(model, ids, attention_mask=mask, steps=4))
    assert fasa.stats.fast_calls == 3 * 2
    assert torch.equal(outs[0][0], outs[1][0]) and torch.allclose(outs[0][1], outs[1][1], atol=1e-5)


def test_generate_gets_a_fasa_cache_only_by_default():
    model = tiny_llama(seed=2)
    ids = torch.randint(1, 128, (1, 30), generator=torch.Generator().manual_seed(0))
    seen = []

    def spy(module, query, key, value, *args, **kwargs):
        seen.append(find_layer(key) is not None)
        return original(module, query, key, value, *args, **kwargs)

    with apply(model, selector=random_selector(model), budget=4) as fasa:
        original = fasa.__class__.__call__.__get__(fasa)
        from leanlm.fasa import hooks

        for key in list(hooks._HANDLERS):
            hooks._HANDLERS[key] = spy
        greedy_logits(model, ids, steps=2)
        assert all(seen) and len(seen) == 2 * 2
        seen.clear()
        from transformers import DynamicCache

        with torch.no_grad():  # a cache passed by the caller is respected
            model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=DynamicCache(),
                           max_new_tokens=2, do_sample=False, pad_token_id=0)
        assert not any(seen)
    assert "_prepare_cache_for_generation" not in model.__dict__  # the instance shadow is removed on exit


# ---------------------------------------------------------------- correctness edges (issue #11 section 6)
def test_streaming_selector_keeps_sinks_and_recent_window_in_half_precision():
    t = 5000  # positions above 2048 are not exact in fp16: they tied, and the recent window was lost
    for dtype in (torch.float16, torch.bfloat16):
        q, k = torch.randn(1, 2, 1, 8, dtype=dtype), torch.randn(1, 1, t, 8, dtype=dtype)
        idx = StreamingSelector(n_sink=4).select(q, k, 20)
        assert set(idx[0, 0].tolist()) == set(range(4)) | set(range(t - 16, t)), dtype


def test_mla_models_are_refused_with_a_clear_error():
    from transformers import DeepseekV3Config

    from leanlm.fasa import UnsupportedModelError, detect_pairing

    config = DeepseekV3Config(num_hidden_layers=1, hidden_size=64, num_attention_heads=2, num_key_value_heads=2,
                              qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, kv_lora_rank=16,
                              q_lora_rank=None, vocab_size=32, intermediate_size=64, moe_intermediate_size=32)
    with pytest.raises(UnsupportedModelError, match="latent attention"):
        detect_pairing(config)


def test_softcap_is_applied_on_the_sparse_path():
    """Gemma 2 passes ``softcap``; budget >= context must equal the model's eager attention (with the cap)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4096,
                          attn_logit_softcapping=0.5, final_logit_softcapping=None,
                          layer_types=["full_attention", "full_attention"], attn_implementation="eager")
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():  # random init gives tiny logits, where tanh is linear; make the cap bite
        for module in model.modules():
            if hasattr(module, "q_proj"):
                module.q_proj.weight.mul_(40.0)
    ids = torch.randint(1, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    _, eager = greedy_logits(model, ids, steps=3)
    model.config.attn_logit_softcapping = None
    for module in model.modules():
        if hasattr(module, "attn_logit_softcapping"):
            module.attn_logit_softcapping = None
    _, uncapped = greedy_logits(model, ids, steps=3)
    assert (eager - uncapped).abs().max() > 1e-3  # the cap really matters in this model
    for module in model.modules():
        if hasattr(module, "attn_logit_softcapping"):
            module.attn_logit_softcapping = 0.5
    for backend in ("reference", "auto"):
        with apply(model, selector=random_selector(model), budget=100, dense_layers=(), backend=backend) as fasa:
            _, sparse = greedy_logits(model, ids, steps=3)
        assert fasa.stats.sparse_calls == 2 * 2
        assert torch.allclose(eager, sparse, atol=1e-5), backend


# ---------------------------------------------------------------- FASA-M
@pytest.mark.parametrize("pooled", [False, True], ids=["per-head", "pooled"])
def test_fasa_m_gives_reference_tokens_and_keeps_only_labels_resident(pooled):
    from leanlm.fasa.offload import FasaMCache, OffloadedLayer

    model = tiny_llama(seed=3)
    ids = torch.randint(1, 128, (1, 90), generator=torch.Generator().manual_seed(1))
    sel = random_selector(model)
    sel.pooled = pooled
    with apply(model, selector=sel, budget=6, backend="reference"):
        seq_ref, logits_ref = greedy_logits(model, ids, steps=6)
    with apply(model, selector=sel, budget=6, offload=True, window=4) as fasa:
        cache = fasa.new_cache(model.config)
        assert isinstance(cache, FasaMCache) and isinstance(cache.layers[1], OffloadedLayer)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                                 do_sample=False, pad_token_id=0, past_key_values=cache,
                                 return_dict_in_generate=True, output_logits=True)
    assert fasa.stats.fast_calls == 5
    assert torch.equal(out.sequences, seq_ref)
    assert torch.allclose(torch.stack(out.logits), logits_ref, atol=1e-5, rtol=1e-5)
    layer = cache.layers[1]
    assert layer._label.device.type == "cpu" and layer.tier_bytes() == 2 * layer._keys.numel() * 4
    assert layer.resident_bytes() < layer.tier_bytes() / 2  # label (<= 2 dims of 16 per head) + window


def test_fasa_m_window_rows_equal_tier_rows():
    from leanlm.fasa.offload import OffloadedLayer

    gen = torch.Generator().manual_seed(0)
    spec = LabelSpec.from_head_dims(torch.tensor([[0, 8], [1, 9], [2, 10], [3, 11]]), 2)
    layer = OffloadedLayer(spec, capacity=16, window=5)
    keys, values = torch.randn(1, 2, 40, 16, generator=gen), torch.randn(1, 2, 40, 16, generator=gen)
    layer.update(keys[:, :, :30], values[:, :, :30])
    for i in range(30, 40):  # decode-style appends, growing past the initial capacity
        layer.update(keys[:, :, i : i + 1], values[:, :, i : i + 1])
    idx = torch.tensor([[[0, 39, 35, 36], [38, 1, 2, 37]]])
    layer._keys[:, :, 35:40] = 0.0  # the tier's copy of the window rows is not read: the resident ring is
    got_k, got_v = layer.gather(idx, 1)
    ref_k = torch.stack([keys[0, h, idx[0, h]] for h in range(2)])[None]
    ref_v = torch.stack([values[0, h, idx[0, h]] for h in range(2)])[None]
    assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v)
    assert torch.equal(layer.label(), keys.gather(-1, spec.dims[None, :, None, :].expand(1, 2, 40, 4)))
