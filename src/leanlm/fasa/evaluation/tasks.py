"""The offline, deterministic long-context task suite (RULER-style tasks on real haystacks).

Seven tasks, each built from a seed at a target prompt length (tokens, chat template included):

=================  ==========================================================================  =========
task               what the model must do                                                      haystack
=================  ==========================================================================  =========
niah_single        recall the one number stated for a key                                      wiki/code
niah_multikey      same, with three distractor keys (each with its own number)                 wiki/code
niah_multivalue    recall all four numbers stated (at different depths) for one key            wiki/code
kv_retrieval       read the value of one key from a JSON object of 32 random hex pairs          wiki/code
variable_tracking  follow a 3-hop chain ``VAR B = VAR A`` and list every variable equal to X    wiki/code
common_words       name the 3 most frequent words of a long numbered list of real words        words
qa_article         fill a masked year in a sentence of one named real article among others     wiki
=================  ==========================================================================  =========

Haystacks are real text read in place: offline Wikipedia summaries (articles from index 1000 on; FASA's
calibration uses the first 80) and CPython standard-library sources (needles become ``#`` comments there);
even seeds use Wikipedia, odd seeds code. Every random choice comes from ``random.Random(f"{task}:{length}:
{seed}")``, so a trial is a pure function of (tokenizer, task, length, seed). Answers are scored with
RULER's ``string_match_all`` (every expected string in the reply; binary correctness needs all).
Replies are primed with an answer prefix (as RULER does), so a small instruct model answers at once. The
needle tasks leave ~15 tokens beyond the numbers (9 per number): SmolLM2 often restates "The special magic
number for X is" before the number, and a shorter cap scored such correct replies as wrong (the first 8K
rows, recorded with 9 per number + 2, were cut there: ``'The special magic number for Lopoqui'``).

Difficulty knobs (``params``, per task; :data:`DEFAULT_PARAMS` are the RULER-like settings above). A small
model sits at the floor of the default tasks at 4-8K tokens (full KV answers none of them), and a comparison
at the floor proves nothing, so the suite can be made easier per task and length: fewer distractor keys,
fewer values, fewer JSON pairs, fewer hops, fewer and more frequent common words, and the question stated
before the document as well as after it (``question_first``, every task). :mod:`leanlm.fasa.evaluation.tune`
picks the settings on tuning seeds disjoint from the evaluation's.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from leanlm.fasa.text import wiki_articles

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "kv_retrieval", "variable_tracking", "common_words",
         "qa_article")
_SYLLABLES = ("ka", "lo", "mi", "ren", "tor", "va", "zel", "qui", "dor", "sha", "mun", "bri", "tal", "po", "nex")
WIKI_START = 1000  # articles before this index are left to calibration and perplexity text
CODE_HAYSTACK_FILES = 60  # the code haystacks read the first 60 standard-library files; perplexity the rest

#: The default (hardest) setting of each task's difficulty knobs; ``question_first`` applies to every task.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "niah_single": {},
    "niah_multikey": {"keys": 4},
    "niah_multivalue": {"values": 4},
    "kv_retrieval": {"pairs": 32},
    "variable_tracking": {"hops": 3, "distractor_chain": True},
    "common_words": {"words": 3, "share": 0.125},
    "qa_article": {},
}


def task_params(task: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """``params`` over the task's defaults (plus ``question_first``), with an error naming a wrong field."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    merged = {**DEFAULT_PARAMS[task], "question_first": False}
    for name, value in (params or {}).items():
        if name not in merged:
            raise ValueError(f"task {task!r} has no parameter {name!r}; it has {sorted(merged)}")
        if type(value) is not type(merged[name]) and not (isinstance(value, int) and isinstance(merged[name], float)):
            raise ValueError(f"task {task!r} parameter {name!r} must be {type(merged[name]).__name__}, "
                             f"got {value!r}")
        merged[name] = value
    for name in ("keys", "values", "pairs", "hops", "words"):
        if name in merged and merged[name] < 1:
            raise ValueError(f"task {task!r} parameter {name!r} must be at least 1, got {merged[name]}")
    if "share" in merged and not 0 < merged["share"] < 1:
        raise ValueError(f"task {task!r} parameter 'share' must be in (0, 1), got {merged['share']}")
    return merged


@dataclass
class Trial:
    task: str
    length: int  # target prompt length (tokens)
    seed: int
    haystack: str  # "wiki" | "code" | "words"
    prompt: str  # chat-formatted, ends with the answer prefix
    answers: list[str]
    max_new_tokens: int
    n_tokens: int = 0  # actual prompt length

    @property
    def id(self) -> str:
        return f"{self.task}/{self.length}/{self.seed}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- haystacks
