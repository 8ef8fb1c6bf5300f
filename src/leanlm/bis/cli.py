"""``leanlm bis``: select, score, stats and synth for Monte-Carlo-annotated PRM rollouts."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from leanlm.common.records import RecordError

app = typer.Typer(help="BIS data selection for MC-annotated PRM rollouts (arXiv 2602.04145).", no_args_is_help=True)

_FIELD_HELP = "Field names of the annotation layout (defaults: VisualPRM400K-v1.1-Raw)."


def _fields(steps: str, score: str, step_text: str, image: str, question: str, mc_correct: str | None,
            mc_total: str | None):
    from leanlm.bis.schema import Fields

    return Fields(steps=steps, score=score, step_text=step_text, image=image,
                  question=tuple(q.strip() for q in question.split(",") if q.strip()),
                  mc_correct=mc_correct, mc_total=mc_total)


def _parse_ratios(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise typer.BadParameter(f"--ratio-for expects NAME=RATIO, got {item!r}")
        try:
            out[name] = float(value)
        except ValueError as exc:
            raise typer.BadParameter(f"--ratio-for {item!r}: {value!r} is not a number") from exc
    return out


@app.command("select")
def select_cmd(
    inputs: list[Path] = typer.Argument(..., help="Annotation files or directories (*.jsonl[.gz|.zst], *.parquet)."),
    output: Path = typer.Option(..., "--output", "-o", help="Selected rows (.jsonl, or .parquet with --format parquet)."),
    ratio: float = typer.Option(0.25, help="Fraction kept per group: max(1, floor(m * ratio))."),
    alpha: float = typer.Option(0.05, help="BIS smoothing α in (p(1-p) + α)·R (paper: 0.2 for 10%, 0.05 for 25%)."),
    ratio_for: list[str] = typer.Option([], "--ratio-for", help="Per-group ratio, NAME=RATIO (repeatable)."),
    group_by: str = typer.Option("file", help="'file' (one stratum per source file), 'global', or a field name."),
    scorer: str = typer.Option("bis", help="bis | mixture | reliability | random | mixed | low-mc | external"),
    scores_file: Path | None = typer.Option(None, help="With --scorer external: a score file (file, row, score)."),
    seed: int = typer.Option(0, help="Seed of the random and mixed scorers."),
    engine: str = typer.Option("stream", help="stream (msgspec, default) | duckdb | ray"),
    workers: int = typer.Option(0, help="Processes over files (stream) or Ray CPUs (ray); 0 = one per CPU."),
    plan: str = typer.Option("auto", help="auto | single-pass (per-file groups, plain JSONL) | two-pass."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (original lines) | mmprm (training format) | parquet"),
    compat: str = typer.Option("default", help="'official': the official script's behaviour where it differs (mmprm "
                                               "drops what its converter drops; a NaN step score is a negative step)."),
    skip_invalid: bool = typer.Option(False, help="Write invalid lines to the rejects file instead of failing."),
    strict_scores: bool = typer.Option(False, help="Reject (file:line) rollouts without any scored step instead of "
                                                   "counting them as without_scores (the official behaviour)."),
    allow_empty: bool = typer.Option(False, help="Accept inputs with no rows at all (an empty selection)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output, manifest or rejects file."),
    rejects: Path | None = typer.Option(None, help="Rejects file (default <output>.rejects.jsonl)."),
    manifest: Path | None = typer.Option(None, help="Manifest JSON (default <output>.manifest.json)."),
    scores_out: Path | None = typer.Option(None, help="Also write every rollout's score (.parquet/.csv/.jsonl; "
                                                      "one more pass over the input)."),
    no_hash: bool = typer.Option(False, "--no-hash", help="Skip the sha256 of each input in the manifest."),
    steps_field: str = typer.Option("steps_with_score", help=_FIELD_HELP),
    score_field: str = typer.Option("score"),
    step_text_field: str = typer.Option("step"),
    image_field: str = typer.Option("image"),
    question_fields: str = typer.Option("question_orig,question", help="Tried in order."),
    mc_correct_field: str | None = typer.Option(None, help="Per-step MC success count (score = correct/total)."),
    mc_total_field: str | None = typer.Option(None),
) -> None:
    """Select the most informative rollouts of each source by BIS (or another scorer)."""
    from leanlm.bis.score import make_scorer
    from leanlm.bis.select import SelectConfig, select
    from leanlm.bis.stats import load_external

    try:
        sc = load_external(scores_file) if scorer == "external" and scores_file else make_scorer(scorer, alpha=alpha,
                                                                                                  seed=seed)
        config = SelectConfig(ratio=ratio, scorer=sc, group_by=group_by, ratios=_parse_ratios(ratio_for),
                              fields=_fields(steps_field, score_field, step_text_field, image_field, question_fields,
                                             mc_correct_field, mc_total_field),
                              engine=engine, output_format=fmt, compat=compat, skip_invalid=skip_invalid,
                              workers=workers, hash_input=not no_hash, plan=plan, strict_scores=strict_scores,
                              allow_empty=allow_empty)
        doc = select(inputs, output, config, manifest=manifest, rejects=rejects, overwrite=force)
        if scores_out is not None:
            from leanlm.bis.stats import score_corpus

            score_corpus(inputs, scores_out, scorer=sc, fields=config.fields, skip_invalid=skip_invalid)
            typer.echo(f"scores -> {scores_out}")
    except ImportError as exc:
        typer.echo(f"error: engine {engine!r} needs a package that is not installed ({exc}); "
                   "install the extra, e.g. pip install 'leanlm[distributed]' for ray", err=True)
        raise typer.Exit(2) from exc
    except (RecordError, ValueError, FileNotFoundError, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for s in doc["skipped_inputs"]:
        typer.echo(f"skipped {s['file']}: {s['why']}", err=True)
    for w in doc["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    t = doc["totals"]
    typer.echo(f"kept {t['kept']} of {t['candidates']} candidates ({t['rows']} rows: {t['candidates']} candidates, "
               f"{t['without_scores']} WITHOUT SCORES, {t['malformed']} rejected); wrote {t['written']} to {output}")


@app.command("score")
def score_cmd(
    inputs: list[Path] = typer.Argument(..., help="Annotation files or directories."),
    output: Path = typer.Option(..., "--output", "-o", help="Score file: .parquet, .csv or .jsonl."),
    alpha: float = typer.Option(0.05),
    scorer: str = typer.Option("bis"),
    seed: int = typer.Option(0),
    skip_invalid: bool = typer.Option(False),
) -> None:
    """Write every rollout's n, n_pos, p, R and score (one row per non-blank line)."""
    from leanlm.bis.score import make_scorer
    from leanlm.bis.stats import score_corpus

    try:
        n = score_corpus(inputs, output, scorer=make_scorer(scorer, alpha=alpha, seed=seed), skip_invalid=skip_invalid)
    except (RecordError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"scored {n} rollouts -> {output}")


