"""Real video with its audio track in, OmniSIFT-compressed Qwen2.5-Omni answer out.

The inputs go through transformers' own ``Qwen2_5OmniProcessor`` with ``use_audio_in_video=True``, so the
placeholder interleave, the TMRoPE ids and the mel features are exactly the ones the model was trained on.
Decoding uses PyAV, the library behind transformers' default video backend
(``transformers.video_utils.load_video(backend="pyav")``) for the frames, and PyAV again for the audio track,
resampled to 16 kHz mono. (transformers' ``load_audio`` reads a video's audio through torchcodec or librosa,
both of which need a system FFmpeg; PyAV ships its own, so this path works on a bare machine.)

Three lines::

    from leanlm.omnisift.media import OmniSIFTPipeline
    pipe = OmniSIFTPipeline.from_pretrained("path/to/Qwen2.5-Omni-7B", ratio=0.25)
    print(pipe("clip.mp4", "What happens in this video?").text)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SAMPLING_RATE = 16_000
#: Frames per second sampled from the video (Qwen2.5-Omni / OmniSIFT use 2 fps).
DEFAULT_FPS = 2.0
#: Pixels per frame: OmniSIFT's evaluation script caps frames at 256·28·28.
DEFAULT_MAX_PIXELS = 256 * 28 * 28
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_SYSTEM = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory "
    "and visual inputs, as well as generating text and speech."
)


def frames_video_processor(image_processor: Any) -> Any:
    """A ``BaseVideoProcessor`` that patchifies frames with Qwen2-VL's PIL/numpy image processor
    (``Qwen2VLImageProcessor._preprocess``: smart resize, rescale, normalise, temporal pairs, 2×2 merge order).

    transformers' own ``Qwen2VLVideoProcessor`` needs torchvision; where no torchvision build matches the
    installed torch (e.g. a CPU-only torch with only CUDA torchvision wheels reachable) this gives the same
    ``pixel_values_videos`` / ``video_grid_thw`` layout from the same resize rule (PIL instead of torchvision
    interpolation, so pixel values can differ slightly)."""
    from transformers.image_utils import ChannelDimension
    from transformers.video_processing_utils import BaseVideoProcessor

    class FramesVideoProcessor(BaseVideoProcessor):
        model_input_names = ["pixel_values_videos", "video_grid_thw"]  # noqa: RUF012 (transformers API)

        def __init__(self, images: Any) -> None:
            super().__init__()
            self.images = images
            self.patch_size, self.merge_size = images.patch_size, images.merge_size
            self.temporal_patch_size = images.temporal_patch_size

        def __call__(self, videos: Any, size: dict | None = None, return_tensors: Any = None, **_: Any) -> Any:
            from transformers import BatchFeature

            ip = self.images
            size = size or ip.size
            patches, grids = [], []
            for video in videos:
                frames = [np.asarray(f) for f in video]
                flat, grid = ip._preprocess(
                    frames, do_resize=True, size=size, resample=ip.resample, do_rescale=ip.do_rescale,
                    rescale_factor=ip.rescale_factor, do_normalize=ip.do_normalize, image_mean=ip.image_mean,
                    image_std=ip.image_std, patch_size=ip.patch_size, temporal_patch_size=ip.temporal_patch_size,
                    merge_size=ip.merge_size, do_convert_rgb=True, data_format=ChannelDimension.FIRST,
                    input_data_format=ChannelDimension.LAST,
                )
                patches.append(flat)
                grids.append(grid)
            return BatchFeature({"pixel_values_videos": np.concatenate(patches), "video_grid_thw": np.array(grids)},
                                tensor_type=return_tensors)

    return FramesVideoProcessor(image_processor)


def load_processor(path: str | Path) -> Any:
    """``Qwen2_5OmniProcessor`` for a checkpoint directory: transformers' own when it loads; otherwise the
    same processor assembled from the checkpoint's tokenizer, Whisper feature extractor, Qwen2-VL image
    processor and chat template, with :func:`frames_video_processor` for the frames (no torchvision)."""
    from transformers import (
        AutoTokenizer,
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        WhisperFeatureExtractor,
    )

    try:
        return Qwen2_5OmniProcessor.from_pretrained(str(path))
    except (ImportError, ValueError, OSError, TypeError) as exc:
        from leanlm.common.progress import get_logger

        get_logger("leanlm.omnisift").info("Qwen2_5OmniProcessor.from_pretrained failed (%s); assembling it with "
                                           "a torchvision-free video processor", str(exc).splitlines()[0][:120])
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    image_processor = Qwen2VLImageProcessor.from_pretrained(str(path))
    feature_extractor = WhisperFeatureExtractor.from_pretrained(str(path))
    template = getattr(tokenizer, "chat_template", None)
    for name in ("chat_template.jinja", "chat_template.json"):
        file = Path(path) / name
        if file.exists():
            text = file.read_text()
            template = text if name.endswith(".jinja") else json.loads(text)["chat_template"]
            break

    class _Processor(Qwen2_5OmniProcessor):
        # without torchvision, transformers exports a dummy BaseVideoProcessor, which nothing passes
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor":
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

    return _Processor(image_processor=image_processor, video_processor=frames_video_processor(image_processor),
                      feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=template)


def _require_av() -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading video files needs PyAV: pip install 'leanlm[media]' (or pip install av)") from exc
    return av


def load_frames(path: str | Path, fps: float = DEFAULT_FPS, max_frames: int | None = None) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 sampled at ``fps`` with transformers' PyAV backend. An even frame count is
    kept (the vision encoder merges frames in temporal pairs)."""
    _require_av()
    from transformers.video_utils import load_video

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video file")

    def sample(metadata: Any, **_: Any) -> np.ndarray:
        total, native = int(metadata.total_num_frames), float(metadata.fps or fps)
        n = max(2, int(total / native * fps))
        if max_frames is not None:
            n = min(n, max_frames)
        n -= n % 2
        return np.linspace(0, total - 1, n).round().astype(int)

    frames, _ = load_video(str(path), backend="pyav", sample_indices_fn=sample)
    if len(frames) == 0:
        raise ValueError(f"{path}: no video frames decoded")
    return np.asarray(frames)


