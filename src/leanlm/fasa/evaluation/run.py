"""The evaluation as named steps: calibrate, build prompts, run methods, perplexity, tabulate, plot.

Every per-step method decodes from ONE shared dense prefill per prompt (the cache is deep-copied per
method), layer 0 dense for all of them. Results are appended per prompt (and per perplexity text) to JSONL
files in the output directory; a rerun with the same directory skips what is already there, so a long
run resumes after being stopped (``leanlm fasa bench --eval --out DIR`` again). The settings that change
results are stored in ``config.json`` and a resume with different ones is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write_json
from leanlm.fasa.evaluation.harness import (
    ProbeAttention,
    greedy,
    n_layers_of,
    perplexity,
    prefill,
    teacher_forced_nll,
)
from leanlm.fasa.evaluation.methods import METHODS, Offline, presses, transfer_method
from leanlm.fasa.evaluation.metrics import score_answer
from leanlm.fasa.evaluation.tasks import TASKS, Trial, build_suite, build_trial

MAIN_METHODS = ["full KV", "oracle top-k", "FASA", "Quest (page 16)", "StreamingLLM (8 sinks + recent)", "SparQ",
                "Double Sparsity", "Loki", "H2O", "SnapKV decode (R-KV style)"]
#: the reproduce --quick smoke run: 3 prompts of ~1K tokens, no ablations (a few CPU-minutes)
QUICK: dict[str, Any] = {
    "lengths": [1024], "tasks": ["niah_single", "variable_tracking", "qa_article"], "n_per_task": 1,
    "budgets": [64, 256], "methods": MAIN_METHODS,
    "transfer": ["code"], "transfer_budgets": [256], "transfer_task": "niah_multikey",
    "presses": ["SnapKV"], "press_budgets": [256],
    "calib_tokens": 1024, "calib_decode_steps": 16, "calib_stride": 64,
    "ppl_texts": ["wiki"], "ppl_prefill": 768, "ppl_predict": 9, "ppl_methods": MAIN_METHODS[1:],
    "order": ["ppl", "tasks", "presses"], "seed": 0,
}
#: the issue's full config: 7 tasks x 30 prompts at 4K and ~8K, every method and ablation (2-3 CPU-days)
FULL: dict[str, Any] = {
    "lengths": [4096, 7936], "tasks": list(TASKS), "n_per_task": 30, "budgets": [64, 128, 256, 512],
    "methods": list(METHODS), "transfer": ["code", "task"], "transfer_budgets": [256],
    "transfer_task": "niah_multikey",
    "presses": ["SnapKV", "StreamingLLM", "TOVA", "KNorm", "ExpectedAttention"], "press_budgets": [256],
    "calib_tokens": 2048, "calib_decode_steps": 32, "calib_stride": 32,
    "ppl_texts": ["wiki", "code"], "ppl_prefill": 4000, "ppl_predict": 65,
    "ppl_methods": ["FASA", "oracle top-k", "Quest (page 16)", "StreamingLLM (8 sinks + recent)", "SparQ",
                    "Double Sparsity", "Loki", "H2O", "SnapKV decode (R-KV style)"],
    "order": ["ppl:wiki", "tasks:4096", "ppl:code", "tasks:7936", "presses"], "seed": 0,
}
#: settings a resumed run must share with the first one (sizes may grow: prompts are seeded by index)
FIXED = ("tasks", "budgets", "methods", "transfer", "transfer_budgets", "transfer_task", "presses", "press_budgets",
         "calib_tokens", "calib_decode_steps", "calib_stride", "ppl_prefill", "ppl_predict", "ppl_methods", "seed")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a checkpoint file; a torn last line (the run was killed mid-write) is dropped."""
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}:{i + 1}: corrupt checkpoint line") from None
    return rows


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()


def check_resume(out: Path, config: dict[str, Any]) -> None:
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in FIXED if old.get(k) != config.get(k)]
        if diff:
            raise ValueError(f"{path}: this directory holds a run with other settings ({', '.join(diff)}); "
                             "use another --out or the same config")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, config)


