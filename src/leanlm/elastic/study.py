"""The elastic-training study (issue 17): can one elastic run replace a family of separately trained models?

Design (ERNIE 5.0 §3.3 / §6.4.2, which ablates one axis at a time):

- **Per-axis elastic runs** ``A_<axis>``: ``depth`` (only layers are dropped, 25% of steps, first and last layer
  always kept), ``width`` (only experts removed, 20%), ``topk`` (only k cut, 20%), and ``all`` (the three axes
  drawn independently at the report's rates, first/last layer kept).
- **Plain baseline** ``B``: the same model, data and token budget, no elasticity.
- **From-scratch sub-models** ``C_<cut>``: the shape of each axis's deployment cut (depth 1/2, experts 1/2,
  top-1, the combined cut) trained on the same data and token budget; and ``E_<cut>`` ("equal total FLOPs"): the
  same shape trained on the token budget T' at which the plain family -- a full model and the cut, each trained
  on T' tokens -- costs exactly the training FLOPs of ``A_<axis>``, which yields both for that price.
- **Seeds** (default 5); every comparison is a paired difference over seeds (same seed = same data order and
  initialisation) with a t-based 95% interval.

Claims tested (rules from the issue):
1. elasticity does not hurt the full model: for an axis it holds when the interval of ``A_full - B_full``
   contains 0 or lies below +0.01 nats;
2. sub-models beat same-size from-scratch models at equal total FLOPs: holds when the interval of
   ``A_cut - E_cut`` lies below 0, fails when it lies above 0, otherwise undecided.

Every run lives in ``out_dir/runs/<name>`` with checkpoints; a finished run is never retrained, an unfinished one
resumes from its checkpoint, so the study can span sessions. :func:`summarize` works on whatever has finished.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write_json
from leanlm.common.progress import get_logger
from leanlm.common.stats import mean_interval
from leanlm.elastic.config import ElasticMoeConfig
from leanlm.elastic.elastic import ElasticSampler, fraction_count
from leanlm.elastic.extract import plan_subnet
from leanlm.elastic.model import ElasticMoeForCausalLM
from leanlm.elastic.train import TrainConfig, active_params, evaluate, make_corpora, train

log = get_logger("leanlm.elastic.study")

AXES = ("depth", "width", "topk", "all")
CUT_OF_AXIS = {"depth": "depth_1/2", "width": "experts_1/2", "topk": "topk_1", "all": "combined"}
FULL_GAP_TOLERANCE = 0.01  # nats: "within 0.01" of the rule 1


@dataclass
class StudyConfig:
    """What to run. ``base`` is a :class:`TrainConfig` as a dict (its ``elastic`` field is set per arm)."""

    base: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    axes: list[str] = field(default_factory=lambda: list(AXES))
    equal_flops: bool = True
    threads: int = 1

    def __post_init__(self) -> None:
        bad = [a for a in self.axes if a not in AXES]
        if bad:
            raise ValueError(f"StudyConfig.axes: unknown {bad}; known {list(AXES)}")
        if not self.seeds:
            raise ValueError("StudyConfig.seeds is empty")


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


def axis_elastic(axis: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`ElasticConfig` fields of the elastic run for ``axis`` (other axes held at full)."""
    e = {**(base or {}), "enabled": True, "keep_first_last": True}
    if axis == "depth":
        e.update(p_full_width=1.0, p_default_k=1.0)
    elif axis == "width":
        e.update(p_full_depth=1.0, p_default_k=1.0)
    elif axis == "topk":
        e.update(p_full_depth=1.0, p_full_width=1.0)
    elif axis != "all":
        raise ValueError(f"unknown axis {axis!r}")
    return e


def expected_flops(cfg: TrainConfig) -> float:
    """Training FLOPs (6 * active params * tokens, summed over the sampled sub-networks) of ``cfg`` -- exact,
    because the sampler is a function of (seed, step)."""
    mcfg = cfg.model_config()
    sampler = ElasticSampler(cfg.elastic, mcfg.num_hidden_layers, mcfg.num_experts, mcfg.num_experts_per_tok,
                             mcfg.moe_layers, cfg.seed)
    tokens = cfg.batch_size * cfg.seq_len
    return sum(6.0 * active_params(mcfg, sampler.sample(step)) * tokens for step in range(cfg.steps))


