"""The synthetic task's construction, the study's training/evaluation plumbing, resume, CLI and registration."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from leanlm.omnisift.study import StudyConfig, Trainer, build_model, make_compressor, summarize, trained_model
from leanlm.omnisift.synth import AVTask, TaskConfig

torch.set_num_threads(1)

SMALL = {"frames": 4, "sources": 4, "classes": 8, "sounds_per_chunk": 4, "audio_per_chunk": 4}


@pytest.fixture(scope="module")
def setup():
    cfg = StudyConfig(batch_size=4, eval_samples=8, pretrain_steps=2, finetune_steps=2, task=SMALL)
    model = build_model(cfg, 0)
    task = AVTask(TaskConfig(hidden_size=cfg.hidden_size, **SMALL), model.config)
    return cfg, model, task


def test_task_places_the_answer_sound_in_the_event_chunk(setup):
    _, model, task = setup
    batch = task.sample(16, torch.Generator().manual_seed(0))
    ids = batch.input_ids[0]
    assert (ids[task.audio_index] == model.config.audio_token_id).all()
    assert (ids[task.video_index] == model.config.video_token_id).all()
    pos, _ = model.get_rope_index(
        batch.input_ids[:1], None, task.prompt.video_grid_thw, torch.ones_like(batch.input_ids[:1]), True,
        task.prompt.audio_feature_lengths, task.prompt.video_second_per_grid,
    )
    from leanlm.omnisift.layout import build_layout

    layout = build_layout(ids, pos[0, 0], model.config.video_token_id, model.config.audio_token_id)
    assert len(layout.chunks) == 2 and all(c.audio.numel() == 4 for c in layout.chunks)
    for b in range(16):
        chunk = layout.chunks[int(batch.event_chunk[b])]
        assert int(batch.target_audio_index[b]) in chunk.audio.tolist()
        e = batch.inputs_embeds[b, batch.target_audio_index[b]]
        # decode the sound: its class is the answer and its source matches the visible object
        src = task.src_audio @ (e - task.cls[batch.answer[b]] - task.time_codes[batch.event_chunk[b]])
        obj = batch.inputs_embeds[b, batch.object_index[b]].mean(0) - task.event_sig
        assert int(torch.argmax(task.obj @ obj)) == int(torch.argmax(src))
        assert int(batch.input_ids[b, -1]) == int(task.class_tokens[batch.answer[b]])


def test_without_the_answer_sound_the_input_is_the_same_whatever_the_answer(setup):
    """The elimination leak is closed on every sample: forcing each possible answer class (same random draws
    otherwise) changes the answer sound's token and the label only. So once the answer sound is dropped,
    what remains (every other token's features, classes and sources) does not depend on the answer."""
    _, _, task = setup
    n, K = 128, task.cfg.classes
    runs = [task.sample(n, torch.Generator().manual_seed(3), answer=k) for k in range(K)]
    ref = runs[0]
    av = torch.cat([task.video_index, task.audio_index])
    for k, batch in enumerate(runs):
        assert (batch.answer == k).all()
        assert torch.equal(batch.event_chunk, ref.event_chunk)
        assert torch.equal(batch.target_audio_index, ref.target_audio_index)
        assert torch.equal(batch.sound_source, ref.sound_source)
        assert all(torch.equal(a, b) for a, b in zip(batch.object_index, ref.object_index, strict=True))
        for b in range(n):
            keep = av[av != ref.target_audio_index[b]]  # every AV token but the answer sound
            assert torch.equal(batch.inputs_embeds[b, keep], ref.inputs_embeds[b, keep])
            t = int(ref.target_audio_index[b])
            assert k == 0 or not torch.equal(batch.inputs_embeds[b, t], ref.inputs_embeds[b, t])
            # the classes heard without the answer sound, chunk by chunk, are the same for every answer
            c, a = divmod(int((task.audio_index == t).nonzero()), task.cfg.audio_per_chunk)
            mask = torch.ones_like(batch.sound_class[b], dtype=torch.bool)
            mask[c, a] = False
            assert torch.equal(batch.sound_class[b][mask], ref.sound_class[b][mask])
            assert int(batch.sound_class[b, c, a]) == k


def test_task_layout_sources_classes_and_answer(setup):
    """Every chunk sounds each source once (the sources heard say nothing), the object's source sounds in
    every chunk, the answer sound is s*'s in the event chunk, and classes are drawn over all classes (more
    classes than sounds per chunk), with the answer uniform."""
    _, _, task = setup
    batch = task.sample(512, torch.Generator().manual_seed(1))
    cls, src = batch.sound_class, batch.sound_source  # [B, C, A]
    C, A = cls.shape[1], cls.shape[2]
    for b in range(cls.shape[0]):
        for k in range(C):
            assert sorted(src[b, k].tolist()) == list(range(task.cfg.sources))
        c, a = divmod(int((task.audio_index == batch.target_audio_index[b]).nonzero()), A)
        assert c == int(batch.event_chunk[b]) and int(cls[b, c, a]) == int(batch.answer[b])
    assert set(cls.flatten().tolist()) == set(range(task.cfg.classes))
    counts = torch.bincount(batch.answer, minlength=task.cfg.classes)
    assert int(counts.min()) > 512 / task.cfg.classes / 2


def test_training_step_updates_backbone_and_selector(setup):
    cfg, _, task = setup
    model = build_model(cfg, 0)
    model.set_compressor(make_compressor(cfg, {}, 0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = Trainer(cfg, task, model, 0).train(2, 1e-3, "test")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("compressor.selector") for n in changed)
    assert any(n.startswith("model.layers") for n in changed)


def test_evaluate_reports_budget_and_evidence(setup):
    cfg, model, task = setup
    trainer = Trainer(cfg, task, model, 0)
    full = trainer.evaluate(None, 1)
    assert full["retention"] == 1.0 and full["target_audio_kept"] == 1.0
    comp = make_compressor(cfg, {}, 0)
    comp.set_ratios(0.5, 0.5)
    pruned = trainer.evaluate(comp, 1)
    # 4 frames x (16 - 8) + 2 chunks x (4 - 2) kept of 72
    assert pruned["retention"] == pytest.approx((4 * 8 + 2 * 2) / 72)
    # the leak check counts the samples whose answer sound was dropped
    assert full["sound_dropped"] == 0 and full["accuracy_sound_dropped"] is None
    assert pruned["sound_dropped"] == round((1 - pruned["target_audio_kept"]) * cfg.eval_samples)


def test_stage_checkpoint_is_reused(setup, tmp_path):
    cfg, model, task = setup
    state = model.state_dict()
    first, losses = trained_model(cfg, task, 0, "OmniSIFT", state, tmp_path)
    assert losses is not None and len(losses) == cfg.finetune_steps
    again, losses2 = trained_model(cfg, task, 0, "OmniSIFT", state, tmp_path)
    assert losses2 == losses  # the curve is restored from the sidecar file
    for (n, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_summarize_means_over_seeds():
    recs = [{"method": "m", "target": 0.25, "accuracy": a, "retention": 0.25, "target_audio_kept": 1.0,
             "object_kept": 1.0, "rho_v": 0.8, "rho_a": 0.5, "seed": s} for s, a in enumerate([0.5, 0.7])]
    (row,) = summarize(recs)
    assert row["accuracy"] == pytest.approx(0.6) and row["std"] == pytest.approx(0.1414, abs=1e-3)
    assert row["accuracy_sound_dropped"] is None
    recs[0] |= {"accuracy_sound_dropped": 0.5, "sound_dropped": 10}
    recs[1] |= {"accuracy_sound_dropped": 0.2, "sound_dropped": 30}
    (row,) = summarize(recs)
    assert row["accuracy_sound_dropped"] == pytest.approx((5 + 6) / 40)  # pooled over seeds


def test_study_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="bogus"):
        StudyConfig.from_dict({"bogus": 1})


def test_cli_ratios_and_bad_config(tmp_path):
    from leanlm.omnisift.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["ratios", "--chunks", "2"])
    assert res.exit_code == 0, res.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"seeds": [0],\n "pretrain_steps": }')
    res = runner.invoke(app, ["study", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "bad.json:2" in res.output


def test_experiment_is_registered():
    from leanlm.reproduce import discover

    exp = discover()["omnisift-synthetic-av"]
    assert exp.module == "omnisift"
    StudyConfig.from_dict(dict(exp.quick["study"]))
    StudyConfig.from_dict(dict(exp.full["study"]))
    assert json.dumps(exp.quick)  # configs are plain JSON


def test_loud_irrelevant_audio_defeats_an_energy_ranking_and_leaks_nothing():
    """Issue-§2 geometry: 8 frames, 16 audio tokens per chunk, 10 of them loud and irrelevant. They sit in
    non-sound slots, are louder than every sound (so keeping the highest-norm audio keeps no sound at all
    at the 35% and 25% audio budgets), and forcing the answer still changes only the answer sound."""
    geo = {"frames": 8, "audio_per_chunk": 16, "loud_per_chunk": 10}
    cfg = StudyConfig(task=geo)
    model = build_model(cfg, 0)
    task = AVTask(TaskConfig(hidden_size=cfg.hidden_size, **geo), model.config)
    assert task.prompt.n_video == 8 * 16 and task.prompt.n_audio == 4 * 16
    runs = [task.sample(64, torch.Generator().manual_seed(2), answer=k) for k in (0, 5)]
    batch = runs[0]
    audio = batch.inputs_embeds[:, task.audio_index].reshape(64, 4, 16, -1)
    norms = audio.norm(dim=-1)
    sound = batch.sound_class >= 0  # [B, C, A]
    assert int(sound.sum()) == 64 * 4 * 4
    loudest_sound = torch.where(sound, norms, torch.zeros_like(norms)).amax(-1, keepdim=True)  # per chunk
    loud = norms > loudest_sound
    assert (loud.sum(-1) == 10).all() and not (loud & sound).any()
    assert float(norms[loud].mean()) > 1.5 * float(norms[sound].mean())
    for n_keep in (10, 8):  # 16 − int(16·0.4), 16 − int(16·0.5)
        top = norms.topk(n_keep, dim=-1).indices
        assert not sound.gather(2, top).any()
    other = torch.ones(batch.inputs_embeds.shape[1], dtype=torch.bool)
    for b in range(64):
        other[:] = True
        other[batch.target_audio_index[b]] = False
        assert torch.equal(runs[0].inputs_embeds[b, other], runs[1].inputs_embeds[b, other])
    with pytest.raises(ValueError, match="loud_per_chunk"):
        AVTask(TaskConfig(hidden_size=64, frames=8, audio_per_chunk=16, loud_per_chunk=13), model.config)


def test_gradient_diagnostics_per_ste_formulation(tmp_path):
    """``leanlm omnisift ste-check``'s core: dropped tokens get no gradient with the paper's formulation and a
    non-zero one with mask/mean; the cosines to the directly supervised gradient are proper cosines."""
    from leanlm.omnisift.curves import gradient_diagnostics

    cfg = StudyConfig(batch_size=4, pretrain_steps=2, task=SMALL)
    out = gradient_diagnostics(cfg, 0, tmp_path, batches=2, batch_size=16)
    assert set(out) == {"remove", "mask", "mean"}
    for ste, row in out.items():
        assert len(row["cosine_to_direct"]) == 2 and all(-1 <= c <= 1 for c in row["cosine_to_direct"])
        g = row["groups"]
        assert sum(x["n"] for x in g.values()) == 2 * 16 * 2 * 4  # every audio token of every chunk
        dropped = g["other dropped"]["mean_abs"]
        assert (dropped == 0.0) if ste == "remove" else (dropped > 0.0)
    assert list(tmp_path.glob("seed0-pretrain-*.pt"))  # stage A saved for reuse


def test_cli_selection_check_on_the_loud_geometry(tmp_path):
    from leanlm.omnisift.cli import app

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"task": {"frames": 8, "audio_per_chunk": 16, "loud_per_chunk": 10}}))
    res = CliRunner().invoke(app, ["selection-check", "--config", str(cfg), "--samples", "32"])
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if line.startswith("| 25%") or line.startswith("| 35%")]
    assert len(rows) == 2 * 5  # 3 training-free baselines, STVP + random audio, loudest audio; 2 retentions
    assert all(line.endswith("| 0.000 | – |") for line in rows if "loudest" in line)
    stvp = [line for line in rows if "STVP" in line]
    assert all(line.split("|")[-2].strip() == "1.000" for line in stvp)  # STVP always keeps the moving object


