"""``leanlm fasa``: calibrate dominant frequency chunks, generate with FASA, inspect a calibration, benchmark."""

from __future__ import annotations

from pathlib import Path

import typer

from leanlm.common.progress import get_logger

app = typer.Typer(help="FASA: frequency-aware sparse attention for RoPE models (arXiv 2602.03152).",
                  no_args_is_help=True)
log = get_logger("leanlm.fasa.cli")


def _read_texts(paths: list[Path], field: str) -> list[str]:
    from leanlm.common.records import RecordError, read_jsonl

    texts: list[str] = []
    for path in paths:
        if not path.exists():
            raise typer.BadParameter(f"{path}: file not found", param_hint="--text-file")
        if path.suffix in (".jsonl", ".gz", ".zst") or path.name.endswith((".jsonl.gz", ".jsonl.zst")):
            for line, record in read_jsonl(path):
                value = record.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise RecordError(path, line, f"field {field!r} missing or not a non-empty string")
                texts.append(value)
        else:
            text = path.read_text(encoding="utf-8")
            if not text.strip():
                raise typer.BadParameter(f"{path}: file is empty", param_hint="--text-file")
            texts.append(text)
    return texts


@app.command()
def calibrate(
    out: Path = typer.Option(..., "--out", help="calibration file to write (JSON)"),
    model: str = typer.Option("embedded", help="'embedded', a local HF model directory, or a .gguf file"),
    text_file: list[Path] = typer.Option(None, "--text-file", help="calibration text: .txt or .jsonl (repeatable); "
                                         "default: real Wikipedia text"),
    field: str = typer.Option("text", help="JSONL field holding the text"),
    k: list[int] = typer.Option([64, 128, 256, 512], "--k", help="top-K sizes to record CA for (repeatable)"),
    n_tip: int = typer.Option(0, help="dominant FCs per head (0 = 25% of head_dim/2, the paper's 16 of 64)"),
    pairing: str = typer.Option("auto", help="auto | half | interleaved | adjacent (official-code ablation)"),
    max_tokens: int = typer.Option(2048, help="truncate each calibration text to this many tokens"),
    decode_steps: int = typer.Option(32, help="greedy decode steps per text whose CA is recorded"),
    prefill_stride: int = typer.Option(32, help="also record every n-th prefill position (0 = decode steps only)"),
) -> None:
    """Calibrate the dominant FCs of every (layer, head) (paper Eq. 5) and write them to OUT."""
    from leanlm.common.models import load_model
    from leanlm.fasa.calibration import calibrate as run_calibration

    texts = _read_texts(text_file, field) if text_file else None
    loaded = load_model(model)
    calib = run_calibration(
        loaded.model, loaded.tokenizer, texts, ks=k, n_tip=n_tip or None,
        pairing=None if pairing == "auto" else pairing, max_tokens=max_tokens, decode_steps=decode_steps,
        prefill_stride=prefill_stride or None, model_id=model if model == "embedded" else loaded.source,
    )
    calib.save(out)
    typer.echo(f"wrote {out}: {calib.geometry['num_layers']} layers x {calib.geometry['num_heads']} heads, "
               f"N_tip={calib.n_tip} of {calib.head_dim // 2} FCs, samples per K {calib.counts}")


@app.command()
def generate(
    calibration: str = typer.Option(..., "--calibration", help="file written by `leanlm fasa calibrate`, or "
                                    "'embedded' for the bundled SmolLM2-135M calibration"),
    model: str = typer.Option("embedded", help="'embedded', a local HF model directory, or a .gguf file"),
    budget: int = typer.Option(256, help="N_fac: tokens attended per head at each decode step"),
    prompt_file: Path = typer.Option(None, "--prompt-file", help="file with the prompt"),
    prompt: str = typer.Option(None, help="the prompt text (instead of --prompt-file)"),
    max_new_tokens: int = typer.Option(64),
    chat: bool = typer.Option(True, help="wrap the prompt in the model's chat template"),
    dense_layers: str = typer.Option("0", help="comma-separated layers kept dense ('' = none)"),
    pooled: bool = typer.Option(False, help="one token set per KV group (GQA ablation)"),
    compare: bool = typer.Option(False, help="also decode with the full KV cache and report agreement"),
) -> None:
    """Greedy generation with FASA decoding (dense prefill, TIP + FAC per step)."""
    import torch

    from leanlm.common.models import load_model
    from leanlm.fasa.calibration import Calibration
    from leanlm.fasa.integration import apply

    if (prompt is None) == (prompt_file is None):
        raise typer.BadParameter("give exactly one of --prompt or --prompt-file")
    if prompt_file is not None:
        if not prompt_file.exists():
            raise typer.BadParameter(f"{prompt_file}: file not found", param_hint="--prompt-file")
        prompt = prompt_file.read_text(encoding="utf-8")
    if budget < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--budget")
    calib = Calibration.load(calibration)
    loaded = load_model(model)
    net, tok = loaded.model, loaded.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True) if chat else prompt
    ids = tok(text, return_tensors="pt").input_ids
    layers = tuple(int(x) for x in dense_layers.split(",") if x.strip())
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id,
                  attention_mask=torch.ones_like(ids))
    with torch.inference_mode(), apply(net, calib, budget=budget, dense_layers=layers, pooled=pooled) as fasa:
        out = net.generate(ids, **kwargs)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    log.info("prompt %d tokens, budget %d: attended %.1f%% of keys in sparse layers", ids.shape[1], budget,
             100 * fasa.stats.attended_fraction)
    typer.echo(answer)
    if compare:
        with torch.inference_mode():
            full = net.generate(ids, **kwargs)
        full_answer = tok.decode(full[0, ids.shape[1]:], skip_special_tokens=True)
        n = min(out.shape[1], full.shape[1])
        same = int((out[0, ids.shape[1]:n] == full[0, ids.shape[1]:n]).cumprod(0).sum())
        typer.echo(f"--- full KV ---\n{full_answer}\n--- identical: {full_answer == answer} "
                   f"(first {same} tokens agree)")


