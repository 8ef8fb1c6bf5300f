"""leanlm: five 2026 efficiency methods for LLMs as usable software.

Modules (each independent, sharing only :mod:`leanlm.common`):

- :mod:`leanlm.fasa`: FASA, frequency-aware sparse attention (arXiv 2602.03152)
- :mod:`leanlm.bis`: Balanced-Information Score selection of PRM data (arXiv 2602.04145)
- :mod:`leanlm.wideseek`: WideSeek-R1 lead/subagent search and the WideSearch scorer (arXiv 2602.04634)
- :mod:`leanlm.elastic`: ERNIE 5.0 elastic MoE training and sub-model extraction (arXiv 2602.04705)
- :mod:`leanlm.omnisift`: OmniSIFT modality-asymmetric token compression (arXiv 2602.04804)
"""

__version__ = "0.1.0"
