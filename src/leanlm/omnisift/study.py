"""The synthetic audio-visual study (paper §4 protocol at toy scale): train, fine-tune with compression, compare.

Protocol, following OmniSIFT §4.1 / Appendix B on a tiny random-init Qwen2.5-Omni thinker and the task of
:mod:`leanlm.omnisift.synth`:

1. train the thinker on full tokens (stage A);
2. from stage A, fine-tune for the same number of steps (a) on full tokens — the backbone the training-free
   baselines (random, DyCoke-style, OmniZip-style) are applied to, as in the paper's fairness protocol —
   and (b) backbone + selector with each compressing method: OmniSIFT and the ablations (w/o spatial,
   w/o temporal, audio-only selector, VGAS→random, STVP→random), at the reference code's training ratios
   ρv = 0.7, ρa = 0.3;
3. evaluate at 35% and 25% retention: each method uses its Table 6 audio ratio, and ρv is solved so that
   every method keeps the same number of tokens in this geometry (paper Table 6 note). A diagnostic row,
   "OmniSIFT (untrained selector)", applies OmniSIFT with the selector the trained variant *starts* from to
   the full-token backbone: paired with the trained row, it measures what the STE fine-tuning taught VGAS.

Checkpoints of every stage are saved under the output directory and reused when the run is repeated with
the same configuration (resume at stage granularity).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write, atomic_write_json
from leanlm.common.progress import get_logger, progress_bar
from leanlm.omnisift.base import AVCompressor
from leanlm.omnisift.baselines import DyCokeTTM, OmniZipStyle, RandomPruning
from leanlm.omnisift.layout import build_layouts
from leanlm.omnisift.omnisift import OmniSIFT
from leanlm.omnisift.presets import DEFAULT_RHO_A, DEFAULT_RHO_V, kept_tokens, paper_ratios, solve_rho_v
from leanlm.omnisift.synth import AVTask, TaskConfig
from leanlm.omnisift.tiny import tiny_thinker
from leanlm.omnisift.training import GroupedAdamW, SelectorOptim, cosine_schedule, warmup_schedule

log = get_logger("leanlm.omnisift.study")

#: Trained variants: name -> OmniSIFT constructor flags (None = full tokens).
TRAINED: dict[str, dict[str, Any] | None] = {
    "full tokens": None,
    "OmniSIFT": {},
    "w/o spatial": {"spatial": False},
    "w/o temporal": {"temporal": False},
    "audio-only selector": {"audio": "self"},
    "VGAS→random": {"audio": "random"},
    "STVP→random": {"video": "random"},
    # random video and audio during fine-tuning too: the "Random" row with the same adaptation as OmniSIFT's
    "Random (fine-tuned)": {"method": "random"},
}
#: Training-free baselines applied to the full-token fine-tuned backbone: name -> (class, Table 6 row).
TRAINING_FREE = {"Random": (RandomPruning, "random"), "DyCoke-style": (DyCokeTTM, "dycoke"),
                 "OmniZip-style": (OmniZipStyle, "omnizip")}
#: Diagnostic rows: OmniSIFT with its *freshly initialised* selector (the same init as the trained variant's
#: starting point, ``make_compressor(cfg, flags, seed)``), applied without training to the full-token backbone.
#: In the synthetic study the selector sees only the task's features (encoders bypassed), so its keep-set does
#: not depend on the backbone; the paired difference trained − untrained in "answer sound kept" measures what
#: the STE fine-tuning taught the selector.
UNTRAINED: dict[str, dict[str, Any]] = {"OmniSIFT (untrained selector)": {}}


@dataclass
class StudyConfig:
    seeds: list[int] = field(default_factory=lambda: [0])
    pretrain_steps: int = 400
    finetune_steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    finetune_lr: float = 1e-3
    eval_samples: int = 256
    retentions: list[float] = field(default_factory=lambda: [0.35, 0.25])
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    selector_dim: int = 128
    selector_lr: float = 1e-3  # the selector's own AdamW group (training.SelectorOptim; our deviation)
    selector_eps: float = 1e-12
    selector_clip: float = 1.0
    pretrain_hint: float = 0.5  # curriculum for stage A only: TaskConfig.hint (fine-tuning and evaluation: 0)
    # stage-A recipe (§2f): graded hint strengths (TaskConfig.hint_graded), the learning-rate schedule
    # ("constant" after warmup, or "cosine": warmup then cosine decay to 0.1×) and best-validation checkpointing
    # (every ``keep_best`` steps, accuracy on hint-free validation samples; 0 = keep the last weights)
    pretrain_hint_graded: bool = False
    lr_schedule: str = "constant"
    keep_best: int = 0
    threads: int = 1
    variants: list[str] = field(default_factory=lambda: list(TRAINED) + list(TRAINING_FREE))
    task: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = list(TRAINED) + list(TRAINING_FREE) + list(UNTRAINED)
        unknown = [v for v in self.variants if v not in known]
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {self.lr_schedule!r}")
        if self.keep_best < 0:
            raise ValueError("keep_best must be >= 0 (validation interval in steps; 0 = off)")
        if unknown:
            raise ValueError(f"unknown study variant(s): {', '.join(unknown)}; known: {', '.join(known)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown study config field(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def fingerprint(self, stage: str) -> str:
        keys = ("pretrain_steps", "batch_size", "lr", "hidden_size", "layers", "heads", "task", "pretrain_hint")
        if stage != "pretrain":
            keys += ("finetune_steps", "finetune_lr", "selector_dim", "selector_lr", "selector_eps", "selector_clip")
        fields = {k: asdict(self)[k] for k in keys}
        # stage-A recipe fields enter only when set, so runs made before they existed keep their fingerprints
        for key, default in (("pretrain_hint_graded", False), ("lr_schedule", "constant"), ("keep_best", 0)):
            if getattr(self, key) != default:
                fields[key] = getattr(self, key)
        # the resolved task (TaskConfig defaults included), so a changed default never resumes a stale checkpoint
        task = asdict(TaskConfig(**{"hidden_size": self.hidden_size, **self.task}))
        # fields added later leave the fingerprints of runs that do not use them unchanged (their checkpoints resume)
        for key, default in (("loud_per_chunk", 0), ("loud_scale", 3.0), ("hint_graded", False)):
            if task[key] == default:
                del task[key]
        fields["task"] = task
        blob = json.dumps(fields | {"stage": stage}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_model(cfg: StudyConfig, seed: int):
    # the audio rate follows the task: a 2-s chunk holds audio_per_chunk audio tokens
    pps = int(cfg.task.get("audio_per_chunk", TaskConfig.audio_per_chunk)) // 2
    return tiny_thinker(
        seed=seed, compact_ids=True, position_id_per_seconds=pps, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=max(1, cfg.heads // 2),
    )


def make_compressor(cfg: StudyConfig, flags: dict[str, Any], seed: int) -> AVCompressor:
    if flags.get("method") == "random":
        return RandomPruning(DEFAULT_RHO_V, DEFAULT_RHO_A, seed=seed)
    return OmniSIFT(DEFAULT_RHO_V, DEFAULT_RHO_A, cfg.hidden_size, selector_dim=cfg.selector_dim, seed=seed, **flags)


def initial_compressor(cfg: StudyConfig, flags: dict[str, Any], seed: int) -> AVCompressor:
    """The compressor a trained variant starts from, bit for bit: VGAS draws its initial weights from torch's
    global generator, which :func:`build_model` seeds, so it is built right after a fresh ``build_model``
    (as in :func:`trained_model` and the curves)."""
    build_model(cfg, seed)
    return make_compressor(cfg, flags, seed)


def selector_optim(cfg: StudyConfig) -> SelectorOptim:
    return SelectorOptim(lr=cfg.selector_lr, eps=cfg.selector_eps, clip=cfg.selector_clip)


class Trainer:
    """Trains one thinker (+ compressor) on the task with AdamW; layouts and TMRoPE ids are computed once."""

    def __init__(self, cfg: StudyConfig, task: AVTask, model, seed: int) -> None:
        self.cfg, self.task, self.model = cfg, task, model
        self.generator = torch.Generator().manual_seed(10_000 + seed)
        ids = task.prompt.input_ids
        pos, _ = model.get_rope_index(
            ids, None, task.prompt.video_grid_thw, torch.ones_like(ids), True, task.prompt.audio_feature_lengths,
            task.prompt.video_second_per_grid,
        )
        self.position_ids = pos
        self.layout = build_layouts(ids, pos, model.config.video_token_id, model.config.audio_token_id)[0]

    def inputs(self, batch) -> dict[str, Any]:
        kw = self.task.model_inputs(self.model, batch)
        n = batch.input_ids.shape[0]
        kw["position_ids"] = self.position_ids.expand(-1, n, -1)
        kw["av_layouts"] = [self.layout] * n
        return kw

    def train(self, steps: int, lr: float, desc: str, callback: Any = None, direct: float = 0.0,
              schedule: str = "constant") -> list[float]:
        """AdamW with the selector in its own group (:class:`~leanlm.omnisift.training.GroupedAdamW`).
        ``callback(step, trainer)`` runs every step after the update (curves); ``direct`` > 0 adds that
        weight times a binary cross-entropy on the selector's scores with the answer sound as target (the
        *directly supervised* diagnostic selector; OmniSIFT itself has no auxiliary loss). ``schedule``:
        "constant" (linear warmup over 5% of the steps, then constant) or "cosine" (the same warmup, then cosine
        decay to 0.1× the peak)."""
        self.model.train()
        opt = GroupedAdamW(self.model, lr, selector_optim(self.cfg))
        sched = cosine_schedule(opt, steps) if schedule == "cosine" else warmup_schedule(opt, steps)
        captured: list[torch.Tensor] = []
        selector = getattr(self.model.compressor, "selector", None)
        handle = None
        if direct and selector is not None:
            handle = selector.register_forward_hook(lambda mod, args, out: captured.append(out))
        losses = []
        try:
            with progress_bar(desc=desc, total=steps, unit="step") as bar:
                for step in range(steps):
                    batch = self.task.sample(self.cfg.batch_size, self.generator)
                    captured.clear()
                    out = self.model(**self.inputs(batch))
                    loss = out.loss
                    if handle is not None and captured:
                        loss = loss + direct * self._direct_loss(captured[0], batch)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    self.last_norms = dict(opt.last_norms)
                    losses.append(float(out.loss.detach()))
                    bar.update(1)
                    if callback is not None:
                        callback(step + 1, self)
                        self.model.train()
        finally:
            if handle is not None:
                handle.remove()
        self.model.eval()
        return losses

    def _direct_loss(self, scores: torch.Tensor, batch) -> torch.Tensor:
        """BCE between the selector's scores [B·C, A] (chunks in batch-then-time order, as ``group_chunks``
        stacks them) and the indicator of the answer sound."""
        n = batch.input_ids.shape[0]
        target = torch.zeros(n, self.position_ids.shape[-1])
        target[torch.arange(n), batch.target_audio_index] = 1.0
        chunk_audio = torch.stack([c.audio for c in self.layout.chunks])  # [C, A]
        want = target[:, chunk_audio].reshape(scores.shape)
        return torch.nn.functional.binary_cross_entropy(scores.float().clamp(1e-6, 1 - 1e-6), want)

    @torch.no_grad()
    def evaluate(self, compressor: AVCompressor | None, eval_seed: int) -> dict[str, float]:
        """Accuracy over the class tokens, evidence survival and retention on a fixed evaluation set."""
        self.model.eval()
        self.model.set_compressor(compressor)
        g = torch.Generator().manual_seed(eval_seed)
        correct = total = target_kept = object_kept = 0
        dropped = dropped_correct = 0  # samples whose answer sound was dropped, and how many of them are right
        kept = av_total = 0
        remaining = self.cfg.eval_samples
        while remaining > 0:
            n = min(remaining, 64)
            batch = self.task.sample(n, g)
            out = self.model(**self.inputs(batch))
            logits = out.logits[:, -2, self.task.class_tokens]
            right = logits.argmax(-1) == batch.answer
            correct += int(right.sum())
            total += n
            stats = self.model.last_compression
            if stats is None:
                target_kept += n
                object_kept += n
                kept += n * (self.task.prompt.n_video + self.task.prompt.n_audio)
            else:
                for b in range(n):
                    kept_b = int(stats.keep[b, batch.target_audio_index[b]])
                    target_kept += kept_b
                    if not kept_b:
                        dropped += 1
                        dropped_correct += int(right[b])
                    object_kept += int(stats.keep[b, batch.object_index[b]].any())
                kept += stats.video_kept + stats.audio_kept
            av_total += n * (self.task.prompt.n_video + self.task.prompt.n_audio)
            remaining -= n
        # leak check: accuracy on the samples whose answer sound was dropped should be chance (1 / classes)
        return {"accuracy": correct / total, "target_audio_kept": target_kept / total,
                "object_kept": object_kept / total, "retention": kept / av_total,
                "accuracy_sound_dropped": dropped_correct / dropped if dropped else None, "sound_dropped": dropped}


def _save(model, path: Path, losses: list[float] | None = None) -> None:
    """The stage's weights, and its loss curve beside them (``.losses.json``) for reports of resumed runs."""
    with atomic_write(path, "wb") as handle:
        torch.save(model.state_dict(), handle)
    if losses is not None:
        atomic_write_json(path.with_suffix(".losses.json"), losses, indent=None)


