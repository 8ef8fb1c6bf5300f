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


@dataclass
class ModelSpec:
    """What to build: ``backbone`` = "tiny" or a :func:`load_model` spec; tiny sizes; LoRA settings."""

    backbone: str = "tiny"
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
        enc = tok.ids if isinstance(tok, CharTokenizer) else (lambda t: tok.encode(t, add_special_tokens=False))
        ids = ([self.bos_id] if self.bos_id is not None else []) + enc(question + "\n")
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

        tok = CharTokenizer()
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
