"""The evaluation as named steps: calibrate, tune tasks, build prompts, run methods, perplexity, tabulate, plot.

Every per-step method decodes from ONE shared dense prefill per prompt (a
:class:`~leanlm.fasa.evaluation.harness.RewindableCache`: no copy per method), layer 0 dense for all of
them. Results are appended to JSONL files in the output directory, one row per (prompt, method, budget)
as a prompt's methods finish and one row per (text, method, budget) of perplexity; a rerun with the same
directory skips every row already there, so a long run resumes after being stopped (``leanlm fasa bench
--eval --out DIR`` again). The settings that change results are stored in ``config.json`` and a resume
with different ones is refused; ``order`` is not one of them: it only says what is computed first.

``config["order"]`` lists steps ``ppl[:TEXT][:PHASE]``, ``tasks[:LENGTH][:PHASE]`` and ``presses``; the
phase ``headline`` narrows a step to :data:`MAIN_METHODS` at budgets <= 256 (the issue's goals), so a
partial full run computes the headline perplexities first (minutes), then fills in the headline table,
round-robin over tasks, at 8K first (tasks the tuning left at the floor after the others).

``config["tune"]`` (``{"seeds": n, "target": t}``) tunes each task's difficulty at each length so that full
KV lands between floor and ceiling, on tuning seeds disjoint from the evaluated ones
(:mod:`leanlm.fasa.evaluation.tune`; checkpointed in ``tuning.jsonl``, result in ``task-params.json``);
``config["task_params"]`` gives the knobs directly instead.
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
    RewindableCache,
    flush_denormals,
    greedy,
    n_layers_of,
    perplexity,
    prefill,
    teacher_forced_nll,
)
from leanlm.fasa.evaluation.methods import METHODS, Offline, presses, transfer_method
from leanlm.fasa.evaluation.metrics import score_answer
from leanlm.fasa.evaluation.tasks import CODE_HAYSTACK_FILES, TASKS, Trial, build_suite, build_trial

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
    "order": ["ppl", "tasks", "presses"], "seed": 0, "tune": None, "task_params": None,
}
#: the issue's full config: 7 tasks x 30 prompts at 4K and ~8K, every method at every budget and the
#: ablations at 64 and 256 (~1 CPU-day); 4K runs in one pass (no headline phase: one prefill per prompt)
FULL: dict[str, Any] = {
    "lengths": [4096, 7936], "tasks": list(TASKS), "n_per_task": 30, "budgets": [64, 128, 256, 512],
    "methods": list(METHODS), "transfer": ["code", "task"], "transfer_budgets": [256],
    "transfer_task": "niah_multikey",
    "presses": ["SnapKV", "StreamingLLM", "TOVA", "KNorm", "ExpectedAttention"], "press_budgets": [256],
    "calib_tokens": 2048, "calib_decode_steps": 32, "calib_stride": 32,
    "ppl_texts": ["wiki", "code"], "ppl_prefill": 4000, "ppl_predict": 65,
    "ppl_methods": ["FASA", "oracle top-k", "Quest (page 16)", "StreamingLLM (8 sinks + recent)", "SparQ",
                    "Double Sparsity", "Loki", "H2O", "SnapKV decode (R-KV style)"],
    "ablation_budgets": [64, 256],
    "order": ["ppl:wiki:headline", "ppl:code:headline", "tasks:7936:headline", "tasks:7936", "ppl:wiki",
              "tasks:4096", "ppl:code", "presses"], "seed": 0,
    "tune": {"seeds": 4, "target": 0.5}, "task_params": None,
}
#: a step narrowed to the headline comparison: the main methods at these budgets (full KV's 0 included)
HEADLINE_BUDGET = 256
#: settings a resumed run must share with the first one (sizes may grow: prompts are seeded by index)
FIXED = ("tasks", "budgets", "ablation_budgets", "methods", "transfer", "transfer_budgets", "transfer_task", "presses", "press_budgets",
         "calib_tokens", "calib_decode_steps", "calib_stride", "ppl_prefill", "ppl_predict", "ppl_methods", "seed",
         "tune", "task_params")


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
def step_tune_tasks(model: Any, tok: Any, config: dict[str, Any], out: Path, log: Callable[..., None],
                    lengths: list[int] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Each task's difficulty knobs at ``lengths`` (default: all): ``config["task_params"]`` if given, else
    tuned on disjoint seeds (``config["tune"]``; resumes from ``out/tuning.jsonl``; the result of every length
    tuned so far is kept in ``out/task-params.json``), else the defaults (``{}``). The run tunes a length
    right before its first tasks step, so a partial run pays only for the lengths it reaches."""
    if config.get("task_params") is not None:
        return config["task_params"]
    if not config.get("tune"):
        return {}
    from leanlm.fasa.evaluation.tune import tune_suite

    path = out / "task-params.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    for length in lengths if lengths is not None else config["lengths"]:
        if saved is not None and str(length) in saved["params"]:
            continue
        result = tune_suite(model, tok, config["tasks"], [length], config["tune"]["seeds"],
                            config["tune"]["target"], out, log)
        if saved is None:
            saved = result
        else:
            saved["params"].update(result["params"])
            saved["rungs"] += result["rungs"]
        atomic_write_json(path, saved)
    return {} if saved is None else saved["params"]


