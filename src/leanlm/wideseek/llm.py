"""Model backends: one async ``complete(messages, tools)`` interface behind every way of calling an LLM.

WideSeek-R1 (arXiv 2602.04634, Sec. 3 and the RLinf code) runs one shared model for the lead and all
subagents. Two wire formats are supported, as the issue asks:

- ``tool_mode="native"``: OpenAI chat completions with ``tools=`` and server-side tool parsing (vLLM
  ``--tool-call-parser hermes``, SGLang, llama.cpp ``--chat_format chatml-function-calling``).
- ``tool_mode="text"``: the tools are described in the system prompt and the model writes Hermes/Qwen
  ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` blocks that *we* parse
  (:func:`parse_tool_calls`), as RLinf's ``wideseek_r1-qwen`` parser does; this is the path that keeps
  token ids and log-probs (``logprobs=True``), which training needs.

Transient failures (timeouts, connection errors, 429 and 5xx) are retried with exponential backoff; every
attempt is reported to the caller through ``Completion.attempts`` so that the trace records it. A request
that still fails raises :class:`BackendError`, which the agent loop records and survives.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from leanlm.common.progress import get_logger

log = get_logger("leanlm.wideseek.llm")

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass
class ToolCall:
    """One tool call as the model wrote it. ``error`` is set when it could not be parsed."""

    name: str
    arguments: dict[str, Any] | None
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")
    raw: str = ""
    error: str | None = None

    def to_openai(self) -> dict[str, Any]:
        args = json.dumps(self.arguments, ensure_ascii=False) if self.arguments is not None else self.raw
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": args}}


@dataclass
class Completion:
    """One model turn: visible text, parsed tool calls, token usage and what it took to get it."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    seconds: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    simulated_s: float | None = None


class BackendError(RuntimeError):
    """The model server failed for good (after retries) on one request."""


class ContextOverflow(BackendError):
    """The request did not fit the model's context window."""


class Backend(Protocol):
    """What the agent loop needs from a model: one completion per call, safe to call concurrently."""

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, agent: str) -> Completion:
        ...


# --------------------------------------------------------------------------------------------- parsing
def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split Hermes/Qwen raw text into (visible text, tool calls).

    Each ``<tool_call>...</tool_call>`` block must hold a JSON object with ``name`` and ``arguments``
    (an object, or a JSON string holding one). A block that fails is returned as a :class:`ToolCall` with
    ``error`` set and ``name`` as far as it could be read, so the agent loop can report it to the model.
    An unterminated last block (generation cut off by ``max_tokens``) is parsed the same way.
    """
    calls: list[ToolCall] = []
    for match in TOOL_CALL_RE.finditer(text):
        raw = match.group(1).strip()
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            name_match = re.search(r'"name"\s*:\s*"([^"]+)"', raw)
            calls.append(ToolCall(name=name_match.group(1) if name_match else "", arguments=None, raw=raw,
                                  error=f"tool call is not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        calls.append(_tool_call_from_obj(obj, raw))
    visible = TOOL_CALL_RE.sub("", text).strip()
    return visible, calls


def _tool_call_from_obj(obj: Any, raw: str) -> ToolCall:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall(name="", arguments=None, raw=raw, error="tool call must be an object with a string 'name'")
    return parse_arguments(obj["name"], obj.get("arguments", obj.get("parameters", {})), raw)


def parse_arguments(name: str, arguments: Any, raw: str = "", call_id: str | None = None) -> ToolCall:
    """Build a :class:`ToolCall` from a name and arguments given as an object or a JSON string."""
    extra = {"id": call_id} if call_id else {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolCall(name=name, arguments=None, raw=raw or arguments,
                            error=f"arguments are not valid JSON ({exc.msg} at column {exc.colno})", **extra)
    if not isinstance(arguments, dict):
        return ToolCall(name=name, arguments=None, raw=raw or json.dumps(arguments),
                        error=f"arguments must be a JSON object, got {type(arguments).__name__}", **extra)
    return ToolCall(name=name, arguments=arguments, raw=raw or json.dumps(arguments, ensure_ascii=False), **extra)


def strip_think(text: str) -> str:
    """The part of a reply after ``</think>`` (Qwen3 thinking); the whole text when there is none."""
    return text.split("</think>")[-1].strip() if "</think>" in text else text.strip()


def tools_system_block(tools: Sequence[dict[str, Any]]) -> str:
    """The Hermes/Qwen tool preamble appended to the system prompt in ``text`` mode."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{lines}\n</tools>\n\nFor each function call, return a json object with function name and arguments "
        'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        "<args-json-object>}\n</tool_call>"
    )


