"""Multi-agent GRPO (WideSeek-R1, arXiv 2602.04634, Sec. 3.2, Eq. 2) as plain torch.

The objective, per batch of P prompts with G rollouts each, N_i agents in rollout i and ``|o_{i,a}|`` trained
tokens of agent a over all its turns:

    J = 1/P Σ_p 1/G Σ_i 1/N_i Σ_a 1/|o_{i,a}| Σ_t Σ_j [ min(r Â_i, clip(r, 1-ε_low, 1+ε_high) Â_i) ]  (dual-clipped)

and the loss is ``-J + β · KL`` with the KL term weighted the same way. What each piece follows:

- **Advantage** (:func:`group_advantages`): RLinf ``grpo_dynamic`` with ``advantage_mode: trajectory``: the
  trajectory reward z-scored over the G rollouts of a prompt, ``(r - mean) / (std + 1e-6)`` with torch's
  unbiased ``std``, broadcast to every token of every agent of the rollout.
- **Weights** (:func:`token_weights`): RLinf's ``loss_scales: [group_level, agent_level, turn_level]``
  (``rlinf/algorithms/loss_scales.py``): 1/G (and 1/P over prompts), 1/N_i with N_i the agents that have
  trained turns in rollout i, and turn t of agent a weighted ``|o_t| / Σ_t |o_t|``, so that a token-mean
  over turn t times that weight is the agent's token mean. ``agent_level=False`` is the paper's
  "no agent-level reweighting" ablation (every trained token of the rollout weighted equally).
- **Policy loss** (:func:`ppo_token_loss`): ``max(-Â r, -Â clip(r))`` then the dual clip
  ``min(·, c |Â|)`` (only active for Â < 0), as ``compute_ppo_actor_loss`` with ``clip_ratio_c``.
- **KL** (:func:`low_var_kl`): Schulman's k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` with RLinf's
  clamps (log-ratio to [-20, 20], result to [-10, 10]), β = 0.001.
- **Trained turns**: only the turns :func:`leanlm.wideseek.rewards.credit` marks trainable enter the batch
  (RLinf drops the others before the loss scales are computed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class GRPOConfig:
    """RLinf's WideSeek-R1 values (``base_train.yaml``)."""

    eps_low: float = 0.2
    eps_high: float = 0.28
    clip_c: float | None = 10.0
    kl_beta: float = 0.001
    adv_eps: float = 1e-6
    agent_level: bool = True
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.clip_c is not None and self.clip_c <= 1.0:
            raise ValueError(f"GRPOConfig.clip_c must be > 1 (dual clip), got {self.clip_c}")
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError("GRPOConfig.eps_low and eps_high must be >= 0")


@dataclass
class TurnSample:
    """One model call of one agent of one rollout: RLinf's (prompt, response) sequence.

    ``traj`` indexes the rollout in the batch (``idx_to_traj``), ``group`` the prompt it belongs to, ``agent``
    is ``idx_to_sub_traj`` (0 = lead or single agent, i = ``sub-i`` in creation order), ``turn`` is 1-based
    within the agent, ``logprobs`` are the sampling log-probs of ``completion_ids``.
    """

    traj: int
    agent: int
    turn: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    group: int = 0
    agent_name: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.agent_name or ("lead" if self.agent == 0 else f"sub-{self.agent}"), self.turn)


def group_advantages(rewards: Sequence[float], groups: Sequence[int], eps: float = 1e-6) -> list[float]:
    """Â_i = (r_i - mean_g) / (std_g + eps) within each group g (torch's unbiased std; a group of one gets 0)."""
    if len(rewards) != len(groups):
        raise ValueError(f"{len(rewards)} rewards but {len(groups)} group ids")
    by_group: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    out = [0.0] * len(rewards)
    for idx in by_group.values():
        r = torch.tensor([float(rewards[i]) for i in idx], dtype=torch.float64)
        if len(idx) < 2:
            continue
        z = (r - r.mean()) / (r.std() + eps)
        for i, v in zip(idx, z.tolist(), strict=True):
            out[i] = v
    return out


