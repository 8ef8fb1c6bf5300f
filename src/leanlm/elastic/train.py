"""Training of the elastic MoE (ERNIE 5.0 §3.3): one sampled sub-network per step, plain next-token + MTP loss.

Each optimizer step: draw the step's :class:`SubNet` (``ElasticSampler``; disabled = the non-elastic baseline),
run the global batch (split over data-parallel ranks) through that sub-network, back-propagate the ordinary loss,
average gradients over ranks, clip, AdamW step, then the auxiliary-loss-free bias update with the step's expert
loads (all-reduced). The LR follows a WSD schedule (warm-up, stable, linear decay), as the report's pre-training.

Checkpoints (``checkpoint.pt``, written atomically every ``checkpoint_every`` steps) hold the weights, router
biases, optimizer state, step and history; because data and sub-networks are drawn from ``(seed, step)``, a
resumed run continues exactly as an uninterrupted one. Data-parallel training uses ``torch.distributed`` (gloo on
CPU, NCCL on GPU) with explicit gradient all-reduce; :func:`train_distributed` spawns the processes.

Extras not in the report, off by default: ``sandwich`` (also run the smallest sub-network every step, OFA-style).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from leanlm.common.atomic import atomic_write, atomic_write_json
from leanlm.common.progress import get_logger, progress_bar
from leanlm.elastic.balance import BiasSchedule, update_router_biases
from leanlm.elastic.config import ElasticMoeConfig
from leanlm.elastic.data import GROUPED, TEXT, MixedCorpus, vocab_size, wiki_corpora
from leanlm.elastic.elastic import ElasticConfig, ElasticSampler
from leanlm.elastic.frozen import frozen_slices, keep_frozen
from leanlm.elastic.model import ElasticMoeForCausalLM
from leanlm.elastic.subnet import SubNet

log = get_logger("leanlm.elastic.train")


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are a laptop-scale byte-level model (see docs/elastic.md)."""

    model: dict[str, Any] = field(default_factory=dict)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.05
    decay_frac: float = 0.2
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    bias_rate: float = 1e-3
    bias_slowdown_at: float | None = None
    seed: int = 0
    train_articles: int = 8000
    eval_articles: int = 500
    grouped_fraction: float = 0.25
    codebook: int = 16
    text_file: str | None = None
    eval_batches: int = 4
    eval_batch_size: int = 16
    eval_every: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    sandwich: bool = False
    threads: int | None = None
    device: str = "cpu"

    def model_config(self) -> ElasticMoeConfig:
        kwargs = {"vocab_size": vocab_size(self.codebook), **self.model}
        return ElasticMoeConfig(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("elastic"), dict):
            data["elastic"] = ElasticConfig(**data["elastic"])
        return cls(**data)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """WSD: linear warm-up, constant, linear decay to ``min_lr_ratio * lr`` over the last ``decay_frac``."""
    warm = max(1, round(cfg.steps * cfg.warmup_frac))
    decay_start = cfg.steps - round(cfg.steps * cfg.decay_frac)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if step < decay_start:
        return cfg.lr
    frac = (step - decay_start) / max(1, cfg.steps - decay_start)
    return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * frac)


def active_params(config: ElasticMoeConfig, subnet: SubNet | None) -> int:
    """Parameters touched per token by ``subnet`` (for the 6·N·tokens training-FLOPs estimate)."""
    counts = config.parameter_counts()
    per_layer_moe = 3 * config.hidden_size * config.moe_intermediate_size
    k = (subnet.top_k if subnet and subnet.top_k else config.num_experts_per_tok)
    per_layer_other = (counts["active"] - (config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2))
                       - config.hidden_size) // config.num_hidden_layers
    n_layers = len(subnet.layers) if subnet and subnet.layers is not None else config.num_hidden_layers
    base = counts["active"] - config.num_hidden_layers * per_layer_other
    moe_default = config.num_experts_per_tok * per_layer_moe
    return base + n_layers * (per_layer_other - moe_default + k * per_layer_moe)


def build_model(cfg: TrainConfig) -> ElasticMoeForCausalLM:
    torch.manual_seed(cfg.seed)
    return ElasticMoeForCausalLM(cfg.model_config())


def make_corpora(cfg: TrainConfig) -> tuple[MixedCorpus, MixedCorpus]:
    """Training and held-out corpora: offline Wikipedia summaries, or ``text_file`` (its last 10% held out)."""
    from leanlm.elastic.data import GroupedModality

    if cfg.text_file:
        path = Path(cfg.text_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"text_file {path}: cannot read UTF-8 text: {exc}") from exc
        cut = int(len(text) * 0.9)
        train_text, eval_text = text[:cut], text[cut:]
    else:
        train_text, eval_text = wiki_corpora(cfg.train_articles, cfg.eval_articles)

    modality = GroupedModality(codebook=cfg.codebook)
    return (
        MixedCorpus(train_text, cfg.seq_len, cfg.grouped_fraction, modality),
        MixedCorpus(eval_text, cfg.seq_len, cfg.grouped_fraction, modality),
    )