def test_new_task_fields_at_their_defaults_keep_old_checkpoint_fingerprints():
    """Checkpoints written before ``loud_per_chunk``/``loud_scale`` existed still resume: the fingerprint of
    a config that leaves them at their defaults is the one those runs wrote (golden value: §2b's stage A)."""
    base = {"pretrain_steps": 1000, "lr": 3e-3, "finetune_lr": 1e-3, "task": {}}
    old = StudyConfig(**base).fingerprint("pretrain")
    assert old == "bc06bf1e45d7"
    assert StudyConfig(**{**base, "task": {"loud_per_chunk": 0, "loud_scale": 3.0}}).fingerprint("pretrain") == old
    assert StudyConfig(**{**base, "task": {"loud_per_chunk": 2}}).fingerprint("pretrain") != old


def test_untrained_selector_row_is_the_trained_variants_starting_point(tmp_path):
    """The diagnostic row "OmniSIFT (untrained selector)" uses the selector the OmniSIFT variant starts its
    fine-tuning from (same weights), on the full-token backbone; its keep-set is recomputed here by hand."""
    from leanlm.omnisift.presets import paper_ratios, solve_rho_v
    from leanlm.omnisift.study import initial_compressor, run_study

    cfg = StudyConfig(seeds=[1], batch_size=4, eval_samples=8, pretrain_steps=2, finetune_steps=2, task=SMALL,
                      variants=["OmniSIFT", "OmniSIFT (untrained selector)"])
    result = run_study(cfg, tmp_path)
    rows = {(r["method"], r["target"]): r for r in result["records"]}
    assert {m for m, _ in rows} == {"OmniSIFT", "OmniSIFT (untrained selector)"}  # full tokens trained, not reported
    # the starting point of the trained variant: a fresh build_model then the compressor, as in trained_model
    model = build_model(cfg, 1)
    start = make_compressor(cfg, {}, 1)
    again = initial_compressor(cfg, {}, 1)
    for (n, a), (_, b) in zip(start.selector.state_dict().items(), again.selector.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    trained = torch.load(next(tmp_path.glob("checkpoints/seed1-OmniSIFT-*.pt")), weights_only=True)
    moved = [k for k, v in start.selector.state_dict().items() if not torch.equal(v, trained[f"compressor.selector.{k}"])]
    assert moved  # fine-tuning changed the selector, so the two rows are different selectors
    task = AVTask(TaskConfig(hidden_size=cfg.hidden_size, **SMALL), model.config)
    trainer = Trainer(cfg, task, model, 1)
    sizes, audio = task.frame_sizes()
    start.eval()
    for target in cfg.retentions:
        rho_a = paper_ratios("omnisift", target)[1]
        start.set_ratios(solve_rho_v(sizes, audio, rho_a, target), rho_a)
        batch = task.sample(cfg.eval_samples, torch.Generator().manual_seed(99_000 + 1))
        kw = trainer.inputs(batch)
        with torch.no_grad():
            keep = start.compress(kw["inputs_embeds"], kw["av_layouts"]).keep
        kept = sum(int(keep[b, batch.target_audio_index[b]]) for b in range(cfg.eval_samples)) / cfg.eval_samples
        assert rows[("OmniSIFT (untrained selector)", target)]["target_audio_kept"] == kept


def test_unknown_study_variant_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown study variant.*Bogus.*known: full tokens"):
        StudyConfig(variants=["OmniSIFT", "Bogus"])


def _run_file(path, seed, rows, **config):
    recs = [{"seed": seed, "method": m, "target": t, "accuracy": acc, "target_audio_kept": kept, "object_kept": 1.0,
             "retention": t, "rho_v": 0.9, "rho_a": 0.5, "accuracy_sound_dropped": None, "sound_dropped": 0}
            for m, t, acc, kept in rows]
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"pretrain_steps": 4000, "task": {"frames": 8}, **config}
    (path / "results.json").write_text(json.dumps({"records": recs, "config": cfg}))
    return path


