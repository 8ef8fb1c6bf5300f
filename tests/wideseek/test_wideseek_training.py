"""In-process rollouts, SFT and the GRPO trainer on a tiny random-weight Llama with SmolLM2's tokenizer."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from leanlm.wideseek.agents import AgentConfig
from leanlm.wideseek.grpo import sequence_logprobs
from leanlm.wideseek.rollout import TRAJECTORY, TransformersBackend, rollout_group
from leanlm.wideseek.tasks import Task
from leanlm.wideseek.train import TrainConfig, Trainer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a shared CPU thread sync costs minutes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from leanlm.common.models import embedded_cache_path, embedded_cached

    if not embedded_cached():
        pytest.skip("the embedded SmolLM2 tokenizer is not cached yet (run leanlm once with --model embedded)")
    return AutoTokenizer.from_pretrained(str(embedded_cache_path()))


def tiny(tokenizer, seed: int = 0):
    from leanlm.common.models import tiny_llama

    return tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=4096, seed=seed)


class ToyTools:
    def search(self, query: str, count: int) -> str:
        return f"[Doc 1](http://toy/{query}):\n{query}"

    def access(self, url: str, info: str) -> str:
        return f"page {url}"


def test_batched_logprobs_equal_teacher_forced_pass_and_tags(tokenizer):
    model = tiny(tokenizer)
    backend = TransformersBackend(model, tokenizer, max_new_tokens=10, temperature=0.7)
    convs = {(0, "lead"): "List two cities.", (0, "sub-1"): "Find Paris.", (0, "sub-2"): "Find a much longer thing "
             "with many more words in it.", (1, "lead"): "List two cities.", (1, "sub-1"): "x"}

    async def main():
        async def one(traj, agent, text):
            TRAJECTORY.set(traj)
            return await backend.complete([{"role": "system", "content": "s"}, {"role": "user", "content": text}], [],
                                          agent=agent)
        return await asyncio.gather(*(asyncio.ensure_future(one(t, a, x)) for (t, a), x in convs.items()))

    torch.manual_seed(1)
    outs = asyncio.run(main())
    assert backend.batches == [5]  # every waiting agent of both rollouts in one generate call
    tags = sorted((s.traj, s.agent, s.turn) for s in backend.samples)
    assert tags == [(0, 0, 1), (0, 1, 1), (0, 2, 1), (1, 0, 1), (1, 1, 1)]
    lens = {len(s.prompt_ids) for s in backend.samples}
    assert len(lens) >= 3  # left padding was exercised
    teacher = sequence_logprobs(model, backend.samples, temperature=0.7)
    for s, t in zip(backend.samples, teacher, strict=True):
        assert len(s.logprobs) == len(s.completion_ids) > 0
        assert torch.allclose(torch.tensor(s.logprobs), t, atol=1e-4)
    assert all(o.token_ids and o.completion_tokens == len(o.token_ids) for o in outs)


def test_batches_are_cut_by_padding_waste_and_rows_stop_at_their_role_cap(tokenizer):
    from leanlm.wideseek.rollout import _Request

    backend = TransformersBackend(tiny(tokenizer), tokenizer, max_new_tokens=12, max_pad_waste=0.25,
                                  role_max_new_tokens={"sub": 3, "lead": 12})
    reqs = [_Request([1] * n, "sub-1", 0, None) for n in (100, 10, 90, 80, 12, 60)]
    first, rest = backend.cut(reqs)
    # longest first: 100, 90, 80, 60 pad to 400 <= 1.25 * 330; adding 12 would pad to 500 > 1.25 * 342
    assert [len(r.ids) for r in first] == [100, 90, 80, 60] and [len(r.ids) for r in rest] == [10, 12]
    assert [len(r.ids) for r in backend.cut(rest)[0]] == [12, 10]  # 24 <= 1.25 * 22
    assert [len(r.ids) for r in backend.cut([reqs[0], reqs[1]])[0]] == [100]  # 200 > 1.25 * 110
    assert backend.cut(reqs[:1]) == (reqs[:1], [])
    assert backend.cap("sub-7") == 3 and backend.cap("lead") == 12 and backend.cap("single") == 12

    async def main():
        async def one(agent, text):
            return await backend.complete([{"role": "user", "content": text}], [], agent=agent)
        return await asyncio.gather(one("lead", "a"), one("sub-1", "b"), one("sub-2", "c"))

    torch.manual_seed(0)
    backend.eos_ids = {-1}  # a random model may stop at once: make every row run to its cap
    backend.max_pad_waste = 10.0
    lead, sub1, sub2 = asyncio.run(main())
    assert backend.batches == [3]
    assert len(lead.token_ids) == 12 and len(sub1.token_ids) == len(sub2.token_ids) == 3
    assert sub1.finish_reason == "length" and len(sub1.logprobs) == 3
    st = backend.stats
    assert st["calls"] == 3 and st["generated_tokens"] == 18 and st["decoded_tokens"] == 36
    assert st["padded_prompt_tokens"] >= st["prompt_tokens"] > 0


def test_one_epoch_update_reuses_its_own_logprobs_as_old(tokenizer, tmp_path):
    """With one PPO epoch, skipping the separate old-log-prob pass changes neither the loss nor the gradient."""
    import copy

    from leanlm.wideseek.train import prepare_batch, update

    tr = _trainer(tokenizer, tmp_path)
    rolls = tr.rollouts(tr.tasks[:1])
    results = []
    for recompute in (True, False):
        cfg = TrainConfig(out=str(tmp_path), group_size=3, max_new_tokens=6, kl_beta=0.1, ppo_epochs=1, lr=1e-2,
                          recompute_old_logprobs=recompute)
        batch = prepare_batch(rolls, tr.tasks[:1], _reward, cfg)
        model = copy.deepcopy(tr.model)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        loss, sums, norm = update(model, tr.ref_logprobs, opt, batch, cfg)
        results.append((loss, sums, norm, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (l1, s1, n1, g1), (l2, s2, n2, g2) = results
    assert batch.samples and l1 == pytest.approx(l2, rel=1e-6, abs=1e-9) and n1 == pytest.approx(n2, rel=1e-6)
    assert s1 == pytest.approx(s2, rel=1e-6, abs=1e-9)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(g1, g2, strict=True))


def test_packed_turns_give_the_per_turn_logprobs_loss_and_gradient(tokenizer):
    import copy

    from leanlm.wideseek.grpo import TurnSample, chain_logprobs, turn_chains, turn_logprobs
    from leanlm.wideseek.train import Batch, update

    g = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(10, 5000, (n,), generator=g).tolist()

    p1, c1 = ids(20), ids(5)
    p2, c2 = p1 + c1 + ids(7), ids(4)
    p3, c3 = p2 + c2 + ids(3), ids(6)
    p4 = list(p3)
    p4[len(p2) + 1] += 1  # this turn's prompt re-rendered an earlier reply differently: breaks the chain
    c4 = ids(3)
    samples = [TurnSample(traj=0, agent=1, turn=t, prompt_ids=p, completion_ids=c, logprobs=[0.0] * len(c))
               for t, (p, c) in enumerate([(p1, c1), (p3, c3), (p2, c2), (p4, c4)], start=1)]
    samples[1].turn, samples[2].turn = 3, 2  # listed out of turn order on purpose
    samples.append(TurnSample(traj=1, agent=0, turn=1, prompt_ids=p1, completion_ids=c2, logprobs=[0.0] * 4))
    assert sorted(map(sorted, turn_chains(samples))) == [[0, 1, 2], [3], [4]]
    model = tiny(tokenizer)
    with torch.no_grad():
        packed = chain_logprobs(model, [samples[0], samples[2], samples[1]])
        single = [turn_logprobs(model, s) for s in (samples[0], samples[2], samples[1])]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(packed, single, strict=True))
    batch = Batch(samples, [0.5, -1.0, 0.25, 1.0, -0.5], [1 / len(s.completion_ids) / 3 for s in samples], {})
    ref = tiny(tokenizer, seed=1)
    results = []
    for pack in (False, True):
        cfg = TrainConfig(out="unused", kl_beta=0.1, ppo_epochs=2, pack_turns=pack)
        m = copy.deepcopy(model)
        loss, sums, _ = update(m, lambda ss, _p=pack: sequence_logprobs(ref, ss, pack=_p), torch.optim.SGD(
            m.parameters(), lr=0.0), batch, cfg)
        results.append((loss, sums, [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    (l1, s1, g1), (l2, s2, g2) = results
    assert l1 == pytest.approx(l2, rel=1e-5) and s1 == pytest.approx(s2, rel=1e-5, abs=1e-8)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g1, g2, strict=True))


def test_rollout_group_indexes_trajectories(tokenizer):
    backend = TransformersBackend(tiny(tokenizer), tokenizer, max_new_tokens=6)
    rolls = rollout_group(backend, ToyTools(), AgentConfig(max_lead_turns=1, few_shot=False), ["a", "b"],
                          ["table", "table"], g=3)
    assert [(r.traj, r.group) for r in rolls] == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]
    assert all(len(r.samples) == r.result.lead.turns == 1 and r.samples[0].group == r.group for r in rolls)


def _reward(task, result):
    # a deterministic reward with spread across rollouts (random tiny models never write a table)
    return (len(result.answer) % 7) / 7, True, 0.0


def _trainer(tokenizer, out, **kw):
    cfg = TrainConfig(out=str(out), steps=2, group_size=3, max_new_tokens=6, lr=1e-2, max_lead_turns=1,
                      checkpoint_every=1, kl_beta=0.1, ppo_epochs=2, **kw)
    tasks = [Task("t1", "List two cities."), Task("t2", "Name the elements of period 1.")]
    return Trainer(cfg, model=tiny(tokenizer), tokenizer=tokenizer, tools=ToyTools(), tasks=tasks, reward_fn=_reward)


def test_resume_after_kill_gives_same_next_step_loss(tokenizer, tmp_path):
    straight = _trainer(tokenizer, tmp_path / "a").train(progress=False)
    assert straight[1]["kl"] > 0 and straight[1]["trained_turns"] == 3
    first = _trainer(tokenizer, tmp_path / "b")
    first.train(steps=1, progress=False)  # then "killed": a new process starts from the checkpoint
    again = _trainer(tokenizer, tmp_path / "b")
    assert again.resume() and again.step == 1
    resumed = again.train(progress=False)
    assert resumed[0]["step"] == 2
    assert resumed[0]["loss"] == pytest.approx(straight[1]["loss"], rel=1e-5, abs=1e-7)
    assert resumed[0]["reward"] == straight[1]["reward"]
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert (tmp_path / "b" / "curves.png").stat().st_size > 1000
    assert json.loads((tmp_path / "b" / "curves.json").read_text())["step"] == [1, 2]


def test_resume_without_checkpoint_sets_a_lost_runs_metrics_aside(tokenizer, tmp_path):
    # a run whose checkpoints were lost (e.g. a fresh checkout: they are not committed) but whose metric lines
    # were: the restarted run must not append its steps after the stale ones
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    fresh = _trainer(tokenizer, tmp_path / "c")
    assert not fresh.resume() and fresh.step == 0
    fresh.train(steps=1, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1] and "loss" in lines[0]
    assert (tmp_path / "c" / "metrics.lost-1.jsonl").read_text().count("step") == 3  # the old record is kept


def test_lora_option_trains_only_the_adapter(tokenizer, tmp_path):
    from leanlm.wideseek.train import add_lora

    model = add_lora(tiny(tokenizer), 4, 8)
    cfg = TrainConfig(out=str(tmp_path), steps=1, group_size=2, max_new_tokens=6, lr=1e-2, max_lead_turns=1, lora=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tr = Trainer(cfg, model=model, tokenizer=tokenizer, tools=ToyTools(), tasks=[Task("t", "q")], reward_fn=_reward)
    tr.train(progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora_" in n for n in changed)


def test_config_file_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('steps = 3\ngroup_sise = 4\n')
    with pytest.raises(ValueError, match=r"c\.toml: unknown setting\(s\) group_sise"):
        TrainConfig.from_file(bad)
    bad.write_text('train_roles = "critic"\n')
    with pytest.raises(ValueError, match=r"c\.toml: train_roles"):
        TrainConfig.from_file(bad)
    good = tmp_path / "c.json"
    good.write_text('{"steps": 3, "lora": true}')
    assert TrainConfig.from_file(good, seed=4) == TrainConfig(steps=3, lora=True, seed=4)


def test_sft_on_oracle_traces_learns_the_protocol(tokenizer, tmp_path, full_world):
    from leanlm.wideseek.sft import example_loss, oracle_examples, train_sft
    from leanlm.wideseek.tasks import elements_wide_task

    task = elements_wide_task(1)
    examples, stats = oracle_examples([task], full_world, AgentConfig(few_shot=False), tokenizer, width=2)
    assert stats["oracle_f1"] == 1.0 and stats["lead"] >= 2 and stats["subagent"] >= 4
    assert stats["kept"] + stats["dropped_long"] == stats["calls"] == len(examples)
    lead_first = next(e for e in examples if e.agent == "lead")
    assert "<tool_call>" in tokenizer.decode(lead_first.target_ids) and "create_sub_agents" in tokenizer.decode(
        lead_first.target_ids)
    model = tiny(tokenizer)
    few = sorted(examples, key=lambda e: len(e.prompt_ids) + len(e.target_ids))[:2]
    with torch.no_grad():
        before = sum(float(example_loss(model, e)) for e in few)
    report = train_sft(model, tokenizer, few, tmp_path, epochs=8, lr=3e-2, batch=2, checkpoint_every=4, progress=False)
    with torch.no_grad():
        after = sum(float(example_loss(model, e)) for e in few)
    assert report["updates"] == 8 and after < 0.75 * before
    assert (tmp_path / "model" / "config.json").exists()


def test_study_summary_pairs_seeds_and_reads_width(tmp_path):
    from leanlm.wideseek.study import summarize

    (tmp_path / "evals").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"widths": [1, 2, 4], "max_subagents": 4}))

    def put(policy, seed, width, f1s, mode="multi"):
        line = {"task": "t", "policy": policy, "seed": seed, "width": width, "mode": mode, "f1": f1s,
                "success": [0.0] * len(f1s), "subagents": [width] * len(f1s)}
        (tmp_path / "evals" / f"{policy}-seed{seed}-w{width}.jsonl").write_text(json.dumps(line) + "\n")

    for seed, (sft, marl) in enumerate([(0.1, 0.3), (0.2, 0.3), (0.0, 0.3)]):
        put("sft", seed, 4, [sft, sft])
        put("marl", seed, 4, [marl, marl])
    put("marl", 0, 1, [0.1])
    put("marl", 0, 2, [0.25])
    m = summarize(tmp_path)
    assert m["f1_sft"] == pytest.approx(10.0) and m["f1_marl"] == pytest.approx(30.0)
    # paired differences 20, 10, 30 points: mean 20, sd 10, t(0.975, 2) = 4.303 -> half width 24.84
    assert m["marl_minus_sft"] == pytest.approx(20.0)
    assert m["marl_minus_sft_ci95"] == pytest.approx(4.303 * 10 / 3 ** 0.5, abs=0.01)
    assert (m["f1_width_1"], m["f1_width_2"], m["f1_width_4"]) == (10.0, 25.0, 30.0)
    assert m["width_nondecreasing"] == 1 and "marl_minus_single" not in m
    put("marl", 0, 2, [0.5])
    assert summarize(tmp_path)["width_nondecreasing"] == 0
    for w in (1, 2, 4):
        put("marl", 0, w, [0.0])
    assert "width_nondecreasing" not in summarize(tmp_path)  # a flat curve at F1 0 is not evidence
    for seed in range(3):
        put("sft", seed, 4, [0.0, 0.0])
        put("marl", seed, 4, [0.0, 0.0])
    floor = summarize(tmp_path)  # MARL 0 vs SFT 0 on every seed: a comparison at chance proves nothing
    assert "marl_minus_sft" not in floor and floor["marl_minus_sft_at_floor"] == 1


def test_train_cli_rejects_a_bad_config(tmp_path):
    from typer.testing import CliRunner

    from leanlm.wideseek.cli import app

    bad = tmp_path / "marl.toml"
    bad.write_text("steps = 2\nclip_c = 0.5\n")
    result = CliRunner().invoke(app, ["train", "--config", str(bad)])
    # rich wraps the error box at the terminal width (80 columns when none is set), even inside a path:
    # compare without the box characters and any whitespace
    flat = "".join(result.output.replace("│", "").split())
    assert result.exit_code != 0 and "clip_cmustbe>1" in flat and "marl.toml" in flat


def test_study_plan_orders_headline_first_and_gpu_script_dry_run(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from leanlm.wideseek.study import FULL, QUICK, plan

    steps = plan(FULL)
    assert steps[:3] == [("headline", ("base", 0, 4, "multi")), ("headline", ("sft", 0, 4, "multi")),
                         ("headline", ("marl", 0, 4, "multi"))]
    stages = [s for s, _ in steps]
    assert stages == sorted(stages, key=["headline", "in-distribution", "seeds", "long", "long-in-distribution",
                                         "width", "single", "ablations", "single-seeds"].index)
    assert [p for s, (p, _, _, _) in steps if s == "in-distribution"] == ["base", "sft", "marl"]
    assert [(s, p, seed) for s, (p, seed, _, _) in steps if s.startswith("long")] == \
        [("long", "marl-long", 0), ("long-in-distribution", "marl-long", 0)]
    assert {w for s, (_, _, w, _) in steps if s == "width"} == {1, 2, 8}
    assert {p for s, (p, _, _, _) in steps if s == "ablations"} == {"marl-lead", "marl-subagents", "marl-noagent"}
    assert len(steps) == 3 + 3 + 6 + 2 + 3 + 1 + 3 + 2 and [s for s, _ in plan(QUICK)] == ["headline"] * 3 + ["width"]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable}
    out = subprocess.run(["bash", str(root / "bench" / "gpu_wideseek.sh"), "--cpu"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.count("headline: eval") == 3 and "width: eval marl seed 0 width 1" in out and "seeds:" not in out
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 2


def test_study_cost_model_by_hand():
    from leanlm.wideseek.study_cost import group_seconds, learner_seconds

    units = {"prefill_tok_s": 100.0, "train_tok_s": 50.0, "decode_step_s": {"1": 0.1, "4": 0.2, "16": 0.5}}
    shape = {"prompt_tokens": 1000.0, "reuse_prompt_tokens": 400.0, "reply_tokens": 100.0, "calls": 6.0,
             "path_turns": 4.0, "path_lead": 2.0, "path_sub": 2.0, "max_reply": {"lead": 50, "sub": 20}}
    caps = {"lead": 300, "sub": 60}
    # 10 rollouts: prefill 10,000 tokens = 100 s; 6 * 10 / 4 = 15 rows per call -> step 0.2 + 0.3 * 11/12 s
    step = 0.2 + (0.5 - 0.2) * (15 - 4) / (16 - 4)
    assert group_seconds(shape, 10, units, caps, cap_bound=False) == pytest.approx(100 + (2 * 50 + 2 * 20) * step)
    assert group_seconds(shape, 10, units, caps, cap_bound=True) == pytest.approx(100 + (2 * 300 + 2 * 60) * step)
    assert group_seconds(shape, 10, units, caps, cap_bound=False, reuse=True) == pytest.approx(40 + 140 * step)
    # the batched backend's measured prefill share (kv_factor) replaces the ideal prefix reuse
    assert group_seconds(shape, 10, units, caps, cap_bound=False, reuse=True, kv_factor=0.55) == pytest.approx(
        55 + 140 * step)
    assert group_seconds(shape, 10, units, caps, cap_bound=False, kv_factor=0.55) == pytest.approx(100 + 140 * step)
    from leanlm.wideseek.study_cost import kv_factors

    checks = {"eval": [{"prefilled_tokens": 30, "padded_prompt_tokens": 100}],
              "train": [{"prefilled_tokens": 10, "padded_prompt_tokens": 40}, {"prefilled_tokens": 20,
                                                                               "padded_prompt_tokens": 60}]}
    assert kv_factors(checks) == {"eval": 0.3, "train": 0.3} and kv_factors(None) is None
    # learner: reference forward + forward/backward over prompt + reply tokens of every rollout
    assert learner_seconds(shape, 2, units, pack=False) == pytest.approx(2200 / 100 + 2200 / 50)
    assert learner_seconds(shape, 2, units) == pytest.approx(1000 / 100 + 1000 / 50)
    assert learner_seconds(shape, 2, units, recompute_old=True, pack=False) == pytest.approx(2 * 22 + 44)


def test_long_run_starts_from_the_short_runs_last_checkpoint_only(tmp_path):
    from leanlm.wideseek.study import seed_long_run

    short, long = tmp_path / "marl-seed0", tmp_path / "marl-long-seed0"
    step = short / "checkpoints" / "step-000006"
    step.mkdir(parents=True)
    (step / "state.json").write_text('{"step": 6}')
    (step / "model.pt").write_bytes(b"weights")
    (short / "metrics.jsonl").write_text("".join(json.dumps({"step": i}) + "\n" for i in range(1, 7)))
    assert not seed_long_run(short, long, steps=8)  # the short run's checkpoint is not its end: not the same run
    assert seed_long_run(short, long, steps=6)
    assert (long / "checkpoints" / "step-000006" / "model.pt").read_bytes() == b"weights"
    assert [json.loads(x)["step"] for x in (long / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in (long / "checkpoints").iterdir()] == ["step-000006"]  # no temporary left
    (long / "metrics.jsonl").write_text(json.dumps({"step": 7}) + "\n")
    assert not seed_long_run(short, long, steps=6)  # the long run has its own checkpoint: never overwritten
    assert json.loads((long / "metrics.jsonl").read_text())["step"] == 7


def test_study_timings_accumulate_wall_and_cpu_over_resumes(tmp_path):
    from leanlm.wideseek.study import Study, _now

    study = object.__new__(Study)  # no world: only the bookkeeping is under test
    study.out, study.timings = tmp_path, {"sft": 10.0}  # an old entry (wall seconds only) is kept as wall time
    wall, cpu = _now()
    study._timed("sft", (wall - 2.0, cpu - 1.0))
    study._timed("sft", (wall - 2.0, cpu - 1.0))
    saved = json.loads((tmp_path / "timings.json").read_text())["sft"]
    assert 14.0 <= saved["wall_s"] < 15.0 and 2.0 <= saved["cpu_s"] < 3.0


def test_study_sets_a_lost_runs_seconds_aside_instead_of_adding_them(tmp_path):
    from leanlm.wideseek.study import Study

    study = object.__new__(Study)
    study.out, study.timings = tmp_path, {"sft": {"wall_s": 9.0, "cpu_s": 8.0}, "sft.lost-1": {"wall_s": 1.0}}
    (tmp_path / "sft" / "checkpoints" / "step-000005").mkdir(parents=True)
    (tmp_path / "sft" / "checkpoints" / "step-000005" / "state.json").write_text("{}")
    study._set_aside_lost_timing("sft", tmp_path / "sft")  # a checkpoint: a resume, which accumulates
    assert study.timings["sft"] == {"wall_s": 9.0, "cpu_s": 8.0}
    study._set_aside_lost_timing("marl-seed1", tmp_path / "marl-seed1")  # no entry: nothing to set aside
    assert "marl-seed1" not in study.timings
    (tmp_path / "sft" / "checkpoints" / "step-000005" / "state.json").unlink()  # checkpoints lost
    study._set_aside_lost_timing("sft", tmp_path / "sft")
    saved = json.loads((tmp_path / "timings.json").read_text())
    assert "sft" not in saved and saved["sft.lost-2"] == {"wall_s": 9.0, "cpu_s": 8.0}


def test_sft_example_selection_upsamples_answers_and_keeps_the_old_recipe_at_share_0():
    from leanlm.wideseek.sft import Example, select_examples

    def ex(agent, answer, i):
        return Example(f"t{i}", agent, [i], [i, i], answer=answer)

    pool = ([ex("lead", True, 0)] + [ex("lead", False, i) for i in range(1, 4)] + [ex("sub-1", True, 4)]
            + [ex("sub-1", False, i) for i in range(5, 25)])
    assert select_examples(pool, 100) == pool  # share 0, fewer than n: all, in order (the first study's recipe)
    assert select_examples(pool, 5) == [pool[int(i * 25 / 5)] for i in range(5)]
    got = select_examples(pool, 12, answer_share=0.5)  # 6 places per side, ceil(0.5 * 6) = 3 of them answers
    assert got[:6] == [pool[0]] * 3 + pool[1:4]  # the one final table, repeated; every lead tool call
    assert got[6:9] == [pool[4]] * 3  # the one report, repeated
    assert [e.task for e in got[9:]] == ["t5", "t11", "t18"]  # evenly spaced over the 20 subagent calls
    assert select_examples(pool, 1, answer_share=0.1) == [pool[0]]  # one place: the lead's side, its table
    got = select_examples(pool, 20, answer_share=0.1)  # the lead's side has 1 + 3 examples for 10 places
    assert got[:4] == [pool[0], *pool[1:4]] and sum(e.agent == "sub-1" for e in got) == 16 and len(got) == 20
    assert sum(e.answer for e in got[4:]) == 1  # the subagents' side: ceil(0.1 * 10) = 1 report, then calls
    with pytest.raises(ValueError, match="answer_share"):
        select_examples(pool, 4, answer_share=1.5)


def test_sft_selection_at_the_study_scale_gives_both_roles_their_calls_and_answers():
    """The recipe that starved the subagents (2026-11-30): with many lead calls, the lead's calls took every place
    left after the answers. Now each side gets half, answers and calls within it."""
    from leanlm.wideseek.sft import Example, select_examples

    pool = ([Example(f"f{i}", "lead", [i], [i], answer=True) for i in range(80)]
            + [Example(f"l{i}", "lead", [i], [i]) for i in range(240)]
            + [Example(f"r{i}", f"sub-{i % 4 + 1}", [i], [i], answer=True) for i in range(160)]
            + [Example(f"s{i}", f"sub-{i % 4 + 1}", [i], [i]) for i in range(1330)])
    got = select_examples(pool, 128, answer_share=0.3)
    kinds = {k: sum(e.task.startswith(k) for e in got) for k in "flrs"}
    assert kinds == {"f": 20, "l": 44, "r": 20, "s": 44} and len({id(e) for e in got}) == 128
    single = [e for e in pool if e.agent == "lead"]  # single-agent mode: one side takes every place
    got = select_examples([Example(e.task, "single", e.prompt_ids, e.target_ids, e.answer) for e in single], 128, 0.3)
    assert sum(e.answer for e in got) == 39 and len(got) == 128
