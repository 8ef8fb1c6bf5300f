"""FASA on the real embedded SmolLM2-135M: calibration file, its stability, a needle retrieval, the CLI."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def test_calibration_file_and_stability_across_texts(smol_calibrate, smol_calibration, record_property):
    from leanlm.fasa import Calibration, jaccard

    calib, path = smol_calibration
    loaded = Calibration.load(path)
    assert loaded.geometry["num_layers"] == 30 and loaded.geometry["num_heads"] == 9
    assert loaded.n_tip == 8 and loaded.pairing == "half" and set(loaded.ks) == {64, 128, 256, 512}
    for k in calib.usable_ks():
        assert torch.equal(loaded.dominant(k), calib.dominant(k))
        assert torch.allclose(loaded.ca[k], calib.ca[k], atol=1e-6, equal_nan=True)
    # a second calibration on different real text (a disjoint Wikipedia range)
    other = smol_calibrate(6000)
    overlaps = {k: jaccard(calib, other, k) for k in calib.usable_ks()}
    record_property("jaccard", overlaps)
    print(f"\nFASA dominant-set Jaccard across calibration texts: {overlaps}")
    # chance level for two random 8-of-32 sets is about 0.15
    assert min(overlaps.values()) > 0.5, overlaps


@pytest.mark.xfail(strict=False, reason=(
    "measured 2026-11-29: on this prompt (seed 0, depth 0.5, 1.9K tokens) full KV answers '65125.' and FASA@256 "
    "with N_tip=8/32 answers '6512.' (TIP top-256 recall of the oracle set 64%); oracle@128/256, FASA@512, "
    "FASA with N_tip=12 and pooled FASA@256 all answer '65125.'. See docs/results/fasa.md."))
def test_needle_at_budget_256_matches_full_kv(embedded, smol_calibration, record_property):
    from leanlm.fasa import FASASelector
    from leanlm.fasa.bench import decode_with_selector, prefill
    from leanlm.fasa.tasks import needle_trial

    model, tok = embedded
    calib, _ = smol_calibration
    trial = needle_trial(tok, context_tokens=2000, depth=0.5, seed=0)
    ids = tok(trial.prompt, return_tensors="pt").input_ids
    assert 1900 <= ids.shape[1] <= 2200
    cache, last = prefill(model, ids)
    full = decode_with_selector(model, cache, last, ids.shape[1], 8, None, 0, tok.eos_token_id)
    fasa = decode_with_selector(model, cache, last, ids.shape[1], 8, FASASelector.from_calibration(calib, 256), 256,
                                tok.eos_token_id)
    full_text, fasa_text = (tok.decode(t, skip_special_tokens=True).strip() for t in (full, fasa))
    record_property("needle", {"answer": trial.answer, "full_kv": full_text, "fasa": fasa_text})
    print(f"\nneedle {trial.answer}: full KV {full_text!r}, FASA@256 {fasa_text!r}")
    assert fasa_text == full_text


def test_needle_at_budget_256_with_bundled_default_calibration(embedded, record_property):
    """The same prompt with the bundled calibration (``calibrate()`` defaults: 2048 tokens, 32 decode steps,
    prefill stride 32; 87 queries averaged at K=256, vs 27 for the quick fixture above)."""
    from leanlm.fasa import Calibration, FASASelector
    from leanlm.fasa.bench import decode_with_selector, prefill
    from leanlm.fasa.tasks import needle_trial

    model, tok = embedded
    calib = Calibration.load("embedded")
    calib.check_model(model)
    assert calib.source["prompt_tokens"] == 2048 and calib.counts[256] > 80
    trial = needle_trial(tok, context_tokens=2000, depth=0.5, seed=0)
    ids = tok(trial.prompt, return_tensors="pt").input_ids
    cache, last = prefill(model, ids)
    full = decode_with_selector(model, cache, last, ids.shape[1], 8, None, 0, tok.eos_token_id)
    with_fasa = decode_with_selector(model, cache, last, ids.shape[1], 8, FASASelector.from_calibration(calib, 256),
                                     256, tok.eos_token_id)
    full_text, fasa_text = (tok.decode(t, skip_special_tokens=True).strip() for t in (full, with_fasa))
    record_property("needle_bundled", {"answer": trial.answer, "full_kv": full_text, "fasa": fasa_text})
    assert trial.answer in full_text
    assert fasa_text == full_text


def test_needle_harness_is_a_real_retrieval_test(embedded):
    """Full KV retrieves the stated number, and attending to the true top-128 tokens is enough to keep it."""
    from leanlm.fasa import OracleSelector
    from leanlm.fasa.bench import decode_with_selector, prefill
    from leanlm.fasa.tasks import needle_trial

    model, tok = embedded
    trial = needle_trial(tok, context_tokens=2000, depth=0.5, seed=0)
    assert trial.prompt.count(trial.answer) == 1
    ids = tok(trial.prompt, return_tensors="pt").input_ids
    cache, last = prefill(model, ids)
    full = decode_with_selector(model, cache, last, ids.shape[1], 8, None, 0, tok.eos_token_id)
    oracle = decode_with_selector(model, cache, last, ids.shape[1], 8, OracleSelector(), 128, tok.eos_token_id)
    full_text = tok.decode(full, skip_special_tokens=True).strip()
    assert trial.answer in full_text
    assert tok.decode(oracle, skip_special_tokens=True).strip() == full_text


def test_cli_calibrate_generate_inspect(embedded, smol_calibration, tmp_path):
    from typer.testing import CliRunner

    from leanlm.fasa.cli import app

    _, path = smol_calibration
    runner = CliRunner()
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Paris is the capital of France. Berlin is the capital of Germany. "
                      "What is the capital of France?", encoding="utf-8")
    result = runner.invoke(app, ["generate", "--model", "embedded", "--calibration", str(path), "--budget", "16",
                                 "--prompt-file", str(prompt), "--max-new-tokens", "8", "--compare"])
    assert result.exit_code == 0, result.output
    assert "--- full KV ---" in result.output and "identical:" in result.output
    png = tmp_path / "heat.png"
    result = runner.invoke(app, ["inspect", str(path), "--out", str(png), "--layers", "2"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layer  0:" in result.output and "layer  2:" not in result.output
    out = tmp_path / "c.json"
    result = runner.invoke(app, ["calibrate", "--model", "embedded", "--out", str(out), "--k", "32",
                                 "--max-tokens", "80", "--decode-steps", "4", "--prefill-stride", "0"])
    assert result.exit_code == 0, result.output
    assert out.exists() and "samples per K {32: " in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "oops"}\n', encoding="utf-8")
    result = runner.invoke(app, ["calibrate", "--out", str(tmp_path / "x.json"), "--text-file", str(bad)])
    assert result.exit_code != 0 and "bad.jsonl:2" in str(result.exception)


def test_fast_paths_give_the_reference_tokens_on_the_embedded_model(embedded, record_property):
    """FASA-C (per head and pooled) and FASA-M inside an unchanged ``generate()`` == the reference path."""
    from leanlm.fasa import Calibration, apply
    from leanlm.fasa.tasks import needle_trial

    model, tok = embedded
    calib = Calibration.load("embedded")
    trial = needle_trial(tok, context_tokens=2000, depth=0.5, seed=0)
    ids = tok(trial.prompt, return_tensors="pt").input_ids

    def generate(**kwargs):
        with torch.inference_mode(), apply(model, calib, budget=256, **kwargs) as fasa:
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        return out[0, ids.shape[1]:].tolist(), fasa.stats

    answers = {}
    for name, kwargs in {"reference": {"backend": "reference"}, "FASA-C": {}, "FASA-M": {"offload": True},
                         "reference pooled": {"backend": "reference", "pooled": True},
                         "FASA-C pooled": {"pooled": True}}.items():
        tokens, stats = generate(**kwargs)
        assert stats.sparse_calls > 0 and (stats.fast_calls == 0) == name.startswith("reference"), (name, stats)
        answers[name] = tokens
    record_property("fast_paths", {k: tok.decode(v) for k, v in answers.items()})
    assert answers["FASA-C"] == answers["reference"] == answers["FASA-M"]
    assert answers["FASA-C pooled"] == answers["reference pooled"]
