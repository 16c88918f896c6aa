"""A real HTTP server on 127.0.0.1 that speaks ``POST /v1/chat/completions`` with scripted replies.

The test double of an LLM endpoint: the agent's real ``openai`` client talks real HTTP to it. Each request
takes the next :class:`Reply` of the script (a JSON answer, an HTTP error, or a delay longer than the client's
timeout); when the script is used up, ``default`` (a function of the request body) answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted reply: ``content`` as the assistant message, or an HTTP ``status`` error, after ``delay`` s."""

    content: str | None = None
    status: int = 200
    delay: float = 0.0
    finish_reason: str = "stop"


def answer(levels: dict[str, int], rationale: str = "r", reflection: str = "f") -> Reply:
    """A valid-shaped answer pruning ``levels``."""
    prune = [{"unit": u, "level": lv} for u, lv in levels.items()]
    return Reply(json.dumps({"reflection": reflection, "rationale": rationale, "prune": prune}))


def completion(content: str, model: str, finish_reason: str = "stop") -> dict[str, Any]:
    """A Chat Completions response body."""
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 100, "completion_tokens": len(content) // 4,
                      "total_tokens": 100 + len(content) // 4}}


class ScriptedChatServer:
    """``with ScriptedChatServer([Reply(...), ...]) as server: server.base_url``; ``server.requests`` holds
    every request body received (also those whose reply the client gave up waiting for)."""

    def __init__(self, script: list[Reply], default: Callable[[dict[str, Any]], Reply] | None = None) -> None:
        self.script = list(script)
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            if self.script:
                return self.script.pop(0)
        if self.default is None:
            return Reply(status=500, content="script exhausted")
        return self.default(body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                reply = server._next(body)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    self._send(reply.status, {"error": {"message": reply.content or "scripted error",
                                                        "type": "server_error"}})
                else:
                    self._send(200, completion(reply.content or "", body.get("model", "m"), reply.finish_reason))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        return Handler

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedChatServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()
