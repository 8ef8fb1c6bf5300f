"""Fixtures for the elastic-MoE tests: tiny configs and a small in-memory corpus (no data package needed)."""

from __future__ import annotations

import pytest
import torch

from leanlm.elastic.data import GroupedModality, MixedCorpus

TEXT = (
    "Elastic training samples a sub-network at every step. The quick brown fox jumps over the lazy dog. "
    "Mixture-of-experts layers route each token to a few experts; the router learns which. "
) * 40


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def corpora() -> tuple[MixedCorpus, MixedCorpus]:
    modality = GroupedModality(codebook=8)
    return MixedCorpus(TEXT[:6000], 24, 0.3, modality), MixedCorpus(TEXT[6000:], 24, 0.3, modality)

