"""Cross-turn KV reuse in the batched in-process backend changes no token and no log-prob.

Multi-turn agents of several rollouts run concurrently through :class:`TransformersBackend` twice under the same
seed, once re-prefilling every prompt (``kv_reuse=False``) and once prefilling only each turn's new tokens; the
batches must be the same, every sampled token identical and every sampling log-prob within 1e-5 (absolute;
1e-4 on SmolLM2's 30 layers).
The conversations exercise left padding (different prompt lengths per row), batches that mix fresh agents with
continuing ones (part of the batch has no cache, the others reuse only part of theirs), rows that finish at EOS
while others keep decoding, per-role reply caps, and a reply that is re-rendered differently (the held cache
is cropped to the common prefix).
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from leanlm.wideseek import rollout
from leanlm.wideseek.grpo import sequence_logprobs
from leanlm.wideseek.rollout import TRAJECTORY, TransformersBackend

TOL = 1e-5  # absolute, on log-probs (fp32): reuse only changes the order of floating-point sums
TOL_SMOLLM2 = 1e-4  # 30 layers accumulate more rounding; a wrong position or mask moves log-probs by >> 0.01


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from leanlm.common.models import embedded_cache_path, embedded_cached

    if not embedded_cached():
        pytest.skip("the embedded SmolLM2 tokenizer is not cached yet (run leanlm once with --model embedded)")
    return AutoTokenizer.from_pretrained(str(embedded_cache_path()))


# (traj, agent, turns, start after the lead's turn k of the same traj (0 = at once), tool output words, crop reply)
AGENTS = [(0, "lead", 4, 0, 30, False), (0, "sub-1", 3, 1, 5, False), (0, "sub-2", 2, 1, 60, True),
          (1, "lead", 3, 0, 12, False), (1, "sub-1", 4, 1, 20, False), (2, "single", 2, 0, 3, True)]


def drive(backend: TransformersBackend, agents=AGENTS, task: str = "List the capitals of three countries.") -> list:
    """Run the agents' multi-turn conversations concurrently (module doc); returns their completions in order."""

    async def main():
        started: dict[tuple[int, int], asyncio.Event] = {}

        def event(traj: int, k: int) -> asyncio.Event:
            return started.setdefault((traj, k), asyncio.Event())

        async def one(traj, agent, turns, after, words, crop):
            TRAJECTORY.set(traj)
            if after:
                await event(traj, after).wait()
            messages = [{"role": "system", "content": f"You are {agent}."},
                        {"role": "user", "content": f"{task} Part {agent} of rollout {traj}."}]
            outs = []
            for t in range(turns):
                out = await backend.complete(messages, [], agent=agent)
                outs.append(out)
                if agent in ("lead", "single"):
                    event(traj, t + 1).set()
                content = out.content[: len(out.content) // 2] if crop else out.content
                messages.append({"role": "assistant", "content": content})
                messages.append({"role": "user", "content": " ".join(f"fact{traj}{t}{i}" for i in range(words))})
            for k in range(1, 8):  # release agents waiting on lead turns that never came
                event(traj, k).set()
            return outs

        return await asyncio.gather(*(asyncio.ensure_future(one(*a)) for a in agents))

    return asyncio.run(main())


def run_both(model, tokenizer, seed: int = 3, **kw):
    results = []
    for reuse in (False, True):
        backend = TransformersBackend(model, tokenizer, kv_reuse=reuse, kv_hold_all=True, gather_s=0.0, **kw)
        torch.manual_seed(seed)
        drive(backend)
        results.append(backend)
    return results


def assert_identical(off: TransformersBackend, on: TransformersBackend, tol: float = TOL) -> float:
    """Same batches, same prompts, same tokens, log-probs within ``tol``; returns the largest difference."""
    assert off.batches == on.batches
    key = lambda s: (s.traj, s.agent_name, s.turn)  # noqa: E731
    a, b = sorted(off.samples, key=key), sorted(on.samples, key=key)
    assert [key(s) for s in a] == [key(s) for s in b]
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert x.prompt_ids == y.prompt_ids
        assert x.completion_ids == y.completion_ids
        diff = (torch.tensor(x.logprobs) - torch.tensor(y.logprobs)).abs().max().item() if x.logprobs else 0.0
        worst = max(worst, diff)
    assert worst <= tol, f"largest log-prob difference {worst:.2e} > {tol:g}"
    return worst


def tiny(tokenizer, seed: int = 0):
    from leanlm.common.models import tiny_llama

    return tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=4096, seed=seed)


