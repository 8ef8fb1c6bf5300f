"""Multi-agent GRPO against values computed by hand (G = 4 rollouts; rollout 0 = a lead plus 3 subagents)."""

from __future__ import annotations

import math

import pytest
import torch

from leanlm.wideseek.grpo import (
    GRPOConfig,
    TurnSample,
    group_advantages,
    grpo_loss,
    low_var_kl,
    ppo_token_loss,
    token_weights,
)


def _s(traj: int, agent: int, turn: int, n: int, group: int = 0) -> TurnSample:
    return TurnSample(traj=traj, agent=agent, turn=turn, prompt_ids=[1], completion_ids=[7] * n, group=group)


# rollout 0: lead (turns of 3 and 1 tokens), sub-1 (2 tokens), sub-2 (turns of 1 and 3), sub-3 (1 token)
# rollout 1: lead only (2 tokens); rollouts 2 and 3 have no trained turn (they still count in G = 4)
BATCH = [_s(0, 0, 1, 3), _s(0, 0, 2, 1), _s(0, 1, 1, 2), _s(0, 2, 1, 1), _s(0, 2, 2, 3), _s(0, 3, 1, 1), _s(1, 0, 1, 2)]


def test_group_advantages_by_hand():
    # rewards 1, .5, 0, .5: mean .5, unbiased std sqrt((.25 + 0 + .25 + 0) / 3) = sqrt(1/6)
    adv = group_advantages([1.0, 0.5, 0.0, 0.5, 3.0, 3.0, 3.0, 3.0], [0, 0, 0, 0, 1, 1, 1, 1])
    a = 0.5 / (math.sqrt(1 / 6) + 1e-6)
    assert adv[:4] == pytest.approx([a, 0.0, -a, 0.0], abs=1e-12)
    assert adv[4:] == [0.0] * 4  # a group with equal rewards has no signal
    assert group_advantages([2.0], [0]) == [0.0]


def test_three_loss_scales_by_hand():
    w = token_weights(BATCH, {0: 4})
    # 1/G = 1/4, N_0 = 4 agents: lead has 4 tokens, sub-1 2, sub-2 4, sub-3 1
    assert w == pytest.approx([1 / 64, 1 / 64, 1 / 32, 1 / 64, 1 / 64, 1 / 16, 1 / 8])
    per_agent: dict[tuple[int, int], float] = {}
    for s, x in zip(BATCH, w, strict=True):
        per_agent[(s.traj, s.agent)] = per_agent.get((s.traj, s.agent), 0.0) + x * len(s.completion_ids)
    # agent level: every agent of rollout 0 carries 1/(G N_0) = 1/16 whatever its length; the lone lead 1/G
    assert [per_agent[(0, a)] for a in range(4)] == pytest.approx([1 / 16] * 4)
    assert per_agent[(1, 0)] == pytest.approx(1 / 4)
    # turn level: the lead's turns weigh |o_t| / sum |o| = 3/4 and 1/4 of the lead's share
    assert (w[0] * 3, w[1] * 1) == pytest.approx((3 / 64, 1 / 64))
    # no agent-level reweighting: every token of rollout 0 weighs 1/(G * 11)
    flat = token_weights(BATCH, {0: 4}, agent_level=False)
    assert flat[:6] == pytest.approx([1 / 44] * 6) and flat[6] == pytest.approx(1 / 8)
    # two prompts: the outer factor is 1/(P G)
    two = token_weights([_s(0, 0, 1, 2, group=0), _s(4, 0, 1, 2, group=1)], {0: 4, 1: 4})
    assert two == pytest.approx([1 / 16, 1 / 16])


