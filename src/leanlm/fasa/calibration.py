"""Offline calibration of dominant frequency chunks (paper Eq. 5, Algorithm 1).

The model generates on calibration text with an attention hook (:func:`~leanlm.fasa.hooks.attention_handler`)
that sees the post-RoPE q/k of every layer. At each decode step (and, by default, at every
``prefill_stride``-th prefill position) it computes CA_K for every (layer, query head, FC) (Eq. 4) and
averages (Eq. 5). The ``N_tip`` FCs with the highest mean CA are the head's dominant set ``I_dom``
(official code: ``N_tip = 16`` of 64, i.e. 25 % of FCs; our default is 25 % of ``d/2``).

CA is stored for several K (default 64/128/256/512); :meth:`Calibration.k_for_budget` picks the table
whose K matches a decode budget (the official code uses K = budget, else 1024; we take the nearest K).
The file is JSON: model id and config hash, K values, N_tip, pairing, per K the mean CA table
``[layer][head][fc]``, the number of averaged queries and the dominant FCs ``[layer][head][rank]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from leanlm.common.atomic import atomic_write_json
from leanlm.common.progress import get_logger, progress
from leanlm.fasa.agreement import contextual_agreement
from leanlm.fasa.chunks import PAIRINGS, detect_pairing, head_dim_of
from leanlm.fasa.hooks import attention_handler, dense_attention_forward
from leanlm.fasa.selectors import expand_kv

FORMAT = "leanlm.fasa.calibration/1"
DEFAULT_KS = (64, 128, 256, 512)
log = get_logger("leanlm.fasa.calibration")


class CalibrationError(ValueError):
    """A calibration file that is malformed or made for a different model; names the file and field."""


def model_geometry(model: Any) -> dict[str, Any]:
    """The config fields a calibration depends on (attention geometry and RoPE)."""
    config = model.config.get_text_config()
    rope = getattr(config, "rope_parameters", None) or {}
    return {
        "model_type": config.model_type,
        "num_layers": int(config.num_hidden_layers),
        "num_heads": int(config.num_attention_heads),
        "num_kv_heads": int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        "head_dim": head_dim_of(config),
        "hidden_size": int(config.hidden_size),
        "rope_theta": float(rope.get("rope_theta", getattr(config, "rope_theta", 0.0)) or 0.0),
    }


def config_hash(model: Any) -> str:
    return hashlib.sha256(json.dumps(model_geometry(model), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Calibration:
    """Mean CA tables and dominant FCs per (layer, query head)."""

    model_id: str
    config_hash: str
    geometry: dict[str, Any]
    pairing: str
    n_tip: int
    ca: dict[int, torch.Tensor]  # K -> (layers, heads, d/2) mean CA (NaN where nothing was averaged)
    counts: dict[int, int]  # K -> number of queries averaged per (layer, head)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return int(self.geometry["head_dim"])

    @property
    def ks(self) -> list[int]:
        return sorted(self.ca)

    def usable_ks(self) -> list[int]:
        return [k for k in self.ks if self.counts.get(k, 0) > 0]

    def k_for_budget(self, budget: int | None) -> int:
        """The K whose table to use: ``budget`` itself if calibrated, else the nearest calibrated K (log scale)."""
        usable = self.usable_ks()
        if not usable:
            raise CalibrationError("calibration holds no CA table with samples (calibration text shorter than every K?)")
        if budget is None:
            return usable[len(usable) // 2]
        return min(usable, key=lambda k: (abs(math.log(k) - math.log(max(1, budget))), k))

    def dominant(self, k: int | None = None) -> torch.Tensor:
        """``(layers, heads, N_tip)`` dominant FC indices, highest mean CA first (Eq. 5)."""
        k = self.k_for_budget(None) if k is None else k
        if k not in self.ca or self.counts.get(k, 0) == 0:
            raise CalibrationError(f"no CA table with samples for K={k}; available: {self.usable_ks()}")
        return self.ca[k].nan_to_num(-1.0).topk(self.n_tip, dim=-1).indices

    def dominant_sets(self, k: int | None = None) -> list[list[set[int]]]:
        return [[set(map(int, head)) for head in layer] for layer in self.dominant(k).tolist()]

    def check_model(self, model: Any) -> None:
        ours = model_geometry(model)
        diff = {key: (self.geometry.get(key), value) for key, value in ours.items() if self.geometry.get(key) != value}
        if diff:
            details = ", ".join(f"{k}: calibration {a!r} vs model {b!r}" for k, (a, b) in diff.items())
            raise CalibrationError(f"calibration for {self.model_id!r} does not match this model ({details})")

    # ----------------------------------------------------------------------------------------------- IO
    def to_json(self) -> dict[str, Any]:
        tables = {}
        for k in self.ks:
            ca = self.ca[k]
            tables[str(k)] = {
                "count": int(self.counts.get(k, 0)),
                "ca": [[[None if math.isnan(v) else round(v, 6) for v in head] for head in layer] for layer in ca.tolist()],
                "dominant": self.dominant(k).tolist() if self.counts.get(k, 0) else None,
            }
        return {
            "format": FORMAT,
            "model": {"id": self.model_id, "config_hash": self.config_hash, **self.geometry},
            "pairing": self.pairing,
            "n_tip": self.n_tip,
            "ks": self.ks,
            "tables": tables,
            "source": self.source,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_json(), indent=1)

    @classmethod
    def from_json(cls, data: Any, where: str = "<calibration>") -> Calibration:
        def need(obj: Any, key: str, kind: type | tuple[type, ...], name: str) -> Any:
            if not isinstance(obj, dict) or key not in obj:
                raise CalibrationError(f"{where}: missing field {name!r}")
            value = obj[key]
            if not isinstance(value, kind):
                raise CalibrationError(f"{where}: field {name!r} should be {kind}, got {type(value).__name__}")
            return value

        if not isinstance(data, dict):
            raise CalibrationError(f"{where}: expected a JSON object, got {type(data).__name__}")
        fmt = need(data, "format", str, "format")
        if fmt != FORMAT:
            raise CalibrationError(f"{where}: field 'format' is {fmt!r}, expected {FORMAT!r}")
        model = need(data, "model", dict, "model")
        geometry = {}
        for key in ("model_type", "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size", "rope_theta"):
            geometry[key] = need(model, key, (str, int, float), f"model.{key}")
        pairing = need(data, "pairing", str, "pairing")
        if pairing not in PAIRINGS:
            raise CalibrationError(f"{where}: field 'pairing' is {pairing!r}, expected one of {PAIRINGS}")
        n_tip = need(data, "n_tip", int, "n_tip")
        n_fc = int(geometry["head_dim"]) // 2
        if not 1 <= n_tip <= n_fc:
            raise CalibrationError(f"{where}: field 'n_tip' is {n_tip}, must be in [1, {n_fc}]")
        shape = (int(geometry["num_layers"]), int(geometry["num_heads"]), n_fc)
        ca, counts = {}, {}
        for key, table in need(data, "tables", dict, "tables").items():
            name = f"tables.{key}"
            try:
                k = int(key)
            except ValueError:
                raise CalibrationError(f"{where}: field {name!r}: K must be an integer") from None
            counts[k] = need(table, "count", int, f"{name}.count")
            values = need(table, "ca", list, f"{name}.ca")
            try:
                tensor = torch.tensor(
                    [[[float("nan") if v is None else float(v) for v in h] for h in layer] for layer in values],
                    dtype=torch.float64,
                )
            except (TypeError, ValueError) as exc:
                raise CalibrationError(f"{where}: field '{name}.ca' is not a [layer][head][fc] table ({exc})") from None
            if tuple(tensor.shape) != shape:
                raise CalibrationError(f"{where}: field '{name}.ca' has shape {tuple(tensor.shape)}, expected {shape}")
            ca[k] = tensor
        if not ca:
            raise CalibrationError(f"{where}: field 'tables' is empty")
        return cls(model_id=str(model.get("id", "")), config_hash=str(model.get("config_hash", "")), geometry=geometry,
                   pairing=pairing, n_tip=n_tip, ca=ca, counts=counts, source=dict(data.get("source") or {}))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Load a calibration file, or a bundled one by name (``"embedded"``)."""
        path = resolve_calibration(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CalibrationError(f"{path}: calibration file not found") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        return cls.from_json(data, where=str(path))


#: calibrations shipped with leanlm (made with ``calibrate()``'s defaults, like the official repo's rankings)
BUNDLED = {"embedded": "smollm2-135m-instruct.json"}


def resolve_calibration(spec: str | os.PathLike[str]) -> Path:
    """A calibration file path, or the name of a bundled calibration (``"embedded"`` = SmolLM2-135M-Instruct)."""
    if str(spec) in BUNDLED:
        return Path(__file__).parent / "data" / BUNDLED[str(spec)]
    return Path(spec)


def jaccard(a: Calibration, b: Calibration, k: int | None = None) -> float:
    """Mean Jaccard overlap of the dominant sets of two calibrations over all (layer, head) (Table 10)."""
    sa, sb = a.dominant_sets(k), b.dominant_sets(k)
    scores = [len(x & y) / len(x | y) for la, lb in zip(sa, sb, strict=True) for x, y in zip(la, lb, strict=True)]
    return sum(scores) / len(scores)


class AgreementRecorder:
    """Attention handler that computes dense attention and accumulates CA sums (Eq. 4-5)."""

    def __init__(self, geometry: dict[str, Any], ks: Iterable[int], pairing: str, prefill_stride: int | None = 32,
                 chunk: int = 16):
        self.ks = sorted(int(k) for k in ks)
        self.pairing = pairing
        self.prefill_stride = prefill_stride
        self.chunk = chunk
        shape = (geometry["num_layers"], geometry["num_heads"], geometry["head_dim"] // 2)
        self.sums = {k: torch.zeros(shape, dtype=torch.float64) for k in self.ks}
        self.counts = {k: torch.zeros(shape[0], dtype=torch.long) for k in self.ks}

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        out = dense_attention_forward(module, query, key, value, attention_mask, **kwargs)
        with torch.no_grad():
            self.observe(module.layer_idx, query, key)
        return out

    def observe(self, layer: int, query: torch.Tensor, key: torch.Tensor) -> None:
        if query.shape[0] != 1:
            raise ValueError("calibration runs one sequence at a time (batch size 1)")
        q_len, t = query.shape[2], key.shape[2]
        work = torch.float64 if query.dtype == torch.float64 else torch.float32
        q = query[0].to(work)
        k = expand_kv(key, query.shape[1] // key.shape[1])[0].to(work)
        positions = torch.arange(t - q_len, t)  # absolute position of each query row
        rows = torch.arange(q_len)
        keep = positions + 1 > self.ks[0]
        if q_len > 1:
            if not self.prefill_stride:
                return
            keep &= (positions + 1) % self.prefill_stride == 0
        rows = rows[keep]
        for start in range(0, len(rows), self.chunk):
            part = rows[start : start + self.chunk]
            last = int(positions[part].max()) + 1
            valid = torch.arange(last)[None, :] <= positions[part][:, None]
            ca = contextual_agreement(q[:, part], k[:, :last], self.ks, self.pairing, valid)
            for kk, values in ca.items():
                good = ~torch.isnan(values[0, :, 0])
                if good.any():
                    self.sums[kk][layer] += values[:, good].sum(1)
                    self.counts[kk][layer] += int(good.sum())

    def result(self, model_id: str, geometry: dict[str, Any], chash: str, n_tip: int, source: dict[str, Any]) -> Calibration:
        ca, counts = {}, {}
        for k in self.ks:
            n = self.counts[k]
            if n.numel() and int(n.min()) != int(n.max()):
                raise RuntimeError(f"layers saw different numbers of CA samples for K={k}: {n.tolist()}")
            counts[k] = int(n[0]) if n.numel() else 0
            ca[k] = self.sums[k] / counts[k] if counts[k] else torch.full_like(self.sums[k], float("nan"))
        return Calibration(model_id=model_id, config_hash=chash, geometry=geometry, pairing=self.pairing, n_tip=n_tip,
                           ca=ca, counts=counts, source=source)


def default_calibration_text(n_articles: int = 60, offset: int = 0) -> str:
    """Real long text for calibration: consecutive offline Wikipedia summaries."""
    from leanlm.fasa.text import wiki_text

    return wiki_text(n_articles=n_articles, offset=offset)


def calibrate(
    model: Any,
    tokenizer: Any,
    texts: Iterable[str] | str | None = None,
    *,
    ks: Iterable[int] = DEFAULT_KS,
    n_tip: int | None = None,
    pairing: str | None = None,
    max_tokens: int = 2048,
    decode_steps: int = 32,
    prefill_stride: int | None = 32,
    model_id: str | None = None,
) -> Calibration:
    """Calibrate dominant FCs (Algorithm 1): generate on each text and average CA over decode steps.

    ``texts``: calibration texts (default: real Wikipedia text), each truncated to ``max_tokens``.
    ``decode_steps`` greedy tokens are generated per text and each step's CA is recorded; with
    ``prefill_stride`` every n-th prefill position is recorded too (more samples for the same compute;
    ``None`` = decode steps only, as in the paper). ``n_tip`` defaults to 25 % of the FCs.
    """
    geometry = model_geometry(model)
    pairing = pairing or detect_pairing(model)
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; expected one of {PAIRINGS}")
    n_fc = geometry["head_dim"] // 2
    n_tip = n_tip or max(1, n_fc // 4)
    if not 1 <= n_tip <= n_fc:
        raise ValueError(f"n_tip must be in [1, {n_fc}], got {n_tip}")
    if texts is None:
        texts = [default_calibration_text()]
    elif isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("calibrate() needs at least one calibration text")
    recorder = AgreementRecorder(geometry, ks, pairing, prefill_stride=prefill_stride)
    total_tokens = 0
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with attention_handler(model, recorder), torch.inference_mode():
        for text in progress(texts, desc="calibrating", unit="text"):
            ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens]
            total_tokens += ids.shape[1]
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=decode_steps,
                           min_new_tokens=decode_steps, do_sample=False, pad_token_id=pad_id)
    if all(int(n.max()) == 0 for n in recorder.counts.values()):
        raise CalibrationError(
            f"calibration saw no query with more than K={min(recorder.ks)} keys ({total_tokens} prompt tokens, "
            f"{decode_steps} decode steps); give longer text or smaller --k values"
        )
    source = {"texts": len(texts), "prompt_tokens": total_tokens, "decode_steps": decode_steps,
              "prefill_stride": prefill_stride, "max_tokens": max_tokens}
    calibration = recorder.result(model_id or str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
                                  geometry, config_hash(model), n_tip, source)
    log.info("calibrated %d layers x %d heads on %d tokens; samples per K: %s", geometry["num_layers"],
             geometry["num_heads"], total_tokens, calibration.counts)
    return calibration
