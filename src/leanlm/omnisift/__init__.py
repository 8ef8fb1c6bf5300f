"""OmniSIFT (arXiv 2602.04804): modality-asymmetric token compression for omni-modal LLMs.

Public API: the compressors (:class:`OmniSIFT` with its ablation flags, :class:`RandomPruning`,
:class:`DyCokeTTM`, :class:`OmniZipStyle`), the STVP / VGAS building blocks, chunk layouts from TMRoPE ids,
the paper's ratio presets, and :class:`OmniSIFTThinker` (transformers' Qwen2.5-Omni thinker with a
compressor between TMRoPE and the language model). See ``docs/omnisift.md``.
"""

from leanlm.omnisift.base import AVCompressor, CompressionResult
from leanlm.omnisift.baselines import DyCokeTTM, OmniZipStyle, RandomPruning
from leanlm.omnisift.layout import AVLayout, Chunk, build_layout, build_layouts
from leanlm.omnisift.omnisift import OmniSIFT
from leanlm.omnisift.presets import PAPER_RATIOS, paper_ratios, solve_rho_v
from leanlm.omnisift.stvp import drop_count, keep_count, stvp_masks
from leanlm.omnisift.vgas import VGAS, parameter_count, straight_through

__all__ = [
    "PAPER_RATIOS", "VGAS", "AVCompressor", "AVLayout", "Chunk", "CompressionResult", "DyCokeTTM", "OmniSIFT",
    "OmniSIFTThinker", "OmniZipStyle", "RandomPruning", "attach", "build_layout", "build_layouts", "drop_count",
    "keep_count", "paper_ratios", "parameter_count", "solve_rho_v", "straight_through", "stvp_masks",
]


def __getattr__(name: str):  # the transformers integration is imported lazily (it pulls in the model code)
    if name in ("OmniSIFTThinker", "attach"):
        from leanlm.omnisift import qwen_omni

        return getattr(qwen_omni, name)
    raise AttributeError(name)