def test_merge_pairs_by_seed_with_student_t_intervals(tmp_path):
    from leanlm.omnisift.cli import app
    from leanlm.omnisift.merge import load_runs, paired, report

    # seed s: OmniSIFT beats Random by 0.1, 0.2, 0.3 at 25%; seed 2's backbone is at chance
    runs = [_run_file(tmp_path / f"s{s}", s, [("full tokens", 1.0, full, 1.0), ("OmniSIFT", 0.25, 0.5 + d, 0.7),
                                                 ("Random", 0.25, 0.5, 0.5)])
            for s, d, full in ((0, 0.1, 1.0), (1, 0.2, 0.9), (2, 0.3, 0.12))]
    records, settings = load_runs(runs)
    assert settings["pretrain_steps"] == 4000 and len(records) == 9
    d = paired(records, "OmniSIFT", "Random", "accuracy", 0.25)
    assert d["seeds"] == [0, 1, 2] and d["per_seed"] == pytest.approx([0.1, 0.2, 0.3])
    half = 4.302652729911275 * 0.1 / 3 ** 0.5  # t(0.975, df 2) · sd / √n, sd of (0.1, 0.2, 0.3) = 0.1
    assert (d["mean"], d["low"], d["high"]) == pytest.approx((0.2, 0.2 - half, 0.2 + half))
    text, data = report(records, chance=0.125)
    assert data["not_learned"] == [2] and "Seed 2's backbone did not learn" in text
    assert "| OmniSIFT − Random | accuracy | 25% | +0.200 |" in text and "(excludes 0)" in text
    assert "| OmniSIFT − Random | answer sound kept | 25% | +0.200 | [+0.200, +0.200] **(excludes 0)**" in text
    res = CliRunner().invoke(app, ["merge", *map(str, runs), "--out", str(tmp_path / "m.md")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["paired"][0]["mean"] == pytest.approx(0.2)
    # the same seed twice, runs with different settings, and a missing run are clear errors
    with pytest.raises(ValueError, match="seed 0 OmniSIFT at 25% is also in"):
        load_runs([runs[0], _run_file(tmp_path / "dup", 0, [("OmniSIFT", 0.25, 0.4, 0.5)])])
    with pytest.raises(ValueError, match="pretrain_steps=2000 vs 4000"):
        load_runs([runs[0], _run_file(tmp_path / "s9", 9, [("OmniSIFT", 0.25, 0.4, 0.5)], pretrain_steps=2000)])
    res = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["merge", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.md")])
    assert res.exit_code != 0 and "no results.json" in res.output


def test_claim_metrics_pair_seeds_and_judge_the_vgas_ablation():
    from leanlm.omnisift.experiments import study_metrics
    from leanlm.reproduce import discover

    def rec(seed, method, target, acc, kept=0.5):
        return {"seed": seed, "method": method, "target": target, "accuracy": acc, "target_audio_kept": kept,
                "object_kept": 1.0, "retention": target, "rho_v": 0.9, "rho_a": 0.5}

    recs = []
    for s, gain in ((0, 0.10), (1, 0.12), (2, 0.14)):
        recs += [rec(s, "full tokens", 1.0, 0.8), rec(s, "OmniSIFT", 0.35, 0.6 + gain, 0.7),
                 rec(s, "VGAS→random", 0.35, 0.6, 0.6), rec(s, "OmniZip-style", 0.35, 0.4),
                 rec(s, "OmniSIFT (untrained selector)", 0.35, 0.5, 0.9)]
    m = study_metrics(recs, [0.35])
    assert m["omnisift_35_pct_full"] == "90%" and m["best_baseline_35_pct_full"] == "50%"
    assert m["vgas_gain_35"] == pytest.approx(0.12) and type(m["vgas_gain_35_hw"]) is float
    assert m["vgas_gain_35_hw"] == pytest.approx(4.302652729911275 * 0.02 / 3 ** 0.5, abs=1e-3)
    assert m["vgas_answer_sound_gain_35"] == pytest.approx(0.1) and m["ste_answer_sound_gain_35"] == pytest.approx(-0.2)
    claim = next(c for c in discover()["omnisift-synthetic-av"].claims if c.metric == "vgas_gain_35")
    assert claim.rule.evaluate(m).verdict == "reproduced"
    # one seed: no interval, so the claim is not judged on it
    one = study_metrics([r for r in recs if r["seed"] == 0], [0.35])
    assert "vgas_gain_35" not in one and claim.rule.evaluate(one).verdict == "not measured"
