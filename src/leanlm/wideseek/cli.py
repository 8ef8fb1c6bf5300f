"""``leanlm wideseek serve|run|eval|tasks|score|index``: the WideSeek-R1 system from the command line.

Without ``--base-url``, ``run`` and ``eval`` start the embedded llama.cpp server (SmolLM2-135M-Instruct,
loopback, free port) and stop it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer

from leanlm.common.progress import get_logger

app = typer.Typer(help="WideSeek-R1: lead/subagent broad search, offline world, WideSearch scorer.", no_args_is_help=True)
log = get_logger("leanlm.wideseek.cli")


@contextlib.contextmanager
def _backend(base_url: Optional[str], model: str, tool_mode: str, max_tokens: int, temperature: float,
             n_ctx: int, timeout: float) -> Iterator[tuple[object, int]]:
    """An OpenAI backend on ``base_url``, or on an embedded llama.cpp server started for the duration."""
    from leanlm.wideseek.llm import OpenAIBackend

    if base_url:
        yield OpenAIBackend(base_url, model=model, tool_mode=tool_mode, max_tokens=max_tokens, temperature=temperature,
                            timeout=timeout), 32_000
        return
    from leanlm.wideseek.server import LlamaServer, ServerError

    try:
        server = LlamaServer(n_ctx=n_ctx).start()
    except ServerError as exc:
        raise typer.BadParameter(f"no --base-url given and the embedded server failed: {exc}") from exc
    try:
        yield OpenAIBackend(server.base_url, model="embedded", tool_mode=tool_mode, max_tokens=max_tokens,
                            temperature=temperature, timeout=timeout), int(n_ctx * 0.8)
    finally:
        server.stop()


def _config(subagents: int, lead_turns: int, sub_turns: int, single_turns: int, context: int, fmt: str):
    from leanlm.wideseek.agents import AgentConfig

    return AgentConfig(max_lead_turns=lead_turns, max_sub_turns=sub_turns, max_single_turns=single_turns,
                       max_subagents_per_call=subagents, max_subagents_per_turn=subagents, max_concurrency=subagents,
                       context_tokens=context,
                       answer_format=fmt)


def _load_tasks(tasks: Optional[Path], only: Optional[list[str]]):
    from leanlm.common.records import RecordError
    from leanlm.wideseek.tasks import generate_tasks, load_tasks

    try:
        items = load_tasks(tasks) if tasks else generate_tasks()
    except RecordError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tasks") from exc
    if only:
        known = {t.instance_id for t in items}
        missing = [x for x in only if x not in known]
        if missing:
            raise typer.BadParameter(f"unknown task id(s) {missing}; known: {sorted(known)[:10]}...", param_hint="--only")
        items = [t for t in items if t.instance_id in set(only)]
    return items


def _print_table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    from leanlm.common.report import Table, table_markdown

    typer.echo(table_markdown(Table(title, columns, rows)))


def _judge(judge_url: Optional[str], judge_model: str, llm_align: bool):
    """(judge, aligner) backed by a model server, or (None, None): rule-based alignment, no llm_judge."""
    if not judge_url:
        return None, None
    from leanlm.wideseek.judge import LLMAligner, LLMJudge
    from leanlm.wideseek.llm import OpenAIBackend

    backend = OpenAIBackend(judge_url, model=judge_model, max_tokens=2048, temperature=0.0)
    return LLMJudge(backend), (LLMAligner(backend) if llm_align else None)


JUDGE_URL = typer.Option(None, help="OpenAI-compatible server for llm_judge columns (WideSearch uses GPT-4.1)")
JUDGE_MODEL = typer.Option("default", help="judge model name")
LLM_ALIGN = typer.Option(False, help="also align column names and keys with the judge model, as WideSearch does")
BASE_URL = typer.Option(None, help="OpenAI-compatible server (vLLM, SGLang, llama.cpp); default: start the embedded one")
MODEL = typer.Option("default", help="model name sent to the server")
TOOL_MODE = typer.Option("native", help="native (server tool parsing) or text (<tool_call> parsed here)")


@app.command()
def serve(
    model: Optional[Path] = typer.Option(None, help="GGUF file (default: embedded SmolLM2-135M-Instruct)"),
    port: Optional[int] = typer.Option(None, help="port on 127.0.0.1 (default: a free one)"),
    n_ctx: int = typer.Option(8192, help="context window"),
    chat_format: str = typer.Option("chatml-function-calling", help="llama.cpp chat format"),
) -> None:
    """Start llama.cpp's OpenAI-compatible server on loopback and keep it running until Ctrl-C."""
    from leanlm.wideseek.server import LlamaServer, ServerError

    try:
        server = LlamaServer(model, port=port, n_ctx=n_ctx, chat_format=chat_format).start()
    except ServerError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"serving {server.model.name} at {server.base_url} (model name 'embedded'); log: {server.log_path}")
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@app.command()
def tasks(
    out: Path = typer.Option(..., help="directory for tasks.jsonl and gold/<id>.csv"),
    n_table: int = typer.Option(6, help="table (WideSearch-style) tasks"),
    n_qa: int = typer.Option(3, help="two-hop QA tasks"),
    seed: int = typer.Option(0),
    max_rows: int = typer.Option(12, help="largest gold table"),
    wide: Optional[str] = typer.Option(None, help="instead: the wide task families of split 'train' or 'eval' "
                                                  "(15-40 rows, 5-7 columns over several pages), or 'all'"),
) -> None:
    """Generate a task set with exact gold tables from the offline world, in WideSearch's file layout."""
    from leanlm.wideseek.tasks import generate_tasks, generate_wide_tasks, write_tasks

    if wide is not None:
        if wide not in ("train", "eval", "all"):
            raise typer.BadParameter("--wide must be train, eval or all")
        items = generate_wide_tasks(None if wide == "all" else wide)
    else:
        items = generate_tasks(n_table=n_table, n_qa=n_qa, seed=seed, max_rows=max_rows)
    path = write_tasks(items, out)
    _print_table(f"{len(items)} tasks written to {path}", ["instance_id", "kind", "gold"],
                 [[t.instance_id, t.kind, f"{t.gold_csv.count(chr(10)) - 1} rows" if t.gold_csv else t.answers[0]]
                  for t in items])