def _saved_losses(path: Path) -> list[float] | None:
    side = path.with_suffix(".losses.json")
    return json.loads(side.read_text()) if side.exists() else None


def pretrain(cfg: StudyConfig, task: AVTask, base, seed: int) -> tuple[list[float], list[list[float]]]:
    """Stage A on full tokens with the hint curriculum, in place on ``base``. With ``cfg.keep_best`` the model
    is scored every ``keep_best`` steps (and at the end) on hint-free validation samples (seed 77_000 + seed,
    disjoint from the evaluation draws 99_000 + seed) and the best-scoring weights are kept (the earliest
    among ties). Returns the loss curve and the validation curve ``[[step, accuracy], ...]``."""
    hinted = AVTask(TaskConfig(hidden_size=cfg.hidden_size, **{**cfg.task, "hint": cfg.pretrain_hint,
                                                               "hint_graded": cfg.pretrain_hint_graded}),
                    base.config)
    val: list[list[float]] = []
    best: dict[str, Any] = {}
    callback = None
    if cfg.keep_best:
        checker = Trainer(cfg, task, base, seed)

        def callback(step: int, trainer: Trainer) -> None:
            if step % cfg.keep_best and step != cfg.pretrain_steps:
                return
            acc = checker.evaluate(None, 77_000 + seed)["accuracy"]
            val.append([step, acc])
            if not best or acc > best["acc"]:
                best.update(acc=acc, step=step, state={k: v.detach().clone() for k, v in base.state_dict().items()})
            log.info("seed %d stage A step %d: validation accuracy %.3f (best %.3f at %d)", seed, step, acc,
                     best["acc"], best["step"])

    losses = Trainer(cfg, hinted, base, seed).train(cfg.pretrain_steps, cfg.lr, f"seed {seed} pretrain (full tokens)",
                                                   callback=callback, schedule=cfg.lr_schedule)
    if best:
        base.load_state_dict(best["state"])
    return losses, val


