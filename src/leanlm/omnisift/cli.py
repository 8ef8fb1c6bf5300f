"""``leanlm omnisift``: the synthetic study, prefill latency / FLOPs, ratio presets, and a compression demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="OmniSIFT modality-asymmetric token compression (arXiv 2602.04804).", no_args_is_help=True)


def _load_config(path: Optional[Path]) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise typer.BadParameter(f"{path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path}: expected a JSON object of study settings")
    return data


@app.command()
def study(
    out: Path = typer.Option(Path("reports/omnisift-study"), help="output directory (results.json, checkpoints)"),
    seeds: int = typer.Option(1, help="number of seeds (0..n-1)"),
    quick: bool = typer.Option(True, help="the quick configuration (the one `leanlm reproduce --quick` runs)"),
    config: Optional[Path] = typer.Option(None, help="JSON file overriding study settings (StudyConfig fields)"),
    pretrain_only: bool = typer.Option(False, help="stop after stage A and record its full-token accuracy"),
) -> None:
    """Train on full tokens, fine-tune with compression, compare methods at 35% / 25% retention."""
    from leanlm.common.atomic import atomic_write_json
    from leanlm.common.progress import get_logger
    from leanlm.omnisift.experiments import FULL, QUICK
    from leanlm.omnisift.study import StudyConfig, run_study, summarize

    log = get_logger("leanlm.omnisift.cli")
    settings = dict(QUICK["study"] if quick else FULL["study"])
    settings["seeds"] = list(range(seeds))
    settings.update(_load_config(config))
    cfg = StudyConfig.from_dict(settings)
    result = run_study(cfg, out, pretrain_only=pretrain_only)
    rows = summarize(result["records"])
    atomic_write_json(out / "results.json", {"summary": rows, **result})
    for row in rows:
        log.info("%-20s target %-4s kept %.3f  acc %.3f ± %.3f", row["method"], row["target"], row["retention"],
                 row["accuracy"], row["std"])
    log.info("wrote %s", out / "results.json")


@app.command()
def merge(
    runs: list[Path] = typer.Argument(..., help="study output directories (each with results.json), one per seed"),
    out: Path = typer.Option(Path("reports/omnisift-study/merged.md"), help="Markdown report (JSON written beside it)"),
) -> None:
    """Merge per-seed study runs: mean ± sd, per-seed numbers and paired differences with t intervals."""
    from leanlm.common.atomic import atomic_write_json, atomic_write_text
    from leanlm.omnisift.merge import load_runs, report
    from leanlm.omnisift.synth import TaskConfig

    try:
        records, settings = load_runs(runs)
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    chance = 1.0 / TaskConfig(**(settings.get("task") or {})).classes
    text, data = report(records, chance=chance)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    atomic_write_json(out.with_suffix(".json"), {"runs": [str(r) for r in runs], "settings": settings, **data})
    typer.echo(text)


@app.command()
def ratios(
    n_p: int = typer.Option(320, help="video tokens per LLM frame"),
    audio: int = typer.Option(50, help="audio tokens per 2-s chunk"),
    chunks: int = typer.Option(30, help="number of chunks"),
) -> None:
    """Table 6 presets and the video ratio that matches each retention in a given geometry."""
    from leanlm.common.progress import get_logger
    from leanlm.omnisift.presets import PAPER_RATIOS, kept_tokens, solve_rho_v

    log = get_logger("leanlm.omnisift.cli")
    sizes, audio_counts = [[n_p, n_p]] * chunks, [audio] * chunks
    total = chunks * (2 * n_p + audio)
    for method, table in PAPER_RATIOS.items():
        for retention, (rho_a, rho_v) in table.items():
            kept = kept_tokens(sizes, audio_counts, rho_v, rho_a)
            solved = solve_rho_v(sizes, audio_counts, rho_a, retention)
            log.info("%-8s %.0f%%: paper rho_a=%.2f rho_v=%.2f keeps %.1f%%; calibrated rho_v=%.4f", method,
                     100 * retention, rho_a, rho_v, 100 * kept / total, solved)


@app.command()
def latency(
    frames: int = typer.Option(16, help="LLM frames (1 s each)"),
    grid: int = typer.Option(16, help="patches per side before the 2x2 merge"),
    repeats: int = typer.Option(5),
    hidden: int = typer.Option(256, help="hidden size of the tiny thinker"),
) -> None:
    """Prefill wall time of a tiny thinker at 100/35/25% retention (interleaved runs, medians)."""
    from leanlm.common.progress import get_logger
    from leanlm.omnisift.study import StudyConfig, prefill_latency

    log = get_logger("leanlm.omnisift.cli")
    for row in prefill_latency(StudyConfig(), frames, (grid, grid), [0.35, 0.25], repeats, hidden_size=hidden):
        log.info("retention %.2f: %d tokens, %.4f s (x%.2f of full)", row["retention"], row["sequence"],
                 row["median_s"], row["ratio_to_full"])


@app.command()
def demo(
    rho_v: float = typer.Option(0.77, help="video removal ratio"),
    rho_a: float = typer.Option(0.5, help="audio removal ratio"),
    method: str = typer.Option("omnisift", help="omnisift | random | dycoke | omnizip"),
) -> None:
    """Compress a random tiny Qwen2.5-Omni input through the real encoders and generate a few tokens."""
    import torch

    from leanlm.common.progress import get_logger
    from leanlm.omnisift import DyCokeTTM, OmniSIFT, OmniZipStyle, RandomPruning
    from leanlm.omnisift.tiny import av_prompt, tiny_thinker

    log = get_logger("leanlm.omnisift.cli")
    makers = {"omnisift": lambda: OmniSIFT(rho_v, rho_a, 64, selector_dim=32, selector_heads=4),
              "random": lambda: RandomPruning(rho_v, rho_a), "dycoke": lambda: DyCokeTTM(rho_v, rho_a),
              "omnizip": lambda: OmniZipStyle(rho_v, rho_a)}
    if method not in makers:
        raise typer.BadParameter(f"--method must be one of {', '.join(makers)}, got {method!r}")
    model = tiny_thinker(compressor=makers[method](), compact_ids=True)
    p = av_prompt(model.config, 4, (8, 8), 100, [100, 101], [102])
    vc = model.config.vision_config
    pixels = torch.randn(4 * 64, vc.in_channels * vc.temporal_patch_size * vc.patch_size**2)
    mel = int(p.audio_feature_lengths[0])
    with torch.no_grad():
        out = model.generate(
            input_ids=p.input_ids, attention_mask=torch.ones_like(p.input_ids), pixel_values_videos=pixels,
            video_grid_thw=p.video_grid_thw, input_features=torch.randn(1, model.config.audio_config.num_mel_bins, mel),
            feature_attention_mask=torch.ones(1, mel, dtype=torch.long), use_audio_in_video=True,
            video_second_per_grid=p.video_second_per_grid, max_new_tokens=4, do_sample=False,
        )
    s = model.last_compression
    log.info("%s: video %d/%d, audio %d/%d kept (%.1f%%); generated %s", method, s.video_kept, s.video_total,
             s.audio_kept, s.audio_total, 100 * s.retention, out[0, p.input_ids.shape[1]:].tolist())


@app.command()
def curves(
    out: Path = typer.Option(Path("reports/omnisift-curves"), help="output directory (curves-seed<k>.json, checkpoints)"),
    seed: int = typer.Option(0, help="seed to run (run several processes for several seeds)"),
    steps: int = typer.Option(1500, help="fine-tuning steps per mode"),
    eval_every: int = typer.Option(100, help="evaluate every this many steps"),
    modes: str = typer.Option("ste,mask,direct", help="comma-separated: ste (the paper's STE: dropped tokens removed), "
                              "mask (STE with dropped tokens kept at value 0 while training), direct (+BCE on the answer sound)"),
    config: Optional[Path] = typer.Option(None, help="JSON file overriding study settings (StudyConfig fields)"),
) -> None:
    """Answer-sound retention per fine-tuning step: VGAS through the STE vs directly supervised vs random."""
    from leanlm.omnisift.curves import MODES, run_curves
    from leanlm.omnisift.experiments import FULL
    from leanlm.omnisift.study import StudyConfig

    chosen = tuple(m.strip() for m in modes.split(",") if m.strip())
    bad = [m for m in chosen if m not in MODES]
    if bad:
        raise typer.BadParameter(f"--modes: unknown {', '.join(bad)}; known: {', '.join(MODES)}")
    settings = dict(FULL["study"])
    settings["seeds"] = [seed]
    settings["eval_samples"] = 256
    settings.update(_load_config(config))
    run_curves(StudyConfig.from_dict(settings), seed, out, steps, eval_every, modes=chosen)


@app.command("ste-check")
def ste_check(
    out: Path = typer.Option(Path("reports/omnisift-curves"), help="directory of the curves run (its checkpoints are reused)"),
    seeds: str = typer.Option("0,1,2", help="comma-separated seeds"),
    config: Optional[Path] = typer.Option(None, help="JSON file overriding study settings (as for `curves`)"),
) -> None:
    """Per STE formulation: the LM-loss gradient on kept/dropped answer and other sounds, and its cosine
    with the directly supervised gradient, on the stage-A thinkers (writes ste-check.json and .md)."""
    import statistics

    from leanlm.common.atomic import atomic_write_json, atomic_write_text
    from leanlm.omnisift.curves import gradient_diagnostics
    from leanlm.omnisift.experiments import FULL
    from leanlm.omnisift.study import StudyConfig

    settings = dict(FULL["study"])
    settings.update(_load_config(config))
    chosen = [int(s) for s in seeds.split(",") if s.strip()]
    result = {}
    lines = ["| seed | STE | cos(STE, direct) per batch | answer dropped: mean ∂L/∂s (share < 0) | mean abs | "
             "answer kept: mean (share < 0) | mean abs | other audio: mean (share < 0) | mean abs |", "|---" * 9 + "|"]
    for seed in chosen:
        settings["seeds"] = [seed]
        result[seed] = gradient_diagnostics(StudyConfig.from_dict(settings), seed, out / "checkpoints")
        for ste, row in result[seed].items():
            gr = row["groups"]

            def cell(name: str, gr: dict = gr) -> str:
                if name not in gr:
                    return "– | –"
                x = gr[name]
                return f"{x['mean']:+.1e} ({x['share_negative']:.2f}) | {x['mean_abs']:.1e}"

            other = [v for k, v in gr.items() if k.startswith("other")]
            n = sum(o["n"] for o in other)
            om = sum(o["mean"] * o["n"] for o in other) / n
            on = sum(o["share_negative"] * o["n"] for o in other) / n
            oa = sum(o["mean_abs"] * o["n"] for o in other) / n
            cos = row["cosine_to_direct"]
            lines.append(f"| {seed} | {ste} | {' '.join(f'{c:+.2f}' for c in cos)} (mean {statistics.mean(cos):+.2f}) | "
                         f"{cell('answer dropped')} | {cell('answer kept')} | {om:+.1e} ({on:.2f}) | {oa:.1e} |")
    atomic_write_json(out / "ste-check.json", result)
    atomic_write_text(out / "ste-check.md", "\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


@app.command("selection-check")
def selection_check(
    config: Optional[Path] = typer.Option(None, help="JSON file of study settings (its task is used)"),
    samples: int = typer.Option(512, help="samples drawn"),
) -> None:
    """Model-free check of a study geometry: how often each training-free selector (and keeping the loudest
    audio) keeps the answer's sound and the object, at 35% / 25% with the study's calibrated ratios."""
    import torch

    from leanlm.omnisift.experiments import FULL
    from leanlm.omnisift.omnisift import OmniSIFT
    from leanlm.omnisift.presets import paper_ratios, solve_rho_v
    from leanlm.omnisift.study import TRAINING_FREE, StudyConfig, Trainer, build_model
    from leanlm.omnisift.synth import AVTask, TaskConfig

    settings = dict(FULL["study"])
    settings.update(_load_config(config))
    cfg = StudyConfig.from_dict(settings)
    model = build_model(cfg, 0)
    task = AVTask(TaskConfig(hidden_size=cfg.hidden_size, **cfg.task), model.config)
    layout = Trainer(cfg, task, model, 0).layout
    batch = task.sample(samples, torch.Generator().manual_seed(5))
    with torch.no_grad():
        embeds = task.model_inputs(model, batch)["inputs_embeds"]
    sizes, audio = task.frame_sizes()
    rows = ["| retention | selector | ρv / ρa | kept | answer sound kept | object kept |", "|---|---|---|---|---|---|"]
    av = torch.cat([task.video_index, task.audio_index])
    for r in cfg.retentions:
        for name, (cls, row) in TRAINING_FREE.items():
            rho_a = paper_ratios(row, r)[1]
            rho_v = solve_rho_v(sizes, audio, rho_a, r)
            keep = cls(rho_v, rho_a, seed=0)(embeds, [layout] * samples).keep
            ans = float(keep[torch.arange(samples), batch.target_audio_index].float().mean())
            obj = sum(bool(keep[i, batch.object_index[i]].any()) for i in range(samples)) / samples
            rows.append(f"| {r:.0%} | {name} | {rho_v:.3f} / {rho_a:.2f} | {float(keep[:, av].float().mean()):.3f} | "
                        f"{ans:.3f} | {obj:.3f} |")
        rho_a = paper_ratios("omnisift", r)[1]
        rho_v = solve_rho_v(sizes, audio, rho_a, r)
        keep = OmniSIFT(rho_v, rho_a, audio="random")(embeds, [layout] * samples).keep  # STVP + random audio
        ans = float(keep[torch.arange(samples), batch.target_audio_index].float().mean())
        obj = sum(bool(keep[i, batch.object_index[i]].any()) for i in range(samples)) / samples
        rows.append(f"| {r:.0%} | STVP + random audio (VGAS→random) | {rho_v:.3f} / {rho_a:.2f} | "
                    f"{float(keep[:, av].float().mean()):.3f} | {ans:.3f} | {obj:.3f} |")
        a_per = task.cfg.audio_per_chunk
        n_keep = a_per - int(a_per * paper_ratios("omnisift", r)[1])
        norms = embeds[:, task.audio_index].norm(dim=-1).view(samples, -1, a_per)
        top = torch.zeros_like(norms, dtype=torch.bool).scatter_(2, norms.topk(n_keep, dim=-1).indices, True)
        target = (task.audio_index.view(1, -1) == batch.target_audio_index.view(-1, 1)).view_as(top)
        rows.append(f"| {r:.0%} | loudest audio (top {n_keep} per chunk by norm) | – | – | "
                    f"{float(top[target].float().mean()):.3f} | – |")
    typer.echo("\n".join(rows))


@app.command()
def run(
    model: Path = typer.Option(..., help="checkpoint directory (Qwen2.5-Omni, OmniSIFT-7B, or one saved by leanlm)"),
    video: Path = typer.Option(..., help="video file with an audio track"),
    question: str = typer.Option("Describe what happens in this video, including what is heard.", help="the question"),
    ratio: float = typer.Option(0.25, help="kept fraction target: 0.35 / 0.25 use the paper's Table 6 ratios; 1 = off"),
    method: str = typer.Option("omnisift", help="omnisift | random | dycoke | omnizip"),
    max_new_tokens: int = typer.Option(64),
    fps: float = typer.Option(2.0, help="frames per second sampled from the video"),
    max_frames: Optional[int] = typer.Option(None, help="cap on sampled frames"),
    max_pixels: int = typer.Option(256 * 28 * 28, help="pixels per frame (OmniSIFT's evaluation: 256·28·28)"),
    min_pixels: int = typer.Option(4 * 28 * 28, help="minimum pixels per frame"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Answer a question about a video (frames + audio track) through OmniSIFT-compressed Qwen2.5-Omni."""
    from leanlm.omnisift.media import OmniSIFTPipeline
    from leanlm.omnisift.registry import COMPRESSORS

    if method not in COMPRESSORS:
        raise typer.BadParameter(f"--method must be one of {', '.join(COMPRESSORS)}, got {method!r}")
    if not video.exists():
        raise typer.BadParameter(f"{video}: no such file")
    pipe = OmniSIFTPipeline.from_pretrained(model, ratio=ratio, method=method, fps=fps, max_frames=max_frames,
                                            max_pixels=max_pixels, min_pixels=min_pixels)
    ans = pipe(video, question, max_new_tokens=max_new_tokens)
    info = {"answer": ans.text, "video_kept": ans.video_kept, "video_total": ans.video_total,
            "audio_kept": ans.audio_kept, "audio_total": ans.audio_total, "retention": round(ans.retention, 4),
            "prompt_tokens": ans.prompt_tokens, "llm_tokens": ans.llm_tokens}
    if as_json:
        typer.echo(json.dumps(info))
    else:
        typer.echo(ans.text)
        typer.echo(f"[omnisift] video {ans.video_kept}/{ans.video_total}, audio {ans.audio_kept}/{ans.audio_total} "
                   f"kept ({100 * ans.retention:.1f}%); LLM prefill {ans.llm_tokens} of {ans.prompt_tokens} tokens")


