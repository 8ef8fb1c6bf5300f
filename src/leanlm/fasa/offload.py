"""FASA-M (paper §4.3, App. D.1, Algorithm 2): only the label buffer stays in fast memory.

Per sparse layer, :class:`OffloadedLayer` keeps resident the label buffer (the union of each KV group's
dominant dims, as in FASA-C) and a small ring of the ``window`` most recent K/V rows. The full K/V live in a
slower tier and only the ``N_fac`` selected rows are fetched at each decode step:

- model on CUDA: pinned (page-locked) CPU memory; the selected rows are gathered on the CPU into a pinned
  staging buffer and copied to the GPU on a side stream that the compute stream then waits on.
  **Written for the GPU but never run on one here** (no GPU in this project's sessions).
- model on CPU: a memory-mapped file (``torch.from_file(..., shared=True)`` in a temporary directory, the
  file unlinked at once so it disappears with the process). The OS pages rows in on demand; what the
  process holds in anonymous memory is the label buffer and the window.

Dense layers (``dense_layers``, layer 0 by default) keep full K/V resident, as they read every row.
Prefill is dense (paper §B.1): the prompt's K/V are attended directly before they go to the tier; a later
multi-token chunk (chunked prefill) would read the whole tier and is not supported on CUDA.
Residency accounting: :meth:`FasaMCache.resident_bytes` (label + window + dense layers) vs
:meth:`FasaMCache.tier_bytes`. The paper's estimate: ``L·d_dom + b·d_nondom + b·d`` per layer, ~8x less
than dense at 25 % dims and a 10 % budget.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from transformers.cache_utils import Cache

from leanlm.fasa.cache import _BY_KEY_BUFFER, FasaLayer, LabelSpec


def _mapped(shape: tuple[int, ...], dtype: torch.dtype, directory: str | None) -> torch.Tensor:
    """A zero-filled tensor backed by a memory-mapped temporary file (unlinked immediately)."""
    fd, path = tempfile.mkstemp(prefix="leanlm-fasa-m-", suffix=".kv", dir=directory)
    os.close(fd)
    try:
        numel = 1
        for n in shape:
            numel *= n
        return torch.from_file(path, shared=True, size=numel, dtype=dtype).view(shape)
    finally:
        os.unlink(path)


class OffloadedLayer(FasaLayer):
    """A :class:`FasaLayer` whose K/V buffers live in the slow tier; label buffer and window stay resident."""

    def __init__(self, spec: LabelSpec, capacity: int | None = None, window: int = 64, directory: str | None = None):
        if spec is None:
            raise ValueError("an offloaded FASA-M layer needs a label spec (dense layers stay resident)")
        super().__init__(spec, capacity)
        self.window = int(window)
        self.directory = directory
        self._win_k: torch.Tensor | None = None
        self._win_v: torch.Tensor | None = None
        self._stream = None

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def _tier(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.on_cuda:
            return torch.empty(shape, dtype=self.dtype, pin_memory=True)
        return _mapped(shape, self.dtype, self.directory)

    def _allocate(self, batch: int, n_kv: int, head_dim: int, capacity: int) -> None:
        def grow(old: torch.Tensor | None, shape: tuple[int, ...], tier: bool) -> torch.Tensor:
            new = self._tier(shape) if tier else torch.empty(shape, dtype=self.dtype, device=self.device)
            if old is not None and self.length:
                new[:, :, : self.length] = old[:, :, : self.length]
            return new

        self._keys = grow(self._keys, (batch, n_kv, capacity, head_dim), True)
        self._values = grow(self._values, (batch, n_kv, capacity, head_dim), True)
        self._label = self._grow_label(self._label, batch, n_kv, capacity)  # dim-major, resident
        if self._win_k is None and self.window:
            self._win_k = torch.zeros(batch, n_kv, self.window, head_dim, dtype=self.dtype, device=self.device)
            self._win_v = torch.zeros_like(self._win_k)
        self.capacity = capacity
        self._flat_base.clear()
        _BY_KEY_BUFFER[self._keys.data_ptr()] = self

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               cache_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, n = self.length, key_states.shape[2]
        keys, values = super().update(key_states.to("cpu") if self.on_cuda else key_states,
                                      value_states.to("cpu") if self.on_cuda else value_states, cache_kwargs)
        if self.window:  # the newest rows also go to the resident ring (slot = position % window)
            tail = min(n, self.window)
            slots = torch.arange(start + n - tail, start + n, device=self.device) % self.window
            self._win_k[:, :, slots] = key_states[:, :, n - tail :].to(self.device)
            self._win_v[:, :, slots] = value_states[:, :, n - tail :].to(self.device)
        if start == 0 and n > 1:  # dense prefill attends to the prompt's own K/V; nothing is read back
            return key_states, value_states
        return keys, values

    def _write_label(self, key_states: torch.Tensor, start: int, end: int) -> None:
        super()._write_label(key_states.to(self.device), start, end)  # the label stays in fast memory

    def gather(self, indices: torch.Tensor, rows_per_kv: int, reuse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Fetch only the selected rows from the tier (Algorithm 2); rows in the recent window come from it.

        (``reuse`` is accepted for :meth:`FasaLayer.gather`'s signature; fetched rows are always new tensors.)
        """
        idx = indices.to("cpu")
        flat = self.flat_index(idx, rows_per_kv)
        d = self._keys.shape[-1]
        shape = (*indices.shape, d)
        if self.on_cuda:
            staging_k = torch.empty((flat.numel(), d), dtype=self.dtype, pin_memory=True)
            staging_v = torch.empty_like(staging_k, pin_memory=True)
            torch.index_select(self.flat_keys(), 0, flat, out=staging_k)
            torch.index_select(self.flat_values(), 0, flat, out=staging_v)
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=self.device)
            with torch.cuda.stream(self._stream):  # host -> device on a side stream
                keys = staging_k.to(self.device, non_blocking=True).view(shape)
                values = staging_v.to(self.device, non_blocking=True).view(shape)
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
            keys.record_stream(torch.cuda.current_stream(self.device))
            values.record_stream(torch.cuda.current_stream(self.device))
        else:
            keys = self.flat_keys().index_select(0, flat).view(shape)
            values = self.flat_values().index_select(0, flat).view(shape)
        if self.window:
            recent = indices >= self.length - self.window
            if bool(recent.any()):
                slot = (indices % self.window)
                b, r, _ = indices.shape
                kv_head = torch.arange(r, device=indices.device) // rows_per_kv
                bi = torch.arange(b, device=indices.device)[:, None, None]
                hi = kv_head[None, :, None]
                keys = torch.where(recent[..., None], self._win_k[bi, hi, slot], keys)
                values = torch.where(recent[..., None], self._win_v[bi, hi, slot], values)
        return keys, values

    def resident_bytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self._label, self._win_k, self._win_v) if x is not None)

    def tier_bytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self._keys, self._values) if x is not None)


class FasaMCache(Cache):
    """FASA-M cache: :class:`OffloadedLayer` for sparse layers, resident :class:`FasaLayer` for dense ones."""

    def __init__(self, specs: list[LabelSpec | None], capacity: int | None = None, window: int = 64,
                 directory: str | None = None):
        layers = [FasaLayer(None, capacity) if spec is None else OffloadedLayer(spec, capacity, window, directory)
                  for spec in specs]
        super().__init__(layers=layers)

    def resident_bytes(self) -> int:
        """Bytes held in fast memory: label buffers, recent windows, and the dense layers' full K/V."""
        return sum(layer.resident_bytes() for layer in self.layers)

    def tier_bytes(self) -> int:
        return sum(layer.tier_bytes() for layer in self.layers if isinstance(layer, OffloadedLayer))
