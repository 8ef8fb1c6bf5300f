"""Start and stop llama.cpp's OpenAI-compatible server with the embedded SmolLM2 GGUF, on loopback only.

``llama-cpp-python[server]`` provides ``python -m llama_cpp.server``. Known on this machine (issue 7):
the default native build segfaults at the first token, so it must be built with
``CMAKE_ARGS="-DGGML_NATIVE=OFF"``; ``--chat_format chatml-function-calling`` makes SmolLM2 return
grammar-constrained ``tool_calls`` through the chat-completions API. The server binds to 127.0.0.1 on a
free port; its log goes to a file so a failed start can be diagnosed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from leanlm.common.progress import get_logger

log = get_logger("leanlm.wideseek.server")

SERVER_HINT = ('llama-cpp-python is not installed. Build it with:\n'
               '    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install "llama-cpp-python[server]"')


class ServerError(RuntimeError):
    """The llama.cpp server could not be started."""


def server_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LlamaServer:
    """``with LlamaServer() as server: OpenAIBackend(server.base_url, ...)``.

    ``model`` defaults to the embedded SmolLM2-135M-Instruct GGUF. ``n_ctx`` is the context window,
    ``n_threads`` the CPU threads (default: all cores), ``parallel`` is not offered because llama-cpp-python's
    server serves one request at a time (calls from concurrent subagents queue up; see the width benchmark).
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, *, port: int | None = None,
                 chat_format: str = "chatml-function-calling", n_ctx: int = 8192, n_threads: int | None = None,
                 startup_timeout: float = 120.0, log_path: str | os.PathLike[str] | None = None,
                 extra_args: list[str] | None = None):
        if model is None:
            from leanlm.common.models import embedded_gguf_path

            model = embedded_gguf_path()
        self.model = Path(model)
        if not self.model.exists():
            raise ServerError(f"model file not found: {self.model}")
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.chat_format, self.n_ctx = chat_format, n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[Any] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host", self.host,
                "--port", str(self.port), "--chat_format", self.chat_format, "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.n_threads), "--model_alias", "embedded", *self.extra_args]

    def start(self) -> LlamaServer:
        if not server_available():
            raise ServerError(SERVER_HINT)
        log.info("starting llama.cpp server on %s (model %s, log %s)", self.base_url, self.model.name, self.log_path)
        handle = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.process = subprocess.Popen(self.command(), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        handle.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"llama.cpp server exited with code {self.process.returncode}; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        log.info("llama.cpp server ready on %s", self.base_url)
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"llama.cpp server not ready after {self.startup_timeout:g} s; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
