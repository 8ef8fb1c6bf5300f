"""Triton TIP kernel over the FASA-C label buffer (paper Eq. 6, §4.3 FASA-C).

Reads the label buffer of a :class:`~leanlm.fasa.cache.FasaLayer` (passed as its token-major view
``(B, H_kv, t, U)``, any strides: the cache stores it dim-major, so consecutive tokens are adjacent and
loads along the token axis coalesce) once per KV group: each program loads a ``BLOCK_T x U`` tile and
computes the scores of the group's ``G`` query heads from it (their queries already masked to their own
dims, ``q̃ (B, H_kv, G, U)``), so selection stays per head while the label is read once. Output:
``(B, H_kv·G, t)`` fp32 scores, the same as :func:`leanlm.fasa.decode.tip_scores`.

``U`` need not be a power of two (the tile is padded with a mask). Tested against the torch path under
``TRITON_INTERPRET=1`` (CPU) in ``tests/fasa/test_fasa_kernels.py``; timed on GPU by ``bench/gpu_fasa.sh``.
"""

from __future__ import annotations

import torch

from leanlm.fasa.kernels.triton_fasa import HAVE_TRITON, _require

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _label_tip_kernel(QL, LAB, OUT, T, H_KV,
                          s_qb, s_qh, s_qg, s_lb, s_lh, s_lt, s_lu, s_ob, s_or,
                          U: tl.constexpr, UP: tl.constexpr, G: tl.constexpr, BLOCK_T: tl.constexpr):
        pid_bh = tl.program_id(0)
        pid_t = tl.program_id(1)
        b = pid_bh // H_KV
        h = pid_bh % H_KV
        u = tl.arange(0, UP)
        u_in = u < U
        t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        t_in = t < T
        lab = tl.load(LAB + b * s_lb + h * s_lh + t[:, None] * s_lt + u[None, :] * s_lu,
                      mask=t_in[:, None] & u_in[None, :], other=0.0).to(tl.float32)  # read once per group
        for g in tl.static_range(G):
            q = tl.load(QL + b * s_qb + h * s_qh + g * s_qg + u, mask=u_in, other=0.0).to(tl.float32)
            s = tl.sum(lab * q[None, :], axis=1)
            tl.store(OUT + b * s_ob + (h * G + g) * s_or + t, s, mask=t_in)


def label_tip_scores(q_label: torch.Tensor, label: torch.Tensor, length: int, block_t: int = 128) -> torch.Tensor:
    """``q_label (B, H_kv, G, U)`` masked queries, ``label (B, H_kv, >= length, U)`` (any strides, e.g.
    :meth:`~leanlm.fasa.cache.FasaLayer.label`) -> ``(B, H_kv·G, length)`` fp32."""
    _require(q_label)
    b, n_kv, group, width = q_label.shape
    q_label = q_label.contiguous()
    out = torch.empty(b, n_kv * group, length, device=q_label.device, dtype=torch.float32)
    grid = (b * n_kv, triton.cdiv(length, block_t))
    _label_tip_kernel[grid](q_label, label, out, length, n_kv,
                            q_label.stride(0), q_label.stride(1), q_label.stride(2),
                            label.stride(0), label.stride(1), label.stride(2), label.stride(3), out.stride(0), out.stride(1),
                            U=width, UP=triton.next_power_of_2(width), G=group, BLOCK_T=block_t)
    return out