def test_kv_reuse_gives_identical_tokens_and_logprobs(tokenizer):
    torch.set_num_threads(1)
    model = tiny(tokenizer)
    caps = {"sub": 6, "single": 8}
    off, on = run_both(model, tokenizer, max_new_tokens=10, temperature=0.9, top_p=0.95, role_max_new_tokens=caps)
    # lead/single turn 1; then the 3 leads' turn 2 with 3 fresh subagents (no cache) in one batch; ...
    assert on.batches == [3, 6, 5, 3, 1]
    assert off.stats["reused_tokens"] == 0 and off.stats["prefilled_tokens"] == off.stats["padded_prompt_tokens"]
    assert_identical(off, on)
    st = on.stats
    assert st["reused_tokens"] > 0.2 * st["prompt_tokens"]
    assert st["prefilled_tokens"] + st["reused_tokens"] <= st["padded_prompt_tokens"]
    # some turns reuse their previous reply too (its re-rendering matched), others only the previous prompt
    by: dict = {}
    full = part = 0
    for s in sorted(on.samples, key=lambda s: (s.traj, s.agent_name, s.turn)):
        prev = by.get((s.traj, s.agent_name))
        if prev is not None:
            shared = rollout.common_prefix(prev.prompt_ids + prev.completion_ids, s.prompt_ids)
            full += shared > len(prev.prompt_ids)
            part += shared == len(prev.prompt_ids)
        by[(s.traj, s.agent_name)] = s
    assert full and part

    # rows that stop at EOS while the batch decodes on; no top-p, so the teacher-forced pass is the reference
    off, on = [TransformersBackend(model, tokenizer, kv_reuse=r, kv_hold_all=True, gather_s=0.0, max_new_tokens=10,
                                   temperature=0.9, role_max_new_tokens=caps) for r in (False, True)]
    for b in (off, on):
        b.eos_ids |= set(range(1000, 6000))  # about 10% per step
        torch.manual_seed(5)
        drive(b)
    assert_identical(off, on)
    lens = [len(s.completion_ids) for s in on.samples]
    assert min(lens) < 6 and max(lens) == 10 and on.stats["reused_tokens"] > 0
    teacher = sequence_logprobs(model, on.samples, temperature=0.9)
    for s, t in zip(on.samples, teacher, strict=True):
        assert torch.allclose(torch.tensor(s.logprobs), t, atol=1e-4)


