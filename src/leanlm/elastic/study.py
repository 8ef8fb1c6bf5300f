"""The elastic-training study (issue 5): (A) elastic run, (B) the same model without elasticity, (C) each
sub-model size trained from scratch on the same token budget, over several seeds.

Measured: held-out loss of the full model and of a grid of sub-models (depth 1/2 and 3/4, experts 1/2, top-k 1..k,
and one combined cut) taken from A and from B; the training cost of A vs B + all C; decode latency vs k; routing
NE / IoU per modality. Every run is written under ``out_dir/runs/<name>`` and skipped when already finished, so an
interrupted study resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write_json
from leanlm.common.progress import get_logger, progress
from leanlm.elastic.analysis import decode_latency_table, modality_loads, routing_report
from leanlm.elastic.elastic import fraction_count
from leanlm.elastic.extract import extract, plan_subnet
from leanlm.elastic.model import ElasticMoeForCausalLM
from leanlm.elastic.subnet import SubNet
from leanlm.elastic.train import TrainConfig, evaluate, make_corpora, train

log = get_logger("leanlm.elastic.study")


@dataclass
class StudyConfig:
    """What to run. ``base`` is a :class:`TrainConfig` as a dict (its ``elastic`` field is set per arm)."""

    base: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    c_sizes: list[str] = field(default_factory=lambda: ["depth_1/2", "experts_1/2", "topk_1"])
    workers: int = 1
    latency_tokens: int = 32
    latency_repeats: int = 3
    finetune_steps: int = 0
    finetune_sizes: list[str] = field(default_factory=lambda: ["depth_1/2"])
    finetune_lr_ratio: float = 0.3


def grid(num_layers: int, num_experts: int, top_k: int) -> dict[str, dict[str, int | None]]:
    """Sub-model name -> (depth, experts, top_k) for :func:`plan_subnet` (None = full on that axis)."""
    g: dict[str, dict[str, int | None]] = {"full": {}}
    g["depth_3/4"] = {"depth": fraction_count(num_layers, 0.75)}
    g["depth_1/2"] = {"depth": fraction_count(num_layers, 0.5)}
    g["experts_1/2"] = {"experts": fraction_count(num_experts, 0.5)}
    for k in range(top_k - 1, 0, -1):
        g[f"topk_{k}"] = {"top_k": k}
    g["combined"] = {"depth": fraction_count(num_layers, 0.75), "experts": fraction_count(num_experts, 0.5),
                     "top_k": max(1, top_k // 2)}
    return g


def c_model_overrides(size: str, base: dict[str, Any]) -> dict[str, Any]:
    """Model-config overrides of the from-scratch model with the shape of sub-model ``size``."""
    from leanlm.elastic.config import ElasticMoeConfig

    cfg = ElasticMoeConfig(**base)
    spec = grid(cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok).get(size)
    if spec is None:
        raise ValueError(f"unknown sub-model size {size!r}")
    over: dict[str, Any] = {}
    if spec.get("depth"):
        over["num_hidden_layers"] = spec["depth"]
    if spec.get("experts"):
        over["num_experts"] = spec["experts"]
        over["num_experts_per_tok"] = min(cfg.num_experts_per_tok, int(spec["experts"]))
    if spec.get("top_k"):
        over["num_experts_per_tok"] = spec["top_k"]
    return over


def _run_one(name: str, cfg_dict: dict[str, Any], out_dir: str) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    run_dir = Path(out_dir)
    done = run_dir / "final_eval.json"
    if done.exists() and (run_dir / "model").exists():
        return {"name": name, **json.loads(done.read_text())}
    cfg = TrainConfig.from_dict(cfg_dict)
    result = train(cfg, out_dir=run_dir, resume=True)
    return {"name": name, "seconds": result.seconds, "tokens": result.tokens, "flops": result.train_flops, **result.final_eval}


def plan_runs(study: StudyConfig) -> dict[str, dict[str, Any]]:
    """Run name -> TrainConfig dict for every arm and seed."""
    runs: dict[str, dict[str, Any]] = {}
    base = dict(study.base)
    elastic = base.pop("elastic", {})
    for seed in study.seeds:
        runs[f"A_seed{seed}"] = {**base, "seed": seed, "elastic": {**elastic, "enabled": True}}
        runs[f"B_seed{seed}"] = {**base, "seed": seed, "elastic": {**elastic, "enabled": False}}
        for size in study.c_sizes:
            model = {**base.get("model", {}), **c_model_overrides(size, base.get("model", {}))}
            runs[f"C_{size.replace('/', '-')}_seed{seed}"] = {**base, "model": model, "seed": seed, "elastic": {"enabled": False}}
    return runs


def run_all(study: StudyConfig, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Train every planned run (in ``workers`` processes); returns run name -> summary."""
    runs = plan_runs(study)
    summaries: dict[str, dict[str, Any]] = {}
    if study.workers <= 1:
        for name, cfg in progress(list(runs.items()), desc="study runs", unit="run"):
            log.info("training %s", name)
            summaries[name] = _run_one(name, cfg, str(out_dir / "runs" / name))
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(study.workers, mp_context=ctx) as pool:
            futures = {pool.submit(_run_one, name, cfg, str(out_dir / "runs" / name)): name for name, cfg in runs.items()}
            for fut in progress(cf.as_completed(futures), desc="study runs", total=len(futures), unit="run"):
                summaries[futures[fut]] = fut.result()
                log.info("finished %s: %.4f", futures[fut], summaries[futures[fut]]["text_loss"])
    return summaries


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_study(study: StudyConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) the whole study and compute every measurement; writes ``study.json`` atomically."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summaries = run_all(study, out)
    base_cfg = TrainConfig.from_dict({**study.base, "elastic": {}})
    _, eval_corpus = make_corpora(base_cfg)
    eval_set = eval_corpus.eval_batches(base_cfg.eval_batches, base_cfg.eval_batch_size)
    mcfg = base_cfg.model_config()
    sub_grid = grid(mcfg.num_hidden_layers, mcfg.num_experts, mcfg.num_experts_per_tok)

    grid_losses: dict[str, dict[str, list[float]]] = {arm: {name: [] for name in sub_grid} for arm in ("A", "B")}
    grid_grouped: dict[str, dict[str, list[float]]] = {arm: {name: [] for name in sub_grid} for arm in ("A", "B")}
    sub_params: dict[str, int] = {}
    extraction_check = float("nan")
    for seed in progress(study.seeds, desc="evaluate grid", unit="seed"):
        for arm in ("A", "B"):
            model = ElasticMoeForCausalLM.from_pretrained(out / "runs" / f"{arm}_seed{seed}" / "model").eval()
            for name, spec in sub_grid.items():
                subnet = plan_subnet(model, **spec) if spec else None
                ev = evaluate(model, eval_set, subnet)
                grid_losses[arm][name].append(ev["text_loss"])
                grid_grouped[arm][name].append(ev["grouped_loss"])
                if name not in sub_params:
                    sub_params[name] = _subnet_params(model, subnet)
            if arm == "A" and seed == study.seeds[0]:
                subnet = plan_subnet(model, **sub_grid["combined"])
                small = extract(model, subnet)
                ids = eval_set[0][0][:2]
                with torch.no_grad():
                    extraction_check = float((small(ids).logits - model(ids, subnet=subnet).logits).abs().max())
    c_losses = {size: [summaries[f"C_{size.replace('/', '-')}_seed{s}"]["text_loss"] for s in study.seeds] for size in study.c_sizes}

    cost = {"A": 0.0, "B": 0.0, "C": 0.0}
    flops = {"A": 0.0, "B": 0.0, "C": 0.0}
    for name, summary in summaries.items():
        cost[name[0]] += summary["seconds"]
        flops[name[0]] += summary["flops"]

    # routing and latency on the first seed's A model (and B for routing)
    seed0 = study.seeds[0]
    routing = {}
    for arm in ("A", "B"):
        model = ElasticMoeForCausalLM.from_pretrained(out / "runs" / f"{arm}_seed{seed0}" / "model").eval()
        routing[arm] = routing_report(modality_loads(model, eval_set))
    model_a = ElasticMoeForCausalLM.from_pretrained(out / "runs" / f"A_seed{seed0}" / "model").eval()
    prompt = eval_set[0][0][:1, :32]
    candidates: dict[str, tuple[ElasticMoeForCausalLM, SubNet | None]] = {
        f"k={k}": (model_a, SubNet(top_k=k)) for k in range(mcfg.num_experts_per_tok, 0, -1)
    }
    for name in ("depth_1/2", "combined"):
        candidates[f"extracted {name}"] = (extract(model_a, plan_subnet(model_a, **sub_grid[name])), None)
    timed = decode_latency_table(candidates, prompt, study.latency_tokens, study.latency_repeats)
    latency = {int(name[2:]): v for name, v in timed.items() if name.startswith("k=")}
    latency_extracted = {name: v for name, v in timed.items() if not name.startswith("k=")}
    finetune = continue_extracted(study, out, sub_grid, eval_set) if study.finetune_steps else {}
    histories = {
        name: [json.loads(line) for line in (out / "runs" / name / "history.jsonl").read_text().splitlines() if line]
        for name in summaries if name.endswith(f"seed{seed0}")
    }
    result = {
        "config": {"base": study.base, "seeds": study.seeds, "c_sizes": study.c_sizes},
        "params": {**mcfg.parameter_counts(), "subnets": sub_params},
        "grid": {arm: {n: (*mean_std(v), v) for n, v in d.items()} for arm, d in grid_losses.items()},
        "grid_grouped": {arm: {n: mean_std(v) for n, v in d.items()} for arm, d in grid_grouped.items()},
        "c": {size: (*mean_std(v), v) for size, v in c_losses.items()},
        "cost_seconds": cost, "cost_flops": flops, "runs": summaries,
        "routing": routing, "latency_s_per_token": latency, "latency_extracted_s_per_token": latency_extracted, "extraction_max_abs_diff": extraction_check,
        "histories_seed0": histories, "finetune": finetune, "wall_seconds": time.perf_counter() - t0,
    }
    atomic_write_json(out / "study.json", result)
    return result