def trained_model(cfg: StudyConfig, task: AVTask, seed: int, name: str, base_state, ckpt_dir: Path):
    """Stage B for variant ``name`` from the stage-A weights (loaded from a checkpoint when present)."""
    flags = TRAINED[name]
    model = build_model(cfg, seed)
    if flags is not None:
        model.set_compressor(make_compressor(cfg, flags, seed))
    path = ckpt_dir / f"seed{seed}-{name.replace('/', '_').replace(' ', '_')}-{cfg.fingerprint(name)}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        log.info("seed %d %s: resumed from %s", seed, name, path.name)
        return model, _saved_losses(path)
    model.load_state_dict(base_state, strict=False)
    trainer = Trainer(cfg, task, model, seed)
    losses = trainer.train(cfg.finetune_steps, cfg.finetune_lr, f"seed {seed} fine-tune {name}")
    _save(model, path, losses)
    return model, losses


def run_study(cfg: StudyConfig, out_dir: Path, pretrain_only: bool = False) -> dict[str, Any]:
    """Run all seeds; returns per-seed records and the aggregated table rows. ``pretrain_only``: stop after
    stage A and record its full-token accuracy (no hints) as method "stage A" (checking stage A cheaply)."""
    torch.set_num_threads(cfg.threads)
    # once the loss is near zero, tiny gradients and optimizer states turn subnormal and CPU matmuls slow down
    # (measured from a converged checkpoint: 0.21 s per training step vs 0.10 s with flushing); flush to zero
    torch.set_flush_denormal(True)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    curves: dict[str, list[float]] = {}
    started = time.perf_counter()
    for seed in cfg.seeds:
        base = build_model(cfg, seed)
        task = AVTask(TaskConfig(hidden_size=cfg.hidden_size, **cfg.task), base.config)
        sizes, audio = task.frame_sizes()
        path = ckpt_dir / f"seed{seed}-pretrain-{cfg.fingerprint('pretrain')}.pt"
        val_path = path.with_suffix(".val.json")
        if path.exists():
            base.load_state_dict(torch.load(path, weights_only=True))
            pre = _saved_losses(path)
            val = json.loads(val_path.read_text()) if val_path.exists() else []
        else:
            pre, val = pretrain(cfg, task, base, seed)
            if val:
                atomic_write_json(val_path, val, indent=None)
            _save(base, path, pre)
        if pre:
            curves[f"seed {seed} pretrain"] = pre
        if val:
            curves[f"seed {seed} pretrain validation"] = val
        if pretrain_only:
            metrics = Trainer(cfg, task, base, seed).evaluate(None, 99_000 + seed)
            records.append({"seed": seed, "method": "stage A", "target": 1.0, **metrics, "rho_v": 0.0, "rho_a": 0.0})
            log.info("seed %d stage A: full-token accuracy %.3f", seed, metrics["accuracy"])
            continue
        base_state = base.state_dict()
        models: dict[str, Any] = {}
        for name in TRAINED:
            needs_full = set(TRAINING_FREE) | set(UNTRAINED)  # rows applied to the full-token fine-tuned backbone
            if name in cfg.variants or (name == "full tokens" and needs_full & set(cfg.variants)):
                models[name], losses = trained_model(cfg, task, seed, name, base_state, ckpt_dir)
                if losses:
                    curves[f"seed {seed} {name}"] = losses
        eval_seed = 99_000 + seed
        for retention in cfg.retentions:
            for name in cfg.variants:
                if name == "full tokens":
                    if retention != cfg.retentions[0]:
                        continue
                    trainer = Trainer(cfg, task, models[name], seed)
                    metrics = trainer.evaluate(None, eval_seed)
                    records.append({"seed": seed, "method": name, "target": 1.0, **metrics, "rho_v": 0.0, "rho_a": 0.0})
                    continue
                if name in TRAINED:
                    row = "omnisift"
                    model = models[name]
                    comp = model.compressor
                elif name in UNTRAINED:
                    row = "omnisift"
                    model = models["full tokens"]
                    comp = initial_compressor(cfg, UNTRAINED[name], seed).eval()
                else:
                    cls, row = TRAINING_FREE[name]
                    model = models["full tokens"]
                    comp = cls(0.5, 0.5, seed=seed)
                _, rho_a = paper_ratios(row, retention)
                rho_v = solve_rho_v(sizes, audio, rho_a, retention)
                comp.set_ratios(rho_v, rho_a)
                comp.reseed(seed)
                trainer = Trainer(cfg, task, model, seed)
                metrics = trainer.evaluate(comp, eval_seed)
                model.set_compressor(comp if name in TRAINED else None)
                records.append({"seed": seed, "method": name, "target": retention, **metrics, "rho_v": rho_v,
                                "rho_a": rho_a, "expected_kept": kept_tokens(sizes, audio, rho_v, rho_a)})
                log.info("seed %d %s @%.0f%%: acc %.3f", seed, name, 100 * retention, metrics["accuracy"])
    return {"records": records, "curves": curves, "seconds": time.perf_counter() - started,
            "config": asdict(cfg)}


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (method, target)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    rows = []
    for (method, target), rs in groups.items():
        accs = [r["accuracy"] for r in rs]
        rows.append({
            "method": method, "target": target, "seeds": len(rs), "accuracy": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "retention": statistics.mean(r["retention"] for r in rs),
            "target_audio_kept": statistics.mean(r["target_audio_kept"] for r in rs),
            "object_kept": statistics.mean(r["object_kept"] for r in rs),
            # pooled over seeds: right answers among samples whose answer sound was dropped
            "accuracy_sound_dropped": _pooled_dropped(rs),
            "rho_v": rs[0]["rho_v"], "rho_a": rs[0]["rho_a"],
        })
    return rows


