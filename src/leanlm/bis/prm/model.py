"""A step-level PRM: a causal LM, a ``<prm>`` marker after each step, and a two-way Yes/No head (brief §1.4).

As in the official MPRM code (``modeling_internvl_chat.py``): the input is the question followed by each step and
a ``<prm>`` token; at every ``<prm>`` position the LM's logits restricted to the token ids of ["Yes", "No"] are
the step's two-way logits; the loss is cross-entropy against [y, 1 - y] (hard or soft y); the step score is the
softmax Yes probability. New token embeddings start at the mean embedding. We compute only the two needed rows
of the LM head (``hidden @ W[[yes, no]].T``), which equals slicing the full logits.

Backbones: ``tiny`` (a small Llama built from a transformers config with a character tokenizer, fast on CPU)
or any local causal LM via :func:`leanlm.common.models.load_model` (``embedded`` = SmolLM2-135M, a HF dir, a
.gguf), optionally with LoRA adapters (peft).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

PRM_TOKEN = "<prm>"


class CharTokenizer:
    """Printable-ASCII characters plus ``<pad>``, ``<bos>``, ``<prm>``, ``Yes``, ``No`` (one id each)."""

    specials = ("<pad>", "<bos>", PRM_TOKEN, "Yes", "No")

    def __init__(self) -> None:
        self.chars = [chr(c) for c in range(32, 127)] + ["\n"]
        self.vocab = {t: i for i, t in enumerate(self.specials)}
        for ch in self.chars:
            self.vocab[ch] = len(self.vocab)
        self.unk = self.vocab["?"]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def ids(self, text: str) -> list[int]:
        return [self.vocab.get(ch, self.unk) for ch in text]


class WordTokenizer:
    """Whole numbers, words and single punctuation marks as tokens (a step is ~10 tokens instead of ~20 characters).

    The vocabulary is fixed, not learnt from data: the specials, the integers 0-999, and 256 hash buckets
    (CRC-32) for every other word or symbol, so two corpora always share ids. Signs are separate tokens.
    """

    specials = ("<pad>", "<bos>", PRM_TOKEN, "Yes", "No", "\n")
    _pattern = re.compile(r"\d+|[A-Za-z]+|\n|\S")
    buckets = 256
    numbers = 1000

    def __init__(self) -> None:
        self.vocab = {t: i for i, t in enumerate(self.specials)}
        self._num0 = len(self.vocab)
        self._hash0 = self._num0 + self.numbers

    @property
    def vocab_size(self) -> int:
        return self._hash0 + self.buckets

    def _id(self, tok: str) -> int:
        if tok in self.vocab:
            return self.vocab[tok]
        if tok.isdigit() and int(tok) < self.numbers:
            return self._num0 + int(tok)
        return self._hash0 + zlib.crc32(tok.encode()) % self.buckets

    def ids(self, text: str) -> list[int]:
        return [self._id(t) for t in self._pattern.findall(text)]


class StepTokenizer(WordTokenizer):
    """The question as :class:`WordTokenizer` tokens, and each whole step as ONE token: a hashed id (CRC-32 of
    the whitespace-normalised step text, ``step_buckets`` ids), so a step's validity is a lookup the PRM learns
    from the labelled data, and a wrong prefix is a pattern over earlier step tokens.

    Why: a 2-layer transformer trained for a few hundred steps does not learn to verify even one-step mod-3
    additions from their digits (test loss stays at ln 2; docs/results/bis.md), so with the char or word
    tokenizers a CPU-sized PRM only learns position heuristics. With one token per step, what the PRM can learn
    depends on how many distinct steps the training data covers and how reliable their labels are, which is
    what data selection changes. Distinct steps that share an id (hash collisions) share a token.
    """

    step_buckets = 1 << 15

    def __init__(self) -> None:
        super().__init__()
        self._step0 = super().vocab_size

    @property
    def vocab_size(self) -> int:
        return self._step0 + self.step_buckets

    def step_id(self, step: str) -> int:
        return self._step0 + zlib.crc32(" ".join(step.split()).encode()) % self.step_buckets


TOKENIZERS = {"char": CharTokenizer, "word": WordTokenizer, "step": StepTokenizer}


@dataclass
class ModelSpec:
    """What to build: ``backbone`` = "tiny" or a :func:`load_model` spec; tiny sizes and tokenizer; LoRA settings."""

    backbone: str = "tiny"
    tokenizer: str = "char"  # tiny backbone only: "char", "word" or "step" (see WordTokenizer, StepTokenizer)
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    max_len: int = 512
    lora: bool = False
    lora_r: int = 8
    seed: int = 0


class PRM(torch.nn.Module):
    """The LM plus the token ids of the marker and of Yes/No; :meth:`step_logits` gives (n_markers, 2) logits."""

    def __init__(self, lm: Any, tokenizer: Any, prm_id: int, yes_id: int, no_id: int, bos_id: int | None,
                 spec: ModelSpec) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.prm_id, self.yes_id, self.no_id, self.bos_id = prm_id, yes_id, no_id, bos_id
        self.spec = spec

    def encode(self, question: str, steps: list[str]) -> list[int]:
        """[bos] question "\\n" step_1 " " <prm> "\\n" step_2 " " <prm> ... truncated to ``max_len`` tokens."""
        tok = self.tokenizer
        enc = tok.ids if isinstance(tok, (CharTokenizer, WordTokenizer)) else (lambda t: tok.encode(t, add_special_tokens=False))
        ids = ([self.bos_id] if self.bos_id is not None else []) + enc(question + "\n")
        if isinstance(tok, StepTokenizer):
            for s in steps:
                ids += [tok.step_id(s), self.prm_id]
            return ids[: self.spec.max_len]
        for s in steps:
            ids += [*enc(s + " "), self.prm_id, *enc("\n")]
        return ids[: self.spec.max_len]

    def step_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Two-way (Yes, No) logits at every ``<prm>`` position, in row-major order."""
        base = self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm.base_model
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h = hidden[input_ids == self.prm_id]
        head = self.lm.get_output_embeddings()
        w = head.weight[[self.yes_id, self.no_id]]
        out = h.to(w.dtype) @ w.T
        if getattr(head, "bias", None) is not None:
            out = out + head.bias[[self.yes_id, self.no_id]]
        return out