def continue_extracted(
    study: StudyConfig, out: Path, sub_grid: dict[str, dict[str, int | None]], eval_set: list,
) -> dict[str, dict[str, Any]]:
    """The report's "extract, then keep training": extract each ``finetune_sizes`` sub-model from A and train it
    for ``finetune_steps`` more steps (plain loss, fresh data seed, LR ``finetune_lr_ratio`` x the base LR)."""
    out_rows: dict[str, dict[str, Any]] = {}
    for size in study.finetune_sizes:
        before, after, seconds = [], [], []
        for seed in study.seeds:
            run_dir = out / "runs" / f"F_{size.replace('/', '-')}_seed{seed}"
            parent = ElasticMoeForCausalLM.from_pretrained(out / "runs" / f"A_seed{seed}" / "model").eval()
            small = extract(parent, plan_subnet(parent, **sub_grid[size]))
            before.append(evaluate(small, eval_set)["text_loss"])
            done = run_dir / "final_eval.json"
            if done.exists():
                summary = json.loads(done.read_text())
            else:
                cfg = TrainConfig.from_dict({
                    **study.base, "seed": seed + 1000, "steps": study.finetune_steps, "elastic": {"enabled": False},
                    "lr": study.base.get("lr", TrainConfig.lr) * study.finetune_lr_ratio, "warmup_frac": 0.0,
                })
                result = train(cfg, out_dir=run_dir, init_model=small.train())
                summary = {"seconds": result.seconds, **result.final_eval}
            after.append(summary["text_loss"])
            seconds.append(summary["seconds"])
        out_rows[size] = {"before": (*mean_std(before), before), "after": (*mean_std(after), after),
                          "steps": study.finetune_steps, "seconds": sum(seconds)}
    return out_rows


def _subnet_params(model: ElasticMoeForCausalLM, subnet: SubNet | None) -> int:
    from leanlm.elastic.train import active_params

    return active_params(model.config, subnet)


