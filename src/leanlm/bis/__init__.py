"""BIS: the Balanced-Information Score for selecting Monte-Carlo-annotated PRM rollouts (arXiv 2602.04145).

Public API::

    from leanlm.bis import SelectConfig, BIS, select
    manifest = select(["annotations/"], "bis25.jsonl", SelectConfig(ratio=0.25, scorer=BIS(alpha=0.05)))

See ``docs/bis.md`` for the equations, the engines and where we differ from the official script.
"""

from leanlm.bis.config import SelectConfig
from leanlm.bis.inputs import discover_inputs
from leanlm.bis.schema import Fields
from leanlm.bis.score import (
    BIS,
    External,
    LowMC,
    MixedOnly,
    MixtureOnly,
    RandomScorer,
    ReliabilityOnly,
    RolloutStats,
    Scorer,
    bis_value,
    make_scorer,
)
from leanlm.bis.select import select

__all__ = [
    "BIS",
    "External",
    "Fields",
    "LowMC",
    "MixedOnly",
    "MixtureOnly",
    "RandomScorer",
    "ReliabilityOnly",
    "RolloutStats",
    "Scorer",
    "SelectConfig",
    "bis_value",
    "discover_inputs",
    "make_scorer",
    "select",
]