@app.command()
def run(
    query: Optional[str] = typer.Argument(None, help="a free-form task (or use --task with --tasks)"),
    task: Optional[str] = typer.Option(None, help="task id from --tasks (or from the generated set)"),
    tasks_file: Optional[Path] = typer.Option(None, "--tasks", help="tasks.jsonl"),
    mode: str = typer.Option("multi", help="multi (lead + subagents) or single (SingleSeek)"),
    subagents: int = typer.Option(10, help="max subagents per lead turn (and per call, and concurrency)"),
    base_url: Optional[str] = BASE_URL, model: str = MODEL, tool_mode: str = TOOL_MODE,
    max_tokens: int = typer.Option(512), temperature: float = typer.Option(0.7),
    lead_turns: int = typer.Option(10), sub_turns: int = typer.Option(20), single_turns: int = typer.Option(50),
    n_ctx: int = typer.Option(8192, help="context of the embedded server"),
    timeout: float = typer.Option(120.0, help="seconds per model request"),
    trace: Path = typer.Option(Path("wideseek-trace.jsonl"), help="where to write the JSONL trace"),
) -> None:
    """Run one task end to end and print the answer (and its WideSearch scores when the task has gold)."""
    from leanlm.wideseek.runner import default_world, run_task
    from leanlm.wideseek.tasks import Task

    if (query is None) == (task is None):
        raise typer.BadParameter("give either a QUERY or --task ID")
    item = _load_tasks(tasks_file, [task])[0] if task else Task("query", query or "", kind="table")
    world = default_world()
    with _backend(base_url, model, tool_mode, max_tokens, temperature, n_ctx, timeout) as (backend, context):
        result = run_task(item, backend, world, _config(subagents, lead_turns, sub_turns, single_turns, context,
                                                        "qa" if item.kind == "qa" else "table"), mode)
    result.trace.write(trace)
    typer.echo(result.answer or "(no answer)")
    typer.echo(f"\nstatus {result.status}; {json.dumps(result.stats)}; trace: {trace}")
    if task:
        typer.echo(json.dumps(item.score(result.answer).as_dict(), indent=1))


