"""Model backends: Hermes tool-call parsing, OpenAI-compatible calls (mock transport), retries and errors."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from leanlm.wideseek.agents import AgentConfig, WideSeek
from leanlm.wideseek.llm import (
    BackendError,
    ContextOverflow,
    OpenAIBackend,
    parse_tool_calls,
    strip_think,
    to_text_messages,
)


def test_parse_hermes_tool_calls():
    text = ('<think>plan</think>Let me search.\n<tool_call>\n{"name": "search", "arguments": {"queries": [{"query": "a"}]}}\n'
            '</tool_call>\n<tool_call>{"name": "access", "arguments": "{\\"urls\\": []}"}</tool_call>')
    visible, calls = parse_tool_calls(text)
    assert visible == "<think>plan</think>Let me search."
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("search", {"queries": [{"query": "a"}]}, None), ("access", {"urls": []}, None)]
    _, calls = parse_tool_calls('<tool_call>{"name": "search", "arguments": {"queries": [</tool_call>')
    assert calls[0].name == "search" and calls[0].arguments is None and "not valid JSON" in calls[0].error
    _, calls = parse_tool_calls('<tool_call>{"name": "search", "arguments": {"queries": []}}')  # cut off by max_tokens
    assert calls[0].arguments == {"queries": []}
    _, calls = parse_tool_calls('<tool_call>["search"]</tool_call><tool_call>{"name": "x", "arguments": [1]}</tool_call>')
    assert "string 'name'" in calls[0].error and "must be a JSON object" in calls[1].error
    assert parse_tool_calls("no calls here") == ("no calls here", [])
    assert strip_think("<think>a</think>\n answer ") == "answer" and strip_think(" plain ") == "plain"


def test_text_mode_message_rewrite():
    tools = [{"type": "function", "function": {"name": "search", "parameters": {}}}]
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "thinking", "tool_calls": [
                    {"id": "1", "type": "function", "function": {"name": "search", "arguments": '{"q": 1}'}}]},
                {"role": "tool", "tool_call_id": "1", "content": "r1"}, {"role": "tool", "tool_call_id": "2", "content": "r2"}]
    out = to_text_messages(messages, tools)
    assert out[0]["content"].startswith("sys\n\n# Tools") and '"name": "search"' in out[0]["content"]
    assert out[2] == {"role": "assistant", "content": 'thinking\n<tool_call>\n{"name": "search", "arguments": {"q": 1}}\n</tool_call>'}
    assert out[3] == {"role": "user", "content": "<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response>"}
    assert len(out) == 4


def chat_response(content=None, tool_calls=None, finish="stop"):
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, (n, a) in enumerate(tool_calls)]
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}


class Server:
    """A scripted OpenAI-compatible server behind ``httpx.MockTransport``."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, tuple):
            return httpx.Response(reply[0], json={"error": {"message": reply[1]}})
        return httpx.Response(200, json=reply)

    def backend(self, **kw):
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url="http://test/v1", api_key="k", max_retries=0,
                             http_client=httpx.AsyncClient(transport=httpx.MockTransport(self.handler)))
        return OpenAIBackend("http://test/v1", client=client, backoff=0.0, **kw)


def run(coro):
    return asyncio.run(coro)


def test_native_tool_calls_and_usage():
    server = Server([chat_response(None, [("search", '{"queries": [{"query": "x"}]}'), ("access", "{bad")])])
    tools = [{"type": "function", "function": {"name": "search", "parameters": {}}}]
    out = run(server.backend().complete([{"role": "user", "content": "hi"}], tools, agent="sub-1"))
    assert server.requests[0]["tools"] == tools and server.requests[0]["tool_choice"] == "auto"
    assert [c.name for c in out.tool_calls] == ["search", "access"]
    assert out.tool_calls[0].arguments == {"queries": [{"query": "x"}]} and out.tool_calls[0].id == "c0"
    assert out.tool_calls[1].arguments is None and "not valid JSON" in out.tool_calls[1].error
    assert (out.prompt_tokens, out.completion_tokens, out.content) == (11, 7, "")


def test_text_mode_parses_tool_calls_from_content():
    server = Server([chat_response('ok <tool_call>{"name": "search", "arguments": {"queries": []}}</tool_call>')])
    out = run(server.backend(tool_mode="text").complete(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        [{"type": "function", "function": {"name": "search"}}], agent="lead"))
    assert "tools" not in server.requests[0] and "<tools>" in server.requests[0]["messages"][0]["content"]
    assert out.content == "ok" and out.tool_calls[0].arguments == {"queries": []}


def test_retries_then_success_and_failure_modes():
    server = Server([(503, "busy"), httpx.ConnectTimeout("slow"), chat_response("done")])
    out = run(server.backend(retries=2).complete([{"role": "user", "content": "u"}], [], agent="lead"))
    assert out.content == "done" and len(out.attempts) == 2 and "503" in out.attempts[0]["error"]
    server = Server([(500, "a"), (500, "b")])
    with pytest.raises(BackendError, match="failed after 2 attempts"):
        run(server.backend(retries=1).complete([{"role": "user", "content": "u"}], [], agent="lead"))
    server = Server([(401, "bad key")])
    with pytest.raises(BackendError, match="401"):
        run(server.backend(retries=3).complete([{"role": "user", "content": "u"}], [], agent="lead"))
    assert len(server.requests) == 1  # not retried
    server = Server([(400, "This model's maximum context length is 8192 tokens")])
    with pytest.raises(ContextOverflow):
        run(server.backend().complete([{"role": "user", "content": "u"}], [], agent="lead"))


def test_full_run_through_openai_backend_records_retries():
    lead_call = chat_response(None, [("create_sub_agents", json.dumps({"sub_agents": [{"prompt": "p"}]}))])
    sub_call = chat_response(None, [("search", json.dumps({"queries": [{"query": "q"}]}))])
    server = Server([lead_call, (502, "gateway"), sub_call, chat_response("report"), chat_response("\\boxed{x}")])

    class Tools:
        def search(self, query, count):
            return "hit"

        def access(self, url, info):
            return "page"

    result = WideSeek(server.backend(retries=1), Tools(), AgentConfig(answer_format="qa")).run("task")
    assert result.status == "answered" and result.answer == "\\boxed{x}"
    assert result.trace.check_complete() == []
    retried = [e for e in result.trace.of("sub-1", "error") if e["kind"] == "retried"]
    assert len(retried) == 1 and "502" in retried[0]["message"]
    # the conversation sent back to the server keeps tool-call ids and tool results
    last_sub = server.requests[3]["messages"]
    assert last_sub[-1]["role"] == "tool" and last_sub[-1]["tool_call_id"] == last_sub[-2]["tool_calls"][0]["id"]


def test_text_mode_returns_logprobs_when_asked():
    reply = chat_response('<tool_call>{"name": "search", "arguments": {"queries": []}}</tool_call>')
    reply["choices"][0]["logprobs"] = {"content": [{"token": "<", "logprob": -0.5, "bytes": None, "top_logprobs": []},
                                                   {"token": "t", "logprob": -1.25, "bytes": None, "top_logprobs": []}]}
    server = Server([reply])
    out = run(server.backend(tool_mode="text", logprobs=True).complete([{"role": "user", "content": "u"}], [], agent="a"))
    assert server.requests[0]["logprobs"] is True
    assert out.logprobs == [-0.5, -1.25] and out.tool_calls[0].name == "search"