# ----------------------------------------------------------------------------------------- step 1
def step_calibrate(model: Any, tok: Any, config: dict[str, Any], out: Path, log: Callable[..., None]) -> Offline:
    """FASA calibrations (Wikipedia; adjacent pairing; code; one task's prompts) and Double Sparsity/Loki stats.

    Each is saved in ``out`` and reloaded on resume."""
    from leanlm.common.data import cpython_text
    from leanlm.fasa.calibration import Calibration, calibrate
    from leanlm.fasa.evaluation.capture import capture_stats
    from leanlm.fasa.selectors import KeyQueryStats
    from leanlm.fasa.text import wiki_text

    kw = dict(max_tokens=config["calib_tokens"], decode_steps=config["calib_decode_steps"],
              prefill_stride=config["calib_stride"], model_id="embedded")
    wiki = wiki_text(80, offset=0)
    sources: dict[str, tuple[str, dict[str, Any]]] = {"wiki": (wiki, {})}
    if "FASA adjacent pairing" in config["methods"]:
        sources["adjacent"] = (wiki, {"pairing": "adjacent"})
    if "code" in config["transfer"]:
        sources["code"] = (cpython_text(60_000), {})
    if "task" in config["transfer"]:  # prompts of one task, seeds disjoint from the evaluated ones
        task_prompt = build_trial(tok, config["transfer_task"], config["calib_tokens"], 100_000).prompt
        sources["task"] = (task_prompt, {})
    calibrations = {}
    for name, (text, extra) in sources.items():
        path = out / f"calibration-{name}.json"
        if path.exists():
            calibrations[name] = Calibration.load(path)
            continue
        t0 = time.perf_counter()
        calibrations[name] = calibrate(model, tok, text, **kw, **extra)
        calibrations[name].source["seconds"] = round(time.perf_counter() - t0, 1)
        calibrations[name].source["text"] = name
        calibrations[name].save(path)
        log("calibrated FASA on %s in %.0f s", name, time.perf_counter() - t0)
    stats = None
    if {"Double Sparsity", "Loki"} & set(config["methods"]):
        path = out / "qk-stats.pt"
        if path.exists():
            stats = KeyQueryStats(**torch.load(path))
        else:
            stats = capture_stats(model, tok, wiki, max_tokens=config["calib_tokens"])
            torch.save(vars(stats), path)
    return Offline(calibrations=calibrations, stats=stats, seed=config["seed"])


# ----------------------------------------------------------------------------------------- step 2
def step_build_prompts(tok: Any, config: dict[str, Any]) -> list[Trial]:
    return build_suite(tok, config["tasks"], config["lengths"], config["n_per_task"], config["seed"])


# ----------------------------------------------------------------------------------------- step 3
def method_table(config: dict[str, Any]) -> list[tuple[str, Any, list[int]]]:
    """``(name, factory, budgets)`` of every per-step method run on each prompt (full KV first)."""
    table = [(name, METHODS[name], [0] if name == "full KV" else list(config["budgets"]))
             for name in ["full KV"] + [m for m in config["methods"] if m != "full KV"]]
    for source in config["transfer"]:
        label = f"FASA [calibrated on {'code' if source == 'code' else config['transfer_task'] + ' prompts'}]"
        table.append((label, transfer_method(source), list(config["transfer_budgets"])))
    return table


def run_trial(model: Any, tok: Any, trial: Trial, offline: Offline, config: dict[str, Any]) -> list[dict[str, Any]]:
    """All methods on one prompt from one shared dense prefill: one row per (method, budget)."""
    ids = tok(trial.prompt, return_tensors="pt").input_ids
    cache, last = prefill(model, ids)
    n_layers = n_layers_of(model)
    base = {"id": trial.id, "task": trial.task, "length": trial.length, "seed": trial.seed,
            "haystack": trial.haystack, "n_tokens": ids.shape[1], "answers": trial.answers}
    rows: list[dict[str, Any]] = []
    full_text = None
    for name, factory, budgets in method_table(config):
        for budget in budgets:
            selector = factory(offline, budget)
            handler = ProbeAttention(selector, budget, n_layers)
            t0 = time.perf_counter()
            tokens = greedy(model, cache, last, ids.shape[1], trial.max_new_tokens, handler, tok.eos_token_id)
            text = tok.decode(tokens, skip_special_tokens=True).strip()
            if full_text is None:
                full_text = text
            correct, frac = score_answer(text, trial.answers)
            rows.append({**base, "method": name, "budget": budget, "text": text, "correct": correct, "frac": frac,
                         "agree": text == full_text, "seconds": round(time.perf_counter() - t0, 2),
                         **({} if selector is None else handler.probes.means())})
    return rows


