"""FASA: Frequency-aware Sparse Attention (arXiv 2602.03152) for transformers RoPE models.

    from leanlm.fasa import calibrate, apply
    calib = calibrate(model, tokenizer)              # once per model (Eq. 5, Algorithm 1)
    calib.save("calib.json")
    with apply(model, calib, budget=256):            # TIP (Eq. 6) + FAC (Eq. 7) at each decode step
        model.generate(...)

See docs/fasa.md for equation-by-equation notes and where we differ from the official code.
"""

from leanlm.fasa.agreement import contextual_agreement, fc_logits
from leanlm.fasa.attention import dense_attention, focused_attention
from leanlm.fasa.calibration import Calibration, CalibrationError, calibrate, jaccard
from leanlm.fasa.chunks import UnsupportedModelError, detect_pairing, dims_of, fc_dims, split_fcs
from leanlm.fasa.integration import FASA_IMPL, DecodeStats, FasaAttention, apply, register
from leanlm.fasa.selectors import (
    FASASelector,
    OracleSelector,
    QuestSelector,
    StreamingSelector,
    TokenSelector,
)

__all__ = [
    "FASA_IMPL", "Calibration", "CalibrationError", "DecodeStats", "FASASelector", "FasaAttention", "OracleSelector",
    "QuestSelector", "StreamingSelector", "TokenSelector", "UnsupportedModelError", "apply", "calibrate",
    "contextual_agreement", "dense_attention", "detect_pairing", "dims_of", "fc_dims", "fc_logits",
    "focused_attention", "jaccard", "register", "split_fcs",
]
