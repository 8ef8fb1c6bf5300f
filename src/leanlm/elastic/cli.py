"""``leanlm elastic ...``: train an elastic MoE, extract sub-models, evaluate them, run the study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="ERNIE 5.0 elastic MoE training: one run, a family of deployable sub-models.", no_args_is_help=True)


def _load_json_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


@app.command()
def train(
    out: Path = typer.Option(..., help="run directory (checkpoint.pt, history.jsonl, model/)"),
    config: Path = typer.Option(None, help="JSON TrainConfig (fields of leanlm.elastic.train.TrainConfig)"),
    steps: int = typer.Option(None, help="override TrainConfig.steps"),
    seed: int = typer.Option(None, help="override TrainConfig.seed"),
    elastic: bool = typer.Option(True, help="--no-elastic trains the plain (non-elastic) baseline"),
    nproc: int = typer.Option(1, help="data-parallel processes (torch.distributed, gloo on CPU)"),
    resume: bool = typer.Option(True, help="continue from out/checkpoint.pt if it exists"),
    init: Path = typer.Option(None, help="continue training this saved model (e.g. an extracted sub-model)"),
) -> None:
    """Train an elastic MoE LM on offline Wikipedia bytes + the synthetic grouped modality."""
    from leanlm.common.progress import get_logger
    from leanlm.elastic.train import TrainConfig, train_distributed
    from leanlm.elastic.train import train as run_train

    data = _load_json_config(config)
    if steps is not None:
        data["steps"] = steps
    if seed is not None:
        data["seed"] = seed
    data["elastic"] = {**data.get("elastic", {}), "enabled": elastic}
    try:
        cfg = TrainConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(f"{config}: {exc}") from exc
    log = get_logger("leanlm.elastic.cli")
    if nproc > 1:
        if init is not None:
            raise typer.BadParameter("--init is not supported with --nproc > 1")
        train_distributed(cfg, nproc, out_dir=out)
    else:
        init_model = None
        if init is not None:
            from leanlm.elastic.model import ElasticMoeForCausalLM

            init_model = ElasticMoeForCausalLM.from_pretrained(init)
        result = run_train(cfg, out_dir=out, resume=resume, init_model=init_model)
        log.info("done: %d tokens in %.1f s; held-out text loss %.4f nats/byte", result.tokens, result.seconds,
                 result.final_eval["text_loss"])
    log.info("wrote %s", out)


@app.command()
def extract(
    model: Path = typer.Argument(..., help="a trained elastic model directory (save_pretrained format)"),
    out: Path = typer.Option(..., help="where to save the extracted sub-model"),
    depth: int = typer.Option(None, help="layers to keep (evenly spaced, first and last kept)"),
    experts: int = typer.Option(None, help="routed experts to keep per MoE layer"),
    top_k: int = typer.Option(None, "--top-k", help="new default top-k"),
    expert_rule: str = typer.Option("usage", help="'usage' (most used in training) or 'index' (first n)"),
) -> None:
    """Cut a standalone smaller model (layers, experts, router rows/biases sliced; new k) and save it."""
    from leanlm.common.progress import get_logger
    from leanlm.elastic.extract import extract as do_extract
    from leanlm.elastic.extract import plan_subnet
    from leanlm.elastic.model import ElasticMoeForCausalLM
    from leanlm.elastic.train import save_model

    parent = ElasticMoeForCausalLM.from_pretrained(model)
    try:
        subnet = plan_subnet(parent, depth=depth, experts=experts, top_k=top_k, expert_rule=expert_rule)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    small = do_extract(parent, subnet)
    save_model(small, out)
    before = sum(p.numel() for p in parent.parameters())
    after = sum(p.numel() for p in small.parameters())
    get_logger("leanlm.elastic.cli").info(
        "extracted %s: %d -> %d parameters (%.1f%%), layers %s, %d experts, top-k %d; saved to %s",
        subnet.describe(), before, after, 100 * after / before, small.config.source_layers, small.config.num_experts,
        small.config.num_experts_per_tok, out,
    )


@app.command()
def export(
    model: Path = typer.Argument(..., help="a trained elastic model directory (save_pretrained format)"),
    out: Path = typer.Option(..., help="where to write the transformers Ernie4_5_Moe checkpoint"),
    depth: int = typer.Option(None, help="layers to keep (evenly spaced, first and last kept)"),
    experts: int = typer.Option(None, help="routed experts to keep per MoE layer"),
    top_k: int = typer.Option(None, "--top-k", help="new default top-k"),
    expert_rule: str = typer.Option("usage", help="'usage' (most used in training) or 'index' (first n)"),
) -> None:
    """Write the model (or a sub-model) as a transformers `ernie4_5_moe` checkpoint: loads without leanlm."""
    from leanlm.common.progress import get_logger
    from leanlm.elastic.export import export_pretrained
    from leanlm.elastic.extract import plan_subnet
    from leanlm.elastic.model import ElasticMoeForCausalLM

    parent = ElasticMoeForCausalLM.from_pretrained(model)
    subnet = None
    if any(v is not None for v in (depth, experts, top_k)):
        try:
            subnet = plan_subnet(parent, depth=depth, experts=experts, top_k=top_k, expert_rule=expert_rule)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    export_pretrained(parent, out, subnet)
    get_logger("leanlm.elastic.cli").info(
        "exported %s to %s (transformers Ernie4_5_MoeForCausalLM; load with AutoModelForCausalLM, no leanlm needed)",
        subnet.describe() if subnet else "the full model", out)


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="a saved elastic model directory"),
    depth: int = typer.Option(None), experts: int = typer.Option(None), top_k: int = typer.Option(None, "--top-k"),
    batches: int = typer.Option(8), batch_size: int = typer.Option(16), seq_len: int = typer.Option(128),
) -> None:
    """Held-out loss (nats/byte on text, nats/token on the grouped modality) of a model or one of its sub-models."""
    from leanlm.elastic.extract import plan_subnet
    from leanlm.elastic.model import ElasticMoeForCausalLM
    from leanlm.elastic.train import TrainConfig, make_corpora
    from leanlm.elastic.train import evaluate as do_eval

    m = ElasticMoeForCausalLM.from_pretrained(model)
    subnet = plan_subnet(m, depth=depth, experts=experts, top_k=top_k) if any(v is not None for v in (depth, experts, top_k)) else None
    _, ev = make_corpora(TrainConfig(seq_len=seq_len, codebook=(m.config.vocab_size - 259) // 2))
    typer.echo(json.dumps(do_eval(m, ev.eval_batches(batches, batch_size), subnet), indent=2))


@app.command()
def study(
    out: Path = typer.Option(Path("/tmp/elastic-study"), help="study directory (runs/, study.json, results.md)"),
    config: Path = typer.Option(None, help="JSON with StudyConfig fields (base, seeds, axes, equal_flops, threads)"),
    quick: bool = typer.Option(False, help="use the registered quick configuration"),
    max_runs: int = typer.Option(None, help="train at most this many missing runs, then summarise"),
    summarize_only: bool = typer.Option(False, help="train nothing; summarise the runs that have finished"),
    shard: str = typer.Option(None, help="i/n: train only every n-th planned run from the i-th (parallel workers); no summary"),
) -> None:
    """Run (or resume) the per-axis elastic study and write study.json + results.md in OUT (resumable)."""
    from leanlm.elastic.experiments import FULL, QUICK, render
    from leanlm.elastic.study import StudyConfig, run_study, summarize

    data = dict(QUICK if quick else FULL)
    data.update(_load_json_config(config))
    try:
        cfg = StudyConfig(**data)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(f"{config}: {exc}") from exc
    part = None
    if shard is not None:
        try:
            i, n = (int(v) for v in shard.split("/"))
        except ValueError as exc:
            raise typer.BadParameter(f"--shard must look like 0/4, got {shard!r}") from exc
        part = (i, n)
    result = summarize(cfg, out) if summarize_only else run_study(cfg, out, max_runs=max_runs, shard=part)
    if result is None:
        typer.echo(f"shard {shard} done; summarise with --summarize-only")
        return
    render(result, out)
    typer.echo(str(out / "results.md"))


@app.command("decode-bench")
def decode_bench(
    out: Path = typer.Option(..., help="Markdown output (a .json with the same stem is written beside it)"),
    threads: int = typer.Option(1, help="torch threads"),
    repeats: int = typer.Option(7, help="interleaved repeats per variant"),
    new_tokens: int = typer.Option(32, help="tokens decoded per repeat"),
    quick: bool = typer.Option(False, help="only the small (study) model, 3 repeats"),
    only_study: bool = typer.Option(False, "--only-study", help="only the small (study) model, the given repeats"),
    clock: str = typer.Option("wall", help="'wall' (idle machine, of record) or 'cpu' (thread CPU time: under load)"),
) -> None:
    """ms per decoded token vs top-k and extracted depth/width, batch 1 and 8, against the ideal FLOP ratio."""
    import platform

    import torch

    from leanlm.common.atomic import atomic_write_json, atomic_write_text
    from leanlm.elastic.decode_bench import CONFIGS, markdown, run_decode_benchmark

    torch.set_num_threads(threads)
    configs = dict(list(CONFIGS.items())[:1]) if quick or only_study else CONFIGS
    rows = run_decode_benchmark(configs, repeats=3 if quick else repeats, new_tokens=new_tokens, clock=clock)
    header = (f"Command: `leanlm elastic decode-bench --out {out} --threads {threads} --repeats {repeats}"
              f"{' --quick' if quick else ''}{' --only-study' if only_study else ''} --clock {clock}`; torch {torch.__version__}, "
              f"{threads} thread(s), {platform.processor() or platform.machine()}, random-init weights (speed does not "
              f"depend on training); {'wall-clock' if clock == 'wall' else 'thread CPU'} time.\n")
    atomic_write_text(out, markdown(rows, header))
    atomic_write_json(out.with_suffix(".json"), rows)
    typer.echo(markdown(rows))
    typer.echo(f"wrote {out} and {out.with_suffix('.json')}")


@app.command()
def bench(
    out: Path = typer.Option(None, help="write the rows as JSON here (atomically)"),
    threads: int = typer.Option(1, help="torch threads"),
) -> None:
    """Our MoE layer vs transformers' Ernie4_5_MoeSparseMoeBlock (same weights): equality and time, side by side."""
    import torch

    from leanlm.common.atomic import atomic_write_json
    from leanlm.elastic.peer import bench_moe

    torch.set_num_threads(threads)
    rows = bench_moe()
    for r in rows:
        typer.echo(
            f"d={r['hidden']} E={r['experts']} k={r['top_k']} f={r['expert_hidden']} tokens={r['tokens']} {r['mode']}: "
            f"ours {r['ours_sorted_ms']:.2f} ms (bmm {r['ours_bmm_ms']:.2f}), transformers {r['peer_ms']:.2f} ms, "
            f"peer/ours {r['peer_over_ours']:.2f}x, max|diff| {r['max_abs_diff']:.1e}"
        )
    if out is not None:
        atomic_write_json(out, rows)
        typer.echo(f"wrote {out}")