def run_presses(model: Any, tok: Any, trial: Trial, config: dict[str, Any], full_text: str) -> list[dict[str, Any]]:
    """kvpress presses: prefill eviction to the budget, then dense greedy decode (their own protocol)."""
    ids = tok(trial.prompt, return_tensors="pt").input_ids
    n_layers = n_layers_of(model)
    rows = []
    for budget in config["press_budgets"]:
        ratio = max(0.0, 1.0 - budget / ids.shape[1])
        for name, press in presses(config["presses"], ratio).items():
            with press(model):
                cache, last = prefill(model, ids)
            tokens = greedy(model, cache, last, ids.shape[1], trial.max_new_tokens, ProbeAttention(None, 0, n_layers),
                            tok.eos_token_id)
            text = tok.decode(tokens, skip_special_tokens=True).strip()
            correct, frac = score_answer(text, trial.answers)
            rows.append({"id": trial.id, "task": trial.task, "length": trial.length, "seed": trial.seed,
                         "method": name, "budget": budget, "text": text, "correct": correct, "frac": frac,
                         "agree": text == full_text})
    return rows


def step_run_methods(model: Any, tok: Any, trials: list[Trial], offline: Offline, config: dict[str, Any], out: Path,
                     log: Callable[..., None]) -> list[dict[str, Any]]:
    """Run every method on every prompt not yet in ``out/answers.jsonl``; returns all rows."""
    from leanlm.common.progress import progress

    path = out / "answers.jsonl"
    rows = read_jsonl(path)
    done = {r["id"] for r in rows}
    todo = [t for t in trials if t.id not in done]
    log("tasks: %d prompts done, %d to run", len(done), len(todo))
    for trial in progress(todo, desc="prompts", unit="prompt"):
        t0 = time.perf_counter()
        new = run_trial(model, tok, trial, offline, config)
        append_jsonl(path, new)
        rows.extend(new)
        full = new[0]
        log("%s (%d tokens): answer %s, full KV %r (%s); %.0f s", trial.id, full["n_tokens"], trial.answers,
            full["text"], "correct" if full["correct"] else "wrong", time.perf_counter() - t0)
    return rows


def step_presses(model: Any, tok: Any, trials: list[Trial], answers: list[dict[str, Any]], config: dict[str, Any],
                 out: Path, log: Callable[..., None]) -> list[dict[str, Any]]:
    if not config["presses"]:
        return []
    path = out / "presses.jsonl"
    rows = read_jsonl(path)
    done = {r["id"] for r in rows}
    full = {r["id"]: r["text"] for r in answers if r["method"] == "full KV"}
    for trial in trials:
        if trial.id in done or trial.id not in full:  # presses only where the per-step methods ran
            continue
        new = run_presses(model, tok, trial, config, full[trial.id])
        append_jsonl(path, new)
        rows.extend(new)
        log("presses on %s done", trial.id)
    return rows


# ----------------------------------------------------------------------------------------- step 4
def ppl_text(kind: str, tok: Any, n_tokens: int) -> torch.Tensor:
    """Held-out real text (not used by calibration or the task haystacks' first articles), ``(n_tokens,)``."""
    from leanlm.common.data import cpython_source_files
    from leanlm.fasa.text import wiki_text

    if kind == "wiki":
        text = wiki_text(400, offset=200)
    elif kind == "code":
        files = cpython_source_files()[200:260]
        text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    else:
        raise ValueError(f"unknown perplexity text {kind!r}; expected 'wiki' or 'code'")
    ids = tok(text, return_tensors="pt").input_ids[0, :n_tokens]
    if ids.shape[0] < n_tokens:
        raise ValueError(f"the {kind} perplexity text has only {ids.shape[0]} tokens, {n_tokens} needed")
    return ids