def build(spec: ModelSpec) -> PRM:
    """A fresh PRM for ``spec`` (random tiny Llama, or a local LM with the ``<prm>`` token added)."""
    torch.manual_seed(spec.seed)
    if spec.backbone == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        if spec.tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tiny tokenizer {spec.tokenizer!r}; choose from {', '.join(TOKENIZERS)}")
        tok = TOKENIZERS[spec.tokenizer]()
        cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=spec.hidden, intermediate_size=2 * spec.hidden,
                          num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                          num_key_value_heads=spec.heads, max_position_embeddings=spec.max_len,
                          tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=1)
        lm = LlamaForCausalLM(cfg)
        v = tok.vocab
        return PRM(lm, tok, v[PRM_TOKEN], v["Yes"], v["No"], v["<bos>"], spec)
    from leanlm.common.models import load_model

    loaded = load_model(spec.backbone, dtype=torch.float32)
    lm, tok = loaded.model, loaded.tokenizer
    if PRM_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [PRM_TOKEN]})
        old = lm.get_input_embeddings().weight.shape[0]
        lm.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():  # new rows = the mean embedding, as the official code initialises them
            emb = lm.get_input_embeddings().weight
            emb[old:] = emb[:old].mean(0)
    prm_id = tok.convert_tokens_to_ids(PRM_TOKEN)
    yes_id = tok.encode("Yes", add_special_tokens=False)[0]
    no_id = tok.encode("No", add_special_tokens=False)[0]
    if spec.lora:
        import peft

        cfg = peft.LoraConfig(r=spec.lora_r, lora_alpha=2 * spec.lora_r, target_modules="all-linear",
                              trainable_token_indices={"embed_tokens": [prm_id]})
        peft.get_peft_model(lm, cfg)  # injects adapters into ``lm`` in place and freezes the base weights
    return PRM(lm, tok, prm_id, yes_id, no_id, tok.bos_token_id, spec)


def save_spec(path: Path, spec: ModelSpec) -> None:
    path.write_text(json.dumps(asdict(spec), indent=1))


def load_spec(path: Path) -> ModelSpec:
    return ModelSpec(**json.loads(path.read_text()))
