"""``leanlm wideseek sft``: supervised warm start on oracle-policy traces before multi-agent RL.

The oracle (:class:`~leanlm.wideseek.bench.OraclePolicy`) solves the training families' tasks through the
real runtime and tools: the lead's decomposition turns (``create_sub_agents``) and final table, the
subagents' ``search``/``access`` turns and reports. Every model call it answers becomes one example: the
chat-templated prompt exactly as the in-process backend would build it (:func:`~leanlm.wideseek.rollout.prompt_ids`)
and the reply as raw text with Hermes ``<tool_call>`` blocks plus ``<|im_end|>``; the loss is the token-mean
cross-entropy on the reply only. Examples longer than ``max_len`` tokens are dropped and counted.
Training checkpoints and resumes like :mod:`leanlm.wideseek.train`; the result is a Hugging Face directory.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write_json
from leanlm.common.progress import get_logger, progress_bar
from leanlm.wideseek import checkpoint
from leanlm.wideseek.agents import AgentConfig, WideSeek
from leanlm.wideseek.llm import Completion, ScriptedBackend
from leanlm.wideseek.rollout import prompt_ids
from leanlm.wideseek.tasks import Task

log = get_logger("leanlm.wideseek.sft")


def completion_text(c: Completion) -> str:
    """A reply as the model must write it: text, then one ``<tool_call>`` block per call (as the runtime's
    text mode and Qwen's chat template render them)."""
    text = c.content or ""
    for call in c.tool_calls:
        text += "\n<tool_call>\n" + json.dumps({"name": call.name, "arguments": call.arguments},
                                               ensure_ascii=False) + "\n</tool_call>"
    return text.strip()


@dataclass
class Example:
    task: str
    agent: str
    prompt_ids: list[int]
    target_ids: list[int]
    answer: bool = False  # the reply has no tool call: the lead's final table or a subagent's report


def select_examples(examples: Sequence[Example], n: int, answer_share: float = 0.0) -> list[Example]:
    """``n`` training examples from the oracle's. With ``answer_share`` 0 (the first study's recipe): every
    example when there are at most ``n``, else ``n`` evenly spaced ones.

    With ``answer_share`` > 0 both roles get half of the ``n`` places (the lead's side: ``lead`` or ``single``;
    the subagents' side: every ``sub-*``), since one model plays both. Within a side, its answers (replies
    without a tool call, the turns that end an agent's loop: the lead's final tables, the subagents' reports)
    fill ``ceil(answer_share * places)``, repeated in turn when there are fewer, and its tool calls, evenly
    spaced, the rest; places a side cannot fill go to the other side's tool calls. Lead's side first.

    Two recipes this replaced, each found from the evaluated policy's transcripts (docs/results/wideseek.md, 7e
    and 7g): spacing over all calls gave 1 final table in 96 examples (the lead never learned to stop); filling
    the answer places with final tables first and then the lead's calls before any subagent call gave 39 tables
    and 89 lead calls in 128 examples and **no subagent example**: the subagents never learned to search, read
    and report, and hit their turn limit."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= answer_share <= 1.0:
        raise ValueError(f"answer_share must be in [0, 1], got {answer_share}")

    def spaced(xs: Sequence[Example], k: int) -> list[Example]:
        if k <= 0:
            return []
        if len(xs) <= k:
            return list(xs)
        step = len(xs) / k
        return [xs[int(i * step)] for i in range(k)]

    if answer_share == 0.0:
        return spaced(examples, n)

    def side(lead: bool) -> tuple[list[Example], list[Example]]:
        mine = [e for e in examples if (e.agent in ("lead", "single")) == lead]
        return [e for e in mine if e.answer], [e for e in mine if not e.answer]

    sides = [s for s in (side(True), side(False)) if s[0] or s[1]]
    places = [n // len(sides) + (i < n % len(sides)) for i in range(len(sides))] if sides else []
    chosen: list[list[Example]] = []
    for (answers, _calls), k_side in zip(sides, places, strict=True):
        k = min(k_side, math.ceil(answer_share * k_side)) if answers else 0
        chosen.append([answers[i % len(answers)] for i in range(k)])
    short = 0
    for i, ((_answers, calls), k_side) in enumerate(zip(sides, places, strict=True)):
        want = k_side - len(chosen[i])
        chosen[i] += spaced(calls, want)
        short += want - min(want, len(calls))
    for i, (_answers, calls) in enumerate(sides):  # places a side could not fill: the other side's calls
        if short <= 0:
            break
        used = {id(e) for e in chosen[i]}
        spare = [e for e in calls if id(e) not in used]
        extra = spaced(spare, short)
        chosen[i] += extra
        short -= len(extra)
    return [e for part in chosen for e in part]


def oracle_examples(tasks: Sequence[Task], tools: Any, config: AgentConfig, tokenizer: Any, width: int,
                    mode: str = "multi", max_len: int = 4096) -> tuple[list[Example], dict[str, Any]]:
    """Run the oracle on every task and turn every model call into an :class:`Example`; returns the examples
    and counts (calls, kept, dropped for length, per-role kept, ``answers`` kept (replies without a tool call),
    ``lead_answers`` (final tables, or the single agent's), ``dropped_answers``, the oracle's mean item F1)."""
    from leanlm.wideseek.bench import OraclePolicy

    end = "<|im_end|>"
    examples: list[Example] = []
    stats: dict[str, Any] = {"calls": 0, "dropped_long": 0, "lead": 0, "subagent": 0, "single": 0, "answers": 0,
                             "lead_answers": 0, "dropped_answers": 0, "f1": []}
    for task in tasks:
        oracle = OraclePolicy(task, width=width)

        def policy(agent: str, messages: list[dict[str, Any]], tools_: list[dict[str, Any]], _o: Any = oracle,
                   _t: Task = task) -> Completion:
            out = _o(agent, messages, tools_)
            stats["calls"] += 1
            p = prompt_ids(tokenizer, messages, tools_)
            y = list(tokenizer(completion_text(out) + end, add_special_tokens=False)["input_ids"])
            if len(p) + len(y) > max_len:
                stats["dropped_long"] += 1
                stats["dropped_answers"] += not out.tool_calls
            else:
                examples.append(Example(_t.instance_id, agent, p, y, answer=not out.tool_calls))
                stats["lead" if agent == "lead" else "single" if agent == "single" else "subagent"] += 1
                stats["answers"] += not out.tool_calls
                stats["lead_answers"] += agent in ("lead", "single") and not out.tool_calls
            return out

        agent = WideSeek(ScriptedBackend(policy), tools, config)
        result = agent.run(task.query, "table") if mode == "multi" else agent.run_single(task.query, "table")
        stats["f1"].append(task.score(result.answer).f1_by_item)
    stats["oracle_f1"] = sum(stats.pop("f1")) / max(1, len(tasks))
    stats["kept"] = len(examples)
    return examples, stats


def example_loss(model: Any, ex: Example) -> torch.Tensor:
    """Token-mean cross-entropy of the reply given the prompt (one unpadded forward pass)."""
    device = next(model.parameters()).device
    ids = torch.tensor([ex.prompt_ids + ex.target_ids], device=device)
    logits = model(input_ids=ids, logits_to_keep=len(ex.target_ids) + 1).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, torch.tensor(ex.target_ids, device=device))


def train_sft(model: Any, tokenizer: Any, examples: Sequence[Example], out: str | os.PathLike[str], *,
              epochs: int = 1, lr: float = 2e-5, batch: int = 8, seed: int = 0, checkpoint_every: int = 20,
              progress: bool = True) -> dict[str, Any]:
    """AdamW on the examples (``batch`` examples per update, shuffled per epoch with ``seed``), checkpointing
    every ``checkpoint_every`` updates under ``out`` and resuming from there; saves the model to
    ``<out>/model`` and returns the losses."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    order: list[int] = []
    for _ in range(epochs):
        perm = list(range(len(examples)))
        rng.shuffle(perm)
        order += perm
    updates = [order[i:i + batch] for i in range(0, len(order), batch)]
    step, losses = 0, []
    found = checkpoint.latest(out)
    if found is not None:
        state = checkpoint.load(found, model, opt)
        step, losses = int(state["step"]), list(state.get("losses", []))
        log.info("SFT resumed from %s (update %d of %d)", found, step, len(updates))
    model.train()
    t0 = time.perf_counter()
    bar = progress_bar(desc="wideseek sft", total=len(updates), unit="update")
    with bar as b:
        b.update(step)
        while step < len(updates):
            opt.zero_grad(set_to_none=True)
            idx = updates[step]
            total = 0.0
            for i in idx:
                loss = example_loss(model, examples[i]) / len(idx)
                loss.backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            step += 1
            losses.append(total)
            b.update(1)
            b.set_postfix(loss=f"{total:.3f}")
            if step % checkpoint_every == 0 or step == len(updates):
                checkpoint.save(out, step, model, opt, {"losses": losses})
    model.eval()
    target = out / "model"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    report = {"updates": len(updates), "examples": len(examples), "epochs": epochs, "first_loss": losses[0] if losses
              else None, "last_loss": losses[-1] if losses else None, "seconds": round(time.perf_counter() - t0, 1),
              "losses": losses}
    atomic_write_json(out / "sft.json", report)
    return report
