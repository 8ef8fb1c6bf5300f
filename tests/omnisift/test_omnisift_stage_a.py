"""Stage-A recipe of the study (docs/results/omnisift.md §2f): graded hints, cosine schedule, best-validation."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from leanlm.omnisift.study import StudyConfig, Trainer, build_model, pretrain, run_study
from leanlm.omnisift.synth import AVTask, TaskConfig
from leanlm.omnisift.training import GroupedAdamW, cosine_schedule

torch.set_num_threads(1)

SMALL = {"frames": 4, "sources": 4, "classes": 8, "sounds_per_chunk": 4, "audio_per_chunk": 4}


def _lrs(steps: int, **kw) -> list[float]:
    opt = GroupedAdamW(torch.nn.Linear(2, 2), 1.0)
    sched = cosine_schedule(opt, steps, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.optimizer.step()
        sched.step()
    return out


def test_cosine_schedule_values():
    lrs = _lrs(100, warmup_fraction=0.1, floor=0.1)
    # linear warmup over 10 steps: (s + 1) / 10
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    # then cosine from the peak to the floor at the last step, passing the midpoint halfway
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[99] == pytest.approx(0.1)
    assert lrs[10 + 44] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 44 / 89)))
    assert min(lrs[10:]) == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # monotone after warmup


def test_graded_hint_scales_the_event_signature_in_zero_one():
    model = build_model(StudyConfig(task=SMALL), 0)
    graded = AVTask(TaskConfig(**SMALL, hint=1.0, hint_graded=True), model.config)
    plain = AVTask(TaskConfig(**SMALL, hint=0.0), model.config)
    binary = AVTask(TaskConfig(**SMALL, hint=1.0), model.config)
    n = 64
    bg, bp, bb = (t.sample(n, torch.Generator().manual_seed(3)) for t in (graded, plain, binary))
    ar = torch.arange(n)
    sig = graded.event_sig
    # the hint draws after every other draw: the answer sound differs from the unhinted one by strength · signature
    diff_g = bg.inputs_embeds[ar, bg.target_audio_index] - bp.inputs_embeds[ar, bp.target_audio_index]
    diff_b = bb.inputs_embeds[ar, bb.target_audio_index] - bp.inputs_embeds[ar, bp.target_audio_index]
    assert torch.allclose(diff_b, sig.expand(n, -1), atol=1e-5)  # binary: strength exactly 1
    strength = diff_g @ sig / sig.dot(sig)
    assert torch.allclose(diff_g, strength.view(-1, 1) * sig, atol=1e-5)
    assert strength.min() >= 0 and strength.max() <= 1 and strength.std() > 0.15  # spread over [0, 1]
    # nothing else changes
    other = torch.ones(bg.inputs_embeds.shape[:2], dtype=torch.bool)
    other[ar, bg.target_audio_index] = False
    assert torch.equal(bg.inputs_embeds[other], bp.inputs_embeds[other])


def test_recipe_fields_at_defaults_keep_old_fingerprints_and_change_when_set():
    base = {"pretrain_steps": 1000, "lr": 3e-3, "finetune_lr": 1e-3, "task": {}}
    assert StudyConfig(**base).fingerprint("pretrain") == "bc06bf1e45d7"  # golden: §2b's stage A
    for extra in ({"pretrain_hint_graded": True}, {"lr_schedule": "cosine"}, {"keep_best": 100}):
        assert StudyConfig(**base, **extra).fingerprint("pretrain") != "bc06bf1e45d7"
        assert StudyConfig(**base, **extra).fingerprint("OmniSIFT") != StudyConfig(**base).fingerprint("OmniSIFT")
    with pytest.raises(ValueError, match="lr_schedule"):
        StudyConfig(lr_schedule="linear")


def test_keep_best_restores_the_best_validated_weights(monkeypatch):
    cfg = StudyConfig(batch_size=4, eval_samples=8, pretrain_steps=6, keep_best=2, task=SMALL)
    model = build_model(cfg, 0)
    task = AVTask(TaskConfig(hidden_size=cfg.hidden_size, **SMALL), model.config)
    scores = iter([0.5, 0.9, 0.9])  # validations at steps 2, 4, 6: the best (earliest of ties) is step 4
    snapshots = {}
    real_train = Trainer.train

    def spy(self, steps, lr, desc, callback=None, direct=0.0, schedule="constant"):
        def wrapped(step, trainer):
            callback(step, trainer)
            snapshots[step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        assert schedule == cfg.lr_schedule
        return real_train(self, steps, lr, desc, callback=wrapped, direct=direct, schedule=schedule)

    monkeypatch.setattr(Trainer, "train", spy)
    monkeypatch.setattr(Trainer, "evaluate", lambda self, comp, seed: {"accuracy": next(scores)})
    losses, val = pretrain(cfg, task, model, 0)
    assert len(losses) == 6 and val == [[2, 0.5], [4, 0.9], [6, 0.9]]
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[4][k]), k
    assert not all(torch.equal(v, snapshots[6][k]) for k, v in model.state_dict().items())


def test_pretrain_only_records_stage_a_and_resumes(tmp_path):
    cfg = StudyConfig(seeds=[0], batch_size=4, eval_samples=8, pretrain_steps=4, keep_best=2, lr_schedule="cosine",
                      pretrain_hint=1.0, pretrain_hint_graded=True, task=SMALL)
    first = run_study(cfg, tmp_path, pretrain_only=True)
    assert [r["method"] for r in first["records"]] == ["stage A"]
    assert [s for s, _ in first["curves"]["seed 0 pretrain validation"]] == [2, 4]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if "pretrain" not in p.name]  # no stage B
    again = run_study(cfg, tmp_path, pretrain_only=True)  # resumes from the checkpoint (no training)
    assert again["records"] == first["records"]
    assert again["curves"] == json.loads(json.dumps(first["curves"]))
