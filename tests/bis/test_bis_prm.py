"""Issue #16: synthetic corpus with truth, VisualProcessBench metrics, PRM training and exact resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from leanlm.bis.prm import metrics
from leanlm.bis.prm.synth_truth import DEFAULT_SOURCES, Source, TruthConfig, rollout, write_truth_corpus


@pytest.mark.parametrize("src", DEFAULT_SOURCES, ids=lambda s: s.name)
def test_perfect_completer_mc_positive_iff_prefix_correct(src: Source) -> None:
    rng = random.Random(3)
    wrong = 0
    for i in range(300):
        r = rollout(rng, src, i, eps_completer=0.0)
        scores = [s["score"] for s in r["steps_with_score"]]
        assert [int(s > 0) for s in scores] == r["truth"]
        assert all(s in (0.0, 1.0) for s in scores)  # a perfect completer is deterministic
        wrong += r["truth"].count(0)
        # cumulative: once wrong, wrong for good
        first = r["truth"].index(0) if 0 in r["truth"] else len(r["truth"])
        assert r["truth"] == [1] * first + [0] * (len(r["truth"]) - first)
    assert wrong > 0


def test_noisy_completer_gives_false_positives_and_negatives() -> None:
    src = Source("noisy", "modchain", 4, 8, modulus=5, eps_policy=0.2, eps_completer=0.3, k=4)
    rng = random.Random(0)
    fp = fn = 0
    for i in range(400):
        r = rollout(rng, src, i)
        for s, t in zip(r["steps_with_score"], r["truth"], strict=True):
            fp += s["score"] > 0 and t == 0
            fn += s["score"] == 0 and t == 1
    assert fp > 0 and fn > 0


def test_truth_corpus_layout_runs_through_select(tmp_path) -> None:
    from leanlm.bis.select import SelectConfig, select

    summary = write_truth_corpus(tmp_path, TruthConfig(train=300, val=20, test=20))
    assert sum(summary["splits"]["train"].values()) == 300
    files = sorted((tmp_path / "train").glob("*.jsonl"))
    assert {f.stem for f in files} == {s.name for s in DEFAULT_SOURCES}
    line = json.loads(files[0].read_text().splitlines()[0])
    assert {"image", "question", "answer", "response", "steps_with_score", "num_mc_sequences"} <= set(line)
    out = tmp_path / "sel.jsonl"
    select([tmp_path / "train"], out, SelectConfig(ratio=0.1))
    kept = out.read_text().splitlines()
    assert len(kept) == sum(max(1, int(n * 0.1)) for n in summary["splits"]["train"].values())


def test_f1_and_macro_hand_computed() -> None:
    pred = np.array([1, 1, 0, 0, 1], bool)
    truth = np.array([1, 0, 0, 1, 1], bool)
    # positive: tp=2, fp=1, fn=1 -> F1 = 4/6; negative: tp=1, fp=1, fn=1 -> F1 = 2/4
    pos, neg = metrics.f1_pair(pred, truth)
    assert pos == pytest.approx(2 / 3) and neg == pytest.approx(0.5)
    assert metrics.macro_f1(pred, truth) == pytest.approx((2 / 3 + 0.5) / 2)
    # all predicted positive: negative-class F1 is 0 (no true negative)
    assert metrics.f1_pair(np.ones(3, bool), np.array([1, 0, 1], bool)) == (pytest.approx(0.8), 0.0)


def test_overall_micro_is_step_weighted_mean_of_source_macro() -> None:
    scores = np.array([0.9, 0.2, 0.6, 0.4, 0.7, 0.1, 0.8])
    truth = np.array([1, 0, 0, 1, 1, 0, 1])
    sources = np.array(["a", "a", "a", "a", "b", "b", "b"])
    r = metrics.at_threshold(scores, truth, sources, 0.5)
    # a: pred [1,0,1,0] truth [1,0,0,1]: F1+ = 2*1/(2+2) = .5, F1- = 2*1/(2+2) = .5 -> .5
    # b: pred [1,0,1] truth [1,0,1]: 1.0
    assert r["per_source"]["a"] == {"steps": 4, "macro_f1": pytest.approx(0.5)}
    assert r["per_source"]["b"]["macro_f1"] == pytest.approx(1.0)
    assert r["overall_micro_f1"] == pytest.approx((4 * 0.5 + 3 * 1.0) / 7)
    # pooled: pred [1,0,1,0,1,0,1] truth [1,0,0,1,1,0,1]: F1+ tp=3 fp=1 fn=1 -> 6/8; F1- tp=2 fp=1 fn=1 -> 4/6
    assert r["pooled_f1_pos"] == pytest.approx(0.75) and r["pooled_f1_neg"] == pytest.approx(2 / 3)


def test_auc_hand_computed_with_ties() -> None:
    # positives {0.8, 0.5}, negatives {0.5, 0.2}: pairs (0.8>0.5)=1, (0.8>0.2)=1, (0.5=0.5)=.5, (0.5>0.2)=1
    assert metrics.roc_auc(np.array([0.8, 0.5, 0.5, 0.2]), np.array([1, 1, 0, 0])) == pytest.approx(3.5 / 4)
    rng = np.random.default_rng(0)
    s, t = rng.integers(0, 5, 200) / 4, rng.integers(0, 2, 200)
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in s[t == 1] for b in s[t == 0]])
    assert metrics.roc_auc(s, t) == pytest.approx(brute)


def test_thresholds_val_vs_test_tuned() -> None:
    sources = np.array(["a"] * 6)
    truth = np.array([1, 1, 1, 0, 0, 0])
    test_scores = np.array([0.9, 0.35, 0.3, 0.25, 0.2, 0.1])  # separable at 0.3, not at 0.5
    t = metrics.best_threshold(test_scores, truth, sources)
    assert t == pytest.approx(0.3)
    val_scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])  # val says 0.7
    r = metrics.evaluate((test_scores, truth, sources), (val_scores, truth, sources))
    assert r["test_tuned_optimistic"]["overall_micro_f1"] == pytest.approx(1.0)
    assert r["val_tuned"]["threshold"] == pytest.approx(0.7)
    # at 0.7 only one positive predicted: F1+ = 2/4, F1- = 2*3/(5+3) = .75
    assert r["val_tuned"]["overall_micro_f1"] == pytest.approx((0.5 + 0.75) / 2)
    assert r["fixed_0.5"]["threshold"] == 0.5


def test_paired_ci_uses_student_t() -> None:
    from leanlm.bis.prm.study import paired_ci

    a = [0.70, 0.72, 0.68, 0.75, 0.71]
    b = [0.65, 0.70, 0.66, 0.70, 0.69]
    d = np.array(a) - np.array(b)  # 0.05 0.02 0.02 0.05 0.02
    ci = paired_ci(a, b)
    half = 2.7764451051977987 * d.std(ddof=1) / np.sqrt(5)  # t_{0.975, 4}
    assert ci["mean"] == pytest.approx(0.032) and ci["half"] == pytest.approx(half)
    assert ci["half"] > 1.96 * d.std(ddof=1) / np.sqrt(5)  # the normal interval would be too narrow


def test_summarize_pairs_by_seed() -> None:
    from leanlm.bis.prm.study import summarize, to_markdown

    rows = [{"selector": "full", "budget": 1.0, "seed": s, "f1_val_tuned": 0.8 + 0.01 * s} for s in range(3)]
    rows += [{"selector": "random", "budget": 0.1, "seed": s, "f1_val_tuned": 0.6 + 0.02 * s} for s in range(3)]
    rows += [{"selector": "bis-0.2", "budget": 0.1, "seed": s, "f1_val_tuned": 0.7 + 0.02 * s} for s in range(2)]
    out = summarize(rows)
    vr = out["vs_random"]
    assert len(vr) == 1 and vr[0]["n"] == 2 and vr[0]["mean"] == pytest.approx(0.1) and vr[0]["half"] == 0.0
    vf = {d["selector"]: d for d in out["vs_full"]}
    assert vf["random"]["n"] == 3 and vf["random"]["mean"] == pytest.approx(-0.2 + 0.01)
    assert "minus random" in to_markdown(out)


def test_step_matched_subset_vs_brute_force(tmp_path) -> None:
    from leanlm.bis.prm.study import step_matched_subset
    from leanlm.bis.score import BIS

    write_truth_corpus(tmp_path / "c", TruthConfig(train=200, val=1, test=1))
    out = tmp_path / "sub.jsonl"
    alpha, budget = 0.2, 0.3
    n_kept = step_matched_subset(tmp_path / "c" / "train", BIS(alpha), budget, out)
    kept = out.read_text().splitlines()
    assert n_kept == len(kept)
    expect = []
    for f in sorted((tmp_path / "c" / "train").glob("*.jsonl")):
        lines = f.read_text().splitlines()

        def bis(line: str) -> float:
            sc = [s["score"] for s in json.loads(line)["steps_with_score"]]
            pos = [s for s in sc if s > 0]
            p = len(pos) / len(sc)
            return (p * (1 - p) + alpha) * (sum(pos) / len(pos) if pos else 1.0)

        order = sorted(range(len(lines)), key=lambda i: (-bis(lines[i]), i))
        total = sum(len(json.loads(ln)["steps_with_score"]) for ln in lines)
        take, steps = [], 0
        for i in order:
            if take and steps >= budget * total:
                break
            take.append(i)
            steps += len(json.loads(lines[i])["steps_with_score"])
        assert steps >= budget * total
        expect += [lines[i] for i in sorted(take)]
    assert kept == expect