_WIRE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name"})


def to_text_messages(messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite a native tool-calling conversation into plain chat turns for ``text`` mode.

    Assistant tool calls become ``<tool_call>`` blocks in the assistant text and tool results become user
    turns wrapped in ``<tool_response>`` (Qwen's chat template does the same).
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "system":
            out.append({"role": "system", "content": message["content"] + (tools_system_block(tools) if tools else "")})
        elif role == "assistant":
            text = message.get("content") or ""
            for call in message.get("tool_calls") or []:
                fn = call["function"]
                try:
                    args = json.loads(fn["arguments"])
                except (json.JSONDecodeError, TypeError):
                    args = fn["arguments"]
                text += "\n<tool_call>\n" + json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False) + "\n</tool_call>"
            out.append({"role": "assistant", "content": text.strip()})
        elif role == "tool":
            block = f"<tool_response>\n{message['content']}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
        else:
            out.append({"role": role, "content": message.get("content") or ""})
    for message in out:
        message.pop("_tool", None)
    return out


# --------------------------------------------------------------------------------------------- OpenAI
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class OpenAIBackend:
    """Chat completions against any OpenAI-compatible server (vLLM, SGLang, llama.cpp) via ``openai``.

    ``tool_mode="native"`` sends ``tools=`` and reads ``message.tool_calls``; ``"text"`` describes the tools
    in the system prompt and parses ``<tool_call>`` blocks from the text (see module doc). ``retries`` extra
    attempts are made on timeouts, connection errors, 408/409/429 and 5xx, with backoff ``backoff * 2**k``.
    ``client`` may be passed in (tests use an ``httpx.MockTransport``); otherwise ``AsyncOpenAI`` is built.
    """

    base_url: str
    model: str = "default"
    api_key: str = "EMPTY"
    tool_mode: str = "native"
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 1.0
    timeout: float = 120.0
    retries: int = 2
    backoff: float = 0.5
    logprobs: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    client: Any = None

    def __post_init__(self) -> None:
        if self.tool_mode not in ("native", "text"):
            raise ValueError(f"tool_mode must be 'native' or 'text', got {self.tool_mode!r}")
        if self.client is None:
            from openai import AsyncOpenAI

            self.client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout, max_retries=0)

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, agent: str) -> Completion:
        import openai

        kwargs: dict[str, Any] = {
            "model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
        }
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        if self.tool_mode == "native":
            kwargs["messages"] = [{k: v for k, v in m.items() if k in _WIRE_KEYS} for m in messages]
            if tools:
                kwargs["tools"] = tools
                kwargs["tool_choice"] = "auto"
        else:
            kwargs["messages"] = to_text_messages(messages, tools)
            if self.logprobs:
                kwargs["logprobs"] = True
        attempts: list[dict[str, Any]] = []
        start = time.perf_counter()
        for attempt in range(self.retries + 1):
            t0 = time.perf_counter()
            try:
                response = await self.client.chat.completions.create(**kwargs)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                attempts.append({"attempt": attempt, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0})
            except openai.APIStatusError as exc:
                text = f"HTTP {exc.status_code}: {exc.message}"
                attempts.append({"attempt": attempt, "error": text, "seconds": time.perf_counter() - t0})
                if exc.status_code == 400 and re.search(r"context|too long|exceed", str(exc.message), re.I):
                    raise ContextOverflow(text) from exc
                if exc.status_code not in RETRYABLE_STATUS:
                    raise BackendError(f"{agent}: {text}") from exc
            else:
                completion = self._parse(response)
                completion.seconds = time.perf_counter() - start
                completion.attempts = attempts
                return completion
            if attempt < self.retries:
                await asyncio.sleep(self.backoff * 2**attempt)
        error = BackendError(f"{agent}: model request failed after {len(attempts)} attempts: {attempts[-1]['error']}")
        error.attempts = attempts  # type: ignore[attr-defined]
        raise error

    def _parse(self, response: Any) -> Completion:
        if not getattr(response, "choices", None):
            raise BackendError(f"server returned no choices: {str(response)[:200]}")
        choice = response.choices[0]
        message = choice.message
        text = message.content or ""
        usage = getattr(response, "usage", None)
        completion = Completion(
            content=text, finish_reason=choice.finish_reason,
            prompt_tokens=getattr(usage, "prompt_tokens", None), completion_tokens=getattr(usage, "completion_tokens", None),
        )
        if self.tool_mode == "native":
            for call in message.tool_calls or []:
                completion.tool_calls.append(
                    parse_arguments(call.function.name, call.function.arguments, call_id=call.id or None)
                )
        else:
            completion.content, completion.tool_calls = parse_tool_calls(text)
            lp = getattr(choice, "logprobs", None)
            if lp is not None and getattr(lp, "content", None):
                completion.logprobs = [float(t.logprob) for t in lp.content]
        return completion


