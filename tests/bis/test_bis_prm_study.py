"""Issue #16: the step tokenizer, the interval-with-tolerance verdict and the registered PRM study experiment."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from leanlm.bis.prm.model import ModelSpec, StepTokenizer, WordTokenizer, build  # noqa: E402
from leanlm.common.verdicts import NOT_REPRODUCED, PARTLY, REPRODUCED, Interval  # noqa: E402


def test_word_tokenizer_numbers_words_and_signs() -> None:
    tok = WordTokenizer()
    ids = tok.ids("12 +7 = 19 (mod 23)\n")
    assert len(ids) == 10  # 12 + 7 = 19 ( mod 23 ) and the newline
    assert ids[0] == tok._num0 + 12 and ids[2] == tok._num0 + 7 and ids[4] == tok._num0 + 19
    assert ids[-1] == tok.vocab["\n"]
    assert tok.ids("1000")[0] >= tok._hash0  # beyond the number range: a hash bucket
    assert max(tok.ids("zebra ! 999")) < tok.vocab_size


def test_step_tokenizer_one_token_per_step_and_marker() -> None:
    model = build(ModelSpec(hidden=16, layers=1, heads=2, tokenizer="step"))
    tok = model.tokenizer
    assert isinstance(tok, StepTokenizer)
    steps = ["3 +4 = 0 (mod 7)", "0  +2 =  2 (mod 7)", "2 +1 = 4 (mod 7)"]
    ids = model.encode("Start at 3.", steps)
    q = [model.bos_id, *tok.ids("Start at 3.\n")]
    assert ids[: len(q)] == q
    tail = ids[len(q):]
    assert tail[1::2] == [model.prm_id] * 3
    assert tail[0::2] == [tok.step_id(s) for s in steps]
    assert tok.step_id("0 +2 = 2 (mod 7)") == tok.step_id(steps[1])  # whitespace-normalised
    assert len({tok.step_id(f"{a} +{d} = {(a + d) % 11} (mod 11)") for a in range(11) for d in range(1, 11)}) >= 105
    assert all(tok._step0 <= t < tok.vocab_size for t in tail[0::2])
    logits = model.step_logits(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert logits.shape == (3, 2)
    with pytest.raises(ValueError, match="unknown tiny tokenizer"):
        build(ModelSpec(hidden=16, layers=1, heads=2, tokenizer="bpe"))


def test_interval_contains_or_within_tolerance() -> None:
    rule = Interval("d", "h", expect="contains", tolerance=0.01)
    assert rule.evaluate({"d": -0.02, "h": 0.03}).verdict == REPRODUCED  # contains 0
    assert rule.evaluate({"d": 0.004, "h": 0.003}).verdict == REPRODUCED  # [0.001, 0.007]: within 1 point
    assert rule.evaluate({"d": -0.008, "h": 0.003}).verdict == NOT_REPRODUCED  # [-0.011, -0.005]: pokes out
    assert rule.evaluate({"d": -0.05, "h": 0.01}).verdict == NOT_REPRODUCED
    assert "± 0.01" in rule.describe()
    plain = Interval("d", "h", expect="contains")
    assert plain.evaluate({"d": 0.004, "h": 0.003}).verdict == NOT_REPRODUCED  # no tolerance: as before
    above = Interval("d", "h", expect="above")
    assert above.evaluate({"d": 0.01, "h": 0.02}).verdict == PARTLY


def test_prm_study_experiment_tiny(tmp_path) -> None:
    """The registered experiment end to end on a tiny corpus: paired differences equal the cells' own."""
    import json

    from leanlm.bis.experiments import run_prm_study
    from leanlm.reproduce import RunContext

    torch.set_num_threads(1)
    cfg = {"train": 300, "val": 60, "test": 100, "seeds": 2, "budget": 0.1, "alpha_selector": "bis-0.2"}
    res = run_prm_study(cfg, RunContext(out_dir=tmp_path, mode="quick"))
    rows = [json.loads(x) for x in (tmp_path / "study" / "cells.jsonl").read_text().splitlines()]
    assert sorted((r["selector"], r["seed"]) for r in rows) == sorted(
        (s, k) for s in ("full", "random", "bis-0.2") for k in range(2))
    f1 = {(r["selector"], r["seed"]): r["f1_val_tuned"] for r in rows}
    want = sum(f1["bis-0.2", k] - f1["full", k] for k in range(2)) / 2
    assert res.metrics["bis10_minus_full"] == pytest.approx(want, abs=1e-4)
    assert res.metrics["seeds"] == 2 and res.metrics["bis10_minus_random_ci95"] > 0
    assert {r["rollouts"] for r in rows if r["selector"] != "full"} <= {29, 30, 31, 32, 33}
    again = run_prm_study(cfg, RunContext(out_dir=tmp_path, mode="quick"))  # resumes: no retraining
    assert again.metrics == res.metrics
    from leanlm.common.verdicts import VERDICTS, judge
    from leanlm.reproduce import REGISTRY

    exp = REGISTRY["bis-prm-study"]
    assert "bis-toy-prm" not in REGISTRY
    assert all("smoke run" in c.setting for c in exp.claims)  # the quick config is not evidence
    assert exp.config("full")["seeds"] >= 10
    for claim in exp.claims:
        assert set(claim.rule.metric_keys()) <= set(res.metrics)
        assert judge(claim.rule, res.metrics).verdict in VERDICTS


