"""Triton kernels for the GPU decode path (FASA-C, paper §4.3): TIP over sparse key columns, and FAC.

- :func:`tip_scores` computes ``S = q[D]·K[D]^T`` (Eq. 6) reading only the ``|D| = 2·N_tip`` dominant
  columns of each key row, for every (batch, query head) and block of tokens; GQA heads index their KV
  head directly (no ``repeat_kv`` copy).
- :func:`focused_attention` computes FAC (Eq. 7) for one decode query per head over the selected token
  indices with an online softmax, gathering the selected key/value rows inside the kernel.

Top-k between the two stays ``torch.topk``. These run only on CUDA with Triton installed; the torch path
in :mod:`leanlm.fasa.selectors.fasa` / :mod:`leanlm.fasa.attention` is the reference they are tested
against (``tests/fasa/test_fasa_kernels.py``; also runnable on CPU under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # CPU-only installs: the torch path is used
    HAVE_TRITON = False


def available(device: torch.device | str | None = None) -> bool:
    """True when the kernels can run on ``device`` (CUDA + Triton, or Triton's CPU interpreter)."""
    if not HAVE_TRITON:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")


if HAVE_TRITON:

    @triton.jit
    def _tip_kernel(Q, K, DIMS, OUT, T, N_REP, H_Q,
                    s_qb, s_qh, s_kb, s_kh, s_kt, s_ob, s_oh,
                    ND: tl.constexpr, BLOCK_T: tl.constexpr):
        pid_bh = tl.program_id(0)
        pid_t = tl.program_id(1)
        b = pid_bh // H_Q
        h = pid_bh % H_Q
        kvh = h // N_REP
        dims = tl.load(DIMS + h * ND + tl.arange(0, ND))
        q = tl.load(Q + b * s_qb + h * s_qh + dims).to(tl.float32)
        t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        inside = t < T
        k = tl.load(K + b * s_kb + kvh * s_kh + t[:, None] * s_kt + dims[None, :], mask=inside[:, None], other=0.0)
        s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
        tl.store(OUT + b * s_ob + h * s_oh + t, s, mask=inside)

    @triton.jit
    def _fac_kernel(Q, K, V, IDX, OUT, N_SEL, N_REP, H_Q, scale,
                    s_qb, s_qh, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ib, s_ih, s_ob, s_oh,
                    D: tl.constexpr, BLOCK_N: tl.constexpr):
        pid = tl.program_id(0)
        b = pid // H_Q
        h = pid % H_Q
        kvh = h // N_REP
        d = tl.arange(0, D)
        q = tl.load(Q + b * s_qb + h * s_qh + d).to(tl.float32)
        m_i = -float("inf")
        l_i = 0.0
        acc = tl.zeros([D], dtype=tl.float32)
        for start in range(0, N_SEL, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            inside = n < N_SEL
            idx = tl.load(IDX + b * s_ib + h * s_ih + n, mask=inside, other=0)
            k = tl.load(K + b * s_kb + kvh * s_kh + idx[:, None] * s_kt + d[None, :], mask=inside[:, None], other=0.0)
            logits = tl.sum(k.to(tl.float32) * q[None, :], axis=1) * scale
            logits = tl.where(inside, logits, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(logits, axis=0))
            p = tl.exp(logits - m_new)
            alpha = tl.exp(m_i - m_new)
            v = tl.load(V + b * s_vb + kvh * s_vh + idx[:, None] * s_vt + d[None, :], mask=inside[:, None], other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        tl.store(OUT + b * s_ob + h * s_oh + d, acc / l_i)


def _require(x: torch.Tensor) -> None:
    if not available(x.device):
        raise RuntimeError("Triton kernels need CUDA and the 'triton' package (or TRITON_INTERPRET=1)")


def supports(n: int) -> bool:
    """Whether a kernel can tile a width of ``n`` (|D| or head_dim): ``tl.arange`` needs a power of two."""
    return n > 0 and n & (n - 1) == 0


_pow2 = supports


def tip_scores(query: torch.Tensor, key: torch.Tensor, dims: torch.Tensor, block_t: int = 128) -> torch.Tensor:
    """Eq. 6 on the GPU: ``query (B, H_q, 1, d)``, ``key (B, H_kv, T, d)``, ``dims (H_q, |D|)`` -> ``(B, H_q, T)`` fp32."""
    _require(query)
    b, n_q = query.shape[:2]
    n_kv, t = key.shape[1], key.shape[2]
    nd = dims.shape[-1]
    if not _pow2(nd) or key.stride(-1) != 1 or query.stride(-1) != 1:
        raise ValueError(f"tip_scores needs a power-of-two |D| (got {nd}) and contiguous head dims")
    out = torch.empty(b, n_q, t, device=query.device, dtype=torch.float32)
    dims = dims.to(device=query.device, dtype=torch.int32).contiguous()
    grid = (b * n_q, triton.cdiv(t, block_t))
    _tip_kernel[grid](query, key, dims, out, t, n_q // n_kv, n_q,
                      query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
                      out.stride(0), out.stride(1), ND=nd, BLOCK_T=block_t)
    return out


def focused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, indices: torch.Tensor,
                      scaling: float, block_n: int = 64) -> torch.Tensor:
    """Eq. 7 on the GPU: softmax over the ``indices (B, H_q, k)`` tokens only; returns ``(B, H_q, 1, d)``."""
    _require(query)
    b, n_q, _, d = query.shape
    n_kv = key.shape[1]
    if not _pow2(d) or key.stride(-1) != 1 or value.stride(-1) != 1 or query.stride(-1) != 1:
        raise ValueError(f"focused_attention needs a power-of-two head_dim (got {d}) and contiguous head dims")
    indices = indices.to(torch.int32).contiguous()
    out = torch.empty(b, n_q, d, device=query.device, dtype=torch.float32)
    _fac_kernel[(b * n_q,)](query, key, value, indices, out, indices.shape[-1], n_q // n_kv, n_q, float(scaling),
                            query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
                            value.stride(0), value.stride(1), value.stride(2), indices.stride(0), indices.stride(1),
                            out.stride(0), out.stride(1), D=d, BLOCK_N=block_n)
    return out.to(value.dtype)[:, :, None, :]