def token_weights(samples: Sequence[TurnSample], group_sizes: dict[int, int], *, agent_level: bool = True) -> list[float]:
    """The per-token weight of each sample (the same for every token of one turn), so that the loss is
    ``Σ_samples Σ_tokens weight · ℓ_token`` (module doc). ``group_sizes[g]`` is G for prompt g (rollouts
    sampled, whether or not they have trained turns)."""
    n_prompts = len({s.group for s in samples})
    agents: dict[int, set[int]] = defaultdict(set)
    tokens: dict[tuple[int, int], int] = defaultdict(int)
    traj_tokens: dict[int, int] = defaultdict(int)
    for s in samples:
        agents[s.traj].add(s.agent)
        tokens[(s.traj, s.agent)] += len(s.completion_ids)
        traj_tokens[s.traj] += len(s.completion_ids)
    out = []
    for s in samples:
        outer = 1.0 / (n_prompts * group_sizes[s.group])
        if agent_level:
            n_tok = tokens[(s.traj, s.agent)]
            out.append(outer / len(agents[s.traj]) / n_tok if n_tok else 0.0)
        else:
            n_tok = traj_tokens[s.traj]
            out.append(outer / n_tok if n_tok else 0.0)
    return out


def ppo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, eps_low: float = 0.2,
                   eps_high: float = 0.28, clip_c: float | None = 10.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token dual-clip PPO loss ``min(max(-Â r, -Â clip(r, 1-ε_low, 1+ε_high)), c |Â|)`` and the masks of
    tokens where the ratio clip / the dual clip was active."""
    ratio = torch.exp(logp - old_logp)
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(loss1, loss2)
    clipped = loss1.detach() < loss2.detach()
    dual = torch.zeros_like(clipped)
    if clip_c is not None:
        loss3 = torch.sign(adv) * clip_c * adv
        dual = loss3.detach() < loss.detach()
        loss = torch.minimum(loss, loss3)
    return loss, {"ratio": ratio.detach(), "clipped": clipped, "dual_clipped": dual}


def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π || π_ref) per token, with RLinf's clamps."""
    kl = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
    return torch.clamp(torch.exp(kl) - kl - 1.0, min=-10.0, max=10.0)


def turn_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantage: float,
              weight: float, config: GRPOConfig | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One turn's share of the loss: ``weight · Σ_tokens (ℓ_pg + β · kl)``; the full loss is the sum over
    turns, so a trainer may backpropagate turn by turn (gradient accumulation) and get the same gradient."""
    cfg = config or GRPOConfig()
    adv = torch.full_like(logp, float(advantage))
    pg, masks = ppo_token_loss(logp, old_logp.to(logp.dtype), adv, cfg.eps_low, cfg.eps_high, cfg.clip_c)
    pg_term = pg.sum() * float(weight)
    kl_term = torch.zeros(())
    if ref_logp is not None and cfg.kl_beta:
        kl_term = low_var_kl(logp, ref_logp.to(logp.dtype)).sum() * float(weight)
    total = pg_term + cfg.kl_beta * kl_term
    return total, {"pg_loss": float(pg_term.detach()), "kl": float(kl_term.detach()), "tokens": int(logp.numel()),
                   "clipped": int(masks["clipped"].sum()), "dual_clipped": int(masks["dual_clipped"].sum())}


def grpo_loss(logps: Sequence[torch.Tensor], old_logps: Sequence[torch.Tensor], ref_logps: Sequence[torch.Tensor] | None,
              advantages: Sequence[float], weights: Sequence[float], config: GRPOConfig | None = None,
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The multi-agent GRPO loss over a list of turns (one 1-D tensor of completion-token log-probs per turn),
    each with its rollout's advantage and its :func:`token_weights` weight. Returns (loss, metrics)."""
    if not (len(logps) == len(old_logps) == len(advantages) == len(weights)):
        raise ValueError("logps, old_logps, advantages and weights must have one entry per turn")
    total = torch.zeros(())
    sums: dict[str, float] = defaultdict(float)
    for i, lp in enumerate(logps):
        term, m = turn_loss(lp, old_logps[i], None if ref_logps is None else ref_logps[i], advantages[i], weights[i],
                            config)
        total = total + term
        for k, v in m.items():
            sums[k] += v
    return total, summarize_metrics(sums)