def plan_runs(study: StudyConfig) -> dict[str, dict[str, Any]]:
    """Run name -> TrainConfig dict, seed-major (all arms of seed 0 first), so complete seeds finish first."""
    base = dict(study.base)
    elastic = base.pop("elastic", {})
    model = base.get("model", {})
    runs: dict[str, dict[str, Any]] = {}
    for seed in study.seeds:
        runs[f"B_seed{seed}"] = {**base, "seed": seed, "elastic": {"enabled": False}}
        for axis in study.axes:
            runs[f"A_{axis}_seed{seed}"] = {**base, "seed": seed, "elastic": axis_elastic(axis, elastic)}
        for axis in study.axes:
            cut = CUT_OF_AXIS[axis]
            c_model = {**model, **c_model_overrides(cut, model)}
            runs[f"C_{_slug(cut)}_seed{seed}"] = {**base, "model": c_model, "seed": seed, "elastic": {"enabled": False}}
        if study.equal_flops:
            for axis in study.axes:
                cut = CUT_OF_AXIS[axis]
                a_cfg = TrainConfig.from_dict(runs[f"A_{axis}_seed{seed}"])
                b_cfg = TrainConfig.from_dict(runs[f"B_seed{seed}"])
                c_dict = runs[f"C_{_slug(cut)}_seed{seed}"]
                c_cfg = TrainConfig.from_dict(c_dict)
                share = expected_flops(a_cfg) / (expected_flops(b_cfg) + expected_flops(c_cfg))
                runs[f"E_{_slug(cut)}_seed{seed}"] = {**c_dict, "steps": max(1, round(c_cfg.steps * share))}
    return runs


def _slug(cut: str) -> str:
    return cut.replace("/", "-")


def run_one(name: str, cfg_dict: dict[str, Any], run_dir: Path, threads: int = 1) -> dict[str, Any]:
    """Train (or resume, or skip if finished) one run; returns its ``final_eval.json`` summary."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    done = run_dir / "final_eval.json"
    if done.exists() and (run_dir / "model").exists():
        return {"name": name, **json.loads(done.read_text())}
    cfg = TrainConfig.from_dict({**cfg_dict, "threads": threads})
    result = train(cfg, out_dir=run_dir, resume=True)
    return {"name": name, "seconds": result.seconds, "tokens": result.tokens, "flops": result.train_flops, **result.final_eval}


def run_study(
    study: StudyConfig, out_dir: str | Path, max_runs: int | None = None, shard: tuple[int, int] | None = None,
) -> dict[str, Any] | None:
    """Train every missing run in order (at most ``max_runs`` of them), then :func:`summarize`.

    ``shard=(i, n)`` trains only the runs whose position in the plan is ``i`` mod ``n`` and does not summarise,
    so ``n`` processes (e.g. on one GPU) can share a study; summarise afterwards."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "study_config.json", asdict(study))
    runs = plan_runs(study)
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {shard[0]}/{shard[1]}")
    trained = 0
    for position, (name, cfg) in enumerate(runs.items()):
        if shard is not None and position % shard[1] != shard[0]:
            continue
        run_dir = out / "runs" / name
        if (run_dir / "final_eval.json").exists() and (run_dir / "model").exists():
            continue
        if max_runs is not None and trained >= max_runs:
            break
        log.info("training %s (%d/%d)", name, list(runs).index(name) + 1, len(runs))
        run_one(name, cfg, run_dir, study.threads)
        trained += 1
    return summarize(study, out) if shard is None else None


def paired(diffs: list[float]) -> dict[str, Any]:
    """Mean of paired differences with its t-based 95% interval (``n`` seeds; n < 2 gives no interval)."""
    n = len(diffs)
    if n == 0:
        return {"n": 0, "mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "half": float("nan"), "diffs": []}
    mean = statistics.fmean(diffs)
    half = mean_interval(diffs).half
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "half": half, "diffs": diffs}


def full_claim(d: dict[str, Any]) -> str:
    """Rule 1: holds when the interval of (elastic full - plain full) contains 0 or lies below +0.01."""
    if d["n"] < 2:
        return "not enough seeds"
    return "holds" if (d["lo"] <= 0 <= d["hi"]) or d["hi"] <= FULL_GAP_TOLERANCE else "fails"


def sub_claim(d: dict[str, Any]) -> str:
    """Rule 2: the elastic sub-model beats the same-size model: interval of (A_cut - other) below 0."""
    if d["n"] < 2:
        return "not enough seeds"
    if d["hi"] < 0:
        return "holds"
    return "fails" if d["lo"] > 0 else "undecided"


def _evaluate_run(run_dir: Path, specs: dict[str, dict[str, int | None]], eval_set: list) -> dict[str, float]:
    """Held-out text loss of a finished run's full model and its cuts (cached in ``cuts.json``)."""
    cache = run_dir / "cuts.json"
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if all(name in cached for name in specs):
        return cached
    model = ElasticMoeForCausalLM.from_pretrained(run_dir / "model").eval()
    for name, spec in specs.items():
        if name not in cached:
            subnet = plan_subnet(model, **spec) if spec else None
            cached[name] = evaluate(model, eval_set, subnet)["text_loss"]
    atomic_write_json(cache, cached)
    return cached