def test_clipping_and_dual_clip_by_hand():
    ratio = torch.tensor([1.5, 0.5, 0.5, 20.0, 5.0, 1.1])
    adv = torch.tensor([2.0, 2.0, -2.0, -2.0, -2.0, 2.0])
    loss, m = ppo_token_loss(torch.log(ratio), torch.zeros(6), adv, 0.2, 0.28, 10.0)
    expected = [
        -2.0 * 1.28,  # A > 0, r above 1 + eps_high: clipped to 1.28
        -2.0 * 0.5,  # A > 0, r below 1 - eps_low: min(rA, clip A) keeps r A (no clip)
        2.0 * 0.8,  # A < 0, r below 1 - eps_low: clipped to 0.8
        2.0 * 10.0,  # A < 0, r = 20: dual clip caps the loss at c |A|
        2.0 * 5.0,  # A < 0, r = 5 < c: unclipped
        -2.0 * 1.1,  # inside the trust region
    ]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    assert m["clipped"].tolist() == [True, False, True, False, False, False]
    assert m["dual_clipped"].tolist() == [False, False, False, True, False, False]
    no_dual, _ = ppo_token_loss(torch.log(ratio), torch.zeros(6), adv, 0.2, 0.28, None)
    assert float(no_dual[3]) == pytest.approx(40.0)


def test_low_var_kl_by_hand():
    kl = low_var_kl(torch.tensor([-1.0, -2.0, -3.0, 0.0]), torch.tensor([-2.0, -2.0, -1.0, -50.0]))
    # k3 = exp(ref - logp) - (ref - logp) - 1; the last is clamped to 10 (log ratio -50 -> -20 first: 19 + e^-20)
    assert kl.tolist() == pytest.approx([math.exp(-1) + 1 - 1, 0.0, math.exp(2) - 2 - 1, 10.0], rel=1e-6)


def test_full_loss_by_hand():
    cfg = GRPOConfig()
    samples = [_s(0, 0, 1, 2), _s(0, 1, 1, 1), _s(1, 0, 1, 1)]
    w = token_weights(samples, {0: 2})  # 1/2 * 1/2 * 1/2, 1/2 * 1/2 * 1, 1/2 * 1 * 1
    assert w == pytest.approx([1 / 8, 1 / 4, 1 / 2])
    logps = [torch.log(torch.tensor([1.5, 0.9])), torch.log(torch.tensor([1.0])), torch.log(torch.tensor([30.0]))]
    old = [torch.zeros(2), torch.zeros(1), torch.zeros(1)]
    ref = [torch.log(torch.tensor([1.5, 0.9])), torch.zeros(1), torch.log(torch.tensor([30.0])) - 1.0]
    adv = [1.0, 1.0, -1.0]
    loss, m = grpo_loss(logps, old, ref, adv, w, cfg)
    pg = (-1.28 - 0.9) / 8 + (-1.0) / 4 + 10.0 / 2  # clip, plain, plain, dual clip
    kl = 0.0 / 8 + 0.0 / 4 + (math.exp(-1) + 1 - 1) / 2
    assert float(loss) == pytest.approx(pg + 0.001 * kl, rel=1e-6)
    assert m["pg_loss"] == pytest.approx(pg, rel=1e-6) and m["kl"] == pytest.approx(kl, rel=1e-6)
    assert m["tokens"] == 4 and m["clip_frac"] == pytest.approx(1 / 4) and m["dual_clip_frac"] == pytest.approx(1 / 4)


def test_gradient_is_weighted_per_agent():
    # d loss / d logp at ratio 1 (inside the clip range) is -A * weight for every token
    lp = [torch.zeros(3, requires_grad=True), torch.zeros(1, requires_grad=True)]
    w = token_weights([_s(0, 0, 1, 3), _s(0, 1, 1, 1)], {0: 1})
    loss, _ = grpo_loss(lp, [torch.zeros(3), torch.zeros(1)], None, [2.0, 2.0], w)
    loss.backward()
    assert lp[0].grad.tolist() == pytest.approx([-2 / 6] * 3) and lp[1].grad.tolist() == pytest.approx([-1.0])
    with pytest.raises(ValueError, match="dual clip"):
        GRPOConfig(clip_c=1.0)
