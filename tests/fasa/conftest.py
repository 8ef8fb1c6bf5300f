"""Shared fixtures for the FASA tests on the embedded SmolLM2-135M."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smol_calibration(embedded, tmp_path_factory):
    """A calibration of the embedded model on real Wikipedia text, saved to a file: (Calibration, path)."""
    from leanlm.fasa import calibrate
    from leanlm.fasa.text import wiki_text

    model, tok = embedded
    calib = calibrate(model, tok, wiki_text(40, offset=0), ks=(64, 128, 256), max_tokens=768, decode_steps=24,
                      prefill_stride=128, model_id="embedded")
    path = tmp_path_factory.mktemp("fasa") / "calib.json"
    calib.save(path)
    return calib, path


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: the machine's cores are shared, and small decode ops only lose from threading."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