@torch.no_grad()
def evaluate(
    model: ElasticMoeForCausalLM, batches: list[tuple[torch.Tensor, torch.Tensor]], subnet: SubNet | None = None,
) -> dict[str, float]:
    """Held-out next-token loss (nats/token; text tokens are bytes) per modality, with ``subnet`` active."""
    was_training = model.training
    model.eval()
    sums = {TEXT: 0.0, GROUPED: 0.0}
    counts = {TEXT: 0, GROUPED: 0}
    for ids, kinds in batches:
        ids = ids.to(model.device)
        logits = model(ids, subnet=subnet).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        nll = nll.view(ids.shape[0], -1).sum(1).cpu()
        for kind in (TEXT, GROUPED):
            sel = kinds == kind
            sums[kind] += float(nll[sel].sum())
            counts[kind] += int(sel.sum()) * (ids.shape[1] - 1)
    model.train(was_training)
    total = (sums[TEXT] + sums[GROUPED]) / max(1, counts[TEXT] + counts[GROUPED])
    return {
        "loss": total,
        "text_loss": sums[TEXT] / counts[TEXT] if counts[TEXT] else float("nan"),
        "grouped_loss": sums[GROUPED] / counts[GROUPED] if counts[GROUPED] else float("nan"),
    }


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _allreduce_grads(model: torch.nn.Module, world: int) -> None:
    """Average gradients over ranks. A parameter without a gradient on every rank (a layer the step's
    sub-network skipped) keeps ``grad=None`` so that AdamW skips it exactly as in a single-process run."""
    params = [p for p in model.parameters() if p.requires_grad]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has)
    used = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not used:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in used])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in used:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def save_model(model: ElasticMoeForCausalLM, directory: Path) -> Path:
    """``save_pretrained`` into a temporary sibling directory, then rename it into place (atomic per directory)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    model.save_pretrained(tmp)
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    return directory


@dataclass
class TrainResult:
    model: ElasticMoeForCausalLM
    history: list[dict[str, Any]]
    final_eval: dict[str, float]
    seconds: float
    tokens: int
    train_flops: float
    resumed_from: int = 0


def train(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = True,
    init_model: ElasticMoeForCausalLM | None = None,
    corpora: tuple[MixedCorpus, MixedCorpus] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or continue training ``init_model``) for ``cfg.steps`` steps; returns the model and its history.

    With ``out_dir``: writes ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end, ``history.jsonl``,
    ``config.json`` (the TrainConfig) and the final model (``model/``, ``save_pretrained`` format); with
    ``resume`` an existing checkpoint there is loaded and training continues from its step. ``stop_after``
    stops early after that many steps (used to test resumption). Under ``torch.distributed`` each rank trains
    on its slice of the global batch; only rank 0 writes files.
    """
    rank, world = _dist()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} data-parallel ranks")
    out = Path(out_dir) if out_dir is not None else None
    train_corpus, eval_corpus = corpora or make_corpora(cfg)
    model = init_model if init_model is not None else build_model(cfg)
    device = torch.device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    model.to(device)
    mcfg: ElasticMoeConfig = model.config
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    sampler = ElasticSampler(cfg.elastic, mcfg.num_hidden_layers, mcfg.num_experts, mcfg.num_experts_per_tok, mcfg.moe_layers, cfg.seed)
    slow_at = round(cfg.bias_slowdown_at * cfg.steps) if cfg.bias_slowdown_at is not None else None
    bias = BiasSchedule(rate=cfg.bias_rate, slowdown_at_step=slow_at)
    history: list[dict[str, Any]] = []
    start_step, seconds_before, flops, tokens = 0, 0.0, 0.0, 0
    ckpt = out / "checkpoint.pt" if out is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, history = state["step"], state["history"]
        seconds_before, flops, tokens = state["seconds"], state["flops"], state["tokens"]
        log.info("resumed from %s at step %d", ckpt, start_step)
    eval_set = eval_corpus.eval_batches(cfg.eval_batches, cfg.eval_batch_size)
    per_rank = cfg.batch_size // world
    tokens_at_start = tokens
    t0 = time.perf_counter()
    end = cfg.steps if stop_after is None else min(cfg.steps, start_step + stop_after)

    def checkpoint(step: int) -> None:
        if ckpt is None or rank != 0:
            return
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "history": history,
            "seconds": seconds_before + time.perf_counter() - t0, "flops": flops, "tokens": tokens, "config": cfg.to_dict(),
        }
        with atomic_write(ckpt, "wb") as handle:
            torch.save(state, handle)

    with progress_bar(desc=f"train seed={cfg.seed}", total=end - start_step, unit="step") as bar:
        for step in range(start_step, end):
            subnets = [sampler.sample(step)]
            if cfg.sandwich and cfg.elastic.enabled:
                subnets.append(smallest_subnet(mcfg, cfg.elastic))
            ids, _ = train_corpus.batch(cfg.seed, step, cfg.batch_size)
            ids = ids[rank * per_rank : (rank + 1) * per_rank].to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            optimizer.zero_grad(set_to_none=True)
            step_counts: dict[int, torch.Tensor] = {}
            losses = []
            for subnet in subnets:
                output = model(ids, labels=ids, subnet=subnet)
                (output.loss / len(subnets)).backward()
                losses.append(output)
                for layer, c in output.expert_counts.items():
                    step_counts[layer] = step_counts.get(layer, 0) + c.to(torch.float64)
                flops += 6.0 * active_params(mcfg, subnet) * ids.numel() * world
            if world > 1:
                _allreduce_grads(model, world)
                for layer in sorted(step_counts):
                    dist.all_reduce(step_counts[layer])
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            with keep_frozen(optimizer, frozen_slices(model, subnets) if cfg.elastic.enabled else []):
                optimizer.step()
            masks = model.model.expert_masks(subnets[0], ids.device)
            update_router_biases(model, step_counts, bias.rate_at(step), masks)
            tokens += ids.numel() * world * len(subnets)
            main = losses[0]
            logged = torch.stack([main.loss.detach(), main.lm_loss.detach(),
                                  main.mtp_loss.detach() if main.mtp_loss is not None else torch.full((), float("nan"), device=device)])
            if world > 1:  # report the global-batch loss, as a single process would
                dist.all_reduce(logged)
                logged /= world
            entry = {
                "step": step + 1, "loss": float(logged[0]), "lm_loss": float(logged[1]),
                "mtp_loss": float(logged[2]) if main.mtp_loss is not None else None,
                "lr": lr_at(cfg, step), "subnet": subnets[0].describe(), "tokens": tokens,
            }
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                entry["eval"] = evaluate(model, eval_set)
            if (step + 1) % cfg.log_every == 0 or step + 1 == end or "eval" in entry:
                history.append(entry)
                if rank == 0 and (step + 1) % (cfg.log_every * 5) == 0:
                    elapsed = time.perf_counter() - t0
                    log.info("seed %d step %d/%d loss %.4f (%.0f tokens/s)", cfg.seed, step + 1, cfg.steps, entry["loss"],
                             (tokens - tokens_at_start) / max(elapsed, 1e-9))
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.3f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                checkpoint(step + 1)
    seconds = seconds_before + time.perf_counter() - t0
    final = evaluate(model, eval_set)
    if out is not None and rank == 0:
        checkpoint(end)
        with atomic_write(out / "history.jsonl", "w") as handle:
            for entry in history:
                handle.write(json.dumps(entry) + "\n")
        atomic_write_json(out / "train_config.json", cfg.to_dict())
        atomic_write_json(out / "final_eval.json", {"step": end, "seconds": seconds, "tokens": tokens, "flops": flops, **final})
        if end == cfg.steps:
            save_model(model, out / "model")
    return TrainResult(model, history, final, seconds, tokens, flops, resumed_from=start_step)