# ----------------------------------------------------------------------------------------- step 3
def step_build_prompts(tok: Any, config: dict[str, Any],
                       params: dict[str, dict[str, dict[str, Any]]] | None = None) -> list[Trial]:
    return build_suite(tok, config["tasks"], config["lengths"], config["n_per_task"], config["seed"], params)


# ----------------------------------------------------------------------------------------- step 4
def method_table(config: dict[str, Any]) -> list[tuple[str, Any, list[int]]]:
    """``(name, factory, budgets)`` of every per-step method run on each prompt (full KV first). The
    ablations (methods outside :data:`MAIN_METHODS`) run at ``config["ablation_budgets"]`` when it is set
    (the full config: 64, where FASA breaks, and the headline 256), the main methods at every budget."""
    def budgets_of(name: str) -> list[int]:
        if name == "full KV":
            return [0]
        if name not in MAIN_METHODS and config.get("ablation_budgets"):
            return [b for b in config["budgets"] if b in config["ablation_budgets"]]
        return list(config["budgets"])

    table = [(name, METHODS[name], budgets_of(name))
             for name in ["full KV"] + [m for m in config["methods"] if m != "full KV"]]
    for source in config["transfer"]:
        label = f"FASA [calibrated on {'code' if source == 'code' else config['transfer_task'] + ' prompts'}]"
        table.append((label, transfer_method(source), list(config["transfer_budgets"])))
    return table


def in_phase(name: str, budget: int, phase: str) -> bool:
    """Whether ``(name, budget)`` is computed in ``phase`` ('' = everything; 'headline' = main methods <= 256)."""
    if not phase:
        return True
    if phase == "headline":
        return name in MAIN_METHODS and budget <= HEADLINE_BUDGET
    raise ValueError(f"unknown phase {phase!r}; expected 'headline' or none")


