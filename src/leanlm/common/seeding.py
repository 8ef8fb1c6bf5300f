"""Seeding of every random number generator leanlm uses."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and (if installed) PyTorch; returns the seed so callers can record it."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch
    except ImportError:  # torch is a core dependency, but seeding must not require it
        return seed
    torch.manual_seed(seed)
    return seed