@app.command("stats")
def stats_cmd(
    inputs: list[Path] = typer.Argument(..., help="Annotation files or directories."),
    alpha: float = typer.Option(0.05),
    png: Path | None = typer.Option(None, help="Histogram figure of p, R and BIS."),
    json_out: Path | None = typer.Option(None, "--json", help="Per-source summary as JSON."),
    skip_invalid: bool = typer.Option(False),
) -> None:
    """Distribution of p (mixture), R (reliability) and BIS per source."""
    from leanlm.bis.stats import corpus_stats, stats_figure
    from leanlm.common.atomic import atomic_write_bytes, atomic_write_json

    try:
        stats, edges = corpus_stats(inputs, alpha=alpha, skip_invalid=skip_invalid)
    except (RecordError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    summary = {name: s.summary(edges) for name, s in stats.items()}
    cols = ["rows", "candidates", "mixed_share", "mean_p", "mean_R", "mean_bis", "median_bis"]
    typer.echo("source\t" + "\t".join(cols))
    for name, s in summary.items():
        typer.echo(name + "\t" + "\t".join(str(s[c]) for c in cols))
    if json_out:
        atomic_write_json(json_out, {"alpha": alpha, "sources": summary})
        typer.echo(f"summary -> {json_out}")
    if png:
        import io

        fig = stats_figure(stats, edges, title=f"{len(stats)} sources, α = {alpha}")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        atomic_write_bytes(png, buf.getvalue())
        typer.echo(f"histogram -> {png}")


@app.command("synth")
def synth_cmd(
    out_dir: Path = typer.Argument(..., help="Directory for <source>.jsonl files."),
    rollouts: int = typer.Option(10_000, help="Number of rollouts N."),
    sources: int = typer.Option(38, help="Number of source files S."),
    seed: int = typer.Option(0),
    single_file: str | None = typer.Option(None, help="Write one file with a 'source' field instead."),
    with_truth: bool = typer.Option(False, "--with-truth", help="Write the PRM study corpus instead: train/, val/, "
                                    "test/ of multi-step problems with MC scores AND per-step ground truth."),
    val: int = typer.Option(2_000, help="--with-truth: validation rollouts."),
    test: int = typer.Option(4_000, help="--with-truth: test rollouts."),
) -> None:
    """Write a VisualPRM400K-shaped synthetic corpus of N rollouts over S sources (or, --with-truth, the PRM corpus)."""
    if with_truth:
        if single_file is not None:
            raise typer.BadParameter("--with-truth writes train/, val/ and test/ directories; drop --single-file")
        from leanlm.bis.prm.synth_truth import TruthConfig, write_truth_corpus

        summary = write_truth_corpus(out_dir, TruthConfig(train=rollouts, val=val, test=test, seed=seed))
        typer.echo(json.dumps(summary))
        return
    from leanlm.bis.synth import SynthConfig, write_corpus

    files = write_corpus(out_dir, SynthConfig(rollouts=rollouts, sources=sources, seed=seed), single_file=single_file)
    size = sum(f.stat().st_size for f in files)
    typer.echo(json.dumps({"files": len(files), "rollouts": rollouts, "bytes": size, "dir": str(out_dir)}))


@app.command("bench")
def bench_cmd(
    out: Path = typer.Option(..., "--out", help="Markdown report (a .json twin is written beside it)."),
    corpus: Path | None = typer.Option(None, help="Directory of *.jsonl files (default: a synthetic corpus)."),
    rollouts: int = typer.Option(1_000_000, help="Synthetic corpus size (when --corpus is not given)."),
    sources: int = typer.Option(38, help="Synthetic corpus files."),
    corpus_root: Path = typer.Option(Path("/tmp/leanlm-bis-bench"), help="Where the synthetic corpus is kept."),
    official_script: Path | None = typer.Option(None, help="A fetched copy of the official "
                                                           "scripts/build_bis_subset.py (never part of leanlm)."),
    contender: list[str] = typer.Option([], "--contender", help="Repeatable; default: all but Ray."),
    repeats: int = typer.Option(5, help="Timed rounds (contenders interleaved)."),
    alpha: float = typer.Option(0.05),
    ratio: float = typer.Option(0.25),
) -> None:
    """Time the selection contenders like for like (raw vs raw, MM-PRM vs MM-PRM) with checked outputs."""
    import sys

    from leanlm.bis.bench import DEFAULT_CONTENDERS, ensure_corpus, run_benchmark, to_json, to_markdown
    from leanlm.common.atomic import atomic_write_json, atomic_write_text

    corpus = corpus or ensure_corpus(corpus_root, rollouts, sources)
    data = run_benchmark(corpus, out.parent / (out.stem + "-work"), contender or DEFAULT_CONTENDERS, alpha=alpha,
                         ratio=ratio, repeats=repeats, official_script=official_script)
    md = to_markdown(data, "leanlm bis bench " + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bis", "bench"]
                                                            else sys.argv[1:]))
    atomic_write_text(out, md)
    atomic_write_json(out.with_suffix(".json"), to_json(data))
    typer.echo(md)



