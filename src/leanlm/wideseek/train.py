"""``leanlm wideseek train --config FILE``: multi-agent GRPO on the offline world's training families.

One step (WideSeek-R1, arXiv 2602.04634, Sec. 3.2; RLinf's ``examples/agent/wideseek_r1``):

1. draw ``prompts_per_step`` training tasks; run ``group_size`` rollouts of each, all concurrently, with the
   in-process batched backend (:mod:`leanlm.wideseek.rollout`), which records every turn's tokens and
   sampling log-probs, tagged by rollout and agent;
2. score each rollout (item F1 on the gold table), shape it and pick the trainable turns
   (:func:`leanlm.wideseek.rewards.credit`); z-score the rewards within each group
   (:func:`leanlm.wideseek.grpo.group_advantages`); keep the trainable turns of the roles being trained;
3. the old log-probs (with one PPO epoch: the update's own forward, detached; else one teacher-forced pass, as
   RLinf and verl do) and the reference log-probs with the frozen initial model (LoRA: the base model with the
   adapter disabled); an agent's consecutive turns share one forward pass when their prompts extend each other;
4. ``ppo_epochs`` AdamW updates on the multi-agent GRPO loss (:mod:`leanlm.wideseek.grpo`), backpropagated
   turn by turn, gradient-norm clipped.

Every step appends a line to ``<out>/metrics.jsonl`` (reward, item F1, success, format rate, subagents per
lead turn, loss, KL, clip fractions, tokens, seconds); ``<out>/curves.png`` plots reward, F1 and width.
Checkpoints (:mod:`leanlm.wideseek.checkpoint`) every ``checkpoint_every`` steps hold the trainable weights,
the optimizer, every RNG and the step; a rerun with the same ``out`` resumes from the newest one and
continues exactly (same next-step loss as an uninterrupted run when rollouts batch the same way).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write_json
from leanlm.common.progress import get_logger, progress_bar
from leanlm.wideseek import checkpoint
from leanlm.wideseek.agents import AgentConfig, RunResult
from leanlm.wideseek.grpo import (
    GRPOConfig,
    TurnSample,
    chain_logprobs,
    group_advantages,
    sequence_logprobs,
    summarize_metrics,
    token_weights,
    turn_chains,
    turn_loss,
)
from leanlm.wideseek.rewards import RewardConfig
from leanlm.wideseek.rollout import Rollout, TransformersBackend, rollout_group
from leanlm.wideseek.tasks import Task

log = get_logger("leanlm.wideseek.train")


@dataclass
class TrainConfig:
    """Every knob of a training run; a config file sets any subset (TOML, JSON or YAML)."""

    out: str = "runs/wideseek-marl"
    model: str = "embedded"
    init: str | None = None  # a Hugging Face directory to start from (e.g. the SFT model)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    steps: int = 20
    prompts_per_step: int = 1
    group_size: int = 4
    ppo_epochs: int = 1
    lr: float = 1e-6
    weight_decay: float = 0.01
    adam_eps: float = 1e-5
    grad_clip: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.28
    clip_c: float | None = 10.0
    kl_beta: float = 0.001
    agent_level: bool = True
    train_roles: str = "all"  # all, lead or subagents (the paper's ablations)
    mode: str = "multi"  # multi (lead + subagents) or single (SingleSeek baseline)
    max_new_tokens: int = 256
    role_max_new_tokens: dict[str, int] | None = None  # per-role reply caps, e.g. {"lead": 384, "sub": 96}
    kv_reuse: bool = True  # cross-turn KV reuse in the rollout backend (same tokens, less prefill)
    temperature: float = 1.0
    max_context: int = 4096
    max_lead_turns: int = 3
    max_sub_turns: int = 4
    max_single_turns: int = 12
    max_subagents: int = 4
    few_shot: bool = False
    split: str = "train"
    min_rows: int = 2
    max_rows: int = 40
    column_sets: int = 1  # training families asked for this many column sets (tasks.COLUMN_SETS)
    wiki_limit: int | None = 2000
    checkpoint_every: int = 5
    keep_checkpoints: int = 1
    seed: int = 0
    device: str = "cpu"
    recompute_old_logprobs: bool = False  # with one PPO epoch the update's own forward gives them (bit for bit)
    pack_turns: bool = True  # score an agent's consecutive turns in one forward pass when prefixes match

    def __post_init__(self) -> None:
        if self.train_roles not in ("all", "lead", "subagents"):
            raise ValueError(f"train_roles must be all, lead or subagents, got {self.train_roles!r}")
        if self.mode not in ("multi", "single"):
            raise ValueError(f"mode must be multi or single, got {self.mode!r}")
        for name in ("steps", "prompts_per_step", "group_size", "ppo_epochs", "max_new_tokens", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.grpo()  # validates the clip and KL settings before any model is loaded

    def agent_config(self) -> AgentConfig:
        return AgentConfig(max_lead_turns=self.max_lead_turns, max_sub_turns=self.max_sub_turns,
                           max_single_turns=self.max_single_turns, max_subagents_per_call=self.max_subagents,
                           max_subagents_per_turn=self.max_subagents, max_concurrency=max(1, self.max_subagents),
                           context_tokens=self.max_context, few_shot=self.few_shot)

    def grpo(self) -> GRPOConfig:
        return GRPOConfig(eps_low=self.eps_low, eps_high=self.eps_high, clip_c=self.clip_c, kl_beta=self.kl_beta,
                          agent_level=self.agent_level, temperature=self.temperature)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        """Read TOML (``.toml``), JSON (``.json``) or YAML (``.yaml``/``.yml``); unknown keys are an error."""
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ValueError(f"{p}: config must be .toml, .json or .yaml, got {p.suffix!r}")
        if not isinstance(data, dict):
            raise ValueError(f"{p}: the config must be a mapping of settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{p}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{p}: {exc}") from exc


def training_tasks(cfg: TrainConfig) -> list[Task]:
    """The wide tasks of the configured split (training families only for ``train``)."""
    from leanlm.wideseek.tasks import generate_wide_tasks

    tasks = generate_wide_tasks(cfg.split, min_rows=cfg.min_rows, max_rows=cfg.max_rows, column_sets=cfg.column_sets)
    if not tasks:
        raise ValueError(f"no {cfg.split} tasks with {cfg.min_rows}..{cfg.max_rows} rows")
    return tasks


def load_policy(cfg: TrainConfig) -> tuple[Any, Any]:
    """The model to train (``init`` directory, else ``model``) and its tokenizer; LoRA wraps it with peft."""
    from leanlm.common.models import load_model

    loaded = load_model(cfg.init or cfg.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    if tokenizer is None:
        tokenizer = load_model(cfg.model).tokenizer
    model.to(cfg.device)
    if cfg.lora:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    return model, tokenizer


def add_lora(model: Any, r: int, alpha: int) -> Any:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))


RewardFn = Callable[[Task, RunResult], tuple[float, bool, float]]


def score_rollout(task: Task, result: RunResult) -> tuple[float, bool, float]:
    """(item F1 or QA exact match, valid format, success) of one rollout's final answer."""
    from leanlm.wideseek.runner import format_ok

    score = task.score(result.answer)
    outcome = score.score if task.kind == "qa" else score.f1_by_item
    return float(outcome), format_ok(task, result.answer), float(score.score)


