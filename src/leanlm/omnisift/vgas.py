"""Vision-Guided Audio Selector, VGAS (OmniSIFT §3.3, Eqs. 5–8) and its straight-through estimator.

Per chunk, with the STVP-kept video tokens V and the chunk's audio tokens A (both in LLM embedding space,
hidden size D; 3584 for Qwen2.5-Omni-7B):

* ``v = LN(W_v V)``, ``a = LN(W_a A)`` with ``W_v, W_a: D → 512`` (Eq. 5);
* one 8-head cross-attention, audio as query, kept video as key/value, residual on the projected audio and
  a LayerNorm: ``x = LN(MHA(a, v, v) + a)`` (Eq. 6);
* score head ``Linear(512→256) → SiLU → Linear(256→1)`` and a sigmoid, ``s ∈ (0, 1)`` (Eq. 7);
* keep the top ``n_a − int(n_a · ρa)`` audio tokens by ``s`` (Eq. 8). A chunk with no kept video or at most
  one audio token keeps all its audio.

Training (§3.4): the hard 0/1 top-k mask ``h`` is made differentiable with the straight-through estimator
``g = (h − s).detach() + s`` which equals ``h`` in the forward pass; the chunk's audio embeddings are
multiplied by ``g`` before the dropped tokens are removed, so the LM loss reaches the scores of the *kept*
tokens only (``∂L/∂s_j = ⟨∂L/∂e'_j, e_j⟩``). There is no auxiliary loss.

At D = 3584 the module has 4,856,321 parameters (the paper's "4.85M"); at D = 2048 (3B), 3,283,457.
"""

from __future__ import annotations

import torch
from torch import nn


class VGAS(nn.Module):
    """The selector. ``context="video"`` is VGAS; ``context="audio"`` is the paper's audio-only ablation
    (self-attention over the chunk's own audio, §4.4 "audio-only selector"), with the same parameters."""

    def __init__(
        self, hidden_size: int = 3584, dim: int = 512, num_heads: int = 8, context: str = "video"
    ) -> None:
        super().__init__()
        if context not in ("video", "audio"):
            raise ValueError(f"context must be 'video' or 'audio', got {context!r}")
        self.context = context
        self.v_proj = nn.Linear(hidden_size, dim)
        self.a_proj = nn.Linear(hidden_size, dim)
        self.v_norm = nn.LayerNorm(dim)
        self.a_norm = nn.LayerNorm(dim)
        self.post_attn_norm = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.score_head = nn.Sequential(nn.Linear(dim, dim // 2), nn.SiLU(), nn.Linear(dim // 2, 1))

    def forward(
        self, audio: torch.Tensor, video: torch.Tensor, video_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores in (0, 1): ``audio`` [N, La, D], ``video`` [N, Lv, D] (kept tokens), ``video_valid``
        [N, Lv] bool (False = padding) -> [N, La]. 2-D inputs are treated as one chunk."""
        single = audio.dim() == 2
        if single:
            audio, video = audio.unsqueeze(0), video.unsqueeze(0)
            video_valid = None if video_valid is None else video_valid.unsqueeze(0)
        dtype = self.a_proj.weight.dtype
        a = self.a_norm(self.a_proj(audio.to(dtype)))
        if self.context == "video":
            kv = self.v_norm(self.v_proj(video.to(dtype)))
            pad = None if video_valid is None else ~video_valid
        else:
            kv, pad = a, None
        attended, _ = self.cross_attn(a, kv, kv, key_padding_mask=pad, need_weights=False)
        x = self.post_attn_norm(attended + a)
        scores = torch.sigmoid(self.score_head(x).squeeze(-1))
        return scores[0] if single else scores


def topk_mask(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Hard 0/1 mask (same dtype as ``scores``) of the ``n_keep`` highest scores along the last dim."""
    hard = torch.zeros_like(scores)
    if n_keep <= 0:
        return hard
    idx = torch.topk(scores.detach(), k=min(n_keep, scores.shape[-1]), dim=-1).indices
    return hard.scatter(-1, idx, 1.0)


def straight_through(hard: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``(h − s).detach() + s``: equal to ``h`` forward, gradient of ``s`` backward (§3.4)."""
    return (hard - scores).detach() + scores


def parameter_count(hidden_size: int = 3584, dim: int = 512, num_heads: int = 8) -> int:
    """Closed form of the selector's size: 2(Dd+d) + 3·2d + (4d²+4d) + (d·d/2 + d/2) + (d/2 + 1)."""
    d, h = dim, dim // 2
    return 2 * (hidden_size * d + d) + 3 * 2 * d + (4 * d * d + 4 * d) + (d * h + h) + (h + 1)
