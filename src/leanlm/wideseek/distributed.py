"""Scale-out: rollout workers as Ray actors, the learner data-parallel on torch.distributed (gloo on CPU).

The layout RLinf and verl use, on existing engines only:

- :class:`RolloutWorker` (a Ray actor) holds its own copy of the policy and the in-process batched backend
  (:mod:`leanlm.wideseek.rollout`); each step it loads the weights the driver broadcast through the Ray
  object store, runs its share of the prompts (G rollouts each) and returns the scored, credited turns.
- :class:`Learner` (a Ray actor per rank) joins a ``torch.distributed`` gloo process group; each rank
  computes the loss of its shard of the trained turns with the *global* advantages and token weights
  (so the shards' losses sum to the single-process loss), the gradients are summed with ``all_reduce``
  before clipping, and every rank takes the same AdamW step.
- :class:`DistributedTrainer` (the driver) draws prompts, splits them over the workers, computes the
  group advantages and weights (:func:`leanlm.wideseek.train.prepare_batch`) and shards the turns.

On a GPU cluster the same code runs with GPU actors (``num_gpus``) and NCCL; a vLLM or SGLang engine can
replace :class:`~leanlm.wideseek.rollout.TransformersBackend` inside the worker (it only has to return
token ids and log-probs per turn), which is the documented extension point.
"""

from __future__ import annotations

import copy
import random
import socket
import time
from collections.abc import Sequence
from typing import Any

import torch

from leanlm.common.progress import get_logger
from leanlm.wideseek.grpo import sequence_logprobs, summarize_metrics
from leanlm.wideseek.tasks import Task
from leanlm.wideseek.train import Batch, RewardFn, TrainConfig, prepare_batch, score_rollout, update

log = get_logger("leanlm.wideseek.distributed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RolloutWorkerImpl:
    """Generates and scores rollouts with its own policy copy (wrapped as a Ray actor by :func:`actors`)."""

    def __init__(self, model: Any, tokenizer: Any, cfg: TrainConfig, tools: Any, reward_fn: RewardFn | None,
                 seed: int):
        from leanlm.wideseek.rollout import TransformersBackend

        torch.set_num_threads(1)
        torch.manual_seed(seed)
        self.model, self.cfg, self.tools = model, cfg, tools
        self.reward_fn = reward_fn or score_rollout
        self.backend = TransformersBackend(model, tokenizer, max_new_tokens=cfg.max_new_tokens,
                                           temperature=cfg.temperature, max_context=cfg.max_context,
                                           role_max_new_tokens=cfg.role_max_new_tokens, kv_reuse=cfg.kv_reuse)

    def rollout(self, weights: dict[str, torch.Tensor], tasks: Sequence[Task], group_offset: int) -> dict[str, Any]:
        from leanlm.wideseek.rollout import rollout_group

        self.model.load_state_dict(weights, strict=False)
        self.backend.tokens = 0
        fmts = ["qa" if t.kind == "qa" else "table" for t in tasks]
        rolls = rollout_group(self.backend, self.tools, self.cfg.agent_config(), [t.query for t in tasks], fmts,
                              self.cfg.group_size, self.cfg.mode)
        for r in rolls:  # make groups and trajectories global
            r.group += group_offset
            r.traj += group_offset * self.cfg.group_size
            for s in r.samples:
                s.group, s.traj = r.group, r.traj
        scored = [(r, self.reward_fn(tasks[r.task_index], r.result)) for r in rolls]
        return {"rolls": [(r.task_index, r.group, r.traj, r.samples, r.result.lead.turns, len(r.result.subagents),
                           r.result) for r, _ in scored],
                "scores": [s for _, s in scored], "tokens": self.backend.tokens}


class LearnerImpl:
    """One data-parallel rank of the learner (wrapped as a Ray actor by :func:`actors`)."""

    def __init__(self, model: Any, cfg: TrainConfig, rank: int, world: int, port: int):
        torch.set_num_threads(1)
        self.model, self.cfg, self.rank, self.world, self.port = model, cfg, rank, world, port
        self.ref = copy.deepcopy(model).eval() if cfg.kl_beta else None
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=cfg.adam_eps,
                                           weight_decay=cfg.weight_decay)

    def setup(self) -> int:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{self.port}", rank=self.rank,
                                world_size=self.world)
        return self.rank

    def update(self, batch: Batch) -> dict[str, Any]:
        import torch.distributed as dist

        def reduce(params: list[torch.nn.Parameter]) -> None:
            for p in params:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

        def ref_fn(samples: Sequence[Any]) -> list[torch.Tensor] | None:
            return None if self.ref is None else sequence_logprobs(self.ref, samples, self.cfg.temperature)

        loss, sums, grad_norm = update(self.model, ref_fn, self.optimizer, batch, self.cfg, reduce=reduce)
        total = torch.tensor([loss])
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return {"loss": float(total), "local_loss": loss, "sums": sums, "grad_norm": grad_norm}

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def checksum(self) -> float:
        return float(sum(p.detach().double().sum() for p in self.model.parameters()))

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def actors() -> tuple[Any, Any]:
    """The Ray actor classes (created lazily so that importing this module does not need Ray)."""
    import ray

    return ray.remote(num_cpus=0)(RolloutWorkerImpl), ray.remote(num_cpus=0)(LearnerImpl)


