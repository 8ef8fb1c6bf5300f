"""WideSeek-R1 (arXiv 2602.04634): a lead agent fanning broad information seeking out to parallel
subagents, an offline search world, and the WideSearch scorer.

Public API::

    from leanlm.wideseek import WideSeek, AgentConfig, OpenAIBackend, WorldTools, build_corpus
    from leanlm.wideseek import generate_tasks, load_tasks, score_table, summarize
    from leanlm.wideseek import TransformersBackend, GRPOConfig, TrainConfig, Trainer, DistributedTrainer  # torch

See ``docs/wideseek.md``.
"""

from leanlm.wideseek.agents import AgentConfig, AgentRun, RunResult, WideSeek, extract_boxed
from leanlm.wideseek.corpus import Corpus, Page, build_corpus
from leanlm.wideseek.index import BM25sIndex, FTS5Index, TantivyIndex, build_index
from leanlm.wideseek.judge import LLMAligner, LLMJudge
from leanlm.wideseek.llm import (
    Backend,
    BackendError,
    Completion,
    ContextOverflow,
    OpenAIBackend,
    ScriptedBackend,
    ToolCall,
    parse_tool_calls,
)
from leanlm.wideseek.rewards import Credit, RewardConfig, credit
from leanlm.wideseek.scorer import (
    EvalSpec,
    NormalizedAligner,
    TableScore,
    extract_table,
    score_qa,
    score_table,
    summarize,
)
from leanlm.wideseek.tasks import Task, generate_tasks, generate_wide_tasks, load_tasks, write_tasks
from leanlm.wideseek.tools import WorldTools
from leanlm.wideseek.trace import Trace

__all__ = [
    "AgentConfig",
    "AgentRun",
    "BM25sIndex",
    "Backend",
    "BackendError",
    "Completion",
    "ContextOverflow",
    "Corpus",
    "Credit",
    "EvalSpec",
    "FTS5Index",
    "LLMAligner",
    "LLMJudge",
    "NormalizedAligner",
    "OpenAIBackend",
    "Page",
    "RewardConfig",
    "RunResult",
    "ScriptedBackend",
    "TableScore",
    "TantivyIndex",
    "Task",
    "ToolCall",
    "Trace",
    "WideSeek",
    "WorldTools",
    "build_corpus",
    "build_index",
    "credit",
    "extract_boxed",
    "extract_table",
    "generate_tasks",
    "generate_wide_tasks",
    "load_tasks",
    "parse_tool_calls",
    "score_qa",
    "score_table",
    "summarize",
    "write_tasks",
]

_TRAINING = {"TransformersBackend": "rollout", "rollout_group": "rollout", "GRPOConfig": "grpo", "TurnSample": "grpo",
             "TrainConfig": "train", "Trainer": "train", "DistributedTrainer": "distributed"}


def __getattr__(name: str):
    """The training API (issue 13) is imported on first use so that the runtime does not import torch."""
    if name in _TRAINING:
        import importlib

        return getattr(importlib.import_module(f"leanlm.wideseek.{_TRAINING[name]}"), name)
    raise AttributeError(f"module 'leanlm.wideseek' has no attribute {name!r}")
