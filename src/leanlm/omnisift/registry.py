"""Compressors by name, and rebuilding one from the ``spec()`` a thinker saves in its config.

``OmniSIFTThinker.save_pretrained`` writes ``config.omnisift = compressor.spec()`` (method, ratios,
selector width, ablation flags); ``from_pretrained`` calls :func:`compressor_from_spec` on it, so a saved
model comes back with the same compressor, and the selector weights load into it.
"""

from __future__ import annotations

from typing import Any

from leanlm.omnisift.base import AVCompressor
from leanlm.omnisift.baselines import DyCokeTTM, OmniZipStyle, RandomPruning
from leanlm.omnisift.omnisift import OmniSIFT

COMPRESSORS: dict[str, type[AVCompressor]] = {
    "omnisift": OmniSIFT, "random": RandomPruning, "dycoke": DyCokeTTM, "omnizip": OmniZipStyle,
}


def compressor_from_spec(spec: dict[str, Any]) -> AVCompressor:
    """Inverse of :meth:`AVCompressor.spec`; raises a clear error for an unknown method or field."""
    if not isinstance(spec, dict) or "method" not in spec:
        raise ValueError(f"config.omnisift must be a dict with a 'method' field, got {spec!r}")
    fields = dict(spec)
    method = fields.pop("method")
    if method not in COMPRESSORS:
        raise ValueError(f"config.omnisift: unknown method {method!r}; known: {', '.join(COMPRESSORS)}")
    try:
        return COMPRESSORS[method](**fields)
    except TypeError as exc:
        raise ValueError(f"config.omnisift: bad fields for {method!r}: {exc}") from exc
