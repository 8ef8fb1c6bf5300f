"""The training study of issue 13: base vs SFT vs SFT+MARL on held-out families, width ablation, single agent.

Stages (each writes under ``<out>/``, skips itself when its output exists, and resumes from its checkpoints,
so the same command continues an interrupted study):

1. ``sft/``: warm start on oracle traces of the training families (:mod:`leanlm.wideseek.sft`); with
   ``single_agent`` also ``sft-single/`` on the single-agent oracle's traces.
2. ``marl-seed{s}/``: multi-agent GRPO from the SFT model (:class:`leanlm.wideseek.train.Trainer`), one run
   per seed, exported to ``model/``; ``single-seed{s}/``: the SingleSeek baseline trained with the same
   number of steps, group size and prompts from ``sft-single``; ``marl-{lead,subagents,noagent}-seed0/``: the
   paper's ablations (train the lead only, the subagents only, no agent-level reweighting).
3. ``evals/<policy>-seed{s}-w{width}.jsonl``: every held-out task run ``n`` times, all in one batched rollout
   group with the in-process backend (item F1 Avg@n, success Avg@n, subagents per rollout), one line per task;
   ``evals/traces/<policy>-seed{s}-w{width}.jsonl``: one transcript per rollout
   (:func:`leanlm.wideseek.transcript.rollout_transcript`: the lead's raw turns, its subagent calls, the
   scored answer and why it is not a valid table).

:data:`STAGES` orders the evaluations so that the headline comparison comes first (seed 0: base, SFT,
SFT+MARL), then seeds 1-2, then the width ablation and the single agent, then the paper's ablations;
``Study.run(stages=...)`` runs a prefix or any subset. Cost of each stage: docs/results/wideseek.md, "study".

:func:`summarize` turns the eval files into the metrics the claims read (means over seeds, the paired
MARL - SFT and MARL - single differences with their t-interval half widths, F1 per width).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write_json
from leanlm.common.progress import get_logger
from leanlm.wideseek.agents import AgentConfig
from leanlm.wideseek.tasks import Task

log = get_logger("leanlm.wideseek.study")

QUICK = {
    "smoke": True, "train_max_rows": 2, "marl_max_rows": 2, "eval_max_rows": 2, "eval_tasks": 1, "n": 1,
    "seeds": [0], "sft_examples": 6, "sft_max_len": 1024, "sft_epochs": 1, "sft_lr": 2e-5, "sft_oracle_widths": None,
    "sft_answer_share": 0.0, "train_column_sets": 1, "steps": 1,
    "group_size": 2, "max_new_tokens": 48, "role_max_new_tokens": {"sub": 32}, "max_context": 2048,
    "max_lead_turns": 2, "max_sub_turns": 3, "max_subagents": 2, "widths": [1, 2], "single_agent": False,
    "ablations": [], "lr": 1e-6, "oracle_width": 2, "wiki_limit": 500, "device": "cpu", "in_distribution": False,
    "long_steps": None,
}
"""The smoke configuration (minutes on a CPU): it checks that every stage runs, its numbers are not evidence."""
FULL = {
    "smoke": False, "train_max_rows": 18, "marl_max_rows": 8, "eval_max_rows": 4, "eval_tasks": 3, "n": 4,
    "seeds": [0, 1, 2], "sft_examples": 128, "sft_max_len": 2560, "sft_epochs": 3, "sft_lr": 2e-5,
    "sft_oracle_widths": [1, 2, 4], "sft_answer_share": 0.3, "train_column_sets": 5, "steps": 6,
    "group_size": 4, "max_new_tokens": 384, "role_max_new_tokens": {"lead": 384, "sub": 96, "single": 128},
    "max_context": 2560, "max_lead_turns": 3, "max_sub_turns": 6, "max_subagents": 4, "widths": [1, 2, 4, 8],
    "single_agent": True, "ablations": ["lead", "subagents", "noagent"], "lr": 1e-5, "oracle_width": 4,
    "wiki_limit": 2000, "device": "cpu", "eval_group_tasks": 1, "in_distribution": True, "long_steps": 18,
}
"""The CPU study. SFT traces come from training tasks of up to ``train_max_rows`` rows, each asked for
``train_column_sets`` column sets, run by the oracle at each width of ``sft_oracle_widths``; ``sft_examples`` of
them of up to ``sft_max_len`` tokens are kept, with ``sft_answer_share`` of them final answers or reports (the
first recipe, 96 examples of 1,536 tokens at width 4 with one column set, held one final table and never taught
the lead to stop: docs/results/wideseek.md, 7e). GRPO prompts come from those
of up to ``marl_max_rows`` (with the 17-18-row tasks a rollout costs twice the prompt tokens, 61k vs 29k, and
the oracle itself reaches item F1 0.5 under these turn limits, vs 1.0). Reply caps per role from the oracle's longest replies
(lead: final table and decomposition, at most 358 tokens on the training tasks; subagent at most 92;
single agent at most 119); see docs/results/wideseek.md, "study", for the measurements. Evaluations run one
task's ``n`` rollouts per batched group (``eval_group_tasks`` 1): a group's lines land when it ends, and on this
machine no process outlives a 3-hour session, so a 3-task group that took longer was lost whole (2026-11-30).
``long_steps``: the first seed's GRPO run continued to 18 steps (``marl-long-seed0``, stages ``long`` and
``long-in-distribution``): does the policy learn what GRPO rewards given three times the steps?
GRPO's ``lr`` is 1e-5, not the paper's 1e-6: a CPU-scale deviation. The paper takes ~156 steps, this study 6;
a one-step probe from the SFT policy (``bench/wideseek_lr_probe.py``, docs/results/wideseek.md, 7g) moved the
batch's log-probs by 0.4% at 1e-6 (KL 1.2e-4) and by 4% at 1e-5 (KL 0.009, a usual PPO step's size)."""

ABLATIONS = {"lead": {"train_roles": "lead"}, "subagents": {"train_roles": "subagents"},
             "noagent": {"agent_level": False}}
"""The paper's ablations (Sec. 4.4): train the lead only, the subagents only, no agent-level reweighting."""

