"""A real long-context retrieval task: one fact stated once inside real Wikipedia text (needle in a haystack).

The haystack is consecutive offline Wikipedia summaries (:mod:`leanlm.fasa.text`); one sentence stating a
key-value fact is inserted at a relative depth, and the model is asked for the value through its chat
template, whose reply is primed with "The secret code of <key> is" (as RULER does). Keys and values are drawn from a seeded RNG, so a trial is fully determined by its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from leanlm.fasa.text import wiki_articles

_SYLLABLES = ("ka", "lo", "mi", "ren", "tor", "va", "zel", "qui", "dor", "sha", "mun", "bri", "tal", "po", "nex")


@dataclass
class NeedleTrial:
    prompt: str  # chat-formatted prompt, ready to tokenize
    answer: str  # the value stated once in the context
    key: str
    depth: float
    context_tokens: int
    seed: int


def _key(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()


def needle_trial(tokenizer: Any, context_tokens: int = 2000, depth: float = 0.5, seed: int = 0,
                 article_offset: int = 1000) -> NeedleTrial:
    """Build one trial of about ``context_tokens`` tokens of real text with the fact at ``depth`` (0..1)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    rng = random.Random(seed)
    key, value = _key(rng), str(rng.randint(10000, 99999))
    needle = f"The secret code of {key} is {value}."
    articles = wiki_articles()
    start = article_offset + rng.randrange(0, 2000)
    sentences: list[str] = []
    used = 0
    index = start
    while used < context_tokens:
        title, text = articles[index % len(articles)]
        block = f"{title}. {text}"
        sentences.extend(s.strip() + "." for s in block.split(". ") if s.strip())
        used += len(tokenizer(block).input_ids)
        index += 1
    # trim to the token target, then insert the needle at a sentence boundary
    text_tokens = [len(tokenizer(s).input_ids) for s in sentences]
    kept, total = [], 0
    for sentence, n in zip(sentences, text_tokens, strict=True):
        if total + n > context_tokens:
            break
        kept.append(sentence)
        total += n
    at = round(depth * len(kept))
    kept.insert(at, needle)
    document = " ".join(kept)
    question = f"What is the secret code of {key}? Answer with the number only."
    messages = [{"role": "user", "content": f"{document}\n\n{question}"}]
    # RULER-style answer prefix: the reply starts with the restated question, so the next tokens are the value
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt += f"The secret code of {key} is"
    return NeedleTrial(prompt=prompt, answer=value, key=key, depth=depth,
                       context_tokens=len(tokenizer(prompt).input_ids), seed=seed)


def needle_trials(tokenizer: Any, n: int, context_tokens: int = 2000, seed: int = 0,
                  depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)) -> list[NeedleTrial]:
    """``n`` trials cycling through ``depths``, seeds ``seed, seed+1, ...``."""
    return [needle_trial(tokenizer, context_tokens, depths[i % len(depths)], seed + i) for i in range(n)]
