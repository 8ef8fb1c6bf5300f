"""CLI: train -> extract -> evaluate on a tiny model; clear errors for bad configs."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from leanlm.elastic import ElasticMoeForCausalLM, SubNet
from leanlm.elastic.cli import app

TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "num_experts": 6, "num_experts_per_tok": 2,
        "moe_intermediate_size": 16}


def test_train_extract_evaluate_round_trip(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Mixture-of-experts routing sends each token to a few experts. " * 80, encoding="utf-8")
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"model": TINY, "batch_size": 4, "seq_len": 24, "codebook": 8, "eval_batches": 1,
                                  "eval_batch_size": 4, "log_every": 1, "text_file": str(text)}))
    runner = CliRunner()
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(run_dir), "--config", str(config), "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "model" / "config.json").exists() and (run_dir / "checkpoint.pt").exists()
    assert len((run_dir / "history.jsonl").read_text().splitlines()) == 3

    small_dir = tmp_path / "small"
    result = runner.invoke(app, ["extract", str(run_dir / "model"), "--out", str(small_dir), "--depth", "2", "--experts", "3",
                                 "--top-k", "1", "--expert-rule", "index"])
    assert result.exit_code == 0, result.output
    small = ElasticMoeForCausalLM.from_pretrained(small_dir).eval()
    assert small.config.num_hidden_layers == 2 and small.config.num_experts == 3 and small.config.num_experts_per_tok == 1
    assert small.config.source_layers == [0, 3] and small.config.source_experts == [[0, 1, 2], [0, 1, 2]]
    parent = ElasticMoeForCausalLM.from_pretrained(run_dir / "model").eval()
    x = torch.randint(0, 275, (1, 16))
    expected = parent(x, subnet=SubNet.make(layers=[0, 3], experts={0: [0, 1, 2], 3: [0, 1, 2]}, top_k=1)).logits
    torch.testing.assert_close(small(x).logits, expected, rtol=0, atol=1e-6)

    # the same cut exported for plain transformers (ernie4_5_moe) gives the same logits
    result = runner.invoke(app, ["export", str(run_dir / "model"), "--out", str(tmp_path / "hf"), "--depth", "2", "--experts", "3",
                                 "--top-k", "1", "--expert-rule", "index"])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "Ernie4_5_MoeForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, expected, rtol=0, atol=1e-5)

    # continued training of the extracted model (the report's "extract, then keep training")
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "cont"), "--config", str(config), "--steps", "2",
                                 "--init", str(small_dir), "--no-elastic"])
    assert result.exit_code == 0, result.output
    cont = ElasticMoeForCausalLM.from_pretrained(tmp_path / "cont" / "model")
    assert cont.config.num_hidden_layers == 2 and cont.config.source_layers == [0, 3]


def test_bad_config_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "steps": 3,\n  "lr": oops\n}\n')
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--config", str(bad)])
    assert result.exit_code != 0
    assert f"{bad}:3" in result.output and "invalid JSON" in result.output
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"stepz": 3}))
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--config", str(unknown)])
    assert result.exit_code != 0 and "stepz" in result.output