def run_trial(model: Any, tok: Any, trial: Trial, offline: Offline, config: dict[str, Any],
              skip: set[tuple[str, int]] | frozenset = frozenset(), phase: str = "", full_text: str | None = None,
              fast: bool = True, on_row: Callable[[dict[str, Any]], None] | None = None,
              presses_skip: set[tuple[str, int]] | frozenset | None = None,
              on_press_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """The methods of ``phase`` on one prompt from one shared dense prefill: one row per (method, budget),
    skipping the pairs in ``skip`` (already checkpointed; ``full_text`` is then full KV's reply). ``on_row``
    sees each row as it is made (checkpointing). ``fast=False`` decodes from deep copies and probes the plain
    way: the reference the fast path equals bit for bit. With ``presses_skip`` (a set, maybe empty) the
    kvpress presses not in it also run from the same prefill; their rows go to ``on_press_row`` only."""
    ids = tok(trial.prompt, return_tensors="pt").input_ids
    n_layers = n_layers_of(model)
    todo = [(name, factory, budget) for name, factory, budgets in method_table(config) for budget in budgets
            if (name, budget) not in skip and in_phase(name, budget, phase)]
    pressing = press_todo(config, ids.shape[1], presses_skip) if presses_skip is not None else {}
    if not todo and not pressing:
        return []
    if pressing:
        cache, last, captured = capture_prefill(model, ids)
        pressed = press_caches(model, cache, captured, pressing)
        del captured
    else:
        cache, last = prefill(model, ids)
        pressed = {}
    if fast:
        cache = RewindableCache(cache, ids.shape[1] + trial.max_new_tokens + 1)
    base = {"id": trial.id, "task": trial.task, "length": trial.length, "seed": trial.seed,
            "haystack": trial.haystack, "n_tokens": ids.shape[1], "answers": trial.answers}
    rows: list[dict[str, Any]] = []
    for name, factory, budget in todo:
        selector = factory(offline, budget)
        handler = ProbeAttention(selector, budget, n_layers, reference=not fast)
        t0 = time.perf_counter()
        tokens = greedy(model, cache, last, ids.shape[1], trial.max_new_tokens, handler, tok.eos_token_id)
        text = tok.decode(tokens, skip_special_tokens=True).strip()
        if full_text is None:
            if name != "full KV":
                raise ValueError(f"{trial.id}: full KV must run (or be checkpointed) before the other methods")
            full_text = text
        correct, frac = score_answer(text, trial.answers)
        rows.append({**base, "method": name, "budget": budget, "text": text, "correct": correct, "frac": frac,
                     "agree": text == full_text, "seconds": round(time.perf_counter() - t0, 2),
                     **({} if selector is None else handler.probes.means())})
        if on_row is not None:
            on_row(rows[-1])
    if pressed:
        decode_presses(model, tok, trial, pressed, last, ids.shape[1], full_text, on_press_row)
    return rows


def capture_prefill(model: Any, ids: torch.Tensor) -> tuple[Any, torch.Tensor, dict[int, tuple[Any, ...]]]:
    """:func:`prefill` that also keeps what a kvpress press's forward hook sees at each attention layer:
    ``{layer: (module, hidden_states, attentions, forward kwargs)}``."""
    captured: dict[int, tuple[Any, ...]] = {}

    def hook(module, args, kwargs, output):
        captured[module.layer_idx] = (module, kwargs["hidden_states"], output[1], dict(kwargs))

    handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True) for layer in model.model.layers]
    try:
        cache, last = prefill(model, ids)
    finally:
        for h in handles:
            h.remove()
    return cache, last, captured


def press_caches(model: Any, cache: Any, captured: dict[int, tuple[Any, ...]], named: dict[str, Any]) -> dict[str, Any]:
    """The cache each kvpress press leaves after the prefill, from ONE dense prefill: ``press.compress`` on each
    layer's dense keys/values with the hidden states and kwargs its hook would see. Equal to prefilling under
    ``with press(model)`` (kvpress's hook compresses a layer after its attention output is computed, so the
    prefill itself is unchanged; a test checks the caches are identical) at one prefill instead of one per press."""
    from transformers import DynamicCache

    out = {}
    added = [layer.self_attn for layer in model.model.layers if "rotary_emb" not in layer.self_attn._modules]
    for module in added:  # what ``with press(model)`` sets up (and leaves behind); removed again here
        module.rotary_emb = model.model.rotary_emb
    try:
        with torch.inference_mode():
            for name, press in named.items():
                press.post_init_from_model(model)
                data = []
                for layer_idx, layer in enumerate(cache.layers):
                    module, hidden, attentions, kwargs = captured[layer_idx]
                    data.append(press.compress(module, hidden, layer.keys, layer.values, attentions, kwargs))
                out[name] = DynamicCache(ddp_cache_data=data, config=model.config)
    finally:
        for module in added:
            del module.rotary_emb
    return out


def press_todo(config: dict[str, Any], n_tokens: int, skip: set[tuple[str, int]] | frozenset = frozenset()
               ) -> dict[tuple[str, int], Any]:
    """``{(press label, budget): press}`` of the configured presses not in ``skip`` (ratio = 1 - budget / prompt)."""
    todo = {}
    for budget in config["press_budgets"]:
        for name, press in presses(config["presses"], max(0.0, 1.0 - budget / n_tokens)).items():
            if (name, budget) not in skip:
                todo[(name, budget)] = press
    return todo if config["presses"] else {}


