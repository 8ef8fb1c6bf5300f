"""Eviction baselines run as decode-time selectors: H2O and SnapKV re-applied during decoding (R-KV style).

Both keep a per-(layer, query head) set of *alive* tokens; a token that leaves the set is evicted for good
(unlike FASA, Quest or the oracle, which re-choose from the full cache every step). Each call returns
scores whose top ``budget`` is exactly the alive set, so they plug into the same FAC as every selector.
The selectors must be told the ``budget`` (they evict to it) and used for one sequence (make a new one
per prompt: state is keyed by layer and checked against the cache length).

Protocol difference, stated: prefill is dense for every method (paper §B.1), and these selectors only see
decode queries. So the *first* decode step's query plays the role of the prompt's observation window:
H2O's accumulated attention starts from that query's attention over the whole cache, and SnapKV's first
compression uses it as its (one-query) window. kvpress's SnapKV/H2O-like presses (prefill eviction with
the prompt's own window) are reported separately.

- :class:`H2OSelector` (Zhang et al. 2023, https://arxiv.org/abs/2306.14048): keep ``n_recent`` (default
  ``budget // 2``) most recent tokens plus the heavy hitters with the largest accumulated attention; each
  step adds the new token, accumulates its attention over the alive set and evicts the lowest.
- :class:`SnapKVDecodeSelector` (Li et al. 2024, https://arxiv.org/abs/2404.14469; re-applied every
  ``interval`` steps as in R-KV, https://arxiv.org/abs/2505.24133 without its redundancy term): scores
  are the attention of the last ``window`` decode queries, averaged and max-pooled (``kernel``) over
  positions; the last ``window`` tokens at a compression and those added since are protected until the
  next one (newest first when they alone exceed the budget).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from leanlm.fasa.selectors.base import TokenSelector, gqa_logits


def _attention(query: torch.Tensor, keys: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``(B, H_q, T)`` of one query over the alive keys (0 elsewhere)."""
    logits = gqa_logits(query, keys)[:, :, 0, :].float() * query.shape[-1] ** -0.5
    return torch.softmax(logits.masked_fill(~alive, float("-inf")), dim=-1)


def _alive_scores(alive: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Scores whose top ``alive.sum(-1)`` are exactly the alive tokens (rank is finite, in [0, 1))."""
    return torch.where(alive, 1.0 + rank.clamp(0, 0.999), torch.full_like(rank, float("-inf")))


@dataclass
class H2OSelector(TokenSelector):
    budget: int = 256
    n_recent: int | None = None
    _acc: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _alive: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        b, h, t = query.shape[0], query.shape[1], keys.shape[2]
        acc, alive = self._acc.get(layer_idx), self._alive.get(layer_idx)
        if acc is None:  # first decode step: every token alive, no attention accumulated yet
            acc = torch.zeros(b, h, t, dtype=torch.float32, device=query.device)
            alive = torch.ones(b, h, t, dtype=torch.bool, device=query.device)
        elif acc.shape[-1] > t:
            raise ValueError("the cache shrank; use a new H2OSelector per sequence")
        else:  # the new token(s) join the alive set
            grow = t - acc.shape[-1]
            acc = torch.nn.functional.pad(acc, (0, grow))
            alive = torch.nn.functional.pad(alive, (0, grow), value=True)
        acc = acc + _attention(query, keys, alive)  # attention received this step, accumulated
        n_recent = self.budget // 2 if self.n_recent is None else min(self.n_recent, self.budget)
        excess = int(alive.sum(-1).max()) - self.budget
        if excess > 0:
            protected = torch.zeros_like(alive)
            protected[..., max(0, t - n_recent):] = True
            candidate = torch.where(alive & ~protected, acc, torch.full_like(acc, float("inf")))
            n_alive = alive.sum(-1, keepdim=True)
            # per head, evict its own excess lowest-accumulated candidates
            order = candidate.argsort(dim=-1)
            drop_rank = torch.arange(t, device=acc.device).expand_as(order) < (n_alive - self.budget)
            drop = torch.zeros_like(alive).scatter_(-1, order, drop_rank)
            alive = alive & ~drop
        self._acc[layer_idx], self._alive[layer_idx] = acc, alive
        return _alive_scores(alive, acc / (acc.amax(-1, keepdim=True) + 1e-9))


@dataclass
class SnapKVDecodeSelector(TokenSelector):
    budget: int = 256
    window: int = 8
    interval: int = 16
    kernel: int = 7
    _alive: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _score: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _queries: dict[int, list[torch.Tensor]] = field(default_factory=dict, repr=False)
    _since: dict[int, int] = field(default_factory=dict, repr=False)
    _fresh_from: dict[int, int] = field(default_factory=dict, repr=False)

    def _snap_scores(self, keys: torch.Tensor, alive: torch.Tensor, queries: list[torch.Tensor]) -> torch.Tensor:
        att = torch.stack([_attention(q, keys, alive) for q in queries]).mean(0)  # (B, H_q, T)
        if self.kernel > 1:  # SnapKV's pooling: neighbours of an important token count too
            att = torch.nn.functional.max_pool1d(att, self.kernel, stride=1, padding=self.kernel // 2)
        return att

    def scores(self, query: torch.Tensor, keys: torch.Tensor, layer_idx: int) -> torch.Tensor:
        b, h, t = query.shape[0], query.shape[1], keys.shape[2]
        queries = self._queries.setdefault(layer_idx, [])
        queries.append(query)
        del queries[: -self.window]
        alive = self._alive.get(layer_idx)
        if alive is None:
            alive = torch.ones(b, h, t, dtype=torch.bool, device=query.device)
            compress = True
        else:
            if alive.shape[-1] > t:
                raise ValueError("the cache shrank; use a new SnapKVDecodeSelector per sequence")
            alive = torch.nn.functional.pad(alive, (0, t - alive.shape[-1]), value=True)
            compress = self._since[layer_idx] >= self.interval
        if compress:
            score = self._snap_scores(keys, alive, queries)
            self._since[layer_idx], self._fresh_from[layer_idx] = 0, max(0, t - self.window)  # window kept
        else:
            score = torch.nn.functional.pad(self._score[layer_idx], (0, t - self._score[layer_idx].shape[-1]))
        self._since[layer_idx] += 1
        ranked = score.masked_fill(~alive, float("-inf")).clone()
        fresh = self._fresh_from[layer_idx]  # the window and the tokens added since the compression are kept,
        position = torch.arange(fresh, t, device=ranked.device, dtype=ranked.dtype)  # newest first (scores <= 1)
        ranked[..., fresh:] = 2.0 + position / t
        keep = ranked.topk(min(self.budget, t), dim=-1).indices
        alive = torch.zeros_like(alive).scatter_(-1, keep, True) & alive  # the rest is evicted for good
        self._alive[layer_idx], self._score[layer_idx] = alive, score
        return _alive_scores(alive, score / (score.amax(-1, keepdim=True) + 1e-9))
