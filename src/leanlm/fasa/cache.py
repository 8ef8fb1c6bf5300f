"""The FASA KV cache (FASA-C, paper §4.3): a transformers ``Cache`` that never copies old tokens.

Per layer (:class:`FasaLayer`):

- **K/V preallocated** ``(B, H_kv, capacity, d)``, grown by doubling when full (transformers'
  ``DynamicCache`` concatenates all of K and V at every step, which costs as much as dense attention at
  long context). ``update`` returns views ``[:, :, :t]`` of the buffers, so dense attention still works.
- **Label buffer** ``(B, H_kv, U, capacity)``, stored **dim-major** and contiguous: for each KV group, the
  union of the dominant dims ``D`` (Eq. 6) of the group's query heads (``U`` = the largest union in the
  layer; shorter unions are padded with a repeated dim that no query head reads), one contiguous row of
  ``capacity`` tokens per label dim. It is filled at append time, so TIP reads ``t · U`` contiguous
  elements per KV group instead of scattering over every key row (a row of 64 fp32 dims spans four 64-byte
  cache lines; 16 scattered dims touch most of them). Dim-major makes TIP a plain ``(G, U) @ (U, t)``
  matmul with the token axis contiguous in both operand and result (1.8x faster on CPU than the
  token-major ``(G, U) @ (t, U)^T``, measured); :meth:`FasaLayer.label` still gives the token-major view.

:class:`LabelSpec` holds the union dims and, per query head, which label columns are its own ``D``: TIP
multiplies the label buffer by the query *masked to the head's own dims*, so every query head still ranks
tokens by exactly its own ``q[D_h]·K[D_h]^T`` (the paper's per-head rule) in one batched matmul per layer.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass
class LabelSpec:
    """Label layout of one layer: ``dims (H_kv, U)`` union dims per KV group, ``owned (H_kv, G, U)`` masks."""

    dims: torch.Tensor
    owned: torch.Tensor

    @classmethod
    def from_head_dims(cls, head_dims: torch.Tensor, n_kv: int) -> LabelSpec:
        """From ``(H_q, |D|)`` dominant dims per query head (query head ``h`` reads KV head ``h // G``)."""
        n_q = head_dims.shape[0]
        if n_q % n_kv:
            raise ValueError(f"{n_q} query heads do not split into {n_kv} KV groups")
        group = n_q // n_kv
        unions = [sorted(set(head_dims[g * group : (g + 1) * group].flatten().tolist())) for g in range(n_kv)]
        width = max(len(u) for u in unions)
        dims = torch.tensor([u + [u[0]] * (width - len(u)) for u in unions], dtype=torch.long)
        owned = torch.zeros(n_kv, group, width, dtype=torch.bool)
        for g, union in enumerate(unions):
            for j in range(group):
                mine = set(head_dims[g * group + j].tolist())
                for col, dim in enumerate(union):  # padding columns (col >= len(union)) stay False
                    owned[g, j, col] = dim in mine
        return cls(dims=dims, owned=owned)

    @property
    def width(self) -> int:
        return int(self.dims.shape[-1])


#: data_ptr of a layer's key buffer -> the layer, so the attention function (which receives only the key
#: tensor that ``update`` returned) can find the label buffer beside it.
_BY_KEY_BUFFER: weakref.WeakValueDictionary[int, FasaLayer] = weakref.WeakValueDictionary()


def find_layer(key: torch.Tensor) -> FasaLayer | None:
    """The :class:`FasaLayer` whose current key view is ``key`` (None for any other cache)."""
    layer = _BY_KEY_BUFFER.get(key.data_ptr())
    return layer if layer is not None and layer.owns(key) else None


def _round_capacity(n: int) -> int:
    return max(64, 1 << (max(1, n) - 1).bit_length())


class FasaLayer(CacheLayerMixin):
    """One layer's preallocated K/V (+ label buffer when ``spec`` is given)."""

    is_sliding = False
    is_compileable = False

    def __init__(self, spec: LabelSpec | None = None, capacity: int | None = None):
        super().__init__()
        self.spec = spec
        self.initial_capacity = capacity
        self.length = 0
        self.capacity = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._label: torch.Tensor | None = None
        self._flat_base: dict[tuple[int, int, int], torch.Tensor] = {}  # flat_index offsets, per (B, R, rows/KV)
        self._query_gather: tuple[torch.Tensor, torch.Tensor] | None = None  # masked_queries' index and mask
        self._rows: dict[int, torch.Tensor] = {}  # (2, R·k, d) gathered K/V rows reused between steps (gather)

    # -------------------------------------------------------------- storage
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        if self.spec is not None:
            self.spec = LabelSpec(self.spec.dims.to(self.device), self.spec.owned.to(self.device))
            self._query_gather = None
        self.is_initialized = True

    def _allocate(self, batch: int, n_kv: int, head_dim: int, capacity: int) -> None:
        def grow(old: torch.Tensor | None, width: int) -> torch.Tensor:
            new = torch.empty(batch, n_kv, capacity, width, dtype=self.dtype, device=self.device)
            if old is not None and self.length:
                new[:, :, : self.length] = old[:, :, : self.length]
            return new

        self._keys = grow(self._keys, head_dim)
        self._values = grow(self._values, head_dim)
        if self.spec is not None:
            self._label = self._grow_label(self._label, batch, n_kv, capacity)
        self.capacity = capacity
        self._flat_base.clear()
        _BY_KEY_BUFFER[self._keys.data_ptr()] = self

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               cache_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, n_kv, n, d = key_states.shape
        end = self.length + n
        if self._keys is None or end > self.capacity or self._keys.shape[0] != b:
            if self._keys is not None and self._keys.shape[0] != b:
                raise ValueError(f"batch size changed from {self._keys.shape[0]} to {b} inside one FasaCache")
            self._allocate(b, n_kv, d, max(end, 2 * self.capacity, self.initial_capacity or 0, _round_capacity(end)))
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        if self.spec is not None:
            self._write_label(key_states, self.length, end)
        self.length = end
        self.keys = self._keys[:, :, :end]
        self.values = self._values[:, :, :end]
        return self.keys, self.values

    def _grow_label(self, old: torch.Tensor | None, batch: int, n_kv: int, capacity: int) -> torch.Tensor:
        """A dim-major ``(B, H_kv, U, capacity)`` label buffer in fast memory, keeping the first ``length`` tokens."""
        new = torch.empty(batch, n_kv, self.spec.width, capacity, dtype=self.dtype, device=self.device)
        if old is not None and self.length:
            new[..., : self.length] = old[..., : self.length]
        return new

    def _write_label(self, key_states: torch.Tensor, start: int, end: int) -> None:
        """Label columns of the new rows (filled once, at append time)."""
        b, n_kv, n, _ = key_states.shape
        if n == 1:  # decode step: one token, U scalar columns
            self._label[..., start] = key_states[:, :, 0].gather(-1, self.spec.dims[None].expand(b, n_kv, self.spec.width))
            return
        index = self.spec.dims[None, :, None, :].expand(b, n_kv, n, self.spec.width)
        self._label[..., start:end] = key_states.gather(-1, index).transpose(-1, -2)

    # -------------------------------------------------------------- what the decode path reads
    def label(self) -> torch.Tensor:
        """``(B, H_kv, t, U)`` label columns of the cached tokens (a token-major view of the dim-major buffer)."""
        return self._label[..., : self.length].transpose(-1, -2)

    def label_columns(self) -> torch.Tensor:
        """``(B, H_kv, U, t)`` dim-major label of the cached tokens (a view; the token axis is contiguous)."""
        return self._label[..., : self.length]

    def flat_keys(self) -> torch.Tensor:
        """``(B·H_kv·capacity, d)`` view for ``index_select`` (row of token ``i`` of head ``h``: ``(b·H_kv+h)·cap+i``)."""
        return self._keys.view(-1, self._keys.shape[-1])

    def flat_values(self) -> torch.Tensor:
        return self._values.view(-1, self._values.shape[-1])

    def flat_index(self, indices: torch.Tensor, rows_per_kv: int) -> torch.Tensor:
        """Rows of :meth:`flat_keys` for token ``indices (B, R, k)``; row ``r`` reads KV head ``r // rows_per_kv``."""
        b, r, _ = indices.shape
        base = self._flat_base.get((b, r, rows_per_kv))
        if base is None or base.device != indices.device:  # cached: offsets change only when the buffers do
            n_kv = r // rows_per_kv
            kv_head = torch.arange(r, device=indices.device) // rows_per_kv
            base = ((torch.arange(b, device=indices.device)[:, None] * n_kv + kv_head[None, :]) * self.capacity)[..., None]
            self._flat_base[(b, r, rows_per_kv)] = base
        return (indices + base).view(-1)

    def query_gather(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(flat index (H_kv·G·U,), mask (H_kv, G, U))``: a query ``(B, H_q·d)`` -> its label columns, each head
        zeroed outside its own dims (:func:`leanlm.fasa.decode.masked_queries`); built once per layer."""
        cached = self._query_gather
        if cached is None or cached[1].dtype != dtype or cached[0].device != self.spec.dims.device:
            n_kv, group, _ = self.spec.owned.shape
            d = self._keys.shape[-1] if self._keys is not None else int(self.spec.dims.max()) + 1
            head = torch.arange(n_kv * group, device=self.spec.dims.device).view(n_kv, group, 1)
            index = (head * d + self.spec.dims[:, None, :]).reshape(-1)
            cached = self._query_gather = (index, self.spec.owned.to(dtype))
        return cached

    def gather(self, indices: torch.Tensor, rows_per_kv: int, reuse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V rows of token ``indices (B, R, k)`` -> two ``(B, R, k, d)`` tensors (``index_select``).

        ``reuse``: write into two per-layer buffers kept between calls (no allocation per step; the
        result is overwritten by the next ``reuse`` call on this layer, so use it at once, as FASA-C does).
        """
        flat = self.flat_index(indices, rows_per_kv)
        shape = (*indices.shape, self._keys.shape[-1])
        if not reuse:
            return (self.flat_keys().index_select(0, flat).view(shape),
                    self.flat_values().index_select(0, flat).view(shape))
        rows = self.row_buffer(flat.numel())
        torch.index_select(self.flat_keys(), 0, flat, out=rows[0])
        torch.index_select(self.flat_values(), 0, flat, out=rows[1])
        return rows[0].view(shape), rows[1].view(shape)

    def row_buffer(self, n: int) -> torch.Tensor:
        """The ``(2, n, d)`` K/V row buffer :meth:`gather` reuses for ``n`` gathered rows (one per ``n``)."""
        rows = self._rows.get(n)
        if rows is None or rows.dtype != self.dtype or rows.device != self.device:
            rows = self._rows[n] = torch.empty(2, n, self._keys.shape[-1], dtype=self.dtype, device=self.device)
        return rows

    def owns(self, key: torch.Tensor) -> bool:
        """True when ``key`` is this layer's current key view (the attention function got our cache)."""
        return (self._keys is not None and key.shape[2] == self.length
                and key.data_ptr() == self._keys.data_ptr())

    def resident_bytes(self) -> int:
        """Bytes this layer holds in fast memory (whole buffers, including unused capacity)."""
        return sum(x.numel() * x.element_size() for x in (self._keys, self._values, self._label) if x is not None)

    def tier_bytes(self) -> int:
        """Bytes in a slower tier (none: FASA-C keeps everything resident; see :mod:`leanlm.fasa.offload`)."""
        return 0

    # -------------------------------------------------------------- the Cache protocol
    def get_mask_sizes(self, cache_position: torch.Tensor) -> tuple[int, int]:
        return self.length + cache_position.shape[0], 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_cache_shape(self) -> int:
        return -1

    def reset(self) -> None:
        self.length = 0

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self.length + max_length
        self.length = min(self.length, max(0, max_length))
        if self._keys is not None:
            self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def _reindex(self, fn) -> None:
        if self._keys is None:
            return
        self._keys, self._values = fn(self._keys), fn(self._values)
        if self._label is not None:
            self._label = fn(self._label)
        self._flat_base.clear()
        _BY_KEY_BUFFER[self._keys.data_ptr()] = self
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._reindex(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._reindex(lambda x: x.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._reindex(lambda x: x[indices].contiguous())


class FasaCache(Cache):
    """A transformers ``Cache`` of :class:`FasaLayer` s: pass it to ``generate``/``forward`` as ``past_key_values``.

    ``specs``: one :class:`LabelSpec` (or ``None`` = no label buffer, e.g. dense layers) per layer.
    ``capacity``: initial tokens per layer (``generate`` knows its maximum length; otherwise it doubles).
    Without specs it is simply a copy-free full-KV cache (the fair dense baseline).
    """

    def __init__(self, num_layers: int | None = None, specs: list[LabelSpec | None] | None = None,
                 capacity: int | None = None, config: Any = None):
        if specs is None:
            if num_layers is None:
                if config is None:
                    raise ValueError("FasaCache needs num_layers, specs or config")
                num_layers = int(config.get_text_config(decoder=True).num_hidden_layers)
            specs = [None] * num_layers
        super().__init__(layers=[FasaLayer(spec, capacity) for spec in specs])

    def resident_bytes(self) -> int:
        return sum(layer.resident_bytes() for layer in self.layers)

    def tier_bytes(self) -> int:
        return 0