# --------------------------------------------------------------------------------------------- in-process
Policy = Callable[[str, list[dict[str, Any]], list[dict[str, Any]]], "Completion | str | Awaitable[Completion | str]"]


@dataclass
class ScriptedBackend:
    """An in-process model: ``policy(agent, messages, tools)`` returns a :class:`Completion` or raw text.

    Raw text is parsed with :func:`parse_tool_calls`, so a script can exercise malformed calls exactly as a
    real model would write them. The policy may be sync or async and may raise to simulate server errors.
    ``latency`` is an optional callable returning seconds to sleep per call (see ``bench.LatencyModel``);
    ``slots`` bounds how many calls are served at once (1 models a single-slot llama.cpp server).
    """

    policy: Policy
    latency: Callable[[], float] | None = None
    slots: int | None = None
    calls: int = 0
    _sem: asyncio.Semaphore | None = field(default=None, repr=False)

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, agent: str) -> Completion:
        self.calls += 1
        start = time.perf_counter()
        if self.slots:
            if self._sem is None:
                self._sem = asyncio.Semaphore(self.slots)
            async with self._sem:
                out, slept = await self._call(messages, tools, agent)
        else:
            out, slept = await self._call(messages, tools, agent)
        if isinstance(out, str):
            content, calls = parse_tool_calls(out)
            out = Completion(content=content, tool_calls=calls)
        out.seconds = time.perf_counter() - start
        out.simulated_s = slept if self.latency is not None else None
        if out.prompt_tokens is None:
            out.prompt_tokens = sum(len(str(m.get("content") or "")) for m in messages) // 4
        if out.completion_tokens is None:
            out.completion_tokens = len(out.content) // 4 + 8 * len(out.tool_calls)
        return out

    async def _call(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                    agent: str) -> tuple[Completion | str, float]:
        slept = 0.0
        if self.latency is not None:
            slept = self.latency()
            await asyncio.sleep(slept)
        result = self.policy(agent, messages, tools)
        if asyncio.iscoroutine(result):
            result = await result
        return result, slept  # type: ignore[return-value]


def jitter_rng(seed: int) -> random.Random:
    """A seeded RNG for latency models (kept here so benches and tests share it)."""
    return random.Random(seed)
