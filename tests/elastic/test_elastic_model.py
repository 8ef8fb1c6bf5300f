"""Exactness tests of the elastic MoE model: dispatch vs brute force, masks, extraction, cache, save/load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import leanlm.elastic  # noqa: F401  (registers the Auto classes)
from leanlm.elastic import ElasticMoeConfig, ElasticMoeForCausalLM, SubNet, extract, plan_subnet
from leanlm.elastic.model import ElasticMoe


def tiny_model_kwargs(**over):
    kwargs = dict(
        vocab_size=259 + 16, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        num_experts=8, num_experts_per_tok=3, moe_intermediate_size=16, num_shared_experts=1,
        first_k_dense_layers=1, dense_intermediate_size=48,
    )
    kwargs.update(over)
    return kwargs


def make_model(seed: int = 0, **over) -> ElasticMoeForCausalLM:
    torch.manual_seed(seed)
    model = ElasticMoeForCausalLM(ElasticMoeConfig(**tiny_model_kwargs(**over))).eval()
    with torch.no_grad():
        for block in model.moe_blocks().values():  # non-trivial biases so that selection != argmax of probs
            block.router_bias.normal_(0.0, 0.05)
            block.expert_usage.copy_(torch.rand(block.num_experts) * 100)
    return model


def ids(batch: int = 2, length: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 259 + 16, (batch, length), generator=torch.Generator().manual_seed(seed))


def moe_block(seed: int = 0, k: int = 3, dispatch: str = "sorted") -> ElasticMoe:
    torch.manual_seed(seed)
    cfg = ElasticMoeConfig(**tiny_model_kwargs(num_experts_per_tok=k, moe_dispatch=dispatch))
    block = ElasticMoe(cfg)
    for p in (block.w_gate, block.w_up, block.w_down, block.router.weight):
        torch.nn.init.normal_(p, 0.0, 0.3)
    block.router_bias.normal_(0.0, 0.05)
    return block


def test_topk_equal_to_E_is_the_dense_mixture():
    block = moe_block(k=8)
    x = torch.randn(3, 7, 32)
    choice = block.route(x.reshape(-1, 32), None, 8)
    # with every expert chosen the renormalised weights are exactly the softmax probabilities
    torch.testing.assert_close(torch.zeros_like(choice.probs).scatter(1, choice.indices, choice.weights), choice.probs)
    dense = sum(choice.probs[:, e : e + 1] * block.expert_ffn(e, x.reshape(-1, 32)) for e in range(8)) + block.shared(x.reshape(-1, 32))
    torch.testing.assert_close(block(x), dense.reshape(x.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("dispatch", ["sorted", "bmm", "gather", "grouped"])
def test_sorted_dispatch_equals_brute_force(k, dispatch):
    block = moe_block(k=k, dispatch=dispatch)
    x = torch.randn(4, 9, 32)
    mask = torch.tensor([True, False, True, True, True, False, True, True])
    # float rounding only (the summation order differs between paths): |x| ~ 1 here
    torch.testing.assert_close(block(x, mask, k), block.dense_reference(x, mask, k), rtol=1e-5, atol=5e-6)
    torch.testing.assert_close(block(x), block.dense_reference(x), rtol=1e-5, atol=5e-6)


def test_router_weights_are_renormalised_unbiased_probs_and_bias_only_selects():
    block = moe_block(k=2)
    x = torch.randn(50, 32)
    block.router_bias.zero_()
    block.router_bias[5] = 10.0  # forces expert 5 into every token's top-2 ...
    choice = block.route(x, None, 2)
    assert bool((choice.indices == 5).any(-1).all())
    probs = torch.softmax(x.float() @ block.router.weight.float().T, -1)
    chosen = probs.gather(1, choice.indices)
    # ... but the weights are the *unbiased* probabilities of the chosen experts, renormalised
    torch.testing.assert_close(choice.weights, chosen / chosen.sum(-1, keepdim=True))
    torch.testing.assert_close(choice.weights.sum(-1), torch.ones(50))


def test_masked_experts_receive_no_tokens_and_no_gradient():
    block = moe_block(k=3)
    block.router_bias[:] = 0.0
    block.router_bias[[1, 4]] = 100.0  # even a huge bias cannot select a removed expert
    mask = torch.ones(8, dtype=torch.bool)
    mask[[1, 4, 6]] = False
    x = torch.randn(64, 32, requires_grad=True)
    choice = block.route(x, mask, 3)
    assert not torch.isin(choice.indices, torch.tensor([1, 4, 6])).any()
    out = block(x, mask, 3)
    assert block.last_counts[[1, 4, 6]].tolist() == [0, 0, 0]
    assert int(block.last_counts.sum()) == 64 * 3  # no token dropped
    out.sum().backward()
    for e in (1, 4, 6):
        assert float(block.w_gate.grad[e].abs().sum()) == 0.0
        assert float(block.w_down.grad[e].abs().sum()) == 0.0
    assert float(block.w_gate.grad[[0, 2, 3]].abs().sum()) > 0


SUBNETS = [
    SubNet.make(layers=[0, 2, 3]),
    SubNet.make(experts={1: [0, 2, 5, 7], 2: [1, 2, 3, 4], 3: [0, 1, 6, 7]}),
    SubNet.make(top_k=1),
    SubNet.make(layers=[1, 3], experts={1: [0, 3, 5], 3: [2, 4, 6]}, top_k=2),
    SubNet.make(layers=[0, 3], experts={3: [0, 1, 2, 3, 4]}, top_k=3),
]


@pytest.mark.parametrize("subnet", SUBNETS, ids=lambda s: str(s.describe()))
def test_extracted_model_logits_equal_elastic_model_under_same_subnet(subnet, tmp_path):
    model = make_model()
    x = ids()
    expected = model(x, subnet=subnet).logits
    small = extract(model, subnet)
    n_big = sum(p.numel() for p in model.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    if not subnet.is_full(4, 8, 3) and (subnet.layers is not None or subnet.experts is not None):
        assert n_small < n_big
    torch.testing.assert_close(small(x).logits, expected, rtol=0, atol=1e-6)
    # and after a save/load round trip through the Auto classes
    small.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is ElasticMoeForCausalLM
    assert loaded.config.num_hidden_layers == small.config.num_hidden_layers
    torch.testing.assert_close(loaded(x).logits, expected, rtol=0, atol=1e-6)


def test_extraction_records_provenance_and_composes():
    model = make_model()
    first = SubNet.make(layers=[0, 1, 3], experts={1: [1, 2, 4, 5, 7], 3: [0, 2, 3, 5, 6]})
    small = extract(model, first)
    assert small.config.source_layers == [0, 1, 3]
    assert small.config.source_experts == [[1, 2, 4, 5, 7], [0, 2, 3, 5, 6]]
    assert small.config.first_k_dense_layers == 1 and small.config.num_experts == 5
    second = SubNet.make(layers=[0, 2], experts={2: [0, 4]}, top_k=1)
    tiny = extract(small, second)
    assert tiny.config.source_layers == [0, 3] and tiny.config.source_experts == [[0, 6]]
    direct = SubNet.make(layers=[0, 3], experts={3: [0, 6]}, top_k=1)
    torch.testing.assert_close(tiny(ids()).logits, model(ids(), subnet=direct).logits, rtol=0, atol=1e-6)


def test_plan_subnet_uses_even_layers_and_most_used_experts():
    model = make_model()
    subnet = plan_subnet(model, depth=2, experts=4, top_k=2)
    assert subnet.layers == (0, 3)
    usage = model.moe_blocks()[3].expert_usage
    assert subnet.experts_for(3) == tuple(sorted(torch.argsort(usage, descending=True)[:4].tolist()))
    with pytest.raises(ValueError, match="top_k=5 is larger than the 4 experts"):
        plan_subnet(model, experts=4, top_k=5)
    with pytest.raises(ValueError, match=r"SubNet.layers has indices \[7\]"):
        model(ids(), subnet=SubNet.make(layers=[0, 7]))
    with pytest.raises(ValueError, match=r"SubNet.experts\[2\] keeps 2 experts < top_k=3"):
        model(ids(), subnet=SubNet.make(experts={2: [0, 1]}))
    with pytest.raises(ValueError, match="same number of experts"):
        extract(model, SubNet.make(experts={1: [0, 1, 2], 2: [0, 1, 2, 3]}))


def test_parameter_counts_match_the_modules():
    model = make_model()
    assert model.config.parameter_counts()["total"] == sum(p.numel() for p in model.parameters())
    small = extract(model, SubNet.make(layers=[0, 2], experts={2: [0, 1, 2, 3]}))
    assert small.config.parameter_counts()["total"] == sum(p.numel() for p in small.parameters())


def test_save_load_round_trip_through_auto_classes_keeps_router_state(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "leanlm_elastic_moe"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for i, block in model.moe_blocks().items():
        torch.testing.assert_close(loaded.moe_blocks()[i].router_bias, block.router_bias, rtol=0, atol=0)
        torch.testing.assert_close(loaded.moe_blocks()[i].expert_usage, block.expert_usage, rtol=0, atol=0)
    x = ids()
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


def test_kv_cache_decoding_equals_full_recompute_and_generate_works():
    model = make_model(num_key_value_heads=2)
    x = ids(1, 12)
    full = model(x).logits
    from transformers import DynamicCache

    cache = DynamicCache()
    first = model(x[:, :5], past_key_values=cache, use_cache=True).logits
    chunk = model(x[:, 5:9], past_key_values=cache, use_cache=True).logits  # a multi-token chunk after the cache
    steps = [model(x[:, i : i + 1], past_key_values=cache, use_cache=True).logits for i in range(9, 12)]
    torch.testing.assert_close(torch.cat([first, chunk, *steps], 1), full, rtol=1e-5, atol=1e-5)
    out = model.generate(x[:, :6], max_new_tokens=6, do_sample=False)
    manual = x[:, :6]
    for _ in range(6):
        manual = torch.cat([manual, model(manual).logits[:, -1:].argmax(-1)], 1)
    assert out.tolist() == manual.tolist()


def test_loss_is_next_token_plus_weighted_mtp_brute_force():
    model = make_model(mtp_loss_weight=0.5)
    x = ids(2, 10)
    out = model(x, labels=x)
    lm = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), x[:, 1:].reshape(-1))
    hidden, _ = model.model(x, torch.arange(10).expand(2, 10))
    mtp_logits = []
    for t in range(8):  # position t: h_t and the embedding of x_{t+1} predict x_{t+2}
        h = model.mtp(hidden[:, t : t + 1], model.model.embed_tokens(x[:, t + 1 : t + 2]))
        mtp_logits.append(model.lm_head(h))
    mtp = torch.nn.functional.cross_entropy(torch.cat(mtp_logits, 1).reshape(-1, out.logits.shape[-1]), x[:, 2:].reshape(-1))
    torch.testing.assert_close(out.lm_loss, lm)
    torch.testing.assert_close(out.mtp_loss, mtp)
    torch.testing.assert_close(out.loss, lm + 0.5 * mtp)


def test_padding_and_bad_config_give_clear_errors():
    model = make_model()
    with pytest.raises(ValueError, match="does not support padding"):
        model(ids(1, 5), attention_mask=torch.tensor([[0, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="num_experts_per_tok must be in"):
        ElasticMoeConfig(num_experts=4, num_experts_per_tok=5)
    with pytest.raises(ValueError, match="moe_dispatch"):
        ElasticMoeConfig(moe_dispatch="loop")


def test_moe_block_equals_transformers_ernie45_block():
    from leanlm.elastic.peer import to_ernie45_block

    block = moe_block(k=3)
    peer = to_ernie45_block(block, 32)
    x = torch.randn(2, 11, 32)
    torch.testing.assert_close(block(x), peer(x), rtol=1e-5, atol=1e-6)
    block.dispatch = "bmm"
    torch.testing.assert_close(block(x), peer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("batch", "shared"), [(1, 1), (8, 1), (1, 2)])
def test_gather_decode_dispatch_gives_the_sorted_dispatch_logits(batch, shared):
    """Dispatch equality: every decode path -- the fused decode step (fused q/k/v, rolled RoPE, routed and shared
    experts in one gathered chain) with each dispatch, and the unfused step -- gives the logits and the greedy
    tokens of the sorted dispatch through the plain modules, under sub-networks, while decoding with a KV cache
    (``shared=2``: the shared SwiGLU split into two pseudo-experts)."""
    from transformers import DynamicCache

    model = make_model(num_shared_experts=shared)
    prompt = ids(batch, 6)
    for subnet in (None, SubNet(top_k=1), SubNet.make(layers=[0, 2, 3], experts={2: [0, 1, 3, 4, 6], 3: [1, 2, 5, 6, 7]}, top_k=2)):
        runs = {}
        for fused in (False, True):
            for dispatch in ("sorted", "gather", "grouped"):
                for block in model.moe_blocks().values():
                    block.dispatch = dispatch
                model.set_fused_decode(fused)
                cache, tokens, logits = DynamicCache(), prompt, []
                with torch.no_grad():
                    out = model(tokens, past_key_values=cache, use_cache=True, subnet=subnet)
                    for _ in range(5):
                        tokens = out.logits[:, -1:].argmax(-1)
                        logits.append(out.logits[:, -1])
                        out = model(tokens, past_key_values=cache, use_cache=True, subnet=subnet)
                runs[dispatch, fused] = torch.stack(logits)
        reference = runs["sorted", False]
        for key, run in runs.items():
            torch.testing.assert_close(run, reference, rtol=0, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    model.set_fused_decode(True)
    block = next(iter(model.moe_blocks().values()))
    block.dispatch = "auto"
    calls = []
    for name in ("grouped_experts", "gather_experts", "fused_gather_experts", "dispatch_experts"):
        original = getattr(block, name)
        setattr(block, name, lambda *a, _n=name, _f=original: calls.append(_n) or _f(*a))
    with torch.no_grad():
        block(torch.randn(1, 32))  # one token, small experts: gather (fused with the shared expert: no gradients)
        block(torch.randn(64, 32))  # a batch: grouped GEMM
    block(torch.randn(1, 32))  # gradients: the unfused gather
    block(torch.randn(64, 32))  # gradients needed: no grouped GEMM (forward only), sorted
    block.GATHER_MAX_ELEMENTS = 0
    with torch.no_grad():
        block(torch.randn(1, 32))  # large experts: grouped even for one token
    assert calls == ["fused_gather_experts", "grouped_experts", "gather_experts", "dispatch_experts", "grouped_experts"]


def test_fused_decode_step_runs_when_decoding_and_follows_weight_updates():
    """The fused step is what a decoded token (and ``generate``) runs, never training or prefill; its fused weight
    copies are rebuilt after an in-place update (an optimizer step, ``load_state_dict``), so decoding after the
    update gives the unfused step's logits, not stale ones."""
    from transformers import DynamicCache

    from leanlm.elastic.model import Attention, DecoderLayer

    model = make_model()
    hits = []
    original = DecoderLayer.decode
    DecoderLayer.decode = lambda self, *a: hits.append(self.index) or original(self, *a)
    try:
        x = ids(1, 6)
        model.train()
        model(x[:, :1], labels=x[:, :1])  # one token with gradients: plain modules
        model.eval()
        with torch.no_grad():
            cache = DynamicCache()
            model(x, past_key_values=cache, use_cache=True)  # prefill: plain modules
            assert hits == []
            model(x[:, :1], past_key_values=cache, use_cache=True)
            assert hits == [0, 1, 2, 3]
            model.generate(x, max_new_tokens=3, do_sample=False)  # generate passes position_ids: still fused
            assert len(hits) == 4 + 2 * 4
    finally:
        DecoderLayer.decode = original

    def decode_logits(fused: bool) -> torch.Tensor:
        model.set_fused_decode(fused)
        cache = DynamicCache()
        with torch.no_grad():
            model(x, past_key_values=cache, use_cache=True)
            return model(x[:, :1], past_key_values=cache, use_cache=True).logits

    before = decode_logits(True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for block in model.moe_blocks().values():
            block.w_up.mul_(-2.0)
            block.shared.down_proj.weight.add_(0.1)
        for layer in model.model.layers:
            layer.attn.k_proj.weight.mul_(0.5)
    changed = decode_logits(True)
    assert (changed - before).abs().max() > 1e-2
    torch.testing.assert_close(changed, decode_logits(False), rtol=0, atol=1e-5)
    model.load_state_dict(state)
    torch.testing.assert_close(decode_logits(True), before, rtol=0, atol=0)
    assert isinstance(model.model.layers[0].attn, Attention)


def test_rope_cache_equals_direct_computation():
    from leanlm.elastic.model import RopeCache, rope_cos_sin

    cache = RopeCache(16, 10000.0)
    for positions in (torch.arange(5)[None], torch.tensor([[300, 301]]), torch.arange(3, 9).expand(2, 6)):
        cos, sin = cache(positions, torch.float32)
        ref_cos, ref_sin = rope_cos_sin(positions, 16, 10000.0, torch.float32)
        assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    assert cache.cos.shape[0] >= 302


def test_rolled_rope_equals_apply_rope():
    """The decode step's RoPE (cos, signed sin, ``roll``) gives :func:`apply_rope` on the same positions."""
    from leanlm.elastic.model import RopeCache, apply_rope, apply_rope_rolled

    cache = RopeCache(16, 10000.0)
    x = torch.randn(2, 6, 1, 16)
    for start in (0, 7, 400):
        cos, sin = cache(torch.full((2, 1), start), torch.float32)
        ref = apply_rope(x, cos, sin)
        torch.testing.assert_close(apply_rope_rolled(x, *cache.span(start, 1, x.device, torch.float32)), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(apply_rope_rolled(x, *cache.rolled(torch.full((2, 1), start), torch.float32)), ref, rtol=0, atol=1e-6)