@app.command("eval")
def eval_(
    tasks_file: Optional[Path] = typer.Option(None, "--tasks", help="tasks.jsonl (default: the generated set)"),
    only: Optional[list[str]] = typer.Option(None, help="task ids to run (repeatable)"),
    n: int = typer.Option(4, help="trials per task (Avg@N / Max@N / Pass@N)"),
    mode: str = typer.Option("multi"), subagents: int = typer.Option(10),
    base_url: Optional[str] = BASE_URL, model: str = MODEL, tool_mode: str = TOOL_MODE,
    max_tokens: int = typer.Option(512), temperature: float = typer.Option(0.7),
    lead_turns: int = typer.Option(10), sub_turns: int = typer.Option(20), single_turns: int = typer.Option(50),
    n_ctx: int = typer.Option(8192), timeout: float = typer.Option(120.0),
    block: str = typer.Option("first", help="answer table: first ```markdown block (WideSearch) or last (RLinf)"),
    numbers: str = typer.Option("official", help="official (WideSearch's code: cells compared as strings) or "
                                                 "lenient (int/float columns as numbers, dates across time zones)"),
    out: Path = typer.Option(Path("wideseek-eval"), help="results.jsonl, summary.json, traces/ (resumable)"),
    judge_url: Optional[str] = JUDGE_URL, judge_model: str = JUDGE_MODEL, llm_align: bool = LLM_ALIGN,
) -> None:
    """Run a task set N times and print the WideSearch metrics table."""
    from leanlm.wideseek.runner import default_world, evaluate, metrics_rows

    judge, aligner = _judge(judge_url, judge_model, llm_align)
    items = _load_tasks(tasks_file, only)
    world = default_world()
    with _backend(base_url, model, tool_mode, max_tokens, temperature, n_ctx, timeout) as (backend, context):
        report = evaluate(items, backend, world, _config(subagents, lead_turns, sub_turns, single_turns, context, "table"),
                          n=n, mode=mode, out_dir=out, block=block, judge=judge, aligner=aligner, numbers=numbers)
    if report["summary"]:
        _print_table(f"WideSearch metrics over {report['summary_json']['table_tasks']} table tasks, N={n} ({mode})",
                     ["metric (%)", f"Avg@{n}", f"Max@{n} (Pass@{n})", f"Min@{n}"], metrics_rows(report["summary"]))
    if report["qa"]:
        typer.echo(f"\nQA exact match over {report['qa']['tasks']} tasks: Avg@{n} {100 * report['qa']['avg_n']:.1f}%, "
                   f"Pass@{n} {100 * report['qa']['pass_n']:.1f}%")
    typer.echo(f"\nresults: {out / 'results.jsonl'}; summary: {out / 'summary.json'}; traces: {out / 'traces'}")


@app.command()
def score(
    responses: Path = typer.Argument(..., help="JSONL with instance_id, response, trial_idx (WideSearch layout)"),
    tasks_file: Path = typer.Option(..., "--tasks", help="tasks.jsonl with gold/ beside it"),
    block: str = typer.Option("first"),
    numbers: str = typer.Option("official", help="official or lenient (see eval --help)"),
    out: Optional[Path] = typer.Option(None, help="write per-response scores and the summary as JSON"),
    judge_url: Optional[str] = JUDGE_URL, judge_model: str = JUDGE_MODEL, llm_align: bool = LLM_ALIGN,
) -> None:
    """Score existing responses with the WideSearch metrics (no model needed unless --judge-url)."""
    from leanlm.common.atomic import atomic_write_json
    from leanlm.common.records import RecordError, read_jsonl
    from leanlm.wideseek.runner import metrics_rows, summarize_rows

    judge, aligner = _judge(judge_url, judge_model, llm_align)
    items = {t.instance_id: t for t in _load_tasks(tasks_file, None)}
    rows = []
    try:
        for line, record in read_jsonl(responses):
            iid = record.get("instance_id")
            if iid not in items:
                raise RecordError(responses, line, f"instance_id {iid!r} is not in {tasks_file}")
            if not isinstance(record.get("response"), (str, type(None))):
                raise RecordError(responses, line, "field 'response' must be a string or null")
            task = items[iid]
            rows.append({"instance_id": iid, "trial_idx": record.get("trial_idx", 0), "kind": task.kind,
                         **task.score(record.get("response"), block=block, judge=judge, aligner=aligner,
                                      numbers=numbers).as_dict()})
    except RecordError as exc:
        raise typer.BadParameter(str(exc)) from exc
    counts = {}
    for r in rows:
        counts[r["instance_id"]] = counts.get(r["instance_id"], 0) + 1
    n = max(counts.values()) if counts else 1
    report = summarize_rows(rows, n)
    if report["summary"]:
        _print_table(f"WideSearch metrics, N={n}", ["metric (%)", f"Avg@{n}", f"Max@{n}", f"Min@{n}"],
                     metrics_rows(report["summary"]))
    if out:
        atomic_write_json(out, {"rows": rows, **report["summary_json"]})
        typer.echo(f"scores -> {out}")