def summarize_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Turn summed :func:`turn_loss` metrics into pg_loss, kl, tokens, clip_frac and dual_clip_frac."""
    n = sums.get("tokens", 0)
    return {"pg_loss": sums.get("pg_loss", 0.0), "kl": sums.get("kl", 0.0), "tokens": n,
            "clip_frac": sums.get("clipped", 0) / n if n else 0.0,
            "dual_clip_frac": sums.get("dual_clipped", 0) / n if n else 0.0}


def turn_logprobs(model: Any, sample: TurnSample, temperature: float = 1.0) -> torch.Tensor:
    """Teacher-forced log-probs of one sample's completion tokens under ``model`` (one unpadded forward pass,
    logits kept only for the completion), as RLinf/verl recompute the old and reference log-probs."""
    device = next(model.parameters()).device
    c = len(sample.completion_ids)
    if c == 0:
        return torch.zeros(0, device=device)
    ids = torch.tensor([sample.prompt_ids + sample.completion_ids], device=device)
    logits = model(input_ids=ids, logits_to_keep=c + 1).logits[0, :-1].float() / temperature
    target = torch.tensor(sample.completion_ids, device=device)
    return torch.log_softmax(logits, dim=-1).gather(-1, target[:, None])[:, 0]


def turn_chains(samples: Sequence[TurnSample]) -> list[list[int]]:
    """Indices of ``samples`` grouped into chains that one forward pass can score: the turns of one agent of
    one rollout, in turn order, each of whose prompts starts with the previous turn's prompt + completion
    tokens (the conversation grew only by appending). A turn that breaks the prefix (the runtime re-rendered
    a reply differently from the sampled tokens) starts a new chain, so every sample is in exactly one."""
    by: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(samples):
        by.setdefault((s.traj, s.agent), []).append(i)
    chains: list[list[int]] = []
    for idx in by.values():
        idx.sort(key=lambda i: samples[i].turn)
        chain = [idx[0]]
        for i in idx[1:]:
            prev = samples[chain[-1]]
            pre = prev.prompt_ids + prev.completion_ids
            if samples[i].prompt_ids[: len(pre)] == pre:
                chain.append(i)
            else:
                chains.append(chain)
                chain = [i]
        chains.append(chain)
    return chains


def chain_logprobs(model: Any, samples: Sequence[TurnSample], temperature: float = 1.0) -> list[torch.Tensor]:
    """:func:`turn_logprobs` of each sample of one :func:`turn_chains` chain from ONE forward pass over the
    last sample's prompt + completion (logits only at the completion positions). Causal attention makes each
    token's log-prob depend only on its prefix, which is the same as in its own turn's sequence, so the values
    equal the per-turn passes (verl's multi-turn layout) at a fraction of the prompt tokens."""
    if len(samples) == 1:
        return [turn_logprobs(model, samples[0], temperature)]
    device = next(model.parameters()).device
    last = samples[-1]
    ids = torch.tensor([last.prompt_ids + last.completion_ids], device=device)
    positions = [range(len(s.prompt_ids) - 1, len(s.prompt_ids) + len(s.completion_ids) - 1) for s in samples]
    keep = torch.tensor([p for r in positions for p in r], dtype=torch.long, device=device)
    if keep.numel() == 0:
        return [torch.zeros(0, device=device) for _ in samples]
    logits = model(input_ids=ids, logits_to_keep=keep).logits[0].float() / temperature
    target = torch.tensor([t for s in samples for t in s.completion_ids], device=device)
    lp = torch.log_softmax(logits, dim=-1).gather(-1, target[:, None])[:, 0]
    return list(torch.split(lp, [len(s.completion_ids) for s in samples]))


def sequence_logprobs(model: Any, samples: Sequence[TurnSample], temperature: float = 1.0,
                      grad: bool = False, pack: bool = False) -> list[torch.Tensor]:
    """:func:`turn_logprobs` of every sample (without autograd unless ``grad``); with ``pack`` the turns of
    each :func:`turn_chains` chain share one forward pass (:func:`chain_logprobs`)."""
    with torch.enable_grad() if grad else torch.no_grad():
        if not pack:
            return [turn_logprobs(model, s, temperature) for s in samples]
        out: list[torch.Tensor | None] = [None] * len(samples)
        for chain in turn_chains(samples):
            for i, lp in zip(chain, chain_logprobs(model, [samples[i] for i in chain], temperature), strict=True):
                out[i] = lp
        return [x for x in out if x is not None]