def decode_presses(model: Any, tok: Any, trial: Trial, caches: dict[tuple[str, int], Any], last: torch.Tensor,
                   n_tokens: int, full_text: str | None,
                   on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Dense greedy decode from each press's cache (kvpress's own protocol: eviction at prefill only)."""
    rows = []
    for (name, budget), cache in caches.items():
        tokens = greedy(model, cache, last, n_tokens, trial.max_new_tokens, ProbeAttention(None, 0, n_layers_of(model)),
                        tok.eos_token_id)
        text = tok.decode(tokens, skip_special_tokens=True).strip()
        correct, frac = score_answer(text, trial.answers)
        rows.append({"id": trial.id, "task": trial.task, "length": trial.length, "seed": trial.seed,
                     "method": name, "budget": budget, "text": text, "correct": correct, "frac": frac,
                     "agree": text == full_text})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def run_presses(model: Any, tok: Any, trial: Trial, config: dict[str, Any], full_text: str,
                skip: set[tuple[str, int]] | frozenset = frozenset(),
                on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """kvpress presses: prefill eviction to the budget, then dense greedy decode (their own protocol); one
    shared dense prefill for every press (:func:`press_caches`)."""
    ids = tok(trial.prompt, return_tensors="pt").input_ids
    todo = press_todo(config, ids.shape[1], skip)
    if not todo:
        return []
    cache, last, captured = capture_prefill(model, ids)
    caches = press_caches(model, cache, captured, {key: press for key, press in todo.items()})
    del captured, cache
    return decode_presses(model, tok, trial, caches, last, ids.shape[1], full_text, on_row)


def available_gb() -> float | None:
    """The kernel's MemAvailable in GB (``/proc/meminfo``), None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        return None
    return None


def wait_for_memory(min_gb: float, log: Callable[..., None], poll_s: float = 30.0) -> None:
    """Block until MemAvailable >= ``min_gb`` (0: never wait): a prompt of the full config holds ~1.5 GB
    beyond the loaded model at 8K, so on a shared machine the next prompt starts only where it fits."""
    if min_gb <= 0:
        return
    told = False
    while (gb := available_gb()) is not None and gb < min_gb:
        if not told:
            log("waiting for memory: %.1f GB available, %.1f GB wanted before the next prompt", gb, min_gb)
            told = True
        time.sleep(poll_s)


def _done_pairs(rows: list[dict[str, Any]]) -> dict[str, set[tuple[str, int]]]:
    done: dict[str, set[tuple[str, int]]] = {}
    for r in rows:
        done.setdefault(r["id"], set()).add((r["method"], int(r["budget"])))
    return done


def step_run_methods(model: Any, tok: Any, trials: list[Trial], offline: Offline, config: dict[str, Any], out: Path,
                     log: Callable[..., None], phase: str = "", min_available_gb: float = 0.0
                     ) -> list[dict[str, Any]]:
    """Run the methods of ``phase`` (and the kvpress presses, from the same prefill) on every prompt where
    ``out/answers.jsonl`` / ``out/presses.jsonl`` lack them; returns all answer rows.

    Rows are checkpointed one by one, so a stop loses at most the decode in progress."""
    from leanlm.common.progress import progress

    path, press_path = out / "answers.jsonl", out / "presses.jsonl"
    rows = read_jsonl(path)
    done, press_done = _done_pairs(rows), _done_pairs(read_jsonl(press_path))
    full = {r["id"]: r["text"] for r in rows if r["method"] == "full KV"}
    wanted = {(n, b) for n, _, budgets in method_table(config) for b in budgets if in_phase(n, b, phase)}
    press_wanted = {(f"kvpress {n}", b) for n in config["presses"] for b in config["press_budgets"]}
    todo = [t for t in trials if not wanted <= done.get(t.id, set()) or not press_wanted <= press_done.get(t.id, set())]
    log("tasks%s: %d prompts complete, %d to run", f" ({phase})" if phase else "", len(trials) - len(todo), len(todo))

    def checkpoint(row: dict[str, Any]) -> None:
        append_jsonl(path, [row])
        rows.append(row)

    def checkpoint_press(row: dict[str, Any]) -> None:
        append_jsonl(press_path, [row])

    for trial in progress(todo, desc="prompts", unit="prompt"):
        wait_for_memory(min_available_gb, log)
        t0 = time.perf_counter()
        new = run_trial(model, tok, trial, offline, config, skip=done.get(trial.id, set()), phase=phase,
                        full_text=full.get(trial.id), on_row=checkpoint,
                        presses_skip=press_done.get(trial.id, set()), on_press_row=checkpoint_press)
        head = next((r for r in new if r["method"] == "full KV"), None)
        log("%s (%s tokens): answer %s, full KV %r; %d rows + presses in %.0f s", trial.id,
            new[0]["n_tokens"] if new else "?", trial.answers, head["text"] if head else full.get(trial.id),
            len(new), time.perf_counter() - t0)
    return rows