@app.command("train")
def train_cmd(
    inputs: list[Path] = typer.Argument(..., help="Training rollouts (files or directories, VisualPRM400K layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint directory (step-<n>/ and final/)."),
    backbone: str = typer.Option("tiny", help="'tiny' (a small Llama from a config), 'embedded' "
                                              "(SmolLM2-135M), a local HF directory or a .gguf file."),
    hidden: int = typer.Option(64, help="tiny backbone: hidden size."),
    layers: int = typer.Option(2, help="tiny backbone: layers."),
    tokenizer: str = typer.Option("step", help="tiny backbone: 'step' (one hashed token per step), 'word' or "
                                               "'char' (see docs/bis.md for why 'step' is the default)."),
    max_len: int = typer.Option(512, help="Tokens per rollout (later steps are truncated)."),
    lora: bool = typer.Option(False, help="Train LoRA adapters (peft) instead of all weights (non-tiny backbones)."),
    lr: float = typer.Option(1e-3),
    batch: int = typer.Option(32),
    soft: bool = typer.Option(False, help="Soft labels y = MC instead of hard y = 1[MC > 0]."),
    seed: int = typer.Option(0),
    checkpoint_every: int = typer.Option(50, help="Optimizer steps between checkpoints (official: 50)."),
    resume: Path | None = typer.Option(None, help="Continue from a checkpoint directory written by this command."),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default)."),
    device: str = typer.Option("cpu", help="'cpu' or 'cuda'."),
) -> None:
    """Train a step-level PRM for one epoch (<prm> marker after each step, Yes/No head, CE on MC labels)."""
    import torch

    from leanlm.bis.prm.model import ModelSpec
    from leanlm.bis.prm.train import TrainConfig, load_examples, train

    if threads:
        torch.set_num_threads(threads)
    try:
        examples = load_examples(inputs)
        spec = ModelSpec(backbone=backbone, hidden=hidden, layers=layers, tokenizer=tokenizer, max_len=max_len,
                         lora=lora, seed=seed)
        cfg = TrainConfig(model=spec, lr=lr, batch=batch, soft=soft, seed=seed, checkpoint_every=checkpoint_every,
                          device=device)
        res = train(examples, out, cfg, resume=resume)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    tail = res["losses"][-10:]
    typer.echo(json.dumps({"rollouts": len(examples), "steps": res["steps"], "checkpoint": res["checkpoint"],
                           "mean_loss_last_10": sum(tail) / max(len(tail), 1)}))


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory from leanlm bis train (e.g. OUT/final)."),
    test: list[Path] = typer.Option(..., "--test", help="Test rollouts with per-step 'truth' (repeatable)."),
    val: list[Path] = typer.Option([], "--val", help="Validation rollouts with 'truth', to choose the threshold."),
    json_out: Path | None = typer.Option(None, "--json", help="Write all metrics as JSON."),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default)."),
    device: str = typer.Option("cpu", help="'cpu' or 'cuda'."),
) -> None:
    """VisualProcessBench metrics: per-source macro-F1, step-weighted overall, pooled F1+/F1-, AUC."""
    import torch

    from leanlm.bis.prm.metrics import evaluate
    from leanlm.bis.prm.train import load_examples, load_prm, truth_arrays
    from leanlm.common.atomic import atomic_write_json

    if threads:
        torch.set_num_threads(threads)
    try:
        model = load_prm(checkpoint, device=device)
        res = evaluate(truth_arrays(model, load_examples(test)),
                       truth_arrays(model, load_examples(val)) if val else None)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"AUC {res['auc']:.4f}")
    for key, label in (("fixed_0.5", "threshold 0.5"), ("val_tuned", "threshold chosen on val"),
                       ("test_tuned_optimistic", "threshold tuned ON TEST (official --auto; optimistic)")):
        if key in res:
            r = res[key]
            typer.echo(f"{label} (t={r['threshold']:.3f}): overall micro-F1 {r['overall_micro_f1']:.4f}, pooled "
                       f"F1+ {r['pooled_f1_pos']:.4f} F1- {r['pooled_f1_neg']:.4f}; per source: "
                       + ", ".join(f"{s} {v['macro_f1']:.3f}" for s, v in r["per_source"].items()))
    if json_out:
        atomic_write_json(json_out, res)