def smallest_subnet(config: ElasticMoeConfig, elastic: ElasticConfig) -> SubNet:
    """The smallest sub-network the sampler can draw (sandwich rule; not in the report)."""
    from leanlm.elastic.elastic import even_layers, fraction_count

    depth = fraction_count(config.num_hidden_layers, min(elastic.depth_fractions))
    width = fraction_count(config.num_experts, min(elastic.width_fractions))
    layers = even_layers(config.num_hidden_layers, depth)
    return SubNet.make(layers=layers, experts={i: range(width) for i in config.moe_layers if i in layers}, top_k=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_dict: dict[str, Any], out_dir: str | None, result_path: str | None) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    backend = "nccl" if cfg_dict.get("device", "cpu").startswith("cuda") else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        cfg = TrainConfig.from_dict(cfg_dict)
        result = train(cfg, out_dir=out_dir, resume=True)
        if rank == 0 and result_path:
            torch.save({"state": result.model.state_dict(), "history": result.history, "final_eval": result.final_eval}, result_path)
    finally:
        dist.destroy_process_group()


def train_distributed(cfg: TrainConfig, world_size: int, out_dir: str | Path | None = None, result_path: str | Path | None = None) -> None:
    """Data-parallel training on ``world_size`` CPU processes (gloo); rank 0 writes ``out_dir`` / ``result_path``."""
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    mp.spawn(
        _worker, args=(world_size, _free_port(), cfg.to_dict(), str(out_dir) if out_dir else None,
                       str(result_path) if result_path else None),
        nprocs=world_size, join=True,
    )


def load_history(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


__all__ = [
    "TrainConfig", "TrainResult", "active_params", "build_model", "evaluate", "load_history", "lr_at", "make_corpora",
    "save_model", "smallest_subnet", "train", "train_distributed",
]
