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
call. After each round, reflect on the results: delegate again what is missing or doubtful.
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

OVERFLOW_RESULT = (
    "This subagent exceeded its context window before it could report. Please retry this subtask, "
    "split into smaller pieces if it is large."
)


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