@app.command("study")
def study_cmd(
    corpus: Path = typer.Argument(..., help="A corpus from leanlm bis synth --with-truth (train/, val/, test/)."),
    out: Path = typer.Option(..., "--out", help="Study directory: cells.jsonl (resumable), report.md/.json, plot."),
    budgets: str = typer.Option("0.05,0.1,0.25,0.5", help="Comma-separated fractions (full data always runs)."),
    selectors: str = typer.Option("random,bis-0.2,mixed-only,low-mc",
                                  help="Comma-separated: random, bis-0, bis-0.05, bis-0.1, bis-0.2, mixture-only, "
                                       "reliability-only, mixed-only, low-mc, uncertainty, loss (proxy PRM on a random 5%)."),
    seeds: int = typer.Option(3, help="Run seeds first-seed .. seeds-1."),
    first_seed: int = typer.Option(0, help="Skip seeds below this one: split a study's seeds across processes or "
                                           "machines (separate --out each), then merge their cells.jsonl files."),
    with_full: bool = typer.Option(True, help="--no-with-full: train no full-data cell (extra seeds of the "
                                              "subset comparison when full data is costly)."),
    hidden: int = typer.Option(64),
    layers: int = typer.Option(2),
    tokenizer: str = typer.Option("step", help="tiny backbone tokenizer: step | word | char."),
    backbone: str = typer.Option("tiny", help="'tiny', 'embedded' (SmolLM2-135M) or a local LM (as bis train)."),
    lora: bool = typer.Option(False, help="Non-tiny backbones: train LoRA adapters (peft) instead of all weights."),
    device: str = typer.Option("cpu", help="'cpu' or 'cuda'."),
    lr: float = typer.Option(3e-3),
    batch: int = typer.Option(32),
    threads: int = typer.Option(1),
    match: str = typer.Option("rollouts", help="Budgets matched in 'rollouts' (as the paper) or 'steps' (control)."),
    keep_checkpoints: bool = typer.Option(False, help="Keep each cell's trained PRM (default: delete once evaluated)."),
    checkpoint_every: int = typer.Option(0, help="Optimizer steps between mid-cell checkpoints (only the latest is "
                                                 "kept); an interrupted cell resumes from it. 0: none (tiny "
                                                 "backbone cells take seconds)."),
    train_steps: str = typer.Option("epoch", help="'epoch': one epoch per subset (the paper); 'equal': a subset "
                                                  "trains 1/budget epochs, about full data's optimizer steps."),
    report_only: bool = typer.Option(False, "--report-only", help="Train nothing: write the reports from the "
                                                                  "cells already recorded (missing cells left out)."),
) -> None:
    """Budgets x selectors x seeds of PRM training; paired Student-t differences vs random and vs full data."""
    from leanlm.bis.prm.study import SELECTORS, StudyConfig, plot, run_study, summarize, to_markdown
    from leanlm.common.atomic import atomic_write_json, atomic_write_text

    if match not in ("rollouts", "steps"):
        raise typer.BadParameter(f"--match must be 'rollouts' or 'steps', got {match!r}")
    sels = tuple(s.strip() for s in selectors.split(",") if s.strip())
    bad = [s for s in sels if s not in SELECTORS]
    if bad:
        raise typer.BadParameter(f"unknown selector(s) {', '.join(bad)}; choose from {', '.join(SELECTORS)}")
    if train_steps not in ("epoch", "equal"):
        raise typer.BadParameter(f"--train-steps must be 'epoch' or 'equal', got {train_steps!r}")
    if tokenizer not in ("step", "word", "char"):
        raise typer.BadParameter(f"--tokenizer must be step, word or char, got {tokenizer!r}")
    if not 0 <= first_seed < seeds:
        raise typer.BadParameter(f"--first-seed must be in [0, --seeds), got {first_seed} with --seeds {seeds}")
    if lora and backbone == "tiny":
        raise typer.BadParameter("--lora needs a pretrained backbone (--backbone embedded or a local LM)")
    cfg = StudyConfig(corpus=corpus, out=out, budgets=tuple(float(b) for b in budgets.split(",")), selectors=sels,
                      seeds=seeds, first_seed=first_seed, with_full=with_full, hidden=hidden, layers=layers,
                      tokenizer=tokenizer, backbone=backbone, lora=lora,
                      device=device, lr=lr, batch=batch,
                      threads=threads, match=match, keep_checkpoints=keep_checkpoints, train_steps=train_steps,
                      checkpoint_every=checkpoint_every)
    rows = run_study(cfg, train_missing=not report_only)
    if not rows:
        raise typer.BadParameter(f"no recorded cells in {out} match these selectors, budgets and seeds")
    summary = summarize(rows)
    md = (f"budgets matched in {match}; subsets train "
          + ("one epoch" if train_steps == "epoch" else "1/budget epochs (about full data's optimizer steps)")
          + "\n\n" + to_markdown(summary)
          + "".join("\n" + to_markdown(summarize(rows, m)) for m in ("f1_fixed", "auc")))
    tag = ("" if match == "rollouts" else f"-{match}") + ("" if train_steps == "epoch" else f"-{train_steps}steps")
    atomic_write_text(out / f"report{tag}.md", md)
    atomic_write_json(out / f"report{tag}.json", {"summary": summary, "cells": rows})
    plot(summary, out / f"f1_vs_budget{tag}.png")
    typer.echo(md)