@app.command()
def inspect(
    calibration: str = typer.Argument(..., help="calibration file (or 'embedded', the bundled one)"),
    out: Path = typer.Option(None, "--out", help="PNG heatmap to write (default: next to the calibration)"),
    k: int = typer.Option(0, help="CA table to show (0 = the middle calibrated K)"),
    layers: int = typer.Option(0, help="print the dominant FCs of the first N layers only (0 = all)"),
) -> None:
    """Print the dominant FCs per (layer, head) and write a PNG heatmap of CA."""
    from leanlm.common.atomic import atomic_write_bytes
    from leanlm.common.report import Figure
    from leanlm.fasa.calibration import Calibration
    from leanlm.fasa.plots import ca_heatmap, dominant_histogram

    calib = Calibration.load(calibration)
    kk = calib.k_for_budget(k or None)
    dom = calib.dominant(kk).tolist()
    typer.echo(f"{calib.model_id} ({calib.geometry['model_type']}), pairing={calib.pairing}, "
               f"N_tip={calib.n_tip}/{calib.head_dim // 2} FCs, K={kk} ({calib.counts[kk]} queries averaged)")
    for layer, heads in enumerate(dom[: layers or None]):
        typer.echo(f"layer {layer:2d}: " + " | ".join(",".join(map(str, sorted(h))) for h in heads))
    hist = dominant_histogram(calib, kk).tolist()
    top = sorted(range(len(hist)), key=lambda i: -hist[i])[:8]
    typer.echo("most often dominant FCs: " + ", ".join(f"FC{i} ({hist[i]} heads)" for i in top))
    target = out or (Path(calibration).with_suffix(".png") if calibration not in ("embedded",) else
                      Path("fasa-embedded-ca.png"))
    figure = Figure.from_matplotlib(ca_heatmap(calib, kk), "CA heatmap")
    atomic_write_bytes(target, figure.png)
    typer.echo(f"wrote {target}")


@app.command()
def bench(
    out: Path = typer.Option(..., "--out", help="Markdown file to write (JSON beside it, same name .json)"),
    perf: bool = typer.Option(True, "--perf/--no-perf", help="the speed benchmark (the only benchmark for now)"),
    quick: bool = typer.Option(False, "--quick", help="the reproduce quick config (~1-2 min idle) instead of full"),
    threads: int = typer.Option(1, help="torch intra-op threads (1: small decode ops lose from threading)"),
    profile: bool = typer.Option(False, "--profile", help="only table (e): where one attention step's time goes"),
    evaluation: bool = typer.Option(False, "--eval", help="the accuracy evaluation (task suite, every baseline, "
                                    "perplexity; leanlm.fasa.evaluation) instead of the speed benchmark"),
    run_dir: Path = typer.Option(None, "--run-dir", help="--eval: checkpoint directory (resumes; default: "
                                 "<out stem>-run beside --out)"),
    min_available_gb: float = typer.Option(0.0, "--min-available-gb", help="--eval: start the model and each "
                                           "prompt only when this much memory is available (shared machines; "
                                           "an 8K prompt holds an estimated ~1.5 GB beyond the ~1 GB model process)"),
) -> None:
    """Honest speed benchmark: FASA-C (per head, pooled) and FASA-M vs the strongest dense decode paths.

    With ``--eval``: the accuracy evaluation (tables, plots, checkpoints that resume)."""
    if evaluation:
        from leanlm.fasa.evaluation.bench import bench_eval

        bench_eval(out, quick, threads, run_dir, log.info, min_available_gb)
        typer.echo(f"wrote {out} and {out.with_suffix('.json')}")
        return
    import json
    import os
    import platform
    import time

    import torch

    from leanlm.common.atomic import atomic_write_text
    from leanlm.common.report import table_markdown
    from leanlm.fasa.perf import FULL, PROFILE, QUICK, run_perf

    if not perf:
        raise typer.BadParameter("nothing to run without --perf", param_hint="--perf")
    torch.set_num_threads(threads)
    config = dict(PROFILE if profile else QUICK if quick else FULL)
    t0 = time.perf_counter()
    result = run_perf(config, log=log.info)
    seconds = time.perf_counter() - t0
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    kind = "profile only" if profile else "quick" if quick else "full"
    flags = " --profile" if profile else " --quick" if quick else ""
    head = (f"# FASA speed benchmark ({kind} config)\n\n"
            f"Command: `leanlm fasa bench --perf{flags} --threads {threads} --out {out}`; "
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
            f"torch {torch.__version__}, load average at the end {load}; {seconds:.0f} s.\n\n")
    body = "\n\n".join(table_markdown(t) for t in result["tables"])
    atomic_write_text(out, head + body + "\n")
    atomic_write_text(out.with_suffix(".json"), json.dumps({**result["raw"], "metrics": result["metrics"],
                                                            "seconds": seconds, "threads": threads}, indent=1))
    typer.echo(f"wrote {out} and {out.with_suffix('.json')} ({seconds:.0f} s)")
