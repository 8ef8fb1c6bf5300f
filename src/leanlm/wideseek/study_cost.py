"""``leanlm wideseek study-cost``: where the training study's CPU time goes, and what each stage will cost.

Two measurements, combined by a small analytic model:

1. **Shapes** (no model): the scripted oracle (:class:`~leanlm.wideseek.bench.OraclePolicy`) runs every task
   set of the study under the study's limits (held-out eval tasks, GRPO training prompts, SFT traces) and
   each model call is tokenized exactly as the in-process backend would see it: model calls, prompt tokens
   (re-prefilled every turn, as :class:`~leanlm.wideseek.rollout.TransformersBackend` does), the prompt tokens
   that remain with perfect cross-turn prefix (KV) reuse, reply tokens and the critical path in turns.
   A protocol-following policy (SFT, MARL) has roughly this shape; an untrained one differs (the base model
   answers in one turn).
2. **Unit costs** (the real SmolLM2-135M on this machine): prefill tokens/s, decode step time at batch
   sizes 1..32 (a cache of ``context`` tokens), and training forward+backward tokens/s.

Model per stage: an eval runs ``eval_tasks x n`` rollouts as one batched group; each of its critical-path
turns decodes (reply cap or oracle reply) steps at the group's batch size, and every call prefills its
prompt. A GRPO step is one group of ``group_size`` rollouts plus the learner (reference pass + policy
forward+backward over every trained turn's prompt + reply, each agent's turns packed into one sequence; the old
log-probs come from the update's own forward with one PPO epoch). SFT is forward+backward over its examples. Times are for one process with
the measured threads; the caveats (padding, stragglers, untrained models running to the cap) are in
docs/results/wideseek.md, "study".
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections import defaultdict
from typing import Any

import torch

from leanlm.common.progress import get_logger

log = get_logger("leanlm.wideseek.study_cost")


def oracle_shape(tasks: list[Any], tools: Any, agent_cfg: Any, tokenizer: Any, mode: str, width: int) -> dict[str, Any]:
    """Mean per-rollout counts of the oracle on ``tasks`` (module doc, item 1)."""
    from leanlm.wideseek.agents import WideSeek
    from leanlm.wideseek.bench import OraclePolicy
    from leanlm.wideseek.llm import ScriptedBackend
    from leanlm.wideseek.rollout import prompt_ids
    from leanlm.wideseek.sft import completion_text

    agg: dict[str, float] = defaultdict(float)
    longest: dict[str, int] = defaultdict(int)
    for task in tasks:
        oracle, rec = OraclePolicy(task, width=width), []

        def policy(agent: str, messages: list[dict[str, Any]], tools_: list[dict[str, Any]], _o: Any = oracle,
                   _r: list[tuple[str, int, int]] = rec) -> Any:
            out = _o(agent, messages, tools_)
            y = len(tokenizer(completion_text(out) + "<|im_end|>", add_special_tokens=False)["input_ids"])
            _r.append((agent, len(prompt_ids(tokenizer, messages, tools_)), y))
            return out

        agent = WideSeek(ScriptedBackend(policy), tools, agent_cfg)
        result = agent.run(task.query, "table") if mode == "multi" else agent.run_single(task.query, "table")
        agg["f1"] += task.score(result.answer).f1_by_item
        by: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for name, p, y in rec:
            by[name].append((p, y))
            role = "sub" if name.startswith("sub-") else name
            longest[role] = max(longest[role], y)
        agg["calls"] += len(rec)
        agg["prompt_tokens"] += sum(p for _, p, _ in rec)
        agg["reply_tokens"] += sum(y for _, _, y in rec)
        agg["reuse_prompt_tokens"] += sum(ts[0][0] + sum(max(0, ts[i][0] - ts[i - 1][0] - ts[i - 1][1])
                                                           for i in range(1, len(ts))) for ts in by.values())
        agg["agents"] += len(by)
        lead = by.get("lead") or by.get("single") or []
        subs = [v for k, v in by.items() if k.startswith("sub-")]
        # critical path: every lead turn, plus the longest subagent chain per delegating lead turn
        rounds = max(1, len(lead) - 1) if subs else 0
        agg["path_lead"] += len(lead)
        agg["path_sub"] += max(len(v) for v in subs) * rounds if subs else 0
        agg["max_context"] = max(agg["max_context"], max((p + y for _, p, y in rec), default=0))
    n = max(1, len(tasks))
    out = {k: round(v / n, 2) for k, v in agg.items() if k != "max_context"}
    out["path_turns"] = round(out["path_lead"] + out.get("path_sub", 0.0), 2)
    return {**out, "max_context": int(agg["max_context"]), "max_reply": dict(longest), "tasks": len(tasks)}


def batching_check(tasks: list[Any], tools: Any, agent_cfg: Any, tokenizer: Any, n: int, width: int,
                   max_context: int, max_pad_waste: float, kv_reuse: bool = False) -> dict[str, Any]:
    """Is every waiting agent batched? ``n`` oracle-shaped rollouts of each task run concurrently with real
    tools; each model call first queues in a :class:`~leanlm.wideseek.rollout.TransformersBackend` (a tiny
    random model, 1 new token: only the batch composition and padding matter here) and is then answered by the
    oracle. Returns the generate calls, their sizes and the padded-prompt overhead; with ``kv_reuse`` also the
    prompt columns the batches really prefill with cross-turn KV reuse (each agent's previous prompt reused; the
    oracle's reply, not the model's, continues the conversation)."""
    from leanlm.common.models import tiny_llama
    from leanlm.wideseek import rollout
    from leanlm.wideseek.kv_bench import oracle_group

    model = tiny_llama(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, max_position_embeddings=max(8192, max_context), seed=0)
    backend = rollout.TransformersBackend(model, tokenizer, max_new_tokens=1, max_context=max_context,
                                          max_pad_waste=max_pad_waste, kv_reuse=kv_reuse, kv_hold_all=True)
    results = oracle_group(backend, tasks, tools, agent_cfg, n, width)
    f1 = [t.score(r.answer).f1_by_item for t, r in zip([t for t in tasks for _ in range(n)], results, strict=True)]
    st = backend.stats
    return {"max_pad_waste": None if max_pad_waste == float("inf") else max_pad_waste, "calls": st["calls"], "generate_calls": len(backend.batches),
            "batch_sizes": list(backend.batches), "mean_batch": round(st["calls"] / max(1, len(backend.batches)), 1),
            "prompt_tokens": st["prompt_tokens"], "padded_prompt_tokens": st["padded_prompt_tokens"],
            "pad_overhead": round(st["padded_prompt_tokens"] / max(1, st["prompt_tokens"]) - 1, 3),
            "kv_reuse": kv_reuse, "prefilled_tokens": st["prefilled_tokens"], "reused_tokens": st["reused_tokens"],
            "oracle_f1": statistics.mean(f1)}


@torch.no_grad()
def unit_costs(model: Any, context: int = 1024, batches: tuple[int, ...] = (1, 4, 8, 16, 32), steps: int = 6,
               repeats: int = 3) -> dict[str, Any]:
    """Prefill tokens/s, decode ms per step per batch size, and training (fwd+bwd) tokens/s, medians over
    ``repeats`` (module doc, item 2)."""
    device = next(model.parameters()).device
    model.eval()
    ids = torch.randint(100, 20000, (1, context), device=device)
    prefill = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        prefill.append(context / (time.perf_counter() - t0))
    decode: dict[int, float] = {}
    for b in batches:
        times = []
        for _ in range(repeats):
            cache = model(input_ids=ids, use_cache=True).past_key_values
            cache.batch_repeat_interleave(b)
            nxt = torch.full((b, 1), 42, device=device)
            t0 = time.perf_counter()
            for _ in range(steps):
                o = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                cache, nxt = o.past_key_values, o.logits[:, -1:].argmax(-1)
            times.append((time.perf_counter() - t0) / steps)
        decode[b] = statistics.median(times)
    del out
    train = []
    model.train()
    with torch.enable_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            logits = model(input_ids=ids, logits_to_keep=64).logits
            logits[0].float().logsumexp(-1).mean().backward()
            train.append(context / (time.perf_counter() - t0))
    model.zero_grad(set_to_none=True)
    model.eval()
    return {"context": context, "prefill_tok_s": statistics.median(prefill),
            "decode_step_s": {str(b): v for b, v in decode.items()}, "train_tok_s": statistics.median(train),
            "threads": torch.get_num_threads()}


def _step_s(units: dict[str, Any], batch: float) -> float:
    """Decode step time at ``batch`` rows, interpolated linearly between the measured batch sizes."""
    pts = sorted((int(b), s) for b, s in units["decode_step_s"].items())
    if batch <= pts[0][0]:
        return pts[0][1]
    for (b0, s0), (b1, s1) in itertools.pairwise(pts):
        if batch <= b1:
            return s0 + (s1 - s0) * (batch - b0) / (b1 - b0)
    (b0, s0), (b1, s1) = pts[-2], pts[-1]
    return s1 + (s1 - s0) * (batch - b1) / (b1 - b0)


def group_seconds(shape: dict[str, Any], rollouts: int, units: dict[str, Any], caps: dict[str, int],
                  cap_bound: bool, reuse: bool = False, max_batch: int = 64, kv_factor: float | None = None) -> float:
    """Wall seconds of one batched group of ``rollouts`` oracle-shaped rollouts (module doc). With ``reuse`` the
    prefill is ``kv_factor`` x the prompt tokens (the batched backend's measured share: prefilled columns with
    reuse / padded columns without, :func:`batching_check`), or without a factor the ideal per-agent prefix
    reuse of the shape (``reuse_prompt_tokens``)."""
    if reuse and kv_factor is not None:
        prompt = shape["prompt_tokens"] * kv_factor * rollouts
    else:
        prompt = shape["reuse_prompt_tokens" if reuse else "prompt_tokens"] * rollouts
    prefill = prompt / units["prefill_tok_s"]
    turns = shape["path_turns"]
    if turns <= 0:
        return prefill
    rows = min(max_batch, shape["calls"] * rollouts / turns)  # mean rows per generate call on the path
    top = shape["max_reply"]
    lead_role = "single" if "single" in top else "lead"
    if cap_bound:  # every reply runs to its role's cap (an untrained or rambling policy)
        steps = shape["path_lead"] * caps.get(lead_role, caps["lead"]) + shape.get("path_sub", 0) * caps.get("sub", 0)
    else:  # a batch runs until its longest reply stops: the oracle's longest per role
        steps = shape["path_lead"] * top.get(lead_role, 0) + shape.get("path_sub", 0) * top.get("sub", 0)
    return prefill + steps * _step_s(units, rows)


def learner_seconds(shape: dict[str, Any], rollouts: int, units: dict[str, Any], recompute_old: bool = False,
                    pack: bool = True) -> float:
    """Reference pass + policy forward/backward (+ optional old-log-prob pass) over every turn of the group;
    with ``pack`` each agent's turns are one sequence (the oracle's prompts always extend each other)."""
    tokens = (shape["reuse_prompt_tokens" if pack else "prompt_tokens"] + shape["reply_tokens"]) * rollouts
    fwd = tokens / units["prefill_tok_s"]
    return fwd * (2 if recompute_old else 1) + tokens / units["train_tok_s"]


def cost_table(shapes: dict[str, dict[str, Any]], units: dict[str, Any], cfg: dict[str, Any],
               sft_tokens: float, pack: bool = True, kv_factor: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """CPU-hours per study stage (module doc): eval groups, GRPO runs and SFT, for the protocol-following
    (oracle reply lengths) and the cap-bound regime, with and without cross-turn KV reuse (``kv_factor``: the
    measured prefill share with reuse for ``eval`` and ``train`` groups; ideal prefix reuse without it)."""
    from leanlm.wideseek.study import plan

    caps = {"lead": cfg["max_new_tokens"], **(cfg.get("role_max_new_tokens") or {})}
    n_eval = cfg["eval_tasks"] * cfg["n"]
    g = cfg["group_size"] * cfg.get("prompts_per_step", 1)

    def evals(mode: str, cap_bound: bool, reuse: bool) -> float:
        return group_seconds(shapes[f"eval-{mode}"], n_eval, units, caps, cap_bound, reuse,
                             kv_factor=(kv_factor or {}).get("eval"))

    def marl(mode: str, cap_bound: bool, reuse: bool) -> float:
        sh = shapes[f"train-{mode}"]
        return cfg["steps"] * (group_seconds(sh, g, units, caps, cap_bound, reuse,
                                             kv_factor=(kv_factor or {}).get("train"))
                               + learner_seconds(sh, g, units, pack=pack))

    sft_s = sft_tokens / units["train_tok_s"]  # forward+backward; the AdamW steps are negligible
    rows: list[dict[str, Any]] = []
    trained: set[str] = set()
    for stage, (policy, seed, _width, mode) in plan(cfg):
        row = {"stage": stage, "run": f"{policy} seed {seed} w{_width}"}
        sft_name = "sft-single" if policy == "single" else "sft"
        run_key = f"{policy}-{seed}"
        for regime, cap_bound in (("protocol", False), ("cap", True)):
            for reuse in (False, True):
                s = evals(mode, cap_bound, reuse)
                if policy != "base" and sft_name not in trained:
                    s += sft_s
                if policy not in ("base", "sft") and run_key not in trained:
                    s += marl(mode, cap_bound, reuse)
                row[f"{regime}{'-kv' if reuse else ''}_h"] = round(s / 3600, 2)
        if policy != "base":
            trained.add(sft_name)
        if policy not in ("base", "sft"):
            trained.add(run_key)
        rows.append(row)
    return rows


def reuse_checks(cfg: dict[str, Any], tools: Any, tokenizer: Any) -> dict[str, list[dict[str, Any]]]:
    """:func:`batching_check` with cross-turn KV reuse on the study's groups: the evaluation group (held-out
    tasks x ``n``) and one GRPO group (``group_size`` rollouts) per training prompt task."""
    from leanlm.wideseek.study import _train_config, eval_tasks
    from leanlm.wideseek.tasks import generate_wide_tasks

    agent_cfg = _train_config(cfg, "/tmp", "", 0).agent_config()
    width, ctx, inf = cfg["oracle_width"], cfg["max_context"], float("inf")
    train = generate_wide_tasks("train", min_rows=2, max_rows=cfg["marl_max_rows"])
    return {"eval": [batching_check(eval_tasks(cfg), tools, agent_cfg, tokenizer, cfg["n"], width, ctx, inf, True)],
            "train": [batching_check([t], tools, agent_cfg, tokenizer, cfg["group_size"], width, ctx, inf, True)
                      for t in train]}


def kv_factors(checks: dict[str, list[dict[str, Any]]] | None) -> dict[str, float] | None:
    """Prefill share with KV reuse per group kind: prefilled columns / padded columns over its checks."""
    if not checks:
        return None
    return {k: sum(c["prefilled_tokens"] for c in v) / max(1, sum(c["padded_prompt_tokens"] for c in v))
            for k, v in checks.items()}


def run(threads: int = 1, context: int = 1024, repeats: int = 3) -> tuple[str, dict[str, Any]]:
    """Measure shapes and unit costs, and return the Markdown report and its JSON."""
    from leanlm.common.models import load_embedded
    from leanlm.wideseek.runner import default_world
    from leanlm.wideseek.sft import oracle_examples
    from leanlm.wideseek.study import FULL, _train_config, eval_tasks, train_tasks
    from leanlm.wideseek.tasks import generate_wide_tasks

    torch.set_num_threads(threads)
    cfg = dict(FULL)
    model, tok = load_embedded()
    tools = default_world(cfg["wiki_limit"])
    shapes = {}
    for mode in ("multi", "single"):
        agent_cfg = _train_config(cfg, "/tmp", "", 0, mode).agent_config()
        shapes[f"eval-{mode}"] = oracle_shape(eval_tasks(cfg), tools, agent_cfg, tok, mode, cfg["oracle_width"])
        shapes[f"train-{mode}"] = oracle_shape(generate_wide_tasks("train", min_rows=2, max_rows=cfg["marl_max_rows"]),
                                               tools, agent_cfg, tok, mode, cfg["oracle_width"])
    from leanlm.wideseek.agents import AgentConfig

    ow = cfg["oracle_width"]
    sft_cfg = AgentConfig(max_lead_turns=10, max_sub_turns=20, max_single_turns=50, max_subagents_per_call=ow,
                          max_subagents_per_turn=ow, max_concurrency=ow, few_shot=False)
    examples, _ = oracle_examples(train_tasks(cfg), tools, sft_cfg, tok, width=ow, max_len=cfg["sft_max_len"])
    per_example = statistics.mean(len(e.prompt_ids) + len(e.target_ids) for e in examples) if examples else 0.0
    sft_tokens = per_example * min(len(examples), cfg["sft_examples"]) * cfg["sft_epochs"]
    agent_cfg = _train_config(cfg, "/tmp", "", 0).agent_config()
    batching = [batching_check(eval_tasks(cfg), tools, agent_cfg, tok, cfg["n"], cfg["oracle_width"], cfg["max_context"],
                               waste) for waste in (0.25, float("inf"))]
    kv_checks = reuse_checks(cfg, tools, tok)
    units = unit_costs(model, context=context, repeats=repeats)
    measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()) + f", load average {os.getloadavg()[0]:.1f}"
    return render({"measured": measured, "batching": batching, "kv_checks": kv_checks, "units": units, "shapes": shapes, "sft_examples": min(len(examples), cfg["sft_examples"]),
                   "sft_example_tokens": per_example,
                   "sft_epoch_tokens": sft_tokens / cfg["sft_epochs"]})


def render(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The Markdown report and its JSON from measured ``units`` and ``shapes`` under the current study settings
    (``leanlm wideseek study-cost --from-json`` re-renders a saved measurement after the settings change)."""
    from leanlm.wideseek.study import FULL

    cfg = dict(FULL)
    units, shapes = data["units"], data["shapes"]
    examples_n, per_example = data["sft_examples"], data["sft_example_tokens"]
    sft_tokens = data["sft_epoch_tokens"] * cfg["sft_epochs"]
    threads, context = units["threads"], units["context"]
    factors = kv_factors(data.get("kv_checks"))
    rows = cost_table(shapes, units, cfg, sft_tokens, kv_factor=factors)
    lines = [f"**Study cost model** (SmolLM2-135M fp32, {threads} thread(s), context {context}; unit costs measured "
             f"{data.get('measured', 'in this run')}; shapes from the oracle under the study's limits; GRPO learner "
             "with each agent's turns packed into one sequence)", "",
             "| unit | value |", "|---|---|",
             f"| prefill tokens/s | {units['prefill_tok_s']:.0f} |",
             f"| training fwd+bwd tokens/s | {units['train_tok_s']:.0f} |"]
    lines += [f"| decode step, batch {b} | {s * 1000:.0f} ms ({int(b) / s:.1f} tok/s) |"
              for b, s in units["decode_step_s"].items()]
    lines += ["", "| task set / mode | calls | prompt tok | with KV reuse | reply tok | path turns | max reply "
              "| max context | oracle F1 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, sh in shapes.items():
        lines.append(f"| {name} | {sh['calls']} | {sh['prompt_tokens']:.0f} | {sh['reuse_prompt_tokens']:.0f} | "
                     f"{sh['reply_tokens']:.0f} | {sh['path_turns']} | {sh['max_reply']} | {sh['max_context']} | "
                     f"{sh['f1']:.2f} |")
    if factors:
        lines += ["", "KV reuse as the batched backend does it (`reuse_checks`: oracle-shaped groups, real tools, a tiny "
                  "model; rows end-aligned, so a batch reuses only the columns left of its longest new-token run): "
                  + "; ".join(f"{k} groups prefill {v:.1%} of the padded prompt columns"
                              for k, v in factors.items())
                  + ". The 'KV reuse' columns below use these shares; the 'with KV reuse' token column above is "
                  "the ideal per-agent prefix reuse."]
    else:
        lines += ["", "KV reuse columns: ideal per-agent prefix reuse (no `kv_checks` in this measurement)."]
    lines += ["", f"SFT: {examples_n} kept examples, {per_example:.0f} tokens each on average, "
              f"{cfg['sft_epochs']} epoch(s), {sft_tokens:.0f} tokens.", "",
              "| stage | run (+ training it needs) | protocol h | protocol + KV reuse h | cap-bound h | "
              "cap-bound + KV reuse h |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['run']} | {r['protocol_h']} | {r['protocol-kv_h']} | {r['cap_h']} | "
                     f"{r['cap-kv_h']} |")
    if data.get("batching"):
        lines += ["", "Batching check (one evaluation group, oracle-shaped, real tools; `batching_check`):", "",
                  "| padding cut | model calls | generate calls | batch sizes | padded prompt overhead | oracle F1 |",
                  "|---|---|---|---|---|---|"]
        for b in data["batching"]:
            cut = "none" if b["max_pad_waste"] is None else f"<= {b['max_pad_waste']:.0%}"
            lines.append(f"| {cut} | {b['calls']} | {b['generate_calls']} | {b['batch_sizes']} | "
                         f"{b['pad_overhead']:.1%} | {b['oracle_f1']:.2f} |")
    for suffix, label in (("", "no KV reuse"), ("-kv", "with KV reuse")):
        per_stage: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for r in rows:
            per_stage[r["stage"]][0] += r[f"protocol{suffix}_h"]
            per_stage[r["stage"]][1] += r[f"cap{suffix}_h"]
        lines += ["", f"Per stage (CPU-hours, protocol-following .. cap-bound, {label}): "
                  + "; ".join(f"{k} {a:.1f}..{b:.1f}" for k, (a, b) in per_stage.items())
                  + f"; total {sum(a for a, _ in per_stage.values()):.1f}.."
                  f"{sum(b for _, b in per_stage.values()):.1f}."]
    return "\n".join(lines) + "\n", {**data, "settings": cfg, "rows": rows, "kv_factors": factors}