def summarize(study: StudyConfig, out_dir: str | Path) -> dict[str, Any]:
    """Paired comparisons over the seeds whose runs have all finished; writes ``study.json`` atomically."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    runs = plan_runs(study)
    finished = {name for name in runs if (out / "runs" / name / "final_eval.json").exists() and (out / "runs" / name / "model").exists()}
    base_cfg = TrainConfig.from_dict({**study.base, "elastic": {}})
    _, eval_corpus = make_corpora(base_cfg)
    eval_set = eval_corpus.eval_batches(base_cfg.eval_batches, base_cfg.eval_batch_size)
    mcfg = base_cfg.model_config()
    g = grid(mcfg.num_hidden_layers, mcfg.num_experts, mcfg.num_experts_per_tok)
    cuts = {CUT_OF_AXIS[a]: g[CUT_OF_AXIS[a]] for a in study.axes}
    losses: dict[str, dict[str, float]] = {}
    for name in sorted(finished):
        specs = {"full": {}, **cuts} if name.startswith(("A_", "B_")) else {"full": {}}
        losses[name] = _evaluate_run(out / "runs" / name, specs, eval_set)
    summaries = {name: json.loads((out / "runs" / name / "final_eval.json").read_text()) for name in finished}

    axes: dict[str, Any] = {}
    for axis in study.axes:
        cut = CUT_OF_AXIS[axis]
        rows: dict[str, list[float]] = {k: [] for k in ("a_full", "b_full", "a_cut", "b_cut", "c_cut", "e_cut")}
        d_full, d_c, d_e, d_b = [], [], [], []
        seeds_used = []
        for seed in study.seeds:
            a, b = losses.get(f"A_{axis}_seed{seed}"), losses.get(f"B_seed{seed}")
            if a is None or b is None:
                continue
            seeds_used.append(seed)
            rows["a_full"].append(a["full"])
            rows["b_full"].append(b["full"])
            rows["a_cut"].append(a[cut])
            rows["b_cut"].append(b[cut])
            d_full.append(a["full"] - b["full"])
            d_b.append(a[cut] - b[cut])
            c = losses.get(f"C_{_slug(cut)}_seed{seed}")
            if c is not None:
                rows["c_cut"].append(c["full"])
                d_c.append(a[cut] - c["full"])
            e = losses.get(f"E_{_slug(cut)}_seed{seed}")
            if e is not None:
                rows["e_cut"].append(e["full"])
                d_e.append(a[cut] - e["full"])
        full_d, e_d = paired(d_full), paired(d_e)
        axes[axis] = {
            "cut": cut, "seeds": seeds_used, "losses": rows,
            "a_full_minus_b_full": full_d, "a_cut_minus_c": paired(d_c), "a_cut_minus_e": e_d, "a_cut_minus_b_cut": paired(d_b),
            "claim_full": full_claim(full_d), "claim_sub_equal_flops": sub_claim(e_d),
            "claim_sub_equal_tokens": sub_claim(paired(d_c)),
        }

    params = {"full": mcfg.parameter_counts()}
    for axis in study.axes:
        cut = CUT_OF_AXIS[axis]
        model = study.base.get("model", {})
        c_cfg = TrainConfig.from_dict({**study.base, "model": {**model, **c_model_overrides(cut, model)}, "elastic": {}})
        params[cut] = c_cfg.model_config().parameter_counts()
    tokens = base_cfg.steps * base_cfg.batch_size * base_cfg.seq_len
    smallest = min(p["total"] for p in params.values())
    flops = {name: s.get("flops") for name, s in summaries.items()}
    result = {
        "config": asdict(study), "params": params, "tokens_per_run": tokens,
        "tokens_per_param_smallest": tokens / smallest, "runs_planned": len(runs), "runs_finished": len(finished),
        "missing": [n for n in runs if n not in finished], "axes": axes, "losses": losses,
        "flops": flops, "seconds": {n: s.get("seconds") for n, s in summaries.items()},
        "summary_seconds": time.perf_counter() - t0,
    }
    atomic_write_json(out / "study.json", result)
    return result


__all__ = [
    "AXES", "CUT_OF_AXIS", "StudyConfig", "axis_elastic", "c_model_overrides", "expected_flops", "full_claim", "grid",
    "paired", "plan_runs", "run_one", "run_study", "sub_claim", "summarize",
]
