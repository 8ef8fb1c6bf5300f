"""CA heatmaps of a calibration (what ``leanlm fasa inspect`` and the reproduce report draw)."""

from __future__ import annotations

from typing import Any

import torch


def ca_heatmap(calibration: Any, k: int | None = None):
    """A matplotlib figure: (left) mean CA of each head's dominant FCs per layer x head; (right) CA per FC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = calibration.k_for_budget(k)
    ca = calibration.ca[k].float()  # (L, H, F)
    dom = calibration.dominant(k)
    dom_mean = ca.gather(-1, dom).mean(-1)  # (L, H)
    n_layers, n_heads, n_fc = ca.shape
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 2.2]})
    im0 = axes[0].imshow(dom_mean.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axes[0].set_xlabel("query head")
    axes[0].set_ylabel("layer")
    axes[0].set_title(f"mean CA of the {calibration.n_tip} dominant FCs (K={k})")
    fig.colorbar(im0, ax=axes[0])
    im1 = axes[1].imshow(ca.reshape(n_layers * n_heads, n_fc).numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1,
                         interpolation="nearest")
    axes[1].set_xlabel("frequency chunk (0 = highest frequency)")
    axes[1].set_ylabel("layer x head")
    axes[1].set_yticks([i * n_heads for i in range(0, n_layers, max(1, n_layers // 10))])
    axes[1].set_yticklabels([str(i) for i in range(0, n_layers, max(1, n_layers // 10))])
    axes[1].set_title(f"CA_K per FC, every (layer, head); pairing={calibration.pairing}")
    fig.colorbar(im1, ax=axes[1])
    fig.tight_layout()
    return fig


def dominant_histogram(calibration: Any, k: int | None = None) -> torch.Tensor:
    """How many (layer, head) pairs pick each FC as dominant, ``(d/2,)``."""
    dom = calibration.dominant(calibration.k_for_budget(k))
    return torch.bincount(dom.flatten(), minlength=calibration.head_dim // 2)
