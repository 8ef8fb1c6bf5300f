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