def test_epochs_resume_across_the_epoch_boundary(tmp_path) -> None:
    import random

    from leanlm.bis.prm.synth_truth import DEFAULT_SOURCES, rollout
    from leanlm.bis.prm.train import Example, TrainConfig, train

    torch.set_num_threads(1)
    rng = random.Random(7)
    rolls = [rollout(rng, DEFAULT_SOURCES[1], i) for i in range(20)]
    data = [Example("m7", r["question"], [s["step"] for s in r["steps_with_score"]],
                    [s["score"] for s in r["steps_with_score"]], r["truth"]) for r in rolls]
    # batch 8: 3 steps per epoch, 6 in all
    spec = ModelSpec(hidden=16, layers=1, heads=2, tokenizer="step")
    cfg = TrainConfig(model=spec, batch=8, checkpoint_every=4, lr=3e-3, epochs=2)
    full = train(data, tmp_path / "a", cfg)
    assert (full["epoch_steps"], full["total_steps"], len(full["losses"])) == (3, 6, 6)
    resumed = train(data, tmp_path / "b", cfg, resume=tmp_path / "a" / "step-4")  # step 4 is in epoch 2
    assert resumed["losses"] == full["losses"]
    with pytest.raises(ValueError, match="epochs"):
        train(data, tmp_path / "c", TrainConfig(model=spec, batch=8, lr=3e-3), resume=tmp_path / "a" / "step-4")


def test_study_equal_steps_control_reuses_full_cells(tmp_path) -> None:
    import json

    from leanlm.bis.prm.study import StudyConfig, run_study
    from leanlm.bis.prm.synth_truth import TruthConfig, write_truth_corpus

    torch.set_num_threads(1)
    write_truth_corpus(tmp_path / "c", TruthConfig(train=80, val=20, test=20))
    base = dict(corpus=tmp_path / "c", out=tmp_path / "s", budgets=(0.25,), selectors=("random",), seeds=1,
                hidden=16, layers=1, batch=8)
    one = run_study(StudyConfig(**base))
    eq = run_study(StudyConfig(**base, train_steps="equal"))
    assert [r["key"] for r in eq] == [r["key"] for r in one]
    assert eq[0] == one[0]  # full data: reused from cells.jsonl, not retrained
    assert (one[1]["epochs"], eq[1]["epochs"]) == (1, 4)
    assert eq[1]["optimizer_steps"] == 4 * one[1]["optimizer_steps"]
    assert [json.loads(x)["selector"] for x in (tmp_path / "s" / "cells-equalsteps.jsonl").read_text().splitlines()] \
        == ["random"]


def test_study_split_by_first_seed_trains_only_its_seeds(tmp_path) -> None:
    """Two processes given disjoint seed ranges (``first_seed``) produce exactly the cells one process would."""
    from leanlm.bis.prm.study import StudyConfig, run_study
    from leanlm.bis.prm.synth_truth import TruthConfig, write_truth_corpus

    torch.set_num_threads(1)
    write_truth_corpus(tmp_path / "c", TruthConfig(train=60, val=20, test=20))
    base = dict(corpus=tmp_path / "c", budgets=(0.25,), selectors=("random",), seeds=2, hidden=16, layers=1,
                batch=8)
    second = run_study(StudyConfig(**base, out=tmp_path / "b", first_seed=1))
    assert [(r["selector"], r["seed"]) for r in second] == [("full", 1), ("random", 1)]
    no_full = run_study(StudyConfig(**base, out=tmp_path / "n", first_seed=1, with_full=False))
    assert [(r["selector"], r["seed"]) for r in no_full] == [("random", 1)]
    assert {k: v for k, v in no_full[0].items() if k != "cpu_s"} == {k: v for k, v in second[1].items() if k != "cpu_s"}
    whole = run_study(StudyConfig(**base, out=tmp_path / "a"))
    drop = {"cpu_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in whole[2:]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in second]


def test_interrupted_cell_resumes_from_its_last_checkpoint(tmp_path, monkeypatch) -> None:
    """A cell killed mid-training resumes from its latest step checkpoint and records the same row."""
    import leanlm.bis.prm.train as train_mod
    from leanlm.bis.prm.study import StudyConfig, run_cell
    from leanlm.bis.prm.synth_truth import TruthConfig, write_truth_corpus

    torch.set_num_threads(1)
    write_truth_corpus(tmp_path / "c", TruthConfig(train=80, val=20, test=20))
    base = dict(corpus=tmp_path / "c", seeds=1, hidden=16, layers=1, batch=8, checkpoint_every=2)
    whole = run_cell(StudyConfig(**base, out=tmp_path / "a"), "full", 1.0, 0)
    assert whole["optimizer_steps"] >= 8 and "resumed_from_step" not in whole

    real, calls = train_mod.step_loss, []

    def dies_at_step_6(*a, **k):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "step_loss", dies_at_step_6)
    cfg = StudyConfig(**base, out=tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run_cell(cfg, "full", 1.0, 0)
    ckpt = tmp_path / "b" / "cells" / "full_1_0_rollouts" / "ckpt"
    assert [p.name for p in train_mod.step_checkpoints(ckpt)] == ["step-4"]  # only the latest is kept
    monkeypatch.setattr(train_mod, "step_loss", real)
    again = run_cell(cfg, "full", 1.0, 0)
    assert again.pop("resumed_from_step") == 4
    drop = {"cpu_s"}
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in whole.items() if k not in drop}
