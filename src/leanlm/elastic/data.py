"""Training data: real offline text (byte-level) plus a synthetic grouped-token modality.

Vocabulary (``vocab_size = 259 + 2 * codebook``): bytes 0-255 are UTF-8 text (the report encodes text as
UTF-16BE; byte-level UTF-8 keeps our vocabulary tiny), 256 = BOS, 257/258 open/close a grouped segment, then the
codes of level 1 and level 2 of the grouped modality.

The grouped modality imitates a 2-level residual-VQ audio stream (the report's audio tokens): frame t is the group
``(a_t, b_t)`` with a coarse code ``a_t`` from a sparse Markov chain and a fine code ``b_t`` that depends on
``(a_{t-1}, a_t)`` plus noise. The generator is fixed by ``generator_seed`` so the modality has learnable
structure; the model never sees a modality id (modality-agnostic routing, §2). Next-group prediction: at the last
code of frame t the main head predicts ``a_{t+1}`` and the MTP head ``b_{t+1}``, i.e. the whole next group.

Samples are drawn deterministically from ``(seed, step)`` so data-parallel ranks and resumed runs agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

BOS, GROUP_OPEN, GROUP_CLOSE, FIRST_CODE = 256, 257, 258, 259
TEXT, GROUPED = 0, 1  # modality ids: used for analysis only, never shown to the model


def vocab_size(codebook: int) -> int:
    return FIRST_CODE + 2 * codebook


def encode_text(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode_text(ids: list[int] | np.ndarray) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


@dataclass
class GroupedModality:
    """The synthetic 2-level grouped-token generator (see the module docstring)."""

    codebook: int = 16
    successors: int = 3
    noise: float = 0.1
    generator_seed: int = 1234

    @cached_property
    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.generator_seed)
        c = self.codebook
        next_states = np.stack([rng.choice(c, size=self.successors, replace=False) for _ in range(c)])
        next_probs = rng.dirichlet(np.ones(self.successors) * 0.7, size=c)
        fine = rng.integers(0, c, size=(c, c))
        return next_states, next_probs, fine

    def frames(self, n_frames: int, rng: np.random.Generator) -> np.ndarray:
        """``[n_frames, 2]`` codes (level 1, level 2) as token ids."""
        next_states, next_probs, fine = self._tables
        c = self.codebook
        out = np.empty((n_frames, 2), dtype=np.int64)
        prev = a = int(rng.integers(c))
        for t in range(n_frames):
            if t:
                a = int(next_states[a, rng.choice(self.successors, p=next_probs[a])])
            b = int(fine[prev, a]) if rng.random() >= self.noise else int(rng.integers(c))
            out[t] = (FIRST_CODE + a, FIRST_CODE + c + b)
            prev = a
        return out

    def sequence(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """``[BOS, OPEN, a_1, b_1, ..., CLOSE]`` truncated to ``length`` tokens."""
        n_frames = (length - 2) // 2 + 1
        body = self.frames(n_frames, rng).reshape(-1)
        seq = np.concatenate([[BOS, GROUP_OPEN], body, [GROUP_CLOSE]])
        return seq[:length]


class MixedCorpus:
    """Fixed-length training/eval sequences: text windows and grouped-modality sequences.

    Args:
        text: the training text (UTF-8 encoded to bytes).
        grouped_fraction: probability that a sequence is of the grouped modality.
    """

    def __init__(self, text: str, seq_len: int, grouped_fraction: float = 0.25, modality: GroupedModality | None = None) -> None:
        self.tokens = encode_text(text)
        self.seq_len = seq_len
        if len(self.tokens) < seq_len + 1:
            raise ValueError(f"text has {len(self.tokens)} bytes, fewer than seq_len + 1 = {seq_len + 1}")
        if not 0.0 <= grouped_fraction <= 1.0:
            raise ValueError(f"grouped_fraction must be in [0, 1], got {grouped_fraction}")
        self.grouped_fraction = grouped_fraction
        self.modality = modality or GroupedModality()

    def sample(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` sequences ``[n, seq_len]`` and their modality ids ``[n]``."""
        rows, kinds = [], []
        for _ in range(n):
            if rng.random() < self.grouped_fraction:
                rows.append(self.modality.sequence(self.seq_len, rng))
                kinds.append(GROUPED)
            else:
                start = int(rng.integers(0, len(self.tokens) - self.seq_len + 1))
                rows.append(np.concatenate([[BOS], self.tokens[start : start + self.seq_len - 1]]))
                kinds.append(TEXT)
        return torch.from_numpy(np.stack(rows)), torch.tensor(kinds)

    def batch(self, seed: int, step: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch of optimizer step ``step`` (same on every rank and after resume)."""
        return self.sample(np.random.default_rng([seed, step, 0xDA7A]), n)

    def eval_batches(self, n_batches: int, batch_size: int, seed: int = 99) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([seed, 0xE7A1])
        return [self.sample(rng, batch_size) for _ in range(n_batches)]


def wiki_articles() -> list[str]:
    """The offline Wikipedia summaries (:func:`leanlm.common.data.wiki_summaries`) as ``title\nsummary`` strings,
    in file order."""
    from leanlm.common.data import wiki_summaries, wiki_summaries_path

    summaries = wiki_summaries()
    if not summaries:
        raise ValueError(f"no summaries found in {wiki_summaries_path()}")
    return [f"{title}\n{text}" for title, text in summaries.items()]


def wiki_corpora(train_articles: int, eval_articles: int, eval_offset: int = 9000) -> tuple[str, str]:
    """Training text (articles 0..train_articles) and held-out text (from ``eval_offset``), disjoint."""
    if train_articles > eval_offset:
        raise ValueError(f"train_articles={train_articles} would overlap the held-out articles from {eval_offset}")
    articles = wiki_articles()
    return "\n\n".join(articles[:train_articles]), "\n\n".join(articles[eval_offset : eval_offset + eval_articles])
