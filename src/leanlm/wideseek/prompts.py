"""Prompts and tool schemas for the lead, the subagents and the single agent (our own wording).

They follow WideSeek-R1 (arXiv 2602.04634, Sec. 3.1 "lead agent" / "subagents", and RLinf's
``rlinf/agents/wideseek_r1/utils/{prompt,tool_description}.py``) in spirit: the lead only decomposes
and delegates through ``create_sub_agents`` (paper name ``call_subagent``), subagents search and access
pages, every user/tool message carries a turn hint, the lead sees each subtask as
``# Subtask i:`` / ``# Result:``, and the final answer is a fenced ``markdown`` table (or ``\\boxed{}``).
"""

from __future__ import annotations

from typing import Any

LEAD_SYSTEM = """You are the lead agent of a research team. You cannot search or read web pages yourself: \
your only tool is `create_sub_agents`, which starts subagents that work in parallel, each with its own \
search and page-access tools. Break the task into independent subtasks that can run at the same time \
(for example one per entity or one per group of entities), give each subagent a self-contained prompt \
that names exactly what to find, and call `create_sub_agents` with up to {max_subagents} subtasks per \
turn. After each round, reflect on the results: delegate again what is missing or doubtful.
When you have everything, reply WITHOUT calling a tool, with the final answer only:
{answer_format}"""

TABLE_FORMAT = """a single markdown table inside a fenced block that starts with ```markdown, with exactly \
the columns the task asks for, one row per entity, for example:
```markdown
| country | capital |
| --- | --- |
| France | Paris |
```"""

QA_FORMAT = "the short answer inside \\boxed{}, for example \\boxed{Paris}."

SUB_SYSTEM = """You are a research subagent. Use the `search` tool (several queries at once, up to \
{max_items} per call) to find pages and the `access` tool (up to {max_items} pages per call) to read them \
and extract what you need. Check facts on the page itself. When you are done, reply WITHOUT calling a tool \
with a short structured report of what you found: every requested value, the URL it came from, and what \
you could not find."""

SUB_TASK = "The main task is:\n{main_task}\n\nYour current subtask is:\n{subtask}"

SINGLE_SYSTEM = """You are a research agent. Use the `search` tool to find pages and the `access` tool to \
read them; call them as often as you need. When you have everything, reply WITHOUT calling a tool, with \
the final answer only:
{answer_format}"""

SUBAGENT_FAILED = (
    "This subagent failed: it ran out of its context window or its turn limit before it could report on "
    "this subtask. Please retry the subtask, split into smaller pieces if it is large."
)
"""What the lead sees for a subagent that hit a turn or context limit (RLinf sends one fixed failure-and-retry
message for every such failure, ``prompt_utils.get_planner_subtask_failed_message``; our wording)."""

OVERFLOW_RESULT = SUBAGENT_FAILED  # the name used before the turn-limit case shared the message

THINK_RULE = """
Reason step by step inside <think> and </think> every time you receive new information, before you answer or call a tool."""

FEW_SHOT = """

Two examples of how to work (our own, in the pattern of the paper's prompt):

Example 1. Task: "List the ten richest people of 2025 from Japan and from Brazil with their rank, birth year and company." The two countries are independent, so the first turn is one call with two subagents:
<tool_call>{"name": "create_sub_agents", "arguments": {"sub_agents": [{"prompt": "Find the ten richest people of 2025 from Japan with their rank."}, {"prompt": "Find the ten richest people of 2025 from Brazil with their rank."}]}}</tool_call>
When both lists are back, the second turn starts one subagent per group of people to find birth years and companies, and the last turn writes the table.

Example 2. Task: "Give every member of the Big Ten university conference with its city and founding year." The members are not known yet, so the first turn asks one subagent for the member list:
<tool_call>{"name": "create_sub_agents", "arguments": {"sub_agents": [{"prompt": "Which universities are members of the Big Ten conference in 2025? Give the full list."}]}}</tool_call>
With the list back, the second turn starts several subagents in parallel, each covering a few universities (city and founding year), then the lead checks for gaps, retries what is missing, and writes the table."""


def lead_system(max_subagents: int, answer_format: str, *, thinking: bool = False, few_shot: bool = True) -> str:
    """The lead's system prompt: role and tool, optional few-shot table examples (RLinf's lead prompt has two)
    and the optional ``<think>`` rule (Qwen3's convention; off for models without a thinking mode)."""
    text = LEAD_SYSTEM.format(max_subagents=max_subagents, answer_format=answer_format)
    return text + (FEW_SHOT if few_shot else "") + (THINK_RULE if thinking else "")


def turn_hint(turn: int, max_turns: int) -> str:
    """The turn hint appended to every user/tool message (RLinf ``prompt_utils``): next turn and the last one."""
    return f"\n\n[Turn {turn} of {max_turns} done. Your next reply is turn {turn + 1}; give your final answer by turn {max_turns}.]"


def subtask_result(index: int, prompt: str, result: str) -> str:
    return f"# Subtask {index}:\n{prompt}\n# Result:\n{result}"


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


def lead_tools(max_subagents: int) -> list[dict[str, Any]]:
    """``create_sub_agents {sub_agents: [{prompt}]}`` (RLinf ``tool_description.py``)."""
    return [_fn(
        "create_sub_agents",
        f"Start up to {max_subagents} subagents that run in parallel; each gets one self-contained subtask prompt "
        "and returns a report.",
        {"sub_agents": {"type": "array", "items": {
            "type": "object", "properties": {"prompt": {"type": "string", "description": "the subtask"}},
            "required": ["prompt"]}}},
        ["sub_agents"],
    )]


def sub_tools(max_items: int, default_count: int) -> list[dict[str, Any]]:
    """Subagent ``search {queries: [{query, count}]}`` and ``access {urls: [{url, info_to_extract}]}``."""
    return [
        _fn("search", f"Search the web; up to {max_items} queries run at once. Returns the top results per query.",
            {"queries": {"type": "array", "items": {
                "type": "object", "properties": {
                    "query": {"type": "string"},
                    "count": {"type": "integer", "description": f"results to return (default {default_count}, below 10)"}},
                "required": ["query"]}}},
            ["queries"]),
        _fn("access", f"Read web pages; up to {max_items} URLs at once. Returns the page text and the parts relevant "
            "to info_to_extract.",
            {"urls": {"type": "array", "items": {
                "type": "object", "properties": {"url": {"type": "string"}, "info_to_extract": {"type": "string"}},
                "required": ["url", "info_to_extract"]}}},
            ["urls"]),
    ]


def single_tools(default_count: int) -> list[dict[str, Any]]:
    """SingleSeek's scalar tools (``workflow: sa``): one query or one URL per call."""
    return [
        _fn("search", "Search the web and return the top results.",
            {"query": {"type": "string"},
             "count": {"type": "integer", "description": f"results to return (default {default_count})"}}, ["query"]),
        _fn("access", "Read one web page; returns the text and the parts relevant to info_to_extract.",
            {"url": {"type": "string"}, "info_to_extract": {"type": "string"}}, ["url", "info_to_extract"]),
    ]
