"""The embedded-model sanity experiment: real perplexity and greedy factual answers from SmolLM2-135M.

It exercises the reproduce pipeline end to end on the one real pretrained model we have offline, and
gives every later experiment a baseline: how good is the model the other modules are measured on?
"""

from __future__ import annotations

import math
import time
from typing import Any

from leanlm.common.report import ExperimentResult, Figure, Table
from leanlm.reproduce import Claim, RunContext, register

#: (question, accepted answers): simple facts a 135M instruct model is expected to know.
FACTUAL_QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the chemical symbol for gold?", ("au",)),
    ("How many days are there in a week?", ("seven", "7")),
    ("What planet do we live on?", ("earth",)),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("Who wrote the play Romeo and Juliet?", ("shakespeare",)),
]


def perplexity(model: Any, tokenizer: Any, text: str, window: int = 512, max_tokens: int = 4096) -> tuple[float, int]:
    """Token-level perplexity of ``text`` over non-overlapping windows; returns (ppl, tokens scored)."""
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids[0][:max_tokens]
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start : start + window].unsqueeze(0)
            if chunk.shape[1] < 2:
                break
            logits = model(chunk).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum")
            total_nll += float(nll)
            total_tokens += chunk.shape[1] - 1
    return math.exp(total_nll / total_tokens), total_tokens


def greedy_answer(model: Any, tokenizer: Any, question: str, max_new_tokens: int = 24) -> str:
    import torch

    messages = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True).strip()


@register(
    name="embedded-model",
    module="common",
    title="The embedded real model: SmolLM2-135M-Instruct perplexity and factual answers",
    claims=[
        Claim("Held-out Wikipedia perplexity (lower is better; no paper number, a baseline)", "n/a", "wiki_ppl",
              setting="SmolLM2-135M, Q4 GGUF"),
        Claim("Greedy factual answers correct", "n/a", "factual_accuracy", setting="8 simple questions"),
    ],
    quick={"articles": 40, "offset": 9000, "max_tokens": 2048, "questions": 8},
    full={"articles": 400, "offset": 9000, "max_tokens": 32768, "questions": 8},
)
def run_embedded_model(config: dict[str, Any], ctx: RunContext) -> ExperimentResult:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leanlm.common.data import cpython_text, wiki_text
    from leanlm.common.models import load_embedded

    t0 = time.perf_counter()
    model, tokenizer = load_embedded()
    load_seconds = time.perf_counter() - t0

    wiki = wiki_text(n_articles=config["articles"], offset=config["offset"])
    t0 = time.perf_counter()
    wiki_ppl, wiki_tokens = perplexity(model, tokenizer, wiki, max_tokens=config["max_tokens"])
    wiki_seconds = time.perf_counter() - t0
    code_ppl, code_tokens = perplexity(model, tokenizer, cpython_text(max_chars=40_000), max_tokens=config["max_tokens"])

    rows, correct, times = [], 0, []
    for question, accepted in FACTUAL_QUESTIONS[: config["questions"]]:
        t0 = time.perf_counter()
        answer = greedy_answer(model, tokenizer, question)
        seconds = time.perf_counter() - t0
        times.append(seconds)
        ok = any(a in answer.lower() for a in accepted)
        correct += ok
        rows.append([question, answer.replace("\n", " ")[:120], "yes" if ok else "no", round(seconds, 2)])

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([r[0][:32] for r in rows], times, color=["#1a7f37" if r[2] == "yes" else "#c62828" for r in rows])
    ax.set_xlabel("greedy answer wall time (s), green = correct")
    ax.invert_yaxis()
    return ExperimentResult(
        tables=[
            Table(
                "Perplexity on held-out real text",
                ["text", "tokens", "perplexity", "seconds"],
                [
                    [f"Wikipedia summaries {config['offset']}..{config['offset'] + config['articles']}", wiki_tokens, wiki_ppl,
                     round(wiki_seconds, 2)],
                    ["CPython standard library source", code_tokens, code_ppl, float("nan")],
                ],
            ),
            Table("Greedy factual answers", ["question", "answer", "correct", "seconds"], rows),
        ],
        figures=[Figure.from_matplotlib(fig, "Greedy answer time per question")],
        metrics={
            "wiki_ppl": round(wiki_ppl, 2), "code_ppl": round(code_ppl, 2), "factual_accuracy": f"{correct}/{len(rows)}",
            "load_seconds": round(load_seconds, 2),
        },
        notes=[f"Model load (cached safetensors after the first run): {load_seconds:.1f} s."],
    )
