"""Reward shaping and the choice of trainable turns for one multi-agent rollout, as data.

WideSeek-R1 (arXiv 2602.04634, Sec. 3.2) gives every agent of a rollout the same outcome reward; RLinf
(``rlinf/agents/wideseek_r1/utils/reward.py``, ``credit_assignment``; values from
``examples/agent/wideseek_r1/config/base_train.yaml``) shapes it and picks which turns enter the
training batch:

- **Shaping**: ``reward = outcome + format_reward (0.1) + access_reward (0.05, when any subagent or the
  single agent called ``access``) - length_penalty``, where the length penalty is ``0.1 * t`` with
  ``t = clip((L - 3000) / (5000 - 3000), 0, 1)`` and ``L`` the longest single turn (completion tokens) of
  the rollout, over every agent.
- **Failure flags** per turn: ``max_turn_limit_failed`` on every turn of an agent that hit its turn limit,
  ``context_failed`` on every turn of an agent whose context overflowed, ``turn_repeat_failed`` on the
  last turn of such an agent when that turn is at least 8,000 tokens long (a runaway, repetitive
  generation). An agent stopped by model-server errors is flagged ``context_failed`` here (RLinf has no
  such case; its turns are never trained as successes).
- **Trainable turns**: valid format and the lead not failed: every turn without a failure flag, reward as
  above. Valid format but the lead (or single agent) failed: reward 0, only the lead's failed turns.
  Invalid format: reward 0, the last turn when the lead ended on its own, plus the repetitive turns if
  there are any, otherwise every turn that hit a turn or context limit.

:func:`credit` computes all of this from a :class:`~leanlm.wideseek.agents.RunResult`; the result is a
plain dataclass that the training code (issue 13) reads, and ``RunResult.credit`` is the shortcut.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leanlm.wideseek.agents import RunResult


@dataclass(frozen=True)
class RewardConfig:
    """RLinf's shaping constants (``base_train.yaml``); set any to 0 to switch that term off."""

    format_reward: float = 0.1
    access_reward: float = 0.05
    length_limit: int = 3000
    max_length_limit: int = 5000
    length_penalty: float = 0.1
    repeat_tokens: int = 8000

    def __post_init__(self) -> None:
        if self.max_length_limit <= self.length_limit:
            raise ValueError(f"RewardConfig.max_length_limit ({self.max_length_limit}) must exceed length_limit "
                             f"({self.length_limit})")


@dataclass
class TurnRecord:
    """One model call of one agent: the unit RLinf trains on (one prompt/response sequence)."""

    agent: str  # lead, sub-1..N (creation order = RLinf's idx_to_sub_traj), or single
    role: str  # lead, subagent or single
    turn: int  # 1-based within the agent
    completion_tokens: int
    context_failed: bool = False
    max_turn_limit_failed: bool = False
    turn_repeat_failed: bool = False

    @property
    def failed(self) -> bool:
        return self.context_failed or self.max_turn_limit_failed

    @property
    def sub_traj(self) -> int:
        """RLinf's ``idx_to_sub_traj``: 0 for the lead or single agent, i for ``sub-i``."""
        return int(self.agent.split("-")[1]) if self.agent.startswith("sub-") else 0


@dataclass
class Credit:
    """The shaped reward of a rollout and which of its turns are trained (module doc)."""

    reward: float
    outcome: float
    format_ok: bool
    format_bonus: float
    access_bonus: float
    length_penalty: float
    longest_turn_tokens: int
    case: str  # "ok", "lead_failed" or "bad_format"
    turns: list[TurnRecord] = field(default_factory=list)
    trainable: list[tuple[str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["trainable"] = [list(t) for t in self.trainable]
        return out


def turn_records(result: RunResult, repeat_tokens: int = 8000) -> list[TurnRecord]:
    """Every successful model call of the run, with RLinf's failure flags (module doc)."""
    status = {run.agent: run.status for run in [result.lead, *result.subagents]}
    records: list[TurnRecord] = []
    for event in result.trace.of(type="llm_call"):
        if not event.get("ok", True):
            continue
        agent = event["agent"]
        role = "lead" if agent == "lead" else "single" if agent == "single" else "subagent"
        records.append(TurnRecord(agent, role, int(event["turn"]), int(event.get("completion_tokens") or 0)))
    for agent, state in status.items():
        mine = [r for r in records if r.agent == agent]
        for r in mine:
            r.max_turn_limit_failed = state == "turn_limit"
            r.context_failed = state in ("context_overflow", "backend_error")
        if state == "context_overflow" and mine and mine[-1].completion_tokens >= repeat_tokens:
            mine[-1].turn_repeat_failed = True
    return records


def credit(result: RunResult, outcome: float, format_ok: bool, config: RewardConfig | None = None) -> Credit:
    """Shaped reward and trainable turns of ``result`` given its outcome reward (e.g. item F1) and whether
    its final answer had a valid format (a parseable table, or a ``\\boxed{}`` answer)."""
    cfg = config or RewardConfig()
    turns = turn_records(result, cfg.repeat_tokens)
    accessed = any(e["name"] == "access" and not e.get("malformed") for e in result.trace.of(type="tool_call"))
    longest = max((t.completion_tokens for t in turns), default=0)
    t = (longest - cfg.length_limit) / (cfg.max_length_limit - cfg.length_limit)
    penalty = cfg.length_penalty * min(1.0, max(0.0, t))
    top = {"lead", "single"}
    lead_failed = any(t.failed and t.role in top for t in turns) or result.status in ("turn_limit", "context_overflow",
                                                                                   "backend_error")
    key = [(t.agent, t.turn) for t in turns]
    if format_ok and not lead_failed:
        return Credit(outcome + cfg.format_reward + (cfg.access_reward if accessed else 0.0) - penalty, outcome, True,
                      cfg.format_reward, cfg.access_reward if accessed else 0.0, penalty, longest, "ok", turns,
                      [k for k, t in zip(key, turns, strict=True) if not t.failed])
    if format_ok:
        return Credit(0.0, outcome, True, 0.0, 0.0, 0.0, longest, "lead_failed", turns,
                      [k for k, t in zip(key, turns, strict=True) if t.failed and t.role in top])
    chosen: list[tuple[str, int]] = []
    if result.status == "answered" and result.lead.turns:
        chosen.append((result.lead.agent, result.lead.turns))  # the final answer turn of the lead
    repeats = [k for k, t in zip(key, turns, strict=True) if t.turn_repeat_failed]
    extra = repeats or [k for k, t in zip(key, turns, strict=True) if t.failed]
    chosen += [k for k in extra if k not in chosen]
    return Credit(0.0, outcome, False, 0.0, 0.0, 0.0, longest, "bad_format", turns, chosen)