STAGES = ("headline", "in-distribution", "seeds", "long", "long-in-distribution", "width", "single", "ablations",
          "single-seeds")
"""Study stages in run order (see :meth:`Study.plan`)."""
SPLITS = {"heldout": "evals", "train": "evals-train"}
"""Evaluation task sets and their folders: ``heldout`` (:func:`eval_tasks`, families never trained on) and
``train`` (:func:`train_eval_tasks`, prompts of GRPO's own pool: in distribution, possibly trained on)."""


def eval_tasks(config: dict[str, Any]) -> list[Task]:
    """The first ``eval_tasks`` held-out tasks (families never trained on) with at most ``eval_max_rows`` rows."""
    from leanlm.wideseek.tasks import generate_wide_tasks

    tasks = generate_wide_tasks("eval", min_rows=2, max_rows=config["eval_max_rows"])
    return tasks[: config["eval_tasks"]]


def train_eval_tasks(config: dict[str, Any]) -> list[Task]:
    """``eval_tasks`` prompts of GRPO's pool (training tasks of at most ``marl_max_rows`` rows, every column set),
    spread evenly over it: an in-distribution check that the policy learns what GRPO rewards. Seed 0's 6 steps
    draw 6 of the pool's 15 prompts, so some of these may have been trained on."""
    from leanlm.wideseek.tasks import generate_wide_tasks

    pool = generate_wide_tasks("train", min_rows=2, max_rows=config.get("marl_max_rows", config["train_max_rows"]),
                               column_sets=config.get("train_column_sets", 1))
    n = min(config["eval_tasks"], len(pool))
    return [pool[(i * len(pool)) // n] for i in range(n)]


def train_tasks(config: dict[str, Any]) -> list[Task]:
    from leanlm.wideseek.tasks import generate_wide_tasks

    return generate_wide_tasks("train", min_rows=2, max_rows=config["train_max_rows"],
                               column_sets=config.get("train_column_sets", 1))


def _train_config(config: dict[str, Any], out: Path, init: str, seed: int, mode: str = "multi",
                  ablation: str | None = None, steps: int | None = None) -> Any:
    from leanlm.wideseek.train import TrainConfig

    return TrainConfig(out=str(out), init=init, steps=steps or config["steps"], group_size=config["group_size"], seed=seed,
                       lr=config["lr"], max_new_tokens=config["max_new_tokens"], max_context=config["max_context"],
                       role_max_new_tokens=config.get("role_max_new_tokens"), kv_reuse=config.get("kv_reuse", True),
                       max_lead_turns=config["max_lead_turns"], max_sub_turns=config["max_sub_turns"],
                       max_subagents=config["max_subagents"],
                       max_rows=config.get("marl_max_rows", config["train_max_rows"]), mode=mode,
                       column_sets=config.get("train_column_sets", 1),
                       max_single_turns=config["max_lead_turns"] * config["max_sub_turns"],
                       checkpoint_every=1, wiki_limit=config["wiki_limit"], device=config.get("device", "cpu"),
                       **ABLATIONS.get(ablation or "", {}))


class Study:
    def __init__(self, config: dict[str, Any], out: str | Path):
        self.config, self.out = config, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "config.json", config)
        from leanlm.wideseek.runner import default_world

        self.tools = default_world(config["wiki_limit"])
        self.timings: dict[str, float] = json.loads((self.out / "timings.json").read_text()) \
            if (self.out / "timings.json").exists() else {}

    def _set_aside_lost_timing(self, name: str, run_dir: Path) -> None:
        """A training run starting from scratch (no checkpoint under ``run_dir``) while ``timings.json`` holds
        ``name``: its checkpoints and model were lost (a fresh checkout: they are not committed), so the old
        seconds move to ``<name>.lost-<k>`` instead of being added to the new run's."""
        from leanlm.wideseek import checkpoint

        if name in self.timings and checkpoint.latest(run_dir) is None:
            k = 1
            while f"{name}.lost-{k}" in self.timings:
                k += 1
            self.timings[f"{name}.lost-{k}"] = self.timings.pop(name)
            atomic_write_json(self.out / "timings.json", self.timings)

    def _timed(self, name: str, t0: tuple[float, float]) -> None:
        """Add the wall and CPU seconds (this process, all threads) since ``t0`` (:func:`_now`) to ``name``;
        a run resumed over several sessions accumulates."""
        old = self.timings.get(name, {})
        old = old if isinstance(old, dict) else {"wall_s": float(old), "cpu_s": 0.0}
        wall, cpu = _now()
        self.timings[name] = {"wall_s": round(old.get("wall_s", 0.0) + wall - t0[0], 1),
                              "cpu_s": round(old.get("cpu_s", 0.0) + cpu - t0[1], 1)}
        atomic_write_json(self.out / "timings.json", self.timings)

    # ------------------------------------------------------------------------------------------ stages
    def sft(self, mode: str = "multi") -> Path:
        from leanlm.common.models import load_embedded
        from leanlm.wideseek.sft import oracle_examples, select_examples, train_sft

        name = "sft" if mode == "multi" else "sft-single"
        target = self.out / name / "model"
        if (target / "config.json").exists():
            return target
        self._set_aside_lost_timing(name, self.out / name)
        t0 = _now()
        cfg = self.config
        model, tok = load_embedded()
        model.to(cfg.get("device", "cpu"))
        # the oracle runs with the paper's turn limits so that its traces are complete, successful runs; one pass
        # per width of ``sft_oracle_widths`` (default: ``oracle_width`` only), pooled
        examples, per_width = [], {}
        for w in cfg.get("sft_oracle_widths") or [cfg["oracle_width"]]:
            agent_cfg = AgentConfig(max_lead_turns=10, max_sub_turns=20, max_single_turns=50,
                                    max_subagents_per_call=w, max_subagents_per_turn=w, max_concurrency=w,
                                    few_shot=False)
            found, per_width[w] = oracle_examples(train_tasks(cfg), self.tools, agent_cfg, tok, width=w, mode=mode,
                                                  max_len=cfg["sft_max_len"])
            examples += found
        stats = {k: sum(v[k] for v in per_width.values()) for k in next(iter(per_width.values())) if k != "oracle_f1"}
        stats["oracle_f1"] = sum(v["oracle_f1"] for v in per_width.values()) / len(per_width)
        if len(per_width) > 1:
            stats["per_width"] = per_width
        examples = select_examples(examples, cfg["sft_examples"], cfg.get("sft_answer_share", 0.0))
        stats["used"] = len(examples)
        stats["used_answers"] = sum(e.answer for e in examples)
        stats["used_by_kind"] = {kind: sum(1 for e in examples if (e.agent in ("lead", "single"), e.answer) == key)
                                 for kind, key in (("lead_calls", (True, False)), ("lead_answers", (True, True)),
                                                   ("subagent_calls", (False, False)),
                                                   ("subagent_reports", (False, True)))}
        stats["used_answer_token_share"] = round(sum(len(e.target_ids) for e in examples if e.answer)
                                                 / max(1, sum(len(e.target_ids) for e in examples)), 4)
        atomic_write_json(self.out / name / "traces.json", stats)
        train_sft(model, tok, examples, self.out / name, epochs=cfg["sft_epochs"], lr=cfg["sft_lr"], batch=8,
                  checkpoint_every=5)
        self._timed(name, t0)
        return target

    def marl(self, seed: int, mode: str = "multi", ablation: str | None = None, long: bool = False) -> Path:
        """Train (or find) the GRPO policy of ``seed``: multi-agent, ``single`` agent, or an :data:`ABLATIONS`
        variant of the multi-agent run; ``long``: the multi-agent run continued to ``long_steps`` steps
        (``marl-long-seed{s}``), started from ``marl-seed{s}``'s last checkpoint when it is on disk (the same run:
        constant lr, RNGs restored; :func:`seed_long_run`), else from the SFT model."""
        from leanlm.wideseek.train import Trainer

        if ablation is not None and ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; known: {', '.join(ABLATIONS)}")
        if long and (ablation or mode != "multi" or not self.config.get("long_steps")):
            raise ValueError("a long run is the multi-agent run without ablation, and needs config['long_steps']")
        name = f"marl-long-seed{seed}" if long else \
            (f"marl-{ablation}-seed{seed}" if ablation else f"marl-seed{seed}") if mode == "multi" \
            else f"single-seed{seed}"
        target = self.out / name / "model"
        if (target / "config.json").exists():
            return target
        init = self.sft(mode)
        self._set_aside_lost_timing(name, self.out / name)
        if long and seed_long_run(self.out / f"marl-seed{seed}", self.out / name, self.config["steps"]):
            log.info("%s continues marl-seed%d from its step %d", name, seed, self.config["steps"])
        t0 = _now()
        steps = self.config["long_steps"] if long else None
        trainer = Trainer(_train_config(self.config, self.out / name, str(init), seed, mode, ablation, steps),
                          tools=self.tools)
        trainer.resume()
        trainer.train()
        trainer.export(target)
        self._timed(name, t0)
        return target

    def evaluate(self, policy: str, seed: int, width: int, mode: str = "multi", split: str = "heldout") -> Path:
        """Run every task of ``split`` (:data:`SPLITS`: held-out families by default) ``n`` times with the
        policy's model; one JSON line per task. The tasks' rollouts run in batched groups of ``eval_group_tasks``
        tasks (default: all in one group; their turns share ``generate`` calls); each group's lines are written
        when it ends, so a killed evaluation resumes at the first task without a line. ``policy`` is ``base``,
        ``sft``, ``marl``, ``marl-long``, ``single`` or ``marl-<ablation>``."""
        from leanlm.common.models import load_model

        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        cfg = self.config
        path = self.out / SPLITS[split] / f"{policy}-seed{seed}-w{width}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        done = {json.loads(x)["task"] for x in path.read_text().splitlines() if x.strip()} if path.exists() else set()
        chosen = eval_tasks(cfg) if split == "heldout" else train_eval_tasks(cfg)
        tasks = [t for t in chosen if t.instance_id not in done]
        if not tasks:
            return path
        if policy == "base":
            spec: Any = "embedded"
        elif policy == "sft":
            spec = self.sft("multi")
        elif policy == "marl":
            spec = self.marl(seed)
        elif policy == "single":
            spec = self.marl(seed, "single")
        elif policy == "marl-long":
            spec = self.marl(seed, long=True)
        elif policy.startswith("marl-"):
            spec = self.marl(seed, ablation=policy.removeprefix("marl-"))
        else:
            raise ValueError(f"unknown policy {policy!r}")
        loaded = load_model(str(spec))
        tok = loaded.tokenizer or load_model("embedded").tokenizer
        model = loaded.model.to(cfg.get("device", "cpu"))
        size = cfg.get("eval_group_tasks") or len(tasks)
        for start in range(0, len(tasks), size):
            self._evaluate_group(path, tasks[start:start + size], model, tok, policy, seed, width, mode)
        return path

    def _evaluate_group(self, path: Path, tasks: list[Task], model: Any, tok: Any, policy: str, seed: int,
                        width: int, mode: str) -> None:
        """One batched group: ``n`` rollouts of each of ``tasks``; appends their transcripts, then their lines."""
        from leanlm.wideseek.rollout import TransformersBackend, rollout_group
        from leanlm.wideseek.train import score_rollout
        from leanlm.wideseek.transcript import rollout_transcript

        cfg = self.config
        t0 = _now()
        agent_cfg = _train_config(cfg, self.out, "", seed, mode).agent_config()
        agent_cfg.max_subagents_per_call = agent_cfg.max_subagents_per_turn = agent_cfg.max_concurrency = width
        backend = TransformersBackend(model, tok, max_new_tokens=cfg["max_new_tokens"],
                                      max_context=cfg["max_context"], role_max_new_tokens=cfg.get("role_max_new_tokens"),
                                      kv_reuse=cfg.get("kv_reuse", True))
        torch.manual_seed(1000 * seed + sum(sum(map(ord, t.instance_id)) for t in tasks))
        rolls = rollout_group(backend, self.tools, agent_cfg, [t.query for t in tasks], ["table"] * len(tasks),
                              cfg["n"], mode)
        wall, cpu = _now()
        seconds, cpu_s = round(wall - t0[0], 1), round(cpu - t0[1], 1)
        lines, transcripts = [], []
        for i, task in enumerate(tasks):
            mine = [r for r in rolls if r.task_index == i]
            scores = [score_rollout(task, r.result) for r in mine]
            transcripts += [{"policy": policy, "seed": seed, "width": width, "mode": mode, "rollout": k,
                             **rollout_transcript(task, r.result, samples=r.samples, tokenizer=tok, score=s)}
                            for k, (r, s) in enumerate(zip(mine, scores, strict=True))]
            lines.append({"task": task.instance_id, "policy": policy, "seed": seed, "width": width, "mode": mode,
                          "f1": [s[0] for s in scores], "format_ok": [s[1] for s in scores],
                          "success": [s[2] for s in scores], "subagents": [len(r.result.subagents) for r in mine],
                          "lead_turns": [r.result.lead.turns for r in mine],
                          "tokens": sum(len(s.completion_ids) for r in mine for s in r.samples),
                          "prompt_tokens": sum(len(s.prompt_ids) for r in mine for s in r.samples),
                          "calls": sum(len(r.samples) for r in mine),
                          "group_tasks": len(tasks), "group_seconds": seconds, "group_cpu_s": cpu_s,
                          "backend": dict(backend.stats)})
        # transcripts first: a metrics line (what resume reads) never exists without its transcripts
        traces = transcript_path(path)
        traces.parent.mkdir(parents=True, exist_ok=True)
        with open(traces, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in transcripts))
        with open(path, "a", encoding="utf-8") as handle:  # one write: the group's tasks land together
            handle.write("".join(json.dumps(line) + "\n" for line in lines))
        self._timed(f"eval-{policy}", t0)

    def plan(self) -> list[tuple[str, tuple[str, int, int, str]]]:
        return plan(self.config)

    def run(self, stages: Sequence[str] | None = None) -> dict[str, Any]:
        """Every evaluation of :meth:`plan` whose stage is in ``stages`` (default all), in order."""
        unknown = sorted(set(stages or ()) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
        for stage, (policy, seed, width, mode) in self.plan():
            if stages is None or stage in stages:
                log.info("study stage %s: %s seed %d width %d", stage, policy, seed, width)
                self.evaluate(policy, seed, width, mode, "train" if stage.endswith("in-distribution") else "heldout")
        return summarize(self.out)


def seed_long_run(source: Path, target: Path, steps: int) -> bool:
    """Start the long run ``target`` from the run ``source``'s checkpoint at ``steps`` (its end) when
    ``target`` has no checkpoint yet and ``source`` has that one: the checkpoint (model, optimizer, RNGs) and
    the metric lines up to ``steps`` are copied, so the long run's first ``steps`` steps are ``source``'s and
    :meth:`Trainer.resume` continues from there. True if it copied."""
    import shutil

    from leanlm.wideseek import checkpoint

    found = checkpoint.latest(source)
    if checkpoint.latest(target) is not None or found is None:
        return False
    if json.loads((found / "state.json").read_text())["step"] != steps:
        return False
    (target / "checkpoints").mkdir(parents=True, exist_ok=True)
    tmp = target / "checkpoints" / f".{found.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(found, tmp)
    metrics = source / "metrics.jsonl"
    if metrics.exists():
        lines = [x for x in metrics.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= steps]
        (target / "metrics.jsonl").write_text("".join(x + "\n" for x in lines))
    tmp.rename(target / "checkpoints" / found.name)  # last: a half-copied checkpoint is never "latest"
    return True


def transcript_path(eval_path: str | Path) -> Path:
    """Where the transcripts of an eval file go: ``evals/traces/<name>.jsonl`` (a subfolder, so that readers
    of ``evals/*.jsonl``, :func:`summarize` included, see metric files only)."""
    p = Path(eval_path)
    return p.parent / "traces" / p.name


def _now() -> tuple[float, float]:
    """(wall, CPU) seconds: the CPU time of this process, all threads, which on a shared machine is the cost."""
    return time.perf_counter(), time.process_time()


def plan(cfg: dict[str, Any]) -> list[tuple[str, tuple[str, int, int, str]]]:
    """Every evaluation ``(stage, (policy, seed, width, mode))`` in run order: ``headline`` (seed 0: base,
    SFT, SFT+MARL at the top width), ``in-distribution`` (with ``in_distribution``: the same three on :func:`train_eval_tasks`), ``seeds`` (the same for the other seeds), ``long`` and ``long-in-distribution`` (with
    ``long_steps``: the first seed's run continued to that many steps, on both task sets), ``width`` (seed 0's MARL
    policy at every other width), ``single`` (seed 0's single agent), ``ablations`` (seed 0, top width) and
    ``single-seeds``. Training runs happen inside the first evaluation that needs them."""
    top = cfg["max_subagents"] if cfg["max_subagents"] in cfg["widths"] else max(cfg["widths"])
    first, rest = cfg["seeds"][0], cfg["seeds"][1:]
    out: list[tuple[str, tuple[str, int, int, str]]] = []
    out += [("headline", (p, first, top, "multi")) for p in ("base", "sft", "marl")]
    if cfg.get("in_distribution"):
        out += [("in-distribution", (p, first, top, "multi")) for p in ("base", "sft", "marl")]
    out += [("seeds", (p, s, top, "multi")) for s in rest for p in ("base", "sft", "marl")]
    if cfg.get("long_steps"):
        out += [("long", ("marl-long", first, top, "multi")), ("long-in-distribution", ("marl-long", first, top, "multi"))]
    out += [("width", ("marl", first, w, "multi")) for w in cfg["widths"] if w != top]
    if cfg["single_agent"]:
        out += [("single", ("single", first, 1, "single"))]
    out += [("ablations", (f"marl-{a}", first, top, "multi")) for a in cfg.get("ablations", [])]
    if cfg["single_agent"]:
        out += [("single-seeds", ("single", s, 1, "single")) for s in rest]
    return out


def _ci95(xs: list[float]) -> float | None:
    """Half width of the 95% t interval of the mean (None below two values)."""
    from leanlm.common.stats import mean_interval

    return mean_interval(xs).half if len(xs) >= 2 else None


def summarize(out: str | Path) -> dict[str, Any]:
    """Metrics from ``<out>/evals`` (and ``in_distribution`` from ``evals-train``): ``f1_<policy>`` (mean over seeds of item F1 Avg@n, in %), its seeds,
    ``success_<policy>``, ``marl_minus_sft`` / ``marl_minus_single`` (paired by seed) with ``*_ci95``,
    ``f1_marl-<ablation>`` for the paper's ablations (the differences are left out, and ``*_at_floor`` set,
    when both sides score at most 1 point), ``f1_width_<w>`` and ``width_nondecreasing`` (1 when F1 never drops by more than 1 point as width grows; left
    out when every width scores at most 1 point, where a flat curve at the floor proves nothing)."""
    out = Path(out)
    per: dict[tuple[str, int, int], dict[str, float]] = {}
    for path in sorted((out / "evals").glob("*.jsonl")) if (out / "evals").exists() else []:
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if not lines:
            continue
        f1 = [statistics.mean(x["f1"]) for x in lines]
        succ = [statistics.mean(x["success"]) for x in lines]
        subs = [statistics.mean(x["subagents"]) for x in lines]
        first = lines[0]
        per[(first["policy"], first["seed"], first["width"])] = {
            "f1": 100 * statistics.mean(f1), "success": 100 * statistics.mean(succ),
            "subagents": statistics.mean(subs), "tasks": len(lines)}
    metrics: dict[str, Any] = {"runs": {f"{p}-seed{s}-w{w}": v for (p, s, w), v in per.items()}}
    cfg = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    top = max(cfg.get("widths", [1])) if cfg.get("max_subagents") not in cfg.get("widths", []) else cfg["max_subagents"]
    ablations = sorted({p for (p, _, _) in per if p.startswith("marl-")})
    for policy, width in (("base", top), ("sft", top), ("marl", top), ("single", 1), *((a, top) for a in ablations)):
        seeds = {s: v for (p, s, w), v in per.items() if p == policy and w == width}
        if seeds:
            metrics[f"f1_{policy}"] = round(statistics.mean(v["f1"] for v in seeds.values()), 2)
            metrics[f"success_{policy}"] = round(statistics.mean(v["success"] for v in seeds.values()), 2)
            metrics[f"f1_{policy}_seeds"] = [round(seeds[s]["f1"], 2) for s in sorted(seeds)]
    for other in ("sft", "single"):
        ow = 1 if other == "single" else top
        pairs = [(per[("marl", s, top)]["f1"], per[(other, s, ow)]["f1"]) for (p, s, w) in per
                 if p == "marl" and w == top and (other, s, ow) in per]
        diffs = [a - b for a, b in pairs]
        if pairs and max(max(pair) for pair in pairs) <= 1.0:  # both at F1 ~0 (chance): no evidence either way
            metrics[f"marl_minus_{other}_at_floor"] = 1
        elif diffs:
            metrics[f"marl_minus_{other}"] = round(statistics.mean(diffs), 2)
            ci = _ci95(diffs)
            if ci is not None:
                metrics[f"marl_minus_{other}_ci95"] = round(ci, 2)
    widths = sorted(w for (p, s, w) in per if p == "marl" and s == min((s for (p, s, _) in per), default=0))
    seed0 = min((s for (p, s, _) in per if p == "marl"), default=None)
    if seed0 is not None:
        curve = [(w, per[("marl", seed0, w)]["f1"]) for w in widths if ("marl", seed0, w) in per]
        for w, f in curve:
            metrics[f"f1_width_{w}"] = round(f, 2)
        if len(curve) >= 2 and max(f for _, f in curve) > 1.0:  # all at ~0 F1 (chance) proves nothing
            metrics["width_nondecreasing"] = int(all(b[1] >= a[1] - 1.0 for a, b in itertools.pairwise(curve)))
    indist = _in_distribution(out)
    if indist:
        metrics["in_distribution"] = indist
    atomic_write_json(out / "summary.json", metrics)
    return metrics


def _in_distribution(out: Path) -> dict[str, Any]:
    """Per ``<policy>-seed<s>-w<w>`` of ``<out>/evals-train``: item F1 Avg@n (%), its tasks and format_ok share."""
    folder = out / SPLITS["train"]
    result: dict[str, Any] = {}
    for path in sorted(folder.glob("*.jsonl")) if folder.exists() else []:
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if lines:
            result[path.stem] = {"f1": round(100 * statistics.mean(statistics.mean(x["f1"]) for x in lines), 2),
                                 "format_ok": round(statistics.mean(statistics.mean(x["format_ok"]) for x in lines), 3),
                                 "tasks": len(lines)}
    return result