class Trainer:
    """Multi-agent GRPO over ``tasks`` (module doc). ``model``/``tokenizer``/``tools``/``tasks``/``reward_fn``
    default to the configured model, the offline world and its training tasks, and :func:`score_rollout`."""

    def __init__(self, cfg: TrainConfig, *, model: Any = None, tokenizer: Any = None, tools: Any = None,
                 tasks: Sequence[Task] | None = None, reward_fn: RewardFn | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if model is None:
            model, tokenizer = load_policy(cfg)
        self.model, self.tokenizer = model, tokenizer
        self.ref = None
        if cfg.kl_beta and not cfg.lora:
            self.ref = copy.deepcopy(model).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
        if tools is None:
            from leanlm.wideseek.runner import default_world

            tools = default_world(cfg.wiki_limit)
        self.tools = tools
        self.tasks = list(tasks) if tasks is not None else training_tasks(cfg)
        self.reward_fn = reward_fn or score_rollout
        self.rng = random.Random(cfg.seed)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=cfg.adam_eps,
                                           weight_decay=cfg.weight_decay)
        self.backend = TransformersBackend(model, tokenizer, max_new_tokens=cfg.max_new_tokens,
                                           temperature=cfg.temperature, max_context=cfg.max_context,
                                           role_max_new_tokens=cfg.role_max_new_tokens, kv_reuse=cfg.kv_reuse)
        self.step = 0
        self.metrics_path = self.out / "metrics.jsonl"

    # ------------------------------------------------------------------------------------------ resume
    def resume(self) -> bool:
        """Load the newest checkpoint under ``out`` (and drop metric lines written after it); True if found.
        Without a checkpoint the run starts at step 0: the metric lines of an earlier run whose checkpoints are
        gone (e.g. a fresh checkout: checkpoints are not committed) are moved to ``metrics.lost-<k>.jsonl``, so
        the new run's steps are not appended after them and the old record is kept."""
        path = checkpoint.latest(self.out)
        if path is None:
            if self.metrics_path.exists():
                k = 1
                while (self.out / f"metrics.lost-{k}.jsonl").exists():
                    k += 1
                self.metrics_path.rename(self.out / f"metrics.lost-{k}.jsonl")
                log.warning("no checkpoint under %s: its metric lines moved to metrics.lost-%d.jsonl", self.out, k)
            return False
        state = checkpoint.load(path, self.model, self.optimizer, self.rng)
        self.step = int(state["step"])
        if self.metrics_path.exists():
            lines = [ln for ln in self.metrics_path.read_text().splitlines() if ln.strip()
                     and json.loads(ln)["step"] <= self.step]
            self.metrics_path.write_text("".join(ln + "\n" for ln in lines))
        log.info("resumed from %s (step %d)", path, self.step)
        return True

    def save(self) -> Path:
        return checkpoint.save(self.out, self.step, self.model, self.optimizer,
                               {"config": dataclasses.asdict(self.cfg)}, self.rng, self.cfg.keep_checkpoints)

    # ------------------------------------------------------------------------------------------ step
    def ref_logprobs(self, samples: Sequence[TurnSample]) -> list[torch.Tensor] | None:
        if not self.cfg.kl_beta:
            return None
        if self.cfg.lora:
            with self.model.disable_adapter():
                return sequence_logprobs(self.model, samples, self.cfg.temperature, pack=self.cfg.pack_turns)
        return sequence_logprobs(self.ref, samples, self.cfg.temperature, pack=self.cfg.pack_turns)

    def rollouts(self, tasks: Sequence[Task]) -> list[Rollout]:
        fmts = ["qa" if t.kind == "qa" else "table" for t in tasks]
        return rollout_group(self.backend, self.tools, self.cfg.agent_config(), [t.query for t in tasks], fmts,
                             self.cfg.group_size, self.cfg.mode)

    def train_step(self) -> dict[str, Any]:
        cfg, t0, c0 = self.cfg, time.perf_counter(), time.process_time()
        tasks = self.rng.sample(self.tasks, min(cfg.prompts_per_step, len(self.tasks)))
        self.backend.tokens, self.backend.generate_s = 0, 0.0
        rolls = self.rollouts(tasks)
        t_roll = time.perf_counter() - t0
        batch = prepare_batch(rolls, tasks, self.reward_fn, cfg)
        t1 = time.perf_counter()
        loss, sums, grad_norm = update(self.model, self.ref_logprobs, self.optimizer, batch, cfg)
        self.step += 1
        row = {"step": self.step, "loss": loss, **summarize_metrics(sums), "grad_norm": grad_norm, **batch.stats,
               "turns": len(self.backend.samples), "generated_tokens": self.backend.tokens,
               "rollout_s": round(t_roll, 3),
               "gen_tokens_per_s": self.backend.tokens / self.backend.generate_s if self.backend.generate_s else 0.0,
               "learn_s": round(time.perf_counter() - t1, 3), "cpu_s": round(time.process_time() - c0, 3),
               "tasks": [t.instance_id for t in tasks]}
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        return row

    def train(self, steps: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
        """Run until ``steps`` (default: the config's) total steps, checkpointing every ``checkpoint_every``."""
        target = steps or self.cfg.steps
        rows = []
        bar = progress_bar(desc="wideseek train", total=target, unit="step") if progress else nullcontext()
        with bar as b:
            if b is not None:
                b.update(self.step)
            while self.step < target:
                row = self.train_step()
                rows.append(row)
                if self.step % self.cfg.checkpoint_every == 0 or self.step == target:
                    self.save()
                if b is not None:
                    b.update(1)
                    b.set_postfix(reward=f"{row['reward']:.3f}", f1=f"{row['f1']:.3f}", loss=f"{row['loss']:.4f}")
        write_curves(self.out)
        return rows

    def export(self, path: str | os.PathLike[str]) -> Path:
        """Save the policy (LoRA merged) and tokenizer as a Hugging Face directory."""
        model = self.model.merge_and_unload() if self.cfg.lora else self.model
        target = Path(path)
        model.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
        return target


@dataclass
class Batch:
    """The trained turns of one step with their rollout advantages and token weights, plus rollout stats."""

    samples: list[TurnSample]
    advantages: list[float]
    weights: list[float]
    stats: dict[str, Any]


def _role_ok(role: str, s: TurnSample) -> bool:
    return role == "all" or (role == "lead" and s.agent == 0) or (role == "subagents" and s.agent > 0)


def prepare_batch(rolls: Sequence[Rollout], tasks: Sequence[Task], reward_fn: RewardFn, cfg: TrainConfig) -> Batch:
    """Score and credit every rollout, z-score rewards per group, keep the trainable turns of the trained
    roles and weigh them (module doc, steps 2)."""
    rewards, outcomes, fmt_ok, success, kept = [], [], [], [], []
    for roll in rolls:
        outcome, ok, succ = reward_fn(tasks[roll.task_index], roll.result)
        credit = roll.result.credit(outcome, ok, RewardConfig())
        rewards.append(credit.reward)
        outcomes.append(outcome)
        fmt_ok.append(ok)
        success.append(succ)
        trainable = set(credit.trainable)
        kept += [s for s in roll.samples if s.key in trainable and _role_ok(cfg.train_roles, s) and s.completion_ids]
    adv_by_traj = dict(zip([r.traj for r in rolls], group_advantages(rewards, [r.group for r in rolls], 1e-6),
                           strict=True))
    groups = {r.group: sum(1 for x in rolls if x.group == r.group) for r in rolls}
    weights = token_weights(kept, groups, agent_level=cfg.agent_level)
    lead_turns = sum(r.result.lead.turns for r in rolls)
    subagents = sum(len(r.result.subagents) for r in rolls)
    n = len(rolls)
    stats = {"reward": sum(rewards) / n, "f1": sum(outcomes) / n, "success": sum(success) / n,
             "format_ok": sum(fmt_ok) / n, "subagents_per_rollout": subagents / n,
             "subagents_per_lead_turn": subagents / lead_turns if lead_turns else 0.0, "trained_turns": len(kept)}
    return Batch(kept, [adv_by_traj[s.traj] for s in kept], weights, stats)


def update(model: Any, ref_fn: Callable[[Sequence[TurnSample]], list[torch.Tensor] | None], optimizer: Any,
           batch: Batch, cfg: TrainConfig, reduce: Callable[[list[torch.nn.Parameter]], None] | None = None,
           ) -> tuple[float, dict[str, float], float]:
    """``ppo_epochs`` optimizer steps on ``batch`` (module doc, steps 3-4): old log-probs by one teacher-forced
    pass, the loss backpropagated turn by turn, ``reduce(params)`` (e.g. an all-reduce of the gradients over
    data-parallel learners) before clipping. Returns the first epoch's loss, its summed metrics and the
    gradient norm. With ``cfg.pack_turns`` the turns of each :func:`~leanlm.wideseek.grpo.turn_chains` chain
    (one agent's turns whose prompts extend each other) share one forward pass and one backward (the same
    log-probs and gradient as turn by turn, far fewer prompt tokens: each turn's prompt repeats the previous).

    With one PPO epoch the old log-probs are those of the parameters being updated, before any update: the
    epoch's own forward pass computes exactly them, so its detached values serve (ratio 1, as in verl and RLinf
    when the recomputed and the training log-probs come from the same weights) and the separate pass, a third
    of the learner's forward work, is skipped unless ``cfg.recompute_old_logprobs``."""
    grpo_cfg = cfg.grpo()
    model.train()
    reuse = cfg.ppo_epochs == 1 and not cfg.recompute_old_logprobs
    old = None if reuse else sequence_logprobs(model, batch.samples, cfg.temperature, pack=cfg.pack_turns)
    ref = ref_fn(batch.samples)
    params = [p for p in model.parameters() if p.requires_grad]
    chains = turn_chains(batch.samples) if cfg.pack_turns else [[i] for i in range(len(batch.samples))]
    loss_total, sums, grad_norm = 0.0, {}, 0.0
    for epoch in range(cfg.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        epoch_loss, epoch_sums = 0.0, {}
        for chain in chains:
            lps = chain_logprobs(model, [batch.samples[i] for i in chain], cfg.temperature)
            chain_loss = None
            for i, lp in zip(chain, lps, strict=True):
                loss, m = turn_loss(lp, lp.detach() if old is None else old[i], None if ref is None else ref[i],
                                    batch.advantages[i], batch.weights[i], grpo_cfg)
                chain_loss = loss if chain_loss is None else chain_loss + loss
                epoch_loss += float(loss.detach())
                for k, v in m.items():
                    epoch_sums[k] = epoch_sums.get(k, 0.0) + v
            if chain_loss is not None and chain_loss.requires_grad:
                chain_loss.backward()
        if reduce is not None:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            reduce(params)
        if any(p.grad is not None for p in params):
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            optimizer.step()
        if epoch == 0:
            loss_total, sums = epoch_loss, epoch_sums
    return loss_total, sums, grad_norm


def write_curves(out: str | os.PathLike[str]) -> Path | None:
    """Plot reward, item F1 and subagents per lead turn over steps from ``metrics.jsonl`` into curves.png
    (and a JSON copy of the series in curves.json)."""
    out = Path(out)
    path = out / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    series = {k: [r.get(k, 0.0) for r in rows] for k in ("reward", "f1", "subagents_per_lead_turn", "loss", "kl")}
    steps = [r["step"] for r in rows]
    atomic_write_json(out / "curves.json", {"step": steps, **series})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(axes, ("reward", "f1", "subagents_per_lead_turn"),
                              ("shaped reward", "item F1", "subagents per lead turn"), strict=True):
        ax.plot(steps, series[key], marker=".")
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.tight_layout()
    tmp = out / ".curves.png.tmp"
    fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    os.replace(tmp, out / "curves.png")
    return out / "curves.png"