def step_presses(model: Any, tok: Any, trials: list[Trial], answers: list[dict[str, Any]], config: dict[str, Any],
                 out: Path, log: Callable[..., None]) -> list[dict[str, Any]]:
    """The presses on every prompt with a full-KV row where ``out/presses.jsonl`` lacks them (the task steps
    already run them from their shared prefill; this catches prompts checkpointed without them)."""
    if not config["presses"]:
        return []
    path = out / "presses.jsonl"
    rows = read_jsonl(path)
    done = _done_pairs(rows)
    full = {r["id"]: r["text"] for r in answers if r["method"] == "full KV"}

    def checkpoint(row: dict[str, Any]) -> None:
        append_jsonl(path, [row])
        rows.append(row)

    for trial in trials:
        if trial.id not in full:  # presses only where the per-step methods ran
            continue
        if run_presses(model, tok, trial, config, full[trial.id], done.get(trial.id, set()), checkpoint):
            log("presses on %s done", trial.id)
    return rows


# ----------------------------------------------------------------------------------------- step 5
def ppl_text(kind: str, tok: Any, n_tokens: int) -> torch.Tensor:
    """Held-out real text (not used by calibration or the task haystacks' first articles), ``(n_tokens,)``."""
    from leanlm.common.data import cpython_source_files
    from leanlm.fasa.text import wiki_text

    if kind == "wiki":
        text = wiki_text(400, offset=200)
    elif kind == "code":
        # the standard library's files after the first 60 (the code haystacks read those, and calibration
        # reads the first 60K characters); read in order until there is enough text (a Python 3.11 stdlib
        # has ~170 top-level files: the earlier ``[200:260]`` was empty there)
        files = cpython_source_files()[CODE_HAYSTACK_FILES:]
        chunks: list[str] = []
        for path in files:
            chunks.append(path.read_text(encoding="utf-8", errors="replace"))
            if sum(map(len, chunks)) > 20 * n_tokens:  # BPE takes ~3 characters per token of code
                break
        text = "\n".join(chunks)
    else:
        raise ValueError(f"unknown perplexity text {kind!r}; expected 'wiki' or 'code'")
    ids = tok(text, return_tensors="pt").input_ids[0, :n_tokens]
    if ids.shape[0] < n_tokens:
        raise ValueError(f"the {kind} perplexity text has only {ids.shape[0]} tokens, {n_tokens} needed")
    return ids


def step_perplexity(model: Any, tok: Any, offline: Offline, config: dict[str, Any], out: Path,
                    log: Callable[..., None], phase: str = "") -> list[dict[str, Any]]:
    """Teacher-forced decode perplexity of each method and budget on held-out text (paper Fig. 4).

    Checkpointed per (text, method, budget) row: a resume recomputes the text's dense prefill and runs only
    the missing rows."""
    path = out / "perplexity.jsonl"
    rows = read_jsonl(path)
    done = {(r["text_kind"], r["method"], int(r["budget"])) for r in rows}
    n_layers = n_layers_of(model)
    for kind in config["ppl_texts"]:
        todo = [(name, budget) for name in ["full KV", *config["ppl_methods"]]
                for budget in ([0] if name == "full KV" else config["budgets"])
                if (kind, name, budget) not in done and in_phase(name, budget, phase)]
        if not todo:
            continue
        ids = ppl_text(kind, tok, config["ppl_prefill"] + config["ppl_predict"])
        prompt, cont = ids[None, : config["ppl_prefill"]], ids[config["ppl_prefill"] :]
        cache, last = prefill(model, prompt)
        cache = RewindableCache(cache, ids.shape[0] + 1)
        for name, budget in todo:
            selector = METHODS[name](offline, budget)
            handler = ProbeAttention(selector, budget, n_layers)
            nll = teacher_forced_nll(model, cache, last, cont, prompt.shape[1], handler)
            row = {"text_kind": kind, "method": name, "budget": budget, "nll": nll, "ppl": perplexity(nll),
                   **({} if selector is None else handler.probes.means())}
            append_jsonl(path, [row])
            rows.append(row)
            log("perplexity %s %s @%d: %.3f", kind, name, budget, row["ppl"])
    return rows