@app.command()
def train(
    model: Path = typer.Option(..., help="checkpoint directory to start from"),
    data: Path = typer.Option(..., help="JSONL with video, question, answer per line (video paths relative to it)"),
    out: Path = typer.Option(..., help="output directory (checkpoint.pt, summary.json, model/)"),
    steps: int = typer.Option(100),
    lora_rank: int = typer.Option(0, help="LoRA rank on the thinker's attention projections (0: selector only)"),
    lr: float = typer.Option(1e-4, help="LoRA learning rate"),
    selector_lr: float = typer.Option(1e-3, help="the selector's own learning rate"),
    save_every: int = typer.Option(50),
    max_frames: Optional[int] = typer.Option(None),
    max_pixels: int = typer.Option(256 * 28 * 28),
    min_pixels: int = typer.Option(4 * 28 * 28),
    seed: int = typer.Option(0),
) -> None:
    """Fine-tune the OmniSIFT selector (and optionally LoRA) on (video, question, answer) examples; resumes."""
    from leanlm.omnisift.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(steps=steps, lora_rank=lora_rank, lr=lr, selector_lr=selector_lr, save_every=save_every,
                         max_frames=max_frames, max_pixels=max_pixels, min_pixels=min_pixels, seed=seed)
    try:
        summary = finetune(model, data, out, cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"trained {summary['steps']} steps on {summary['examples']} examples; last loss "
               f"{summary['losses'][-1]:.4f}; model saved to {out / 'model'}")


@app.command()
def prefill(
    out: Path = typer.Option(..., help="Markdown report (JSON written beside it)"),
    shape: str = typer.Option("3b", help="3b | 7b: Qwen2.5-Omni text shape of the random thinker"),
    layers: Optional[int] = typer.Option(None, help="decoder layers (default: the real model's)"),
    frames: int = typer.Option(16, help="LLM frames (1 s each)"),
    tokens_per_frame: int = typer.Option(256, help="video tokens per LLM frame (256 = OmniSIFT's eval setting)"),
    repeats: int = typer.Option(3),
    device: str = typer.Option("cpu"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
) -> None:
    """Prefill time with/without OmniSIFT (35% / 25%) on a random real-shaped thinker, and the compressor's cost."""
    from leanlm.omnisift.bench import SHAPES, prefill_benchmark, to_markdown, write_report

    if shape not in SHAPES:
        raise typer.BadParameter(f"--shape must be one of {', '.join(SHAPES)}")
    result = prefill_benchmark(shape, layers, frames, tokens_per_frame, (0.35, 0.25), repeats, device, dtype, threads)
    write_report(result, out)
    typer.echo(to_markdown(result))