class DistributedTrainer:
    """``workers`` Ray rollout actors and ``learners`` gloo ranks training one policy (module doc)."""

    def __init__(self, cfg: TrainConfig, model: Any, tokenizer: Any, tools: Any, tasks: Sequence[Task],
                 reward_fn: RewardFn | None = None, workers: int = 2, learners: int = 2):
        import ray

        if cfg.prompts_per_step < workers:
            raise ValueError(f"prompts_per_step ({cfg.prompts_per_step}) must be >= workers ({workers})")
        if not ray.is_initialized():
            ray.init(num_cpus=max(2, workers + learners), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        worker_cls, learner_cls = actors()
        self.cfg, self.tasks, self.rng = cfg, list(tasks), random.Random(cfg.seed)
        self.reward_fn = reward_fn or score_rollout
        port = _free_port()
        self.learners = [learner_cls.remote(copy.deepcopy(model), cfg, r, learners, port) for r in range(learners)]
        ray.get([learner.setup.remote() for learner in self.learners])
        self.workers = [worker_cls.remote(copy.deepcopy(model), tokenizer, cfg, tools, reward_fn, cfg.seed + 1 + i)
                        for i in range(workers)]
        self.step = 0

    def train_step(self) -> dict[str, Any]:
        import ray

        from leanlm.wideseek.rollout import Rollout

        t0 = time.perf_counter()
        tasks = self.rng.sample(self.tasks, min(self.cfg.prompts_per_step, len(self.tasks)))
        weights = ray.put(ray.get(self.learners[0].weights.remote()))  # broadcast through the object store
        n = len(self.workers)
        bounds = [round(i * len(tasks) / n) for i in range(n + 1)]
        shares = [list(range(bounds[i], bounds[i + 1])) for i in range(n)]  # contiguous: group id = task index
        outs = ray.get([w.rollout.remote(weights, [tasks[j] for j in share], share[0])
                        for w, share in zip(self.workers, shares, strict=True) if share])
        shares = [share for share in shares if share]
        rolls, scores = [], {}
        for share, out in zip(shares, outs, strict=False):
            for (task_index, group, traj, samples, _, _, result), score in zip(out["rolls"], out["scores"],
                                                                               strict=True):
                rolls.append(Rollout(share[task_index], group, traj, result, samples))
                result.traj_index = traj
                scores[traj] = score
        t_roll = time.perf_counter() - t0
        batch = prepare_batch(rolls, tasks, lambda task, result: scores[result.traj_index], self.cfg)
        self.last_batch = batch
        k = len(self.learners)
        shards = [Batch([batch.samples[i] for i in range(r, len(batch.samples), k)],
                        [batch.advantages[i] for i in range(r, len(batch.samples), k)],
                        [batch.weights[i] for i in range(r, len(batch.samples), k)], {}) for r in range(k)]
        results = ray.get([learner.update.remote(shard) for learner, shard in zip(self.learners, shards, strict=True)])
        sums: dict[str, float] = {}
        for res in results:
            for key, v in res["sums"].items():
                sums[key] = sums.get(key, 0.0) + v
        self.step += 1
        return {"step": self.step, "loss": results[0]["loss"], **summarize_metrics(sums),
                "grad_norm": results[0]["grad_norm"], **batch.stats, "rollout_s": round(t_roll, 3),
                "seconds": round(time.perf_counter() - t0, 3)}

    def checksums(self) -> list[float]:
        import ray

        return ray.get([learner.checksum.remote() for learner in self.learners])

    def shutdown(self) -> None:
        import ray

        ray.get([learner.shutdown.remote() for learner in self.learners])
        for actor in [*self.learners, *self.workers]:
            ray.kill(actor)
