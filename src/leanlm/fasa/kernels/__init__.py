"""GPU kernels (Triton) for FASA's decode path; optional, used automatically on CUDA when available."""

from leanlm.fasa.kernels.triton_fasa import HAVE_TRITON, available, focused_attention, supports, tip_scores

__all__ = ["HAVE_TRITON", "available", "focused_attention", "supports", "tip_scores"]