def step_perplexity(model: Any, tok: Any, offline: Offline, config: dict[str, Any], out: Path,
                    log: Callable[..., None]) -> list[dict[str, Any]]:
    """Teacher-forced decode perplexity of each method and budget on held-out text (paper Fig. 4)."""
    path = out / "perplexity.jsonl"
    rows = read_jsonl(path)
    done = {r["text_kind"] for r in rows}
    n_layers = n_layers_of(model)
    for kind in config["ppl_texts"]:
        if kind in done:
            continue
        ids = ppl_text(kind, tok, config["ppl_prefill"] + config["ppl_predict"])
        prompt, cont = ids[None, : config["ppl_prefill"]], ids[config["ppl_prefill"] :]
        cache, last = prefill(model, prompt)
        new = []
        for name in ["full KV", *config["ppl_methods"]]:
            for budget in [0] if name == "full KV" else config["budgets"]:
                selector = METHODS[name](offline, budget)
                handler = ProbeAttention(selector, budget, n_layers)
                nll = teacher_forced_nll(model, cache, last, cont, prompt.shape[1], handler)
                new.append({"text_kind": kind, "method": name, "budget": budget, "nll": nll, "ppl": perplexity(nll),
                            **({} if selector is None else handler.probes.means())})
                log("perplexity %s %s @%d: %.3f", kind, name, budget, new[-1]["ppl"])
        append_jsonl(path, new)
        rows.extend(new)
    return rows


# ----------------------------------------------------------------------------------------- the pipeline
def run_eval(config: dict[str, Any], out: Path, log: Callable[..., None], model: Any = None,
             tok: Any = None) -> dict[str, Any]:
    """calibrate -> build prompts -> (perplexity, run methods, presses in ``config['order']``) -> tabulate -> plot."""
    from leanlm.fasa.evaluation.report import plot, tabulate

    unknown = [m for m in config["methods"] + config["ppl_methods"] if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {list(METHODS)}")
    if model is None:
        from leanlm.common.models import load_embedded

        model, tok = load_embedded()
    out = Path(out)
    check_resume(out, config)
    t0 = time.perf_counter()
    offline = step_calibrate(model, tok, config, out, log)
    trials = step_build_prompts(tok, config)
    answers: list[dict[str, Any]] = read_jsonl(out / "answers.jsonl")
    press_rows: list[dict[str, Any]] = read_jsonl(out / "presses.jsonl")
    ppl_rows: list[dict[str, Any]] = read_jsonl(out / "perplexity.jsonl")
    for step in config["order"]:  # "ppl" / "tasks" / "presses", optionally narrowed: "ppl:wiki", "tasks:4096"
        step, _, only = step.partition(":")
        if step == "ppl":
            texts = [only] if only else config["ppl_texts"]
            ppl_rows = step_perplexity(model, tok, offline, {**config, "ppl_texts": texts}, out, log)
        elif step == "tasks":
            subset = [t for t in trials if not only or t.length == int(only)]
            answers = step_run_methods(model, tok, subset, offline, config, out, log)
        elif step == "presses":
            press_rows = step_presses(model, tok, trials, answers, config, out, log)
        else:
            raise ValueError(f"unknown step {step!r} in config['order']")
    tables, metrics, summary = tabulate(answers, press_rows, ppl_rows, offline, config)
    figures = plot(answers, press_rows, ppl_rows, offline, config)
    done = len({r["id"] for r in answers})
    metrics["prompts_done"] = f"{done}/{len(trials)}"
    seconds = time.perf_counter() - t0
    atomic_write_json(out / "summary.json", {"metrics": metrics, "seconds": seconds, **summary})
    return {"tables": tables, "figures": figures, "metrics": metrics, "seconds": seconds, "offline": offline,
            "prompts_done": done, "prompts_total": len(trials)}
