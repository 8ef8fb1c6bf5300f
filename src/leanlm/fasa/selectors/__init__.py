"""Token selectors: one small class per method behind ``select(query, keys, budget)``."""

from leanlm.fasa.selectors.base import (
           TokenSelector,
           expand_kv,
           gqa_gather_dims,
           gqa_logits,
           gqa_weighted,
           numba_gathers,
           shared_logits,
           top_budget,
)
from leanlm.fasa.selectors.eviction import H2OSelector, SnapKVDecodeSelector
from leanlm.fasa.selectors.fasa import FASASelector
from leanlm.fasa.selectors.oracle import OracleSelector
from leanlm.fasa.selectors.quest import QuestPages, QuestSelector
from leanlm.fasa.selectors.sparq import SparQSelector
from leanlm.fasa.selectors.static_dims import DoubleSparsitySelector, KeyQueryStats, LokiSelector
from leanlm.fasa.selectors.streaming import StreamingSelector
from leanlm.fasa.selectors.window import ForcedWindow, force_window

__all__ = ["DoubleSparsitySelector", "FASASelector", "ForcedWindow", "H2OSelector", "KeyQueryStats", "LokiSelector",
           "OracleSelector", "QuestPages", "QuestSelector", "SnapKVDecodeSelector", "SparQSelector",
           "StreamingSelector", "TokenSelector", "expand_kv", "force_window", "gqa_gather_dims", "gqa_logits",
           "gqa_weighted", "numba_gathers", "shared_logits", "top_budget"]
