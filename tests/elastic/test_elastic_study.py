"""Analysis helpers against brute force, and the A/B/C study end to end on a tiny configuration."""

from __future__ import annotations

import math

import pytest
import torch

from leanlm.elastic.analysis import iou, routing_report, top_fraction
from leanlm.elastic.balance import normalized_entropy
from leanlm.elastic.data import GROUPED, TEXT
from leanlm.elastic.study import StudyConfig, c_model_overrides, grid, plan_runs


def test_normalized_entropy_and_iou_brute_force():
    assert normalized_entropy(torch.ones(8)) == pytest.approx(1.0)
    assert normalized_entropy(torch.tensor([5.0, 0, 0, 0])) == pytest.approx(0.0)
    p = torch.tensor([1.0, 3.0])
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    assert normalized_entropy(p) == pytest.approx(expected)
    assert top_fraction(torch.tensor([1.0, 9, 3, 7, 0, 0, 0, 0]), 0.25) == {1, 3}
    assert iou({1, 3}, {3, 4}) == pytest.approx(1 / 3)
    loads = {TEXT: {0: torch.tensor([4.0, 4, 0, 0])}, GROUPED: {0: torch.tensor([0.0, 4, 4, 0])}}
    row = routing_report(loads, fraction=0.5)[0]
    assert row["ne_text"] == pytest.approx(0.5) and row["iou_top"] == pytest.approx(1 / 3)


def test_grid_and_from_scratch_shapes():
    g = grid(4, 16, 4)
    assert g["depth_1/2"] == {"depth": 2} and g["experts_1/2"] == {"experts": 8}
    assert [n for n in g if n.startswith("topk_")] == ["topk_3", "topk_2", "topk_1"]
    base = {"num_hidden_layers": 4, "num_experts": 16, "num_experts_per_tok": 4}
    assert c_model_overrides("depth_1/2", base) == {"num_hidden_layers": 2}
    assert c_model_overrides("experts_1/2", base) == {"num_experts": 8, "num_experts_per_tok": 4}
    assert c_model_overrides("topk_1", base) == {"num_experts_per_tok": 1}
    runs = plan_runs(StudyConfig(base={"model": base, "steps": 5}, seeds=[0, 1], c_sizes=["topk_1"]))
    assert sorted(runs) == ["A_seed0", "A_seed1", "B_seed0", "B_seed1", "C_topk_1_seed0", "C_topk_1_seed1"]
    assert runs["A_seed0"]["elastic"]["enabled"] and not runs["B_seed0"]["elastic"]["enabled"]
    assert runs["C_topk_1_seed1"]["model"]["num_experts_per_tok"] == 1 and runs["C_topk_1_seed1"]["steps"] == 5


@pytest.mark.slow
def test_study_runs_end_to_end_and_renders(tmp_path):
    from leanlm.elastic.experiments import render
    from leanlm.elastic.study import run_study

    text = tmp_path / "text.txt"
    text.write_text("Routing analysis looks at which experts each modality uses. " * 120, encoding="utf-8")
    base = {"model": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "num_experts": 8,
                      "num_experts_per_tok": 4, "moe_intermediate_size": 16},
            "steps": 3, "batch_size": 4, "seq_len": 24, "codebook": 8, "eval_batches": 1, "eval_batch_size": 8,
            "log_every": 1, "text_file": str(text)}
    study = StudyConfig(base=base, seeds=[0, 1], c_sizes=["topk_1"], workers=1, latency_tokens=3, latency_repeats=1,
                        finetune_steps=2, finetune_sizes=["topk_1"])
    result = run_study(study, tmp_path / "study")
    assert result["extraction_max_abs_diff"] <= 1e-5
    assert set(result["grid"]["A"]) == set(grid(4, 8, 4))
    assert len(result["grid"]["A"]["full"][2]) == 2 and len(result["c"]["topk_1"][2]) == 2
    assert set(result["latency_s_per_token"]) == {1, 2, 3, 4}
    assert set(result["latency_extracted_s_per_token"]) == {"extracted depth_1/2", "extracted combined"}
    assert result["cost_flops"]["C"] < result["cost_flops"]["B"]  # top-1 from scratch is cheaper per token
    ft = result["finetune"]["topk_1"]
    assert len(ft["before"][2]) == 2 and ft["before"][0] == pytest.approx(result["grid"]["A"]["topk_1"][0], abs=1e-5)
    assert (tmp_path / "study" / "runs" / "F_topk_1_seed1" / "model" / "config.json").exists()
    res = render(result, tmp_path / "study")
    assert any(t.title.startswith("Extract, then keep training") for t in res.tables)
    assert (tmp_path / "study" / "results.md").exists() and len(res.figures) == 3
    assert res.metrics["extraction_max_abs_diff"] <= 1e-5
    # a second call resumes: every run is already finished and is not retrained
    again = run_study(study, tmp_path / "study")
    assert again["runs"]["A_seed0"]["seconds"] == result["runs"]["A_seed0"]["seconds"]
