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


def _param_names(model: ElasticMoeForCausalLM) -> list[str]:
    """Parameter names in the optimizer's order (train(): decay group, then no-decay group)."""
    decay = [n for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    return decay + [n for n, p in model.named_parameters() if n not in decay]


def _moments(state: dict, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    return {names[i]: {k: v for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")} for i, s in state["optimizer"]["state"].items()}


def test_masked_experts_router_rows_and_skipped_layers_stay_bit_identical(corpora, tmp_path):
    """A step's removed experts (weights, router rows, router bias) and skipped layers keep their weights and
    AdamW moments bit-for-bit, including weight decay; everything the step ran does change."""
    from leanlm.elastic.elastic import ElasticSampler
    from leanlm.elastic.train import build_model

    cfg = tiny_cfg(steps=3, checkpoint_every=1, weight_decay=0.1, elastic=ElasticConfig(p_full_depth=0.0, p_full_width=0.0))
    init = build_model(cfg)
    names = _param_names(init)
    sampler = ElasticSampler(cfg.elastic, 3, 6, 2, [0, 1, 2], cfg.seed)
    before = {"model": init.state_dict(), "optimizer": {"state": {}}}
    checked_rows = 0
    for step in range(3):
        train(cfg, out_dir=tmp_path, corpora=corpora, stop_after=1)
        after = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
        subnet = sampler.sample(step)
        assert subnet.layers is not None and subnet.experts is not None
        m0, m1 = before["model"], after["model"]
        mom0, mom1 = _moments(before, names), _moments(after, names)
        for i in range(3):
            prefix = f"model.layers.{i}."
            if i not in subnet.layers:  # skipped layer: every weight and moment unchanged
                for n in (n for n in m1 if n.startswith(prefix)):
                    assert torch.equal(m0[n], m1[n]), (step, n)
                    for key, value in mom1.get(n, {}).items():
                        assert torch.equal(mom0.get(n, {}).get(key, torch.zeros_like(value)), value), (step, n, key)
                continue
            kept = set(subnet.experts_for(i))
            masked = torch.tensor([e for e in range(6) if e not in kept])
            active = torch.tensor(sorted(kept))
            for short in ("mlp.w_gate", "mlp.w_up", "mlp.w_down", "mlp.router.weight", "mlp.router_bias"):
                n = prefix + short
                assert torch.equal(m0[n][masked], m1[n][masked]), (step, n)
                for key, value in mom1.get(n, {}).items():
                    old = mom0.get(n, {}).get(key, torch.zeros_like(value))
                    assert torch.equal(old[masked], value[masked]), (step, n, key)
                checked_rows += len(masked)
            assert not torch.equal(m0[prefix + "mlp.w_gate"][active], m1[prefix + "mlp.w_gate"][active])
            assert not torch.equal(m0[prefix + "mlp.router.weight"][active], m1[prefix + "mlp.router.weight"][active])
        before = after
    assert checked_rows > 0


def test_plain_adamw_would_move_masked_experts():
    """The defect the masked step fixes: a zero-gradient slice of a stacked parameter still moves under AdamW."""
    from leanlm.elastic.frozen import keep_frozen

    w = torch.nn.Parameter(torch.ones(4, 3))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.1)
    for masked_step in (False, True):
        w.grad = torch.ones(4, 3)
        if masked_step:
            w.grad[2:] = 0
            rows = torch.tensor([2, 3])
            saved = w.detach()[2:].clone()
            with keep_frozen(opt, [(w, rows)]):
                opt.step()
            assert torch.equal(w.detach()[2:], saved)
            plain = torch.optim.AdamW([torch.nn.Parameter(torch.ones(4, 3))], lr=0.1, weight_decay=0.1)
            p = plain.param_groups[0]["params"][0]
            for _ in range(2):
                p.grad = torch.ones(4, 3)
                p.grad[2:] = 0
                plain.step()
            assert not torch.equal(p.detach()[2:], torch.ones(2, 3))  # moments and decay move it
        else:
            opt.step()


def test_dispatch_backward_is_bit_deterministic_with_two_threads():
    """The sorted dispatch's backward used to scatter-add (``index_put_(accumulate=True)``), whose result depends on
    thread timing; now it only gathers. Repeated forward+backward must give identical gradients."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = ElasticMoeConfig(vocab_size=300, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_experts=8,
                           num_experts_per_tok=4, moe_intermediate_size=32, moe_dispatch="sorted")
    block = ElasticMoeForCausalLM(cfg).moe_blocks()[0]
    x0 = torch.randn(768, 64)
    grads = set()
    for _ in range(8):
        x = x0.clone().requires_grad_(True)
        block.zero_grad(set_to_none=True)
        (block(x) ** 2).sum().backward()
        grads.add((x.grad.numpy().tobytes(), block.w_gate.grad.numpy().tobytes(), block.router.weight.grad.numpy().tobytes()))
    assert len(grads) == 1


def test_two_thread_runs_are_identical_and_resume_after_kill_matches(tmp_path):
    """Two runs with 2 torch threads give identical losses; a run killed (SIGKILL) after a checkpoint and resumed
    gives exactly the uninterrupted run's losses and weights."""
    import signal
    import subprocess
    import sys
    import time

    text = tmp_path / "text.txt"
    text.write_text("Elastic training samples a sub-network at every step. The quick brown fox. " * 200, encoding="utf-8")
    two = tiny_cfg(steps=6, batch_size=8, seq_len=32, threads=2, text_file=str(text))
    a, b = train(two), train(two)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.final_eval == b.final_eval
    # kill and resume (1 thread: 2-thread runs crawl on a loaded CPU; resumption does not depend on threads)
    cfg = tiny_cfg(steps=6, batch_size=8, seq_len=32, threads=1, checkpoint_every=1, text_file=str(text))
    a = train(cfg)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    code = ("import json, sys, time; from leanlm.elastic.train import TrainConfig, train, log; import leanlm.elastic.train as t; "
            "orig = t.atomic_write\n"
            "def slow(*a, **k):\n    time.sleep(0.3); return orig(*a, **k)\n"
            "t.atomic_write = slow; train(TrainConfig.from_dict(json.load(open(sys.argv[1]))), out_dir=sys.argv[2])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(cfg_path), str(tmp_path / "killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=False)["step"] >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 3 <= killed_at < cfg.steps
    resumed = train(cfg, out_dir=tmp_path / "killed")
    assert resumed.resumed_from == killed_at
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in a.history]
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
