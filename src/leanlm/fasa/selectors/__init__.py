"""Token selectors: one small class per method behind ``select(query, keys, budget)``."""

from leanlm.fasa.selectors.base import TokenSelector, expand_kv, top_budget
from leanlm.fasa.selectors.fasa import FASASelector
from leanlm.fasa.selectors.oracle import OracleSelector
from leanlm.fasa.selectors.quest import QuestSelector
from leanlm.fasa.selectors.streaming import StreamingSelector

__all__ = ["FASASelector", "OracleSelector", "QuestSelector", "StreamingSelector", "TokenSelector", "expand_kv",
           "top_budget"]