def test_held_caches_are_dropped_when_weights_change_and_within_budget(tokenizer):
    model = tiny(tokenizer, seed=1)
    backend = TransformersBackend(model, tokenizer, max_new_tokens=4, gather_s=0.0)
    torch.manual_seed(0)
    drive(backend, [(0, "lead", 1, 0, 0, False), (1, "lead", 1, 0, 0, False)])
    assert not backend._held  # by default only a turn with a tool call is held (the others end their agent)
    backend.kv_hold_all = True
    backend.reset()
    torch.manual_seed(0)
    drive(backend, [(0, "lead", 1, 0, 0, False), (1, "lead", 1, 0, 0, False)])
    assert set(backend._held) == {(0, "lead"), (1, "lead")}
    one = backend._held[(0, "lead")]
    # per layer (kv heads, tokens, head dim), the prompt and the reply tokens that were fed back
    assert one.kv[0][0].shape[0] == 1 and one.kv[0][0].shape[1] == len(one.ids)
    s = next(x for x in backend.samples if x.traj == 0)
    assert one.ids == (s.prompt_ids + s.completion_ids)[: len(one.ids)] and len(one.ids) >= len(s.prompt_ids)
    # the held keys equal a fresh forward pass over those tokens
    fresh = model(input_ids=torch.tensor([one.ids]), use_cache=True).past_key_values
    assert torch.allclose(fresh.layers[1].keys[0], one.kv[1][0], atol=1e-5)
    assert torch.allclose(fresh.layers[1].values[0], one.kv[1][1], atol=1e-5)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # an optimizer step changes the weights in place
    assert backend._reuse_ok() and not backend._held
    backend.kv_reuse_mb = 1.5 * one.nbytes / 2**20  # room for one agent only: least recently used goes first
    backend._held_version = -1
    torch.manual_seed(0)
    drive(backend, [(0, "lead", 1, 0, 0, False), (1, "lead", 1, 0, 0, False)])
    assert len(backend._held) == 1 and backend.held_bytes <= backend.kv_reuse_mb * 2**20
    backend.reset()
    assert not backend._held


@pytest.mark.slow
def test_kv_reuse_on_smollm2_gives_identical_tokens_and_logprobs():
    from leanlm.common.models import load_embedded

    torch.set_num_threads(1)
    loaded = load_embedded()
    # lead 0 runs 3 turns; its subagent starts fresh beside the leads' second turns; lead 1's reply is cropped
    agents = [(0, "lead", 3, 0, 20, False), (0, "sub-1", 2, 1, 10, False), (1, "lead", 2, 0, 10, True)]
    off, on = [TransformersBackend(loaded.model, loaded.tokenizer, kv_reuse=r, kv_hold_all=True, gather_s=0.0,
                                   max_new_tokens=8, temperature=1.0) for r in (False, True)]
    for b in (off, on):
        torch.manual_seed(7)
        drive(b, agents)
    st = on.stats
    print(f"\nSmolLM2 KV reuse: batches {on.batches}, prefilled {st['prefilled_tokens']} of {st['padded_prompt_tokens']} "
          f"prompt columns, reused {st['reused_tokens']} of {st['prompt_tokens']} prompt tokens")
    worst = assert_identical(off, on, TOL_SMOLLM2)
    print(f"SmolLM2 KV reuse: largest |log-prob difference| {worst:.2e} (tolerance {TOL_SMOLLM2:g})")
    assert st["reused_tokens"] > 0 and st["prefilled_tokens"] + st["reused_tokens"] <= st["padded_prompt_tokens"]


def test_real_runtime_group_reuses_caches_and_still_scores(tokenizer, full_world):
    """Oracle-driven rollouts through the real agent loop and tools (``study_cost.batching_check``): the oracle's
    replies replace the model's, so each turn reuses its previous prompt (a crop of the held prompt + reply)."""
    from leanlm.wideseek.study import FULL, _train_config, eval_tasks
    from leanlm.wideseek.study_cost import batching_check

    cfg = dict(FULL)
    agent_cfg = _train_config(cfg, "/tmp", "", 0).agent_config()
    tasks = eval_tasks(cfg)[:1]
    runs = [batching_check(tasks, full_world, agent_cfg, tokenizer, 2, 2, cfg["max_context"], float("inf"), reuse)
            for reuse in (False, True)]
    off, on = runs
    assert off["oracle_f1"] == on["oracle_f1"] == 1.0  # the runtime is unchanged by the backend's caching
    assert off["reused_tokens"] == 0 and off["prefilled_tokens"] == off["padded_prompt_tokens"]
    assert on["reused_tokens"] > 0.3 * on["prompt_tokens"]
    assert on["prefilled_tokens"] + on["reused_tokens"] <= on["padded_prompt_tokens"]
    assert on["prefilled_tokens"] < 0.8 * on["padded_prompt_tokens"]


