"""Training-side tests: sampler rates, aux-free balancing, seeded reproducibility, resume, data-parallel, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from leanlm.elastic import ElasticConfig, ElasticMoeConfig, ElasticMoeForCausalLM, ElasticSampler, even_layers
from leanlm.elastic.balance import BiasSchedule, max_violation, normalized_entropy, update_router_biases
from leanlm.elastic.data import BOS, FIRST_CODE, GROUPED, TEXT, GroupedModality, MixedCorpus, decode_text
from leanlm.elastic.subnet import SubNet
from leanlm.elastic.train import TrainConfig, active_params, lr_at, train, train_distributed

TINY = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "num_experts": 6, "num_experts_per_tok": 2,
        "moe_intermediate_size": 16}


def tiny_cfg(**over) -> TrainConfig:
    base = dict(model=dict(TINY), steps=4, batch_size=4, seq_len=24, codebook=8, eval_batches=1, eval_batch_size=4,
                log_every=1, seed=3, elastic=ElasticConfig(p_full_depth=0.4, p_full_width=0.4, p_default_k=0.4))
    base.update(over)
    return TrainConfig(**base)


def test_sampler_rates_match_the_report_and_draws_are_valid():
    sampler = ElasticSampler(ElasticConfig(), num_layers=8, num_experts=16, top_k=4, moe_layers=list(range(8)), seed=0)
    n = 4000
    draws = [sampler.sample(step) for step in range(n)]
    full_depth = sum(d.layers is None for d in draws) / n
    full_width = sum(d.experts is None for d in draws) / n
    default_k = sum(d.top_k is None for d in draws) / n
    assert abs(full_depth - 0.75) < 0.03 and abs(full_width - 0.8) < 0.03 and abs(default_k - 0.8) < 0.03
    for d in draws:
        if d.layers is not None:
            assert len(d.layers) in (4, 6) and list(d.layers) == sorted(set(d.layers))
        if d.top_k is not None:
            assert 1 <= d.top_k <= 3
        if d.experts is not None:
            assert {len(kept) for _, kept in d.experts} <= {8, 12}
        d.validate(8, 16, list(range(8)), 4)
    assert sampler.sample(123) == draws[123]  # deterministic per (seed, step)
    assert ElasticSampler(ElasticConfig(enabled=False), 8, 16, 4, list(range(8))).sample(5) == SubNet()
    with pytest.raises(ValueError, match="p_full_depth"):
        ElasticConfig(p_full_depth=1.5)


def test_even_layers_keeps_first_and_last():
    assert even_layers(8, 4) == [0, 2, 5, 7]
    assert even_layers(4, 2) == [0, 3]
    assert even_layers(4, 3) == [0, 2, 3] or even_layers(4, 3) == [0, 1, 3]
    assert even_layers(5, 5) == [0, 1, 2, 3, 4]


def test_bias_update_has_the_right_sign_and_balances_skewed_load():
    torch.manual_seed(0)
    cfg = ElasticMoeConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_experts=8,
                           num_experts_per_tok=2, moe_intermediate_size=8)
    model = ElasticMoeForCausalLM(cfg).eval()
    block = model.moe_blocks()[0]
    with torch.no_grad():  # a router skewed towards experts 0 and 1
        block.router.weight.normal_(0, 0.3)
        block.router.weight[:, 0] += 1.0
        block.router.weight[0, 0] += 1.5
        block.router.weight[1, 0] += 1.0
    x = torch.randn(512, 32)
    x[:, 0] += 1.5
    block(x)
    counts = block.last_counts.clone()
    before = max_violation(counts)
    deltas = update_router_biases(model, {0: counts}, rate=0.01)
    mean = counts.double().mean()
    assert torch.equal(torch.sign(deltas[0]), torch.sign(mean - counts.double()).float())
    schedule = BiasSchedule(rate=0.01, slowdown=10, slowdown_at_step=150)
    violations = []
    for step in range(1, 300):
        block(x)
        violations.append(max_violation(block.last_counts))
        update_router_biases(model, {0: block.last_counts.clone()}, rate=schedule.rate_at(step))
    fast, slow = max(violations[75:149]), max(violations[200:])
    assert before > 1.0 and fast < before / 2 and slow < fast / 2  # balances; the 10x slow-down damps oscillation
    assert normalized_entropy(block.last_counts) > 0.99 > normalized_entropy(counts) + 0.05
    # experts absent from the sub-network are not touched and do not enter the mean
    block.router_bias.zero_()
    mask = torch.tensor([True] * 4 + [False] * 4)
    d = update_router_biases(model, {0: torch.tensor([10.0, 0, 0, 2, 0, 0, 0, 0])}, 0.1, {0: mask})[0]
    assert d.tolist() == pytest.approx([-0.1, 0.1, 0.1, 0.1, 0, 0, 0, 0])  # mean over present experts = 3
    schedule = BiasSchedule(rate=1e-3, slowdown=10, slowdown_at_step=50)
    assert schedule.rate_at(49) == 1e-3 and schedule.rate_at(50) == pytest.approx(1e-4)


def test_grouped_modality_and_corpus_are_deterministic():
    modality = GroupedModality(codebook=8)
    seq = modality.sequence(21, __import__("numpy").random.default_rng(0))
    assert seq[0] == BOS and len(seq) == 21
    codes = seq[2:]
    assert all(FIRST_CODE <= c < FIRST_CODE + 8 for c in codes[0::2]) and all(FIRST_CODE + 8 <= c < FIRST_CODE + 16 for c in codes[1::2])
    corpus = MixedCorpus("hello world, " * 50, 16, 0.5, modality)
    a, ka = corpus.batch(1, 7, 8)
    b, kb = corpus.batch(1, 7, 8)
    assert torch.equal(a, b) and torch.equal(ka, kb) and set(ka.tolist()) == {TEXT, GROUPED}
    assert "hello" in decode_text(a[ka == TEXT][0].tolist()) or "world" in decode_text(a[ka == TEXT][0].tolist())
    with pytest.raises(ValueError, match="fewer than seq_len"):
        MixedCorpus("short", 16)


def test_wsd_schedule_and_active_params():
    cfg = tiny_cfg(steps=100, lr=1.0, warmup_frac=0.1, decay_frac=0.2, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 50) == 1.0 and lr_at(cfg, 80) == 1.0 and lr_at(cfg, 99) == pytest.approx(1 - 0.9 * 19 / 20)
    mcfg = ElasticMoeConfig(**{**TINY, "vocab_size": 275})
    assert active_params(mcfg, None) == mcfg.parameter_counts()["active"]
    small = ElasticMoeConfig(**{**TINY, "vocab_size": 275, "num_hidden_layers": 2, "num_experts_per_tok": 1})
    assert active_params(mcfg, SubNet.make(layers=[0, 2], top_k=1)) == small.parameter_counts()["active"]


def test_seeded_runs_reproduce_and_resume_continues_exactly(corpora, tmp_path):
    cfg = tiny_cfg()
    a = train(cfg, corpora=corpora)
    b = train(cfg, corpora=corpora)
    c = train(tiny_cfg(seed=4), corpora=corpora)
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    assert any(not torch.equal(v, c.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert any(h["subnet"] != SubNet().describe() for h in a.history)  # elastic draws happened
    # an interrupted run resumed from its checkpoint ends identical to the uninterrupted one
    first = train(tiny_cfg(checkpoint_every=1), out_dir=tmp_path, corpora=corpora, stop_after=2)
    assert first.resumed_from == 0 and (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "model").exists()
    second = train(tiny_cfg(checkpoint_every=1), out_dir=tmp_path, corpora=corpora)
    assert second.resumed_from == 2
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert [h["loss"] for h in second.history] == [h["loss"] for h in a.history]
    assert (tmp_path / "model" / "config.json").exists()
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == cfg.steps and json.loads(lines[-1])["step"] == cfg.steps


def test_training_reduces_loss(corpora):
    result = train(tiny_cfg(steps=30, lr=1e-2, elastic=ElasticConfig(enabled=False)), corpora=corpora)
    assert result.history[-1]["lm_loss"] < result.history[0]["lm_loss"] - 1.0


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Elastic training samples a sub-network at every step. The quick brown fox. " * 100, encoding="utf-8")
    cfg = tiny_cfg(steps=3, seed=5, text_file=str(text))
    single = train(cfg)
    path = tmp_path / "ddp.pt"
    train_distributed(cfg, 2, result_path=path)
    ddp = torch.load(path, weights_only=False)
    assert [h["subnet"] for h in ddp["history"]] == [h["subnet"] for h in single.history]
    assert any(h["subnet"]["layers"] != "all" for h in single.history)  # a skipped layer is exercised
    assert [h["loss"] for h in ddp["history"]] == pytest.approx([h["loss"] for h in single.history], abs=1e-5)
    for key, value in single.model.state_dict().items():
        # Adam normalises tiny router gradients, so summation-order rounding shows up at ~1e-5
        torch.testing.assert_close(ddp["state"][key], value, rtol=1e-4, atol=5e-5, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_matches_cpu_loss_at_first_step(corpora):
    cpu = train(tiny_cfg(steps=1), corpora=corpora)
    gpu = train(tiny_cfg(steps=1, device="cuda"), corpora=corpora)
    assert gpu.history[0]["loss"] == pytest.approx(cpu.history[0]["loss"], rel=1e-4)
    assert gpu.final_eval["loss"] == pytest.approx(cpu.final_eval["loss"], rel=1e-3)


def test_sandwich_extra_also_trains_the_smallest_subnetwork(corpora):
    from leanlm.elastic.train import smallest_subnet

    cfg = tiny_cfg(steps=2, sandwich=True)
    small = smallest_subnet(cfg.model_config(), cfg.elastic)
    assert small.layers == (0, 2) and small.top_k == 1 and all(len(kept) == 3 for _, kept in small.experts)
    plain = train(tiny_cfg(steps=2), corpora=corpora)
    sandwich = train(cfg, corpora=corpora)
    assert sandwich.tokens == 2 * plain.tokens and sandwich.train_flops > plain.train_flops
    assert any(not torch.equal(v, plain.model.state_dict()[k]) for k, v in sandwich.model.state_dict().items())
