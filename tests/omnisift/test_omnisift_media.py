"""Real media end to end, offline: a generated video with an audio track (PyAV) through the Qwen2.5-Omni
processor (use_audio_in_video=True) into a tiny random full-Omni checkpoint, compressed; the CLI ``run``
and ``train`` commands on the same files."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("av")

from leanlm.omnisift.media import OmniSIFTPipeline, load_audio_track, load_frames

torch.set_num_threads(1)
TINY = {"min_pixels": 16 * 16, "max_pixels": 32 * 48}


def test_decoding_gives_frames_at_2fps_and_16khz_audio(av_clip):
    frames = load_frames(av_clip)
    audio = load_audio_track(av_clip)
    assert frames.shape == (8, 32, 48, 3)  # 4 s at 2 fps
    assert abs(len(audio) / 16_000 - 4.0) < 0.1
    # the 440 Hz tone survives AAC encoding and resampling: the spectrum peaks there
    spectrum = torch.fft.rfft(torch.from_numpy(audio[:16_000]))
    assert abs(int(spectrum.abs().argmax()) - 440) <= 2


def test_pipeline_compresses_real_media_with_consistent_positions(omni_checkpoint, av_clip):
    pipe = OmniSIFTPipeline.from_pretrained(omni_checkpoint, ratio=0.25, **TINY)
    thinker = pipe.thinker
    inputs = pipe.inputs(av_clip, "What is moving?")
    ids = inputs["input_ids"]
    cfg = thinker.config
    n_video, n_audio = int((ids == cfg.video_token_id).sum()), int((ids == cfg.audio_token_id).sum())
    assert n_video == 4 * 24 and 95 <= n_audio <= 105  # 4 temporal grids of 4x6 merged patches; 25 audio tokens/s
    full_pos, _ = thinker.get_rope_index(ids, None, inputs["video_grid_thw"], inputs["attention_mask"], True,
                                         inputs["feature_attention_mask"].sum(-1), inputs["video_second_per_grid"])
    seen = []
    handle = thinker.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    ans = pipe(av_clip, "What is moving?", max_new_tokens=3)
    handle.remove()
    stats = thinker.last_compression
    # compression happened, with the Table 6 budget per frame and per chunk
    assert stats.video_kept == 4 * (24 - int(24 * 0.77)) and stats.video_kept < stats.video_total
    assert stats.audio_kept < stats.audio_total
    assert ans.llm_tokens == int(stats.keep.sum()) < ans.prompt_tokens
    # kept tokens carry their original TMRoPE ids; text is never pruned
    keep = stats.keep[0]
    assert torch.equal(seen[0]["position_ids"][:, 0], full_pos[:, 0, keep])
    av = (ids[0] == cfg.video_token_id) | (ids[0] == cfg.audio_token_id)
    assert keep[~av].all()
    # generate() returned new tokens; decoding continues after the largest original position
    assert len(ans.tokens) == 3
    assert int(thinker.rope_deltas[0]) == int(full_pos.max()) + 1 - int(keep.sum())
    # without a compressor the same inputs reach the LLM whole
    thinker.set_compressor(None)
    full = pipe(av_clip, "What is moving?", max_new_tokens=3)
    assert full.llm_tokens == full.prompt_tokens == ans.prompt_tokens


def test_cli_run_and_train(omni_checkpoint, av_clip, clip_writer, tmp_path):
    from typer.testing import CliRunner

    from leanlm.omnisift.cli import app

    runner = CliRunner()
    tiny = ["--min-pixels", str(TINY["min_pixels"]), "--max-pixels", str(TINY["max_pixels"])]
    result = runner.invoke(app, ["run", "--model", str(omni_checkpoint), "--video", str(av_clip), "--ratio", "0.25",
                                 "--max-new-tokens", "2", "--json", *tiny])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if '{"answer"' in line)  # stderr bars share the line
    info = json.loads(line[line.index('{"answer"'):])
    assert info["video_kept"] < info["video_total"] and info["audio_kept"] < info["audio_total"]
    assert info["llm_tokens"] < info["prompt_tokens"]

    # train: two generated clips, a JSONL with relative paths; the selector moves, the model reloads
    data = tmp_path / "data"
    data.mkdir()
    for k, tone in enumerate((330.0, 660.0)):
        clip_writer(data / f"c{k}.mp4", seconds=2.0, tone=tone, seed=k)
    (data / "train.jsonl").write_text("\n".join(json.dumps({"video": f"c{k}.mp4", "question": "Which tone?",
                                                             "answer": ["low", "high"][k]}) for k in range(2)))
    out = tmp_path / "run"
    args = ["train", "--model", str(omni_checkpoint), "--data", str(data / "train.jsonl"), "--out", str(out),
            "--steps", "3", "--save-every", "2", "--lora-rank", "2", *tiny]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["losses"]) == 3 and summary["selector_grad_norm"] > 0
    assert all(r < 1.0 for r in summary["retention"])
    from leanlm.omnisift.qwen_omni import OmniSIFTThinker

    trained = OmniSIFTThinker.from_pretrained(out / "model")
    assert trained.compressor.spec()["rho_v"] == 0.7
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    sel = {k.removeprefix("compressor.selector."): v for k, v in ckpt["trainable"].items()
           if k.startswith("compressor.selector.")}
    for k, v in trained.compressor.selector.state_dict().items():
        assert torch.equal(v, sel[k]), k
    assert any("lora" in k for k in ckpt["trainable"])
    # resuming with more steps continues from step 3
    result = runner.invoke(app, [*args[:7], "--steps", "4", *args[9:]])
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "summary.json").read_text())["losses"]) == 4
    # bad data names the line and the field
    (data / "bad.jsonl").write_text(json.dumps({"video": "c0.mp4", "question": "q"}) + "\n")
    result = runner.invoke(app, ["train", "--model", str(omni_checkpoint), "--data", str(data / "bad.jsonl"),
                                 "--out", str(tmp_path / "bad"), *tiny])
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output
    from leanlm.omnisift.finetune import read_examples

    with pytest.raises(ValueError, match=r"bad\.jsonl:1: field 'answer' missing"):
        read_examples(data / "bad.jsonl")
    (data / "bad.jsonl").write_text(json.dumps({"video": "nope.mp4", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: field 'video': .*nope\.mp4 does not exist"):
        read_examples(data / "bad.jsonl")