def load_audio_track(path: str | Path, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """The file's first audio stream as float32 mono at ``sampling_rate`` (PyAV's resampler)."""
    av = _require_av()
    path = Path(path)
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: the file has no audio track (OmniSIFT compresses video *with* its audio)")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
        chunks = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise ValueError(f"{path}: the audio track decoded to no samples")
    return np.concatenate(chunks).astype(np.float32)


def conversation(question: str, video: str, system: str | None = DEFAULT_SYSTEM) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    if system:
        turns.append({"role": "system", "content": [{"type": "text", "text": system}]})
    turns.append({"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": question}]})
    return turns


def processor_inputs(
    processor: Any, video: str | Path, question: str, *, fps: float = DEFAULT_FPS, max_frames: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS, min_pixels: int = DEFAULT_MIN_PIXELS, answer: str | None = None,
    system: str | None = DEFAULT_SYSTEM,
) -> dict[str, Any]:
    """``Qwen2_5OmniProcessor`` outputs for one video with its audio track and a question (and, for
    training, the answer appended after the generation prompt; ``labels`` then mark the answer tokens)."""
    frames = load_frames(video, fps, max_frames)
    audio = load_audio_track(video, SAMPLING_RATE)
    prompt = processor.apply_chat_template(conversation(question, str(video), system), add_generation_prompt=True,
                                           tokenize=False)
    if isinstance(prompt, list):
        prompt = prompt[0]
    text = prompt + (answer + (processor.tokenizer.eos_token or "") if answer is not None else "")
    videos_kwargs = {"fps": fps, "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
                     "use_audio_in_video": True}  # inside videos_kwargs: a top-level flag would be ignored here
    inputs = processor(text=text, videos=[frames], audio=[audio], return_tensors="pt", videos_kwargs=dict(videos_kwargs))
    out = dict(inputs)
    out["use_audio_in_video"] = True
    if answer is not None:
        n_prompt = len(processor(text=prompt, videos=[frames], audio=[audio], return_tensors="pt",
                                 videos_kwargs=dict(videos_kwargs))["input_ids"][0])
        labels = out["input_ids"].clone()
        labels[:, :n_prompt] = -100
        out["labels"] = labels
    return out


