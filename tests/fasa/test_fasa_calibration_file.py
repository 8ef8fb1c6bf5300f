"""The calibration file: round trip, budget -> K table, clear errors naming the file and field."""

from __future__ import annotations

import json

import pytest
import torch

from leanlm.common.models import tiny_llama, tiny_qwen2
from leanlm.fasa import Calibration, CalibrationError, apply
from leanlm.fasa.calibration import config_hash, model_geometry


def make_calibration(model, ks=(64, 256), seed=0) -> Calibration:
    geometry = model_geometry(model)
    shape = (geometry["num_layers"], geometry["num_heads"], geometry["head_dim"] // 2)
    gen = torch.Generator().manual_seed(seed)
    ca = {k: torch.rand(shape, generator=gen, dtype=torch.float64) for k in ks}
    return Calibration(model_id="tiny", config_hash=config_hash(model), geometry=geometry, pairing="half", n_tip=2,
                       ca=ca, counts={k: 10 for k in ks})


def test_round_trip_and_dominant(tmp_path):
    model = tiny_llama()
    calib = make_calibration(model)
    calib.ca[64][0, 0, 5] = float("nan")
    path = calib.save(tmp_path / "c.json")
    loaded = Calibration.load(path)
    for k in (64, 256):
        assert torch.allclose(loaded.ca[k], calib.ca[k], atol=1e-6, equal_nan=True)
        assert torch.equal(loaded.dominant(k), calib.dominant(k))
        assert torch.equal(loaded.dominant(k), calib.ca[k].nan_to_num(-1).topk(2, dim=-1).indices)
    data = json.loads(path.read_text())
    assert data["tables"]["64"]["ca"][0][0][5] is None
    assert data["tables"]["256"]["dominant"] == calib.dominant(256).tolist()


def test_k_for_budget_picks_nearest_calibrated_table():
    calib = make_calibration(tiny_llama(), ks=(64, 128, 256, 512))
    assert calib.k_for_budget(256) == 256
    assert calib.k_for_budget(300) == 256
    assert calib.k_for_budget(1024) == 512
    assert calib.k_for_budget(8) == 64
    calib.counts[512] = 0
    assert calib.k_for_budget(1024) == 256
    with pytest.raises(CalibrationError, match="K=512"):
        calib.dominant(512)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("pairing"), "missing field 'pairing'"),
        (lambda d: d.update(pairing="diagonal"), "field 'pairing' is 'diagonal'"),
        (lambda d: d.update(n_tip=99), "field 'n_tip' is 99"),
        (lambda d: d["model"].pop("head_dim"), "missing field 'model.head_dim'"),
        (lambda d: d["tables"]["64"]["ca"].pop(), "field 'tables.64.ca' has shape"),
        (lambda d: d["tables"]["64"].update(count="x"), "field 'tables.64.count'"),
        (lambda d: d.update(format="other/1"), "field 'format'"),
    ],
)
def test_bad_files_name_the_field(tmp_path, mutate, message):
    path = make_calibration(tiny_llama()).save(tmp_path / "c.json")
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"c\.json") as info:
        Calibration.load(path)
    assert message in str(info.value)


def test_invalid_json_names_line_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "format": "leanlm.fasa.calibration/1",\n  oops\n}')
    with pytest.raises(CalibrationError, match=r"broken.json:3: invalid JSON"):
        Calibration.load(path)
    with pytest.raises(CalibrationError, match="not found"):
        Calibration.load(tmp_path / "nope.json")


def test_calibration_for_another_model_is_rejected(tmp_path):
    calib = make_calibration(tiny_llama())
    qwen = tiny_qwen2(num_attention_heads=8, num_key_value_heads=2)
    with pytest.raises(CalibrationError, match="num_heads"), apply(qwen, calib, budget=8):
        pass
    path = calib.save(tmp_path / "c.json")
    with apply(tiny_llama(), path, budget=8) as fasa:  # a path works too
        assert fasa.budget == 8
