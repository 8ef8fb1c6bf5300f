"""Analysis helpers against brute force, the study's plan and statistics, and the study end to end (tiny)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from leanlm.elastic.analysis import iou, routing_report, top_fraction
from leanlm.elastic.balance import normalized_entropy
from leanlm.elastic.data import GROUPED, TEXT
from leanlm.elastic.study import (
    StudyConfig,
    axis_elastic,
    c_model_overrides,
    expected_flops,
    full_claim,
    grid,
    paired,
    plan_runs,
    sub_claim,
)
from leanlm.elastic.train import TrainConfig


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
    assert c_model_overrides("combined", base) == {"num_hidden_layers": 3, "num_experts": 8, "num_experts_per_tok": 2}


def test_per_axis_runs_only_sample_their_axis_and_keep_first_last():
    from leanlm.elastic.elastic import ElasticConfig, ElasticSampler

    for axis in ("depth", "width", "topk", "all"):
        sampler = ElasticSampler(ElasticConfig(**axis_elastic(axis)), 6, 8, 4, list(range(6)), seed=0)
        draws = [sampler.sample(s) for s in range(400)]
        assert any(d.layers is not None for d in draws) == (axis in ("depth", "all"))
        assert any(d.experts is not None for d in draws) == (axis in ("width", "all"))
        assert any(d.top_k is not None for d in draws) == (axis in ("topk", "all"))
        assert all(d.layers is None or (0 in d.layers and 5 in d.layers) for d in draws)
    with pytest.raises(ValueError, match="axes"):
        StudyConfig(axes=["height"])


def test_plan_is_seed_major_and_equal_flops_runs_cost_what_the_elastic_run_costs():
    model = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "num_experts": 8,
             "num_experts_per_tok": 2, "moe_intermediate_size": 16}
    study = StudyConfig(base={"model": model, "steps": 200, "batch_size": 4, "seq_len": 16}, seeds=[0, 1], axes=["depth", "topk"])
    runs = plan_runs(study)
    assert list(runs)[:7] == ["B_seed0", "A_depth_seed0", "A_topk_seed0", "C_depth_1-2_seed0", "C_topk_1_seed0",
                              "E_depth_1-2_seed0", "E_topk_1_seed0"]
    assert len(runs) == 14 and runs["A_depth_seed1"]["elastic"]["keep_first_last"]
    assert runs["C_topk_1_seed0"]["model"]["num_experts_per_tok"] == 1 and runs["C_depth_1-2_seed1"]["model"]["num_hidden_layers"] == 2
    for axis, cut in (("depth", "depth_1-2"), ("topk", "topk_1")):
        a = expected_flops(TrainConfig.from_dict(runs[f"A_{axis}_seed0"]))
        b = expected_flops(TrainConfig.from_dict(runs["B_seed0"]))
        e = expected_flops(TrainConfig.from_dict(runs[f"E_{cut}_seed0"]))
        c = expected_flops(TrainConfig.from_dict(runs[f"C_{cut}_seed0"]))
        assert b > a and c > e and runs[f"E_{cut}_seed0"]["steps"] < 200
        # E trains on the token share T' at which the plain family (B and C, each on T' tokens) costs A's FLOPs
        assert (b + c) * (e / c) == pytest.approx(a, rel=0.01)


def test_paired_interval_and_claim_rules_brute_force():
    diffs = [0.01, 0.03, -0.02, 0.02, 0.005]
    d = paired(diffs)
    half = 2.7764451 * statistics.stdev(diffs) / math.sqrt(5)
    assert d["mean"] == pytest.approx(statistics.fmean(diffs)) and d["half"] == pytest.approx(half, rel=1e-6)
    assert full_claim(d) == "holds"  # interval contains 0
    assert full_claim(paired([0.002, 0.004, 0.003])) == "holds"  # above 0 but within 0.01
    assert full_claim(paired([0.05, 0.06, 0.055])) == "fails"
    assert full_claim(paired([0.05])) == "not enough seeds"
    assert sub_claim(paired([-0.05, -0.06, -0.055])) == "holds"
    assert sub_claim(paired([0.05, 0.06, 0.055])) == "fails"
    assert sub_claim(paired([0.05, -0.06, 0.01])) == "undecided"


@pytest.mark.slow
def test_study_runs_end_to_end_resumes_and_renders(tmp_path):
    from leanlm.elastic.experiments import render
    from leanlm.elastic.study import run_study, summarize

    text = tmp_path / "text.txt"
    text.write_text("Routing analysis looks at which experts each modality uses. " * 120, encoding="utf-8")
    base = {"model": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "num_experts": 8,
                      "num_experts_per_tok": 2, "moe_intermediate_size": 16, "num_mtp_modules": 0},
            "steps": 4, "batch_size": 4, "seq_len": 24, "codebook": 8, "eval_batches": 1, "eval_batch_size": 8,
            "log_every": 1, "text_file": str(text)}
    study = StudyConfig(base=base, seeds=[0, 1], axes=["topk"])
    partial = run_study(study, tmp_path / "s", max_runs=3)  # seed 0: B, A_topk, C_topk_1
    assert partial["runs_finished"] == 3 and partial["axes"]["topk"]["seeds"] == [0]
    assert partial["axes"]["topk"]["claim_full"] == "not enough seeds"
    # a worker of a 2-way split trains only its share (odd plan positions: E_topk_1_seed0 is next) and does not summarise
    assert run_study(study, tmp_path / "s", max_runs=1, shard=(1, 2)) is None
    assert sorted(p.name for p in (tmp_path / "s" / "runs").iterdir()) == ["A_topk_seed0", "B_seed0", "C_topk_1_seed0", "E_topk_1_seed0"]
    result = run_study(study, tmp_path / "s")
    assert result["runs_finished"] == result["runs_planned"] == 8 and not result["missing"]
    t = result["axes"]["topk"]
    assert t["seeds"] == [0, 1] and len(t["losses"]["e_cut"]) == 2
    a_full, b_full = t["losses"]["a_full"], t["losses"]["b_full"]
    assert t["a_full_minus_b_full"]["diffs"] == pytest.approx([x - y for x, y in zip(a_full, b_full, strict=True)])
    res = render(result, tmp_path / "s")
    assert (tmp_path / "s" / "results.md").exists() and res.metrics["runs_finished"] == "8/8"
    again = summarize(study, tmp_path / "s")  # cached cut losses, nothing retrained
    assert again["losses"] == result["losses"] and again["seconds"] == result["seconds"]