# ----------------------------------------------------------------------------------------- the pipeline
def run_eval(config: dict[str, Any], out: Path, log: Callable[..., None], model: Any = None,
             tok: Any = None, min_available_gb: float = 0.0) -> dict[str, Any]:
    """calibrate -> tune tasks -> build prompts -> (perplexity, run methods, presses in ``config['order']``)
    -> tabulate -> plot.

    ``min_available_gb`` > 0: each prompt (and perplexity text) waits until that much memory is available
    (:func:`wait_for_memory`; nothing about the results depends on it). Runs with subnormal floats flushed to
    zero (:func:`~leanlm.fasa.evaluation.harness.flush_denormals`)."""
    with flush_denormals():
        return _run_eval(config, out, log, model, tok, min_available_gb)


def _run_eval(config: dict[str, Any], out: Path, log: Callable[..., None], model: Any,
              tok: Any, min_available_gb: float) -> dict[str, Any]:
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

    def prompts_at(lengths: list[int]) -> list[Trial]:
        """The prompts at ``lengths`` (tuning those not tuned yet first); tasks the tuning left at the floor
        come after the others at each length (their accuracy says nothing; only the order changes)."""
        params = step_tune_tasks(model, tok, config, out, log, lengths)
        trials = step_build_prompts(tok, {**config, "lengths": lengths}, params)
        path = out / "task-params.json"
        rungs = json.loads(path.read_text(encoding="utf-8"))["rungs"] if path.exists() else []
        floor = {(r["length"], r["task"]) for r in rungs if r["floor"]}
        return sorted(trials, key=lambda t: (lengths.index(t.length), (t.length, t.task) in floor))

    answers: list[dict[str, Any]] = read_jsonl(out / "answers.jsonl")
    press_rows: list[dict[str, Any]] = read_jsonl(out / "presses.jsonl")
    ppl_rows: list[dict[str, Any]] = read_jsonl(out / "perplexity.jsonl")
    for step in config["order"]:  # "ppl" / "tasks" / "presses", narrowed: "ppl:wiki", "tasks:4096:headline"
        step, _, rest = step.partition(":")
        only, _, phase = rest.partition(":")
        wait_for_memory(min_available_gb, log)
        if step == "ppl":
            texts = [only] if only else config["ppl_texts"]
            ppl_rows = step_perplexity(model, tok, offline, {**config, "ppl_texts": texts}, out, log, phase)
        elif step == "tasks":
            subset = prompts_at([int(only)] if only else config["lengths"])
            answers = step_run_methods(model, tok, subset, offline, config, out, log, phase, min_available_gb)
            press_rows = read_jsonl(out / "presses.jsonl")
        elif step == "presses":
            press_rows = step_presses(model, tok, prompts_at(config["lengths"]), answers, config, out, log)
        else:
            raise ValueError(f"unknown step {step!r} in config['order']")
    tuning_path = out / "task-params.json"
    tuning = json.loads(tuning_path.read_text(encoding="utf-8")) if tuning_path.exists() else None
    tables, metrics, summary = tabulate(answers, press_rows, ppl_rows, offline, config, tuning)
    figures = plot(answers, press_rows, ppl_rows, offline, config)
    done = len({r["id"] for r in answers})
    total = len(config["tasks"]) * len(config["lengths"]) * config["n_per_task"]
    metrics["prompts_done"] = f"{done}/{total}"
    seconds = time.perf_counter() - t0
    atomic_write_json(out / "summary.json", {"metrics": metrics, "seconds": seconds, **summary})
    return {"tables": tables, "figures": figures, "metrics": metrics, "seconds": seconds, "offline": offline,
            "prompts_done": done, "prompts_total": total}