@app.command()
def index(
    wiki_limit: Optional[int] = typer.Option(None, help="cap the Wikipedia pages"),
    queries_per_kind: int = typer.Option(40),
) -> None:
    """Measure the search indexes (SQLite FTS5, bm25s) on the offline corpus."""
    from leanlm.wideseek.corpus import build_corpus
    from leanlm.wideseek.index import known_item_queries, measure

    corpus = build_corpus(wiki_limit=wiki_limit)
    rows = measure(corpus, queries=known_item_queries(corpus, queries_per_kind))
    _print_table(f"Search indexes on {len(corpus)} pages", list(rows[0]), [list(r.values()) for r in rows])


@app.command()
def difftest(
    official: Optional[Path] = typer.Option(None, help="checkout of ByteDance-Seed/WideSearch (default: "
                                                        "$LEANLM_WIDESEARCH_DIR)"),
    cases: int = typer.Option(2000, help="random tables to score both ways"),
    seed: int = typer.Option(0, help="first seed; the cases are a deterministic function of it"),
    out: Optional[Path] = typer.Option(None, help="write the result as Markdown (and JSON beside it, .json)"),
    also_default: bool = typer.Option(False, help="also compare the default scorer (differs by design where the "
                                                  "official code leaves [0, 1])"),
) -> None:
    """Score random tables with WideSearch's own evaluation code and ours (exact_code=True, and the default with
    --also-default); report every difference (see leanlm.wideseek.difftest)."""
    import os
    import platform
    import time

    from leanlm.common.atomic import atomic_write_json, atomic_write_text
    from leanlm.common.progress import progress_bar
    from leanlm.wideseek.difftest import ENV_VAR, compare, load_official

    root = official or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None)
    if root is None:
        raise typer.BadParameter(f"give --official DIR or set {ENV_VAR} to a WideSearch checkout")
    try:
        ref = load_official(root)
    except (FileNotFoundError, ImportError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    results = {}
    t0 = time.perf_counter()
    modes = (("exact_code=True", True), ("default", False)) if also_default else (("exact_code=True", True),)
    for name, exact in modes:
        def tick(i: int, differing: int, bar: object, label: str = name) -> None:
            bar.update(1)  # type: ignore[attr-defined]
            if (i + 1) % 100 == 0:
                typer.echo(f"{label}: {i + 1} of {cases} cases, {differing} differing "
                           f"({time.perf_counter() - t0:.0f} s)", err=True)

        with progress_bar(desc=f"difftest {name}", total=cases, unit="case") as bar:
            diffs, counts = compare(ref, cases, seed, exact_code=exact,
                                    progress=lambda i, k, b=bar: tick(i, k, b))
        results[name] = {"counts": counts, "differing_cases": len({d.index for d in diffs}),
                         "differences": [{"case": d.index, "metric": d.metric, "ours": d.ours, "official": d.official,
                                          "mutations": d.case.mutations, "msg": d.msg} for d in diffs[:50]]}
    seconds = time.perf_counter() - t0
    lines = [f"WideSearch differential test: {cases} random cases (seed {seed}), official code at {ref.commit} "
             f"({root}), {seconds:.0f} s on {platform.node()}", "",
             "| scorer | cases | differing cases | official non-zero item F1 | official successes | official "
             "evaluator errors | no table | official metric outside [0, 1] |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        c = r["counts"]
        lines.append(f"| {name} | {c['cases']} | {r['differing_cases']} | {c['nonzero_item_f1']} | {c['success']} | "
                     f"{c['evaluator_error']} | {c['no_table']} | {c['official_out_of_range']} |")
    text = "\n".join(lines) + "\n"
    typer.echo(text)
    if out:
        atomic_write_text(out, text)
        atomic_write_json(out.with_suffix(".json"), {"commit": ref.commit, "cases": cases, "seed": seed,
                                                     "seconds": seconds, **results})


def _write_report(out: Optional[Path], text: str, data: dict) -> None:
    from leanlm.common.atomic import atomic_write_json, atomic_write_text

    typer.echo(text)
    if out:
        atomic_write_text(out, text)
        atomic_write_json(out.with_suffix(".json"), data)
        typer.echo(f"-> {out} (+ {out.with_suffix('.json').name})")


@app.command()
def families(
    out: Optional[Path] = typer.Option(None, help="Markdown file (JSON beside it)"),
    items_per_call: int = typer.Option(5, help="items per search/access call"),
    wiki_limit: Optional[int] = typer.Option(None, help="cap the Wikipedia pages"),
) -> None:
    """Oracle success and tool calls per wide task family at widths 1, 2, 4, 8 (paper limits)."""
    from leanlm.wideseek.measure import families_report

    _write_report(out, *families_report(items_per_turn=items_per_call, wiki_limit=wiki_limit))


@app.command("width-model")
def width_model(
    task: str = typer.Option("wide-countries-northern-and-western-europe", help="task id (generated set or wide)"),
    seeds: int = typer.Option(10, help="latency seeds"),
    out: Optional[Path] = typer.Option(None, help="Markdown file (JSON beside it)"),
) -> None:
    """The SIMULATED width speed-up (latency model), with its spread over seeds."""
    from leanlm.wideseek.measure import width_model_report
    from leanlm.wideseek.runner import default_world

    _write_report(out, *width_model_report(_find_task(task), default_world(), seeds=range(seeds)))


@app.command("width-real")
def width_real(
    task: str = typer.Option("wide-countries-northern-and-western-europe", help="task id (generated set or wide)"),
    slots: int = typer.Option(8, help="llama.cpp server processes (parallel slots)"),
    threads: int = typer.Option(1, help="CPU threads per slot"),
    max_tokens: int = typer.Option(64, help="tokens per subagent report"),
    repeats: int = typer.Option(3, help="interleaved repeats per width"),
    widths: list[int] = typer.Option([1, 2, 4, 8], "--width", help="widths to run (repeatable)"),
    out: Optional[Path] = typer.Option(None, help="Markdown file (JSON beside it)"),
) -> None:
    """MEASURED wall time and tokens vs width: oracle decisions, real embedded-model subagent reports."""
    from leanlm.wideseek.measure import real_width_report
    from leanlm.wideseek.runner import default_world
    from leanlm.wideseek.server import SERVER_HINT, server_available

    if not server_available():
        raise typer.BadParameter(SERVER_HINT)
    _write_report(out, *real_width_report(_find_task(task), default_world(), widths=widths, slots=slots,
                                          threads_per_slot=threads, max_tokens=max_tokens, repeats=repeats))


def _find_task(task_id: str):
    from leanlm.wideseek.tasks import candidate_tasks, generate_wide_tasks

    for task in [*generate_wide_tasks(), *candidate_tasks()]:
        if task.instance_id == task_id:
            return task
    raise typer.BadParameter(f"no generated task {task_id!r}")


@app.command()
def sft(
    out: Path = typer.Option(Path("runs/wideseek-sft"), help="directory: checkpoints, sft.json, model/"),
    model: str = typer.Option("embedded", help="'embedded', a Hugging Face directory or a .gguf file"),
    max_rows: int = typer.Option(18, help="training tasks with at most this many rows"),
    width: int = typer.Option(4, help="subagents the oracle uses"),
    mode: str = typer.Option("multi", help="multi (lead + subagents) or single (SingleSeek traces)"),
    max_len: int = typer.Option(2048, help="drop examples longer than this (tokens)"),
    examples: int = typer.Option(400, help="at most this many examples (evenly subsampled)"),
    epochs: int = typer.Option(1), lr: float = typer.Option(2e-5), batch: int = typer.Option(8),
    seed: int = typer.Option(0),
) -> None:
    """Supervised warm start on the oracle policy's traces over the training families (resumable)."""
    from leanlm.common.models import load_model
    from leanlm.wideseek.runner import default_world
    from leanlm.wideseek.sft import oracle_examples, train_sft
    from leanlm.wideseek.tasks import generate_wide_tasks
    from leanlm.wideseek.train import TrainConfig

    if mode not in ("multi", "single"):
        raise typer.BadParameter(f"--mode must be multi or single, got {mode!r}")
    loaded = load_model(model)
    cfg = TrainConfig(max_subagents=width, max_lead_turns=10, max_sub_turns=20, max_context=max_len)
    found, stats = oracle_examples(generate_wide_tasks("train", min_rows=2, max_rows=max_rows), default_world(),
                                   cfg.agent_config(), loaded.tokenizer, width=width, mode=mode, max_len=max_len)
    if len(found) > examples:
        found = [found[int(i * len(found) / examples)] for i in range(examples)]
    typer.echo(f"oracle traces: {stats['calls']} model calls, {stats['dropped_long']} longer than {max_len} tokens "
               f"dropped, {len(found)} used (oracle item F1 {stats['oracle_f1']:.3f})")
    report = train_sft(loaded.model, loaded.tokenizer, found, out, epochs=epochs, lr=lr, batch=batch, seed=seed)
    typer.echo(f"SFT loss {report['first_loss']:.3f} -> {report['last_loss']:.3f} in {report['seconds']} s; "
               f"model in {out / 'model'}")


@app.command()
def train(
    config: Path = typer.Option(..., help="TOML/JSON/YAML file of TrainConfig settings"),
    out: Optional[Path] = typer.Option(None, help="override the config's out directory"),
    steps: Optional[int] = typer.Option(None, help="override the config's steps"),
    export: Optional[Path] = typer.Option(None, help="save the trained policy here (Hugging Face directory)"),
) -> None:
    """Multi-agent GRPO (resumes from the newest checkpoint in the out directory)."""
    from leanlm.wideseek.train import TrainConfig, Trainer

    try:
        cfg = TrainConfig.from_file(config, out=str(out) if out else None, steps=steps)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    trainer = Trainer(cfg)
    if trainer.resume():
        typer.echo(f"resumed at step {trainer.step}")
    rows = trainer.train()
    if rows:
        typer.echo(f"step {rows[-1]['step']}: reward {rows[-1]['reward']:.3f}, item F1 {rows[-1]['f1']:.3f}; "
                   f"metrics in {cfg.out}/metrics.jsonl, curves in {cfg.out}/curves.png")
    if export:
        trainer.export(export)


@app.command()
def study(
    out: Path = typer.Option(Path("studies/wideseek-marl"), help="study directory (rerun to resume)"),
    quick: bool = typer.Option(False, help="the smoke configuration (minutes), not evidence"),
    config: Optional[Path] = typer.Option(None, help="JSON file of settings overriding the full/quick ones"),
    device: Optional[str] = typer.Option(None, help="torch device for every model (cpu, cuda)"),
    stages: Optional[str] = typer.Option(None, help="comma-separated stages to run (default: all, in order): "
                                         "headline, in-distribution, seeds, long, long-in-distribution, width, "
                                         "single, ablations, single-seeds"),
    dry_run: bool = typer.Option(False, help="print the settings and the evaluation plan, load nothing"),
) -> None:
    """Base vs SFT vs SFT+MARL on held-out families, width ablation and single agent (resumable)."""
    from leanlm.wideseek.study import FULL, QUICK, STAGES, Study, plan

    settings = dict(QUICK if quick else FULL)
    if config is not None:
        try:
            extra = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"{config}: {exc}") from exc
        unknown = sorted(set(extra) - set(settings)) if isinstance(extra, dict) else ["<not a JSON object>"]
        if unknown:
            raise typer.BadParameter(f"{config}: unknown setting(s) {', '.join(unknown)}; known: "
                                     f"{', '.join(sorted(settings))}")
        settings.update(extra)
    if device:
        settings["device"] = device
    chosen = [x.strip() for x in stages.split(",") if x.strip()] if stages else None
    bad = sorted(set(chosen or ()) - set(STAGES))
    if bad:
        raise typer.BadParameter(f"unknown stage(s) {', '.join(bad)}; known: {', '.join(STAGES)}")
    if dry_run:
        typer.echo(json.dumps(settings, indent=1))
        for stage, (policy, seed, width, mode) in plan(settings):
            if chosen is None or stage in chosen:
                typer.echo(f"{stage}: eval {policy} seed {seed} width {width} ({mode})")
        return
    metrics = Study(settings, out).run(chosen)
    typer.echo(json.dumps({k: v for k, v in metrics.items() if k != "runs"}, indent=1))


@app.command("study-cost")
def study_cost(
    out: Optional[Path] = typer.Option(None, help="Markdown file (JSON beside it)"),
    threads: int = typer.Option(1, help="CPU threads (the study runs with OMP_NUM_THREADS=1)"),
    context: int = typer.Option(1024, help="prompt length for the unit-cost measurements"),
    repeats: int = typer.Option(3, help="repeats per unit-cost measurement (median)"),
    from_json: Optional[Path] = typer.Option(None, help="re-render a saved measurement (its JSON) under the "
                                             "current study settings instead of measuring"),
    measure_reuse: bool = typer.Option(False, help="with --from-json: measure the batched KV-reuse prefill "
                                       "shares (tiny model, real tools; minutes) and add them before re-rendering"),
) -> None:
    """Where the training study's CPU time goes: oracle-shaped token counts x measured unit costs, per stage."""
    from leanlm.wideseek.study_cost import render, run

    if from_json is not None:
        try:
            data = json.loads(from_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"{from_json}: not a study-cost measurement ({exc})") from exc
        if measure_reuse:
            from transformers import AutoTokenizer

            from leanlm.common.models import embedded_cache_path
            from leanlm.wideseek.runner import default_world
            from leanlm.wideseek.study import FULL
            from leanlm.wideseek.study_cost import reuse_checks

            data["kv_checks"] = reuse_checks(dict(FULL), default_world(FULL["wiki_limit"]),
                                             AutoTokenizer.from_pretrained(str(embedded_cache_path())))
        try:
            _write_report(out, *render(data))
        except KeyError as exc:
            raise typer.BadParameter(f"{from_json}: not a study-cost measurement (missing {exc})") from exc
        return
    _write_report(out, *run(threads=threads, context=context, repeats=repeats))


@app.command("rollout-bench")
def rollout_bench(
    out: Optional[Path] = typer.Option(None, help="Markdown file (JSON beside it)"),
    batch: int = typer.Option(8, help="subagent prompts generated together"),
    max_tokens: int = typer.Option(64, help="new tokens per prompt at most"),
    repeats: int = typer.Option(3, help="interleaved repeats"),
    threads: int = typer.Option(2, help="CPU threads for both backends"),
) -> None:
    """Tokens/s of the in-process batched backend vs the llama.cpp server on the same prompts."""
    from leanlm.wideseek.rollout_bench import run

    _write_report(out, *run(batch=batch, max_tokens=max_tokens, repeats=repeats, threads=threads))


@app.command("kv-bench")
def kv_bench(
    out: Optional[Path] = typer.Option(None, help="Markdown file (JSON beside it)"),
    tasks: int = typer.Option(1, help="held-out tasks (the study's first ones)"),
    n: int = typer.Option(2, help="rollouts per task, all in one batched group"),
    width: int = typer.Option(2, help="subagents per lead turn at most"),
    max_new_tokens: int = typer.Option(16, help="new tokens per model call at most"),
    repeats: int = typer.Option(3, help="interleaved repeats (each runs both modes)"),
    threads: int = typer.Option(1, help="CPU threads (the study runs with OMP_NUM_THREADS=1)"),
    gather_s: float = typer.Option(0.05, help="backend gather window (s); a longer one makes the two modes' "
                                   "batches more often the same, so more turns are compared token for token"),
    axis: str = typer.Option("kv-reuse", help="what is switched off and on: kv-reuse (cross-turn KV reuse) or "
                             "fold-gqa (folded-GQA attention vs transformers' sdpa)"),
) -> None:
    """What cross-turn KV reuse (or the folded-GQA attention) saves on an oracle-driven rollout group of the real
    SmolLM2 (same tokens)."""
    from leanlm.wideseek.kv_bench import run

    _write_report(out, *run(tasks=tasks, n=n, width=width, max_new_tokens=max_new_tokens, repeats=repeats,
                            threads=threads, gather_s=gather_s, axis=axis))
