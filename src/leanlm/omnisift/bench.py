"""Prefill time with and without OmniSIFT on a randomly initialised thinker of a real model's shape.

The language model has the text shape of Qwen2.5-Omni-3B (default: hidden 2048, 16 heads, 2 KV heads,
intermediate 11008; ``--layers`` defaults to 36) or 7B (``--shape 7b``). The audio-visual input is a video of
``frames`` LLM frames of ``tokens_per_frame`` tokens with 25 audio tokens per second in the real
``use_audio_in_video`` interleave; embeddings are random (``inputs_embeds``: the encoders are unchanged by
OmniSIFT and not timed here, see ``flops.py`` for their share). Every setting runs round-robin, the first
round is discarded, and the median and min/max of the rest are reported, plus the compressor's own time
(STVP + VGAS, timed alone). The vocabulary is cut to 512 (only the last position's logits are computed, so
this does not change the prefill). Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write, atomic_write_json
from leanlm.omnisift.layout import build_layouts
from leanlm.omnisift.omnisift import OmniSIFT
from leanlm.omnisift.presets import paper_ratios, solve_rho_v

SHAPES = {
    "3b": {"hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
           "intermediate_size": 11008},
    "7b": {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
           "intermediate_size": 18944},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def prefill_benchmark(shape: str = "3b", layers: int | None = None, frames: int = 16, tokens_per_frame: int = 256,
                      retentions: tuple[float, ...] = (0.35, 0.25), repeats: int = 3, device: str = "cpu",
                      dtype: str = "float32", threads: int | None = None) -> dict[str, Any]:
    from leanlm.omnisift.qwen_omni import OmniSIFTThinker
    from leanlm.omnisift.tiny import av_prompt, tiny_thinker_config

    if threads:
        torch.set_num_threads(threads)
    dev, dt = torch.device(device), getattr(torch, dtype)
    text = dict(SHAPES[shape])
    if layers is not None:
        text["num_hidden_layers"] = layers
    config = tiny_thinker_config(compact_ids=True, vocab_size=512, hidden_size=text["hidden_size"],
                                 num_hidden_layers=text["num_hidden_layers"],
                                 num_attention_heads=text["num_attention_heads"],
                                 num_key_value_heads=text["num_key_value_heads"])
    config.get_text_config().intermediate_size = text["intermediate_size"]
    torch.manual_seed(0)
    with torch.device(dev):
        model = OmniSIFTThinker(config).to(dt).eval()
    rows_ = max(a for a in range(1, int(tokens_per_frame**0.5) + 1) if tokens_per_frame % a == 0)
    grid = (2 * rows_, 2 * (tokens_per_frame // rows_))  # patches before the 2x2 merge
    p = av_prompt(model.config, frames, grid, 25 * frames, [10, 11, 12], [13, 14])
    ids = p.input_ids.to(dev)
    pos, _ = model.get_rope_index(ids, None, p.video_grid_thw.to(dev), torch.ones_like(ids), True,
                                  p.audio_feature_lengths.to(dev), p.video_second_per_grid.to(dev))
    layouts = build_layouts(ids, pos, model.config.video_token_id, model.config.audio_token_id)
    embeds = torch.randn(1, ids.shape[1], text["hidden_size"], generator=torch.Generator().manual_seed(0)).to(dev, dt)
    n_p = p.n_video // frames
    chunks = layouts[0].chunks
    sizes, audio = [[n_p] * len(c.frames) for c in chunks], [int(c.audio.numel()) for c in chunks]
    comps: dict[float, OmniSIFT | None] = {1.0: None}
    for r in retentions:
        rho_a = paper_ratios("omnisift", r)[1] if r in (0.35, 0.25) else 0.3
        comp = OmniSIFT(solve_rho_v(sizes, audio, rho_a, r), rho_a)
        model.set_compressor(comp)
        comp.to(dev, dt).eval()
        comps[r] = comp
    kwargs = dict(input_ids=ids, inputs_embeds=embeds, attention_mask=torch.ones_like(ids), position_ids=pos,
                  av_layouts=layouts, use_audio_in_video=True, use_cache=False, logits_to_keep=1)
    times: dict[float, list[float]] = {r: [] for r in comps}
    selector: dict[float, list[float]] = {r: [] for r in comps if r != 1.0}
    kept: dict[float, int] = {}
    with torch.no_grad():
        for _ in range(repeats + 1):
            for r, comp in comps.items():
                model.set_compressor(comp)
                _sync(dev)
                t0 = time.perf_counter()
                model(**kwargs)
                _sync(dev)
                times[r].append(time.perf_counter() - t0)
                stats = model.last_compression
                kept[r] = ids.shape[1] if stats is None else int(stats.keep.sum())
                if comp is not None:
                    _sync(dev)
                    t0 = time.perf_counter()
                    comp(embeds, layouts)
                    _sync(dev)
                    selector[r].append(time.perf_counter() - t0)
    full = statistics.median(times[1.0][1:])
    rows = []
    for r, t in times.items():
        t = t[1:]
        sel = selector.get(r, [0.0, 0.0])[1:]
        rows.append({"retention": r, "tokens": kept[r], "median_s": statistics.median(t), "min_s": min(t),
                     "max_s": max(t), "ratio": statistics.median(t) / full,
                     "compressor_s": statistics.median(sel) if sel else 0.0})
    return {"shape": shape, "text_config": text, "frames": frames, "tokens_per_frame": tokens_per_frame,
            "sequence": int(ids.shape[1]), "repeats": repeats, "device": str(dev), "dtype": dtype,
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
    t = result["text_config"]
    lines = [
        f"Prefill of a random thinker shaped like Qwen2.5-Omni-{result['shape'].upper()} (hidden {t['hidden_size']}, "
        f"{t['num_hidden_layers']} layers, {t['num_attention_heads']}/{t['num_key_value_heads']} heads, "
        f"intermediate {t['intermediate_size']}), {result['frames']} frames x {result['tokens_per_frame']} tokens + "
        f"25 audio tokens/s ({result['sequence']} tokens), {result['device']} {result['dtype']}, "
        f"{result['threads']} threads, torch {result['torch']}; median (min-max) of {result['repeats']} interleaved runs "
        "after one warm-up round; encoders not included.",
        "",
        "| kept target | LLM tokens | prefill median s (min-max) | ratio to full | compressor alone s |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        target = "100% (no compression)" if r["retention"] == 1.0 else f"{r['retention']:.0%}"
        lines.append(f"| {target} | {r['tokens']} | {r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f}) | "
                     f"{r['ratio']:.3f} | {r['compressor_s']:.4f} |")
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as handle:
        handle.write(to_markdown(result))
    atomic_write_json(out.with_suffix(".json"), result)


def main_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