@dataclass
class Answer:
    text: str
    tokens: list[int]
    video_kept: int
    video_total: int
    audio_kept: int
    audio_total: int
    prompt_tokens: int
    llm_tokens: int

    @property
    def retention(self) -> float:
        total = self.video_total + self.audio_total
        return (self.video_kept + self.audio_kept) / total if total else 1.0


class OmniSIFTPipeline:
    """Processor + :class:`~leanlm.omnisift.qwen_omni.OmniSIFTThinker`, one call per (video, question)."""

    def __init__(self, processor: Any, thinker: Any, *, fps: float = DEFAULT_FPS, max_frames: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, min_pixels: int = DEFAULT_MIN_PIXELS) -> None:
        self.processor, self.thinker = processor, thinker
        self.fps, self.max_frames, self.max_pixels, self.min_pixels = fps, max_frames, max_pixels, min_pixels

    @classmethod
    def from_pretrained(cls, path: str | Path, ratio: float | None = 0.25, method: str = "omnisift",
                        compressor: Any = None, torch_dtype: Any = None, **kwargs: Any) -> OmniSIFTPipeline:
        """Load processor and thinker from ``path`` (a Qwen2.5-Omni or OmniSIFT checkpoint directory).

        ``ratio`` is the retained fraction (0.35 / 0.25 use the paper's Table 6 ratios; None or 1.0 = no
        compression). A compressor saved with the model (``config.omnisift``) is reused with the new ratios.
        """
        from leanlm.omnisift.presets import paper_ratios
        from leanlm.omnisift.qwen_omni import OmniSIFTThinker
        from leanlm.omnisift.registry import COMPRESSORS

        processor = load_processor(path)
        load_kwargs: dict[str, Any] = {}
        if torch_dtype is not None:
            load_kwargs["dtype"] = torch_dtype
        if compressor is None and ratio is not None and ratio < 1.0 and method != "omnisift":
            rho_v, rho_a = paper_ratios(method, ratio)
            compressor = COMPRESSORS[method](rho_v, rho_a)
        thinker = OmniSIFTThinker.from_pretrained(str(path), compressor=compressor, **load_kwargs).eval()
        if ratio is None or ratio >= 1.0:
            thinker.set_compressor(None)
        elif thinker.compressor is None:
            from leanlm.omnisift.omnisift import OmniSIFT

            thinker.set_compressor(OmniSIFT(*paper_ratios("omnisift", ratio)))
        else:
            thinker.compressor.set_ratios(*paper_ratios(thinker.compressor.name, ratio))
        return cls(processor, thinker, **kwargs)

    def inputs(self, video: str | Path, question: str, answer: str | None = None) -> dict[str, Any]:
        return processor_inputs(self.processor, video, question, fps=self.fps, max_frames=self.max_frames,
                                max_pixels=self.max_pixels, min_pixels=self.min_pixels, answer=answer)

    @torch.no_grad()
    def __call__(self, video: str | Path, question: str, max_new_tokens: int = 64, **generate_kwargs: Any) -> Answer:
        inputs = self.inputs(video, question)
        device = self.thinker.get_input_embeddings().weight.device
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        if "pixel_values_videos" in inputs:
            inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.thinker.visual.dtype)
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.thinker.audio_tower.dtype)
        generate_kwargs.setdefault("do_sample", False)
        out = self.thinker.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
        n = inputs["input_ids"].shape[1]
        tokens = out[0, n:].tolist()
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        stats = self.thinker.last_compression
        ids = inputs["input_ids"][0]
        vt = int((ids == self.thinker.config.video_token_id).sum())
        at = int((ids == self.thinker.config.audio_token_id).sum())
        if stats is None:
            return Answer(text, tokens, vt, vt, at, at, n, n)
        return Answer(text, tokens, stats.video_kept, stats.video_total, stats.audio_kept, stats.audio_total, n,
                      int(stats.keep.sum()))
