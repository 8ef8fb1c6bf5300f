"""Shared fixtures for the FASA tests on the embedded SmolLM2-135M."""

from __future__ import annotations

import pytest

#: the reproduce experiment's quick calibration settings (src/leanlm/fasa/experiments.py)
CALIBRATION_SETTINGS = {"max_tokens": 1024, "decode_steps": 16, "prefill_stride": 64}


@pytest.fixture(scope="session")
def smol_calibrate(embedded):
    """``calibrate(offset)``: calibrate the embedded model on 80 Wikipedia summaries from ``offset``."""
    import torch

    from leanlm.fasa import calibrate
    from leanlm.fasa.text import wiki_text

    model, tok = embedded

    def run(offset: int):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return calibrate(model, tok, wiki_text(80, offset=offset), model_id="embedded", **CALIBRATION_SETTINGS)
        finally:
            torch.set_num_threads(before)

    return run


@pytest.fixture(scope="session")
def smol_calibration(smol_calibrate, tmp_path_factory):
    """A calibration of the embedded model on real Wikipedia text, saved to a file: (Calibration, path)."""
    calib = smol_calibrate(0)
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