def _pooled_dropped(rs: list[dict[str, Any]]) -> float | None:
    n = sum(r.get("sound_dropped", 0) for r in rs)
    right = sum((r.get("accuracy_sound_dropped") or 0.0) * r.get("sound_dropped", 0) for r in rs)
    return right / n if n else None


def prefill_latency(cfg: StudyConfig, frames: int, grid: tuple[int, int], retentions: list[float], repeats: int,
                    hidden_size: int | None = None) -> list[dict[str, Any]]:
    """Median prefill wall time of the tiny thinker at each retention, runs interleaved round-robin."""
    torch.set_num_threads(cfg.threads)
    hidden = hidden_size or cfg.hidden_size
    model = tiny_thinker(seed=0, compact_ids=True, position_id_per_seconds=25, hidden_size=hidden,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                         num_key_value_heads=max(1, cfg.heads // 2))
    from leanlm.omnisift.tiny import av_prompt

    p = av_prompt(model.config, frames, grid, 25 * frames, [10, 11], [16])
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, p.input_ids.shape[1], hidden, generator=g)
    ids = p.input_ids
    pos, _ = model.get_rope_index(ids, None, p.video_grid_thw, torch.ones_like(ids), True, p.audio_feature_lengths,
                                  p.video_second_per_grid)
    layout = build_layouts(ids, pos, model.config.video_token_id, model.config.audio_token_id)
    n_p = p.n_video // frames
    chunks = len(layout[0].chunks)
    sizes, audio = [[n_p, n_p]] * chunks, [c.audio.numel() for c in layout[0].chunks]
    comps: dict[float, AVCompressor | None] = {1.0: None}
    for r in retentions:
        rho_a = paper_ratios("omnisift", r)[1] if r in (0.35, 0.25) else 0.3
        comps[r] = OmniSIFT(solve_rho_v(sizes, audio, rho_a, r), rho_a, hidden, selector_dim=cfg.selector_dim).eval()
    times: dict[float, list[float]] = {r: [] for r in comps}
    kept: dict[float, int] = {}
    kwargs = dict(input_ids=ids, inputs_embeds=embeds, attention_mask=torch.ones_like(ids), position_ids=pos,
                  av_layouts=layout, use_audio_in_video=True, use_cache=False, logits_to_keep=1)
    with torch.no_grad():
        for _ in range(repeats + 1):
            for r, comp in comps.items():
                model.set_compressor(comp)
                t0 = time.perf_counter()
                model(**kwargs)
                times[r].append(time.perf_counter() - t0)
                stats = model.last_compression
                kept[r] = ids.shape[1] if stats is None else int(stats.keep.sum())
    full = statistics.median(times[1.0][1:])
    return [{"retention": r, "sequence": kept[r], "median_s": statistics.median(t[1:]),
             "ratio_to_full": statistics.median(t[1:]) / full} for r, t in times.items()]