@functools.lru_cache(maxsize=1)
def _code_lines() -> tuple[str, ...]:
    from leanlm.common.data import cpython_source_files

    lines: list[str] = []
    for path in cpython_source_files()[:CODE_HAYSTACK_FILES]:
        lines.extend(line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    if not lines:
        raise RuntimeError("no CPython sources found for the code haystack")
    return tuple(lines)


@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    """Distinct lowercase words (4-10 letters) of real Wikipedia text, in order of first appearance."""
    seen: dict[str, None] = {}
    for _, text in wiki_articles()[WIKI_START : WIKI_START + 400]:
        for w in re.findall(r"[A-Za-z]{4,10}", text):
            seen.setdefault(w.lower(), None)
    return tuple(seen)


def _units(kind: str, rng: random.Random) -> Callable[[], str]:
    """An endless stream of haystack units (sentences or 3-line code blocks) from a seeded start."""
    if kind == "wiki":
        articles = wiki_articles()
        index = rng.randrange(WIKI_START, len(articles))
        buffer: list[str] = []

        def next_wiki() -> str:
            nonlocal index
            while not buffer:
                title, text = articles[index % len(articles)]
                index += 1
                if index % len(articles) < WIKI_START:
                    index = WIKI_START
                buffer.extend(s.strip() + ("" if s.strip().endswith(".") else ".")
                              for s in f"{title}. {text}".split(". ") if s.strip())
            return buffer.pop(0)

        return next_wiki
    if kind == "code":
        lines = _code_lines()
        pos = rng.randrange(len(lines))

        def next_code() -> str:
            nonlocal pos
            block = "\n".join(lines[(pos + i) % len(lines)] for i in range(3))
            pos += 3
            return block
        return next_code
    raise ValueError(f"unknown haystack kind {kind!r}")


def _fill(tokenizer: Any, kind: str, rng: random.Random, n_tokens: int) -> list[str]:
    """Haystack units totalling at most ``n_tokens`` tokens."""
    stream = _units(kind, rng)
    units: list[str] = []
    total = 0
    while True:
        batch = [stream() for _ in range(32)]
        for unit, ids in zip(batch, tokenizer(batch).input_ids, strict=True):
            if total + len(ids) + 1 > n_tokens:
                return units
            units.append(unit)
            total += len(ids) + 1


def _render(kind: str, units: list[str]) -> str:
    return ("\n" if kind == "code" else " ").join(units)


def _as_inserted(kind: str, sentence: str) -> str:
    return f"# {sentence}" if kind == "code" else sentence


def _chat(tokenizer: Any, document: str, question: str, prefix: str, question_first: bool = False) -> str:
    content = f"{question}\n\n{document}\n\n{question}" if question_first else f"{document}\n\n{question}"
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefix


def _key(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()


def _number(rng: random.Random) -> str:
    return str(rng.randint(100000, 999999))


def _insert_build(tokenizer: Any, kind: str, rng: random.Random, length: int, inserts: list[str],
                  question: str, prefix: str, depths: list[float] | None = None,
                  question_first: bool = False) -> tuple[str, int]:
    """A prompt of about ``length`` tokens: haystack with ``inserts`` placed at ``depths`` (sorted)."""
    empty = _chat(tokenizer, _render(kind, [_as_inserted(kind, s) for s in inserts]), question, prefix,
                  question_first)
    room = length - len(tokenizer(empty).input_ids) - 8
    if room < 32:
        raise ValueError(f"length {length} leaves no room for a haystack (the task alone takes {length - room})")
    fill_seed = rng.random()
    depths = sorted(depths if depths is not None else [rng.uniform(0.05, 0.95) for _ in inserts])

    def build(room: int) -> tuple[str, int]:
        units = _fill(tokenizer, kind, random.Random(fill_seed), room)
        placed = list(units)
        for offset, (depth, text) in enumerate(zip(depths, inserts, strict=True)):
            placed.insert(round(depth * len(units)) + offset, _as_inserted(kind, text))
        prompt = _chat(tokenizer, _render(kind, placed), question, prefix, question_first)
        return prompt, len(tokenizer(prompt).input_ids)

    prompt, n = build(room)
    if n < length - 64:  # units counted one by one over-estimate the joined text: one correction
        bigger = build(room + (length - n) - 16)
        if bigger[1] <= length:
            prompt, n = bigger
    return prompt, n


# ----------------------------------------------------------------------------------------------- tasks
def _niah(tokenizer, length, rng, kind, n_keys: int, n_values: int, question_first: bool = False):
    keys = []
    while len(keys) < n_keys:
        k = _key(rng)
        if k not in keys:
            keys.append(k)
    target = keys[0]
    values = [_number(rng) for _ in range(n_values)]
    needles = [f"One of the special magic numbers for {target} is: {v}." if n_values > 1 else
               f"The special magic number for {target} is: {v}." for v in values]
    needles += [f"The special magic number for {k} is: {_number(rng)}." for k in keys[1:]]
    rng.shuffle(needles)
    if n_values > 1:
        question = (f"What are all the special magic numbers for {target} mentioned in the provided text? "
                    "Answer with the numbers only.")
        prefix = f"The special magic numbers for {target} mentioned in the provided text are:"
    else:
        question = f"What is the special magic number for {target} mentioned in the provided text?"
        prefix = f"The special magic number for {target} mentioned in the provided text is:"
    prompt, n = _insert_build(tokenizer, kind, rng, length, needles, question, prefix,
                              question_first=question_first)
    return prompt, values, n, 9 * n_values + 16  # room to restate the key first (~15 tokens), as replies often do


def _kv_retrieval(tokenizer, length, rng, kind, n_pairs: int = 32, question_first: bool = False):
    pairs = {f"{rng.getrandbits(32):08x}": f"{rng.getrandbits(32):08x}" for _ in range(n_pairs)}
    key = rng.choice(list(pairs))
    block = "JSON data: {" + ", ".join(f'"{k}": "{v}"' for k, v in pairs.items()) + "}"
    question = f'Extract the value corresponding to the key "{key}" from the JSON data in the text above.'
    prefix = f'The value associated with the key "{key}" is: "'
    prompt, n = _insert_build(tokenizer, kind, rng, length, [block], question, prefix,
                              question_first=question_first)
    return prompt, [pairs[key]], n, 10


def _names(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in out:
            out.append(name)
    return out


def _variable_tracking(tokenizer, length, rng, kind, hops: int = 3, distractor_chain: bool = True,
                       question_first: bool = False):
    n_chains = 2 if distractor_chain else 1
    n_inserts = n_chains * (hops + 1)
    names = _names(rng, n_inserts)
    value, other = _number(rng)[:5], _number(rng)[:5]
    chain, distractor = names[: hops + 1], names[hops + 1 :]
    statements = [f"VAR {chain[0]} = {value}."] + [f"VAR {chain[i + 1]} = VAR {chain[i]}." for i in range(hops)]
    noise = ([f"VAR {distractor[0]} = {other}."] + [f"VAR {distractor[i + 1]} = VAR {distractor[i]}."
                                                    for i in range(hops)]) if distractor_chain else []
    depths = sorted(rng.uniform(0.05, 0.95) for _ in range(n_inserts))
    # the chain keeps its order in the text (each assignment after the one it reads); distractor interleaved
    order = sorted(range(n_inserts), key=lambda i: rng.random())
    chain_slots = sorted(order[: hops + 1])
    inserts = [""] * n_inserts
    for slot, s in zip(chain_slots, statements, strict=True):
        inserts[slot] = s
    rest = [i for i in range(n_inserts) if i not in chain_slots]
    for slot, s in zip(rest, noise, strict=True):
        inserts[slot] = s
    question = f"Find all variables that are assigned the value {value} in the text above."
    prefix = (f"Answer: According to the chain(s) of variable assignment in the text above, {hops + 1} variables "
              f"are assigned the value {value}, they are:")
    prompt, n = _insert_build(tokenizer, kind, rng, length, inserts, question, prefix, depths=depths,
                              question_first=question_first)
    return prompt, chain, n, 4 * (hops + 1) + 4


def _common_words(tokenizer, length, rng, n_common: int = 3, share: float = 0.125, question_first: bool = False):
    vocab = list(_vocabulary())
    rng.shuffle(vocab)
    common, others = vocab[:n_common], vocab[n_common:]
    shuffle_seed = rng.random()
    question = f"What are the {n_common} most common words in the above list? Answer with the words only."
    prefix = f"Answer: The top {n_common} words that appear most often in the list are:"

    def make(n_entries: int) -> tuple[list[str], str, int]:
        freq_common = max(6, int(n_entries * share / n_common))  # common words fill ~share of the list, rare 2x
        words = [w for w in common for _ in range(freq_common)]
        i = 0
        while len(words) < n_entries:
            words.extend([others[i % len(others)]] * 2)
            i += 1
        random.Random(shuffle_seed).shuffle(words)
        prompt = _chat(tokenizer, "Below is a numbered list of words. In these words, some appear more often than "
                       "others. Memorize the ones that appear most often.\n"
                       + "\n".join(f"{j + 1}. {w}" for j, w in enumerate(words)), question, prefix, question_first)
        return words, prompt, len(tokenizer(prompt).input_ids)

    n_entries = max(60, (length - 120) // 5)  # about 5 tokens per "12. word" entry; corrected once below
    _, _, n = make(n_entries)
    n_entries = max(60, int(n_entries * (length - 60) / n))
    while True:
        _, prompt, n = make(n_entries)
        if n <= length:
            return prompt, common, n, 4 * n_common
        if n_entries <= 60:
            raise ValueError(f"length {length} is too short for the common-words task")
        n_entries -= max(8, n_entries // 50)


_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-2][0-9])\b")


def _qa_article(tokenizer, length, rng, question_first: bool = False):
    articles = wiki_articles()
    while True:  # a target article with a sentence holding exactly one year, unique in the article
        index = rng.randrange(WIKI_START, len(articles))
        title, text = articles[index]
        sentences = [s.strip() for s in text.split(". ") if 40 <= len(s.strip()) <= 300]
        years = _YEAR.findall(text)
        good = [s for s in sentences if len(_YEAR.findall(s)) == 1 and years.count(_YEAR.findall(s)[0]) == 1]
        if good:
            break
    sentence = rng.choice(good)
    year = _YEAR.findall(sentence)[0]
    masked = _YEAR.sub("____", sentence, count=1)
    question = (f'In the article titled "{title}", which year fills the blank in this sentence: "{masked}"? '
                "Answer with the year only.")
    prefix = "The year is"
    overhead = len(tokenizer(_chat(tokenizer, f"{title}\n{text}", question, prefix, question_first)).input_ids) + 8
    others: list[str] = []
    total = overhead
    j = rng.randrange(WIKI_START, len(articles))
    while True:
        t2, x2 = articles[j % len(articles)]
        j += 1
        if t2 == title or j % len(articles) < WIKI_START:
            continue
        block = f"{t2}\n{x2}"
        n = len(tokenizer(block).input_ids) + 2
        if total + n > length:
            break
        others.append(block)
        total += n
    at = rng.randint(0, len(others))
    docs = [*others[:at], f"{title}\n{text}", *others[at:]]
    prompt = _chat(tokenizer, "\n\n".join(docs), question, prefix, question_first)
    return prompt, [year], len(tokenizer(prompt).input_ids), 6


def build_trial(tokenizer: Any, task: str, length: int, seed: int, params: dict[str, Any] | None = None) -> Trial:
    """One trial of ``task`` at about ``length`` prompt tokens (a pure function of its arguments).

    ``params`` set the task's difficulty knobs (:func:`task_params`); the defaults give the RULER-like task."""
    p = task_params(task, params)
    qf = p["question_first"]
    rng = random.Random(f"{task}:{length}:{seed}")
    kind = "wiki" if seed % 2 == 0 else "code"
    if task == "niah_single":
        prompt, answers, n, new = _niah(tokenizer, length, rng, kind, 1, 1, qf)
    elif task == "niah_multikey":
        prompt, answers, n, new = _niah(tokenizer, length, rng, kind, p["keys"], 1, qf)
    elif task == "niah_multivalue":
        prompt, answers, n, new = _niah(tokenizer, length, rng, kind, 1, p["values"], qf)
    elif task == "kv_retrieval":
        prompt, answers, n, new = _kv_retrieval(tokenizer, length, rng, kind, p["pairs"], qf)
    elif task == "variable_tracking":
        prompt, answers, n, new = _variable_tracking(tokenizer, length, rng, kind, p["hops"], p["distractor_chain"], qf)
    elif task == "common_words":
        kind = "words"
        prompt, answers, n, new = _common_words(tokenizer, length, rng, p["words"], p["share"], qf)
    else:
        kind = "wiki"
        prompt, answers, n, new = _qa_article(tokenizer, length, rng, qf)
    return Trial(task=task, length=length, seed=seed, haystack=kind, prompt=prompt, answers=answers,
                 max_new_tokens=new, n_tokens=n)


def build_suite(tokenizer: Any, tasks: list[str] | tuple[str, ...], lengths: list[int], n_per_task: int,
                seed: int = 0, params: dict[str, dict[str, dict[str, Any]]] | None = None) -> list[Trial]:
    """Every (length, index, task) trial, ordered length-major then round-robin over tasks, so a partial
    run covers every task of the first length evenly. ``params[str(length)][task]`` (optional) sets a task's
    difficulty knobs at one length (the output of :func:`leanlm.fasa.evaluation.tune.tune_suite`)."""
    params = params or {}
    return [build_trial(tokenizer, task, length, seed + i, params.get(str(length), {}).get(task))
            for length in lengths for i in range(n_per_task) for task in tasks]
