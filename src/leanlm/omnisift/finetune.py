"""Fine-tune the OmniSIFT selector (and optionally LoRA adapters on the thinker) on real clips.

Data: a JSONL file, one object per line with ``video`` (a path, relative to the JSONL file's folder or
absolute), ``question`` and ``answer``. Every example goes through the real processor path of
:mod:`leanlm.omnisift.media` (frames + audio track, ``use_audio_in_video=True``); the loss is the plain LM
loss on the answer tokens, so the selector learns through the straight-through estimator exactly as in
the paper (§3.4; no auxiliary loss). The paper fine-tunes the whole LLM with the selector; on one machine
the usual substitute is LoRA on the attention projections (``lora_rank > 0``, via PEFT); encoders and
projectors stay frozen as in the paper. The selector has its own optimizer group
(:mod:`leanlm.omnisift.training`).

Resumes: ``<out>/checkpoint.pt`` (trainable tensors, optimizer, step, data order) is written atomically every
``save_every`` steps and at the end; rerunning the same command continues from it. The result is a
loadable model directory ``<out>/model`` (LoRA merged; compressor spec in ``config.omnisift``; processor
files copied).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write, atomic_write_json
from leanlm.common.progress import get_logger, progress_bar
from leanlm.omnisift.training import GroupedAdamW, SelectorOptim, warmup_schedule

log = get_logger("leanlm.omnisift.finetune")

PROCESSOR_FILES = ("preprocessor_config.json", "chat_template.jinja", "chat_template.json", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "video_preprocessor_config.json", "processor_config.json")


@dataclass
class Example:
    video: Path
    question: str
    answer: str


@dataclass
class FinetuneConfig:
    steps: int = 100
    lr: float = 1e-4  # LoRA adapters (the paper's full-SFT rate is 1e-5)
    selector_lr: float = 1e-3
    selector_eps: float = 1e-12
    selector_clip: float = 1.0
    lora_rank: int = 0
    lora_alpha: int = 16
    rho_v: float = 0.7  # the reference code's training ratios
    rho_a: float = 0.3
    save_every: int = 50
    seed: int = 0
    fps: float = 2.0
    max_frames: int | None = None
    max_pixels: int = 256 * 28 * 28
    min_pixels: int = 4 * 28 * 28


def read_examples(path: Path) -> list[Example]:
    """Parse and check the JSONL; errors name the file, line and field."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    examples = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected an object with video, question, answer")
        for name in ("video", "question", "answer"):
            if not isinstance(row.get(name), str) or not row[name]:
                raise ValueError(f"{path}:{lineno}: field {name!r} missing or not a non-empty string")
        video = Path(row["video"])
        video = video if video.is_absolute() else path.parent / video
        if not video.exists():
            raise ValueError(f"{path}:{lineno}: field 'video': {video} does not exist")
        examples.append(Example(video, row["question"], row["answer"]))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def finetune(model_dir: Path, data: Path, out: Path, cfg: FinetuneConfig) -> dict[str, Any]:
    """Train; returns a summary (steps, losses, retention). See the module docstring."""
    from leanlm.omnisift.media import load_processor, processor_inputs
    from leanlm.omnisift.omnisift import OmniSIFT
    from leanlm.omnisift.qwen_omni import OmniSIFTThinker

    examples = read_examples(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    processor = load_processor(model_dir)
    model = OmniSIFTThinker.from_pretrained(str(model_dir))
    if not isinstance(model.compressor, OmniSIFT) or model.compressor.selector is None:
        model.set_compressor(OmniSIFT(cfg.rho_v, cfg.rho_a, seed=cfg.seed))
    model.compressor.set_ratios(cfg.rho_v, cfg.rho_a)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.compressor.parameters():
        p.requires_grad_(True)
    trained: Any = model
    if cfg.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                          target_modules=r".*model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj")
        trained = get_peft_model(model, lora)
        for p in model.compressor.parameters():  # PEFT freezes everything but the adapters
            p.requires_grad_(True)
    opt = GroupedAdamW(model, cfg.lr, SelectorOptim(cfg.selector_lr, cfg.selector_eps, cfg.selector_clip))
    sched = warmup_schedule(opt, cfg.steps)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    start, losses = 0, []
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        same = {k: v for k, v in asdict(cfg).items() if k not in ("steps", "save_every")}
        if {k: v for k, v in state["config"].items() if k not in ("steps", "save_every")} != same:
            raise ValueError(f"{ckpt}: saved with a different configuration; use another --out or delete it")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        start, losses = state["step"], state["losses"]
        log.info("resumed from %s at step %d", ckpt, start)

    def save(step: int) -> None:
        with atomic_write(ckpt, "wb") as handle:
            torch.save({"step": step, "trainable": _trainable_state(model), "optim": opt.state_dict(),
                        "sched": sched.state_dict(), "losses": losses, "config": asdict(cfg)}, handle)

    cache: dict[int, dict[str, Any]] = {}
    retention = []
    model.train()
    with progress_bar(desc="omnisift finetune", total=cfg.steps - start, unit="step") as bar:
        for step in range(start, cfg.steps):
            i = order[step % len(examples)]
            if i not in cache:
                ex = examples[i]
                cache[i] = processor_inputs(processor, ex.video, ex.question, answer=ex.answer, fps=cfg.fps,
                                            max_frames=cfg.max_frames, max_pixels=cfg.max_pixels,
                                            min_pixels=cfg.min_pixels)
            outputs = trained(**cache[i])
            opt.zero_grad()
            outputs.loss.backward()
            opt.step()
            sched.step()
            losses.append(float(outputs.loss.detach()))
            if model.last_compression is not None:
                retention.append(model.last_compression.retention)
            bar.update(1)
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save(step + 1)
    model.eval()
    final = trained.merge_and_unload() if cfg.lora_rank > 0 else model
    final.save_pretrained(out / "model")
    for name in PROCESSOR_FILES:
        if (Path(model_dir) / name).exists():
            shutil.copy2(Path(model_dir) / name, out / "model" / name)
    summary = {"steps": cfg.steps, "examples": len(examples), "losses": losses, "retention": retention,
               "selector_grad_norm": opt.last_norms.get("selector"), "config": asdict(cfg)}
    atomic_write_json(out / "summary.json", summary)
    return summary