def test_kv_bench_compares_tokens_only_over_batches_with_the_same_rows():
    """The bench's identity check compares row by row while the batches hold the same prompts in the same rows
    (agent names may swap: two rollouts of one task have identical prompts), stops at the first batch whose
    rows differ (from there the sampler's random stream is consumed differently), and flags a token or
    log-prob difference before it."""
    from leanlm.wideseek.kv_bench import identity_check

    a, b, c, d = (0, "lead", 1), (1, "lead", 1), (0, "sub-1", 1), (0, "lead", 2)
    turns = {a: ([1, 2], [5, 6], [-0.1, -0.2]), b: ([1, 2], [7], [-0.3]), c: ([3], [8], [-1.0]),
             d: ([4], [9], [-2.0])}
    off = [[a, b], [c], [d]]
    # same prompts in the same rows although the names swapped: comparable, row by row
    swapped = {**turns, a: ([1, 2], [7], [-0.3]), b: ([1, 2], [5, 6], [-0.1, -0.2])}
    assert identity_check(0, off, turns, [[b, a], [c], [d]], swapped)["identical_tokens"] is True
    # the subagent's turn and the lead's second turn swapped batches: only the first batch is compared
    moved = {**turns, c: ([3], [1], [-9.0])}
    check = identity_check(0, off, turns, [[a, b], [d], [c]], moved)
    assert check == {"repeat": 0, "batches": 3, "same_batches": 1, "compared": 2, "identical_tokens": True,
                     "max_logprob_diff": 0.0}
    drift = {**turns, a: ([1, 2], [5, 6], [-0.1, -0.25])}
    assert identity_check(1, off, turns, off, drift)["max_logprob_diff"] == pytest.approx(0.05)
    changed = {**turns, b: ([1, 2], [4], [-0.3])}
    assert identity_check(2, off, turns, off, changed)["identical_tokens"] is False
    assert identity_check(3, off, turns, off, turns)["same_batches"] == 3


def test_sampled_logprobs_equal_generates_output_scores_with_top_p(tokenizer):
    """The backend records each sampled token's log-prob one step at a time (no ``output_scores``); with
    temperature and top-p it samples the same tokens as ``generate``'s own warpers under one seed and gives the
    log-softmax of the same processed scores."""
    torch.set_num_threads(1)
    model = tiny(tokenizer, seed=1)
    backend = TransformersBackend(model, tokenizer, kv_reuse=False, gather_s=0.0, max_new_tokens=12, temperature=0.8,
                                  top_p=0.9)
    messages = [{"role": "system", "content": "You are lead."}, {"role": "user", "content": "Name three rivers."}]

    async def one():
        TRAJECTORY.set(0)
        return await backend.complete(messages, [], agent="lead")

    torch.manual_seed(11)
    asyncio.run(one())
    (sample,) = backend.samples
    ids = torch.tensor([sample.prompt_ids])
    torch.manual_seed(11)
    ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.8,
                         top_p=0.9, top_k=0, max_new_tokens=12, return_dict_in_generate=True, output_scores=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(backend.eos_ids))
    tokens = ref.sequences[0, ids.shape[1]:].tolist()
    n = len(sample.completion_ids)
    assert sample.completion_ids == tokens[:n] and n >= 1
    scores = torch.stack(ref.scores, dim=1)[0].float()
    want = torch.log_softmax(scores, dim=-1).gather(-1, torch.tensor(tokens)[:, None])[:, 0][:n]
    assert torch.allclose(torch.tensor(sample.logprobs), want, atol=1e-6)
    assert (torch.tensor(sample.logprobs) > float("-inf")).all()  # never a token outside the top-p set


def test_backend_folds_gqa_attention_unless_told_not_to(tokenizer):
    from leanlm.common.attention import FOLDED_SDPA

    model = tiny(tokenizer)
    assert model.config._attn_implementation == "sdpa"
    TransformersBackend(model, tokenizer, fold_gqa=False)
    assert model.config._attn_implementation == "sdpa"
    TransformersBackend(model, tokenizer)
    assert model.config._attn_implementation == FOLDED_SDPA
