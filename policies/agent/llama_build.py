"""What the installed llama-cpp-python was compiled with, checked against the flags it was built from.

A llama.cpp built with ``-march=native`` (its default) carries every instruction set the build machine
*reports*; a VM that reports AMX or AVX-512 without allowing it then kills the server with SIGSEGV on the
first completion. ``scripts/setup.sh`` builds a portable wheel instead (see ``LLAMA_CMAKE_ARGS`` there) and
runs ``python -m policies.agent.llama_build --cmake-args "..."`` afterwards: the CPU backend's compile-time
features (``llama_print_system_info()``, which reports ``#if defined(__AVX512F__)``-style facts of the build,
not of the CPU) must hold each instruction set the flags turned on and none they turned off.
"""

from __future__ import annotations

import argparse
import re
import sys

# CMake option -> the feature name llama_print_system_info() reports when that code was compiled in.
CMAKE_FEATURES = {
    "GGML_AVX": "AVX", "GGML_AVX2": "AVX2", "GGML_FMA": "FMA", "GGML_F16C": "F16C", "GGML_BMI2": "BMI2",
    "GGML_AVX_VNNI": "AVX_VNNI", "GGML_AVX512": "AVX512", "GGML_AVX512_VBMI": "AVX512_VBMI",
    "GGML_AVX512_VNNI": "AVX512_VNNI", "GGML_AVX512_BF16": "AVX512_BF16", "GGML_AMX_INT8": "AMX_INT8",
}
# Never in a portable x86-64 build: instruction sets some machines of the same kind report but do not allow.
NON_PORTABLE = ("AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8")
_FLAG = re.compile(r"-D(GGML_[A-Z0-9_]+)=(ON|OFF|1|0|TRUE|FALSE)\b", re.I)


def system_info() -> str:
    """``llama_cpp.llama_print_system_info()`` of the installed build, as text."""
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def parse_features(info: str) -> dict[str, set[str]]:
    """``{backend: {feature, ...}}`` from ``"CPU : SSE3 = 1 | AVX2 = 1 | ... |"`` (features with value 1)."""
    out: dict[str, set[str]] = {}
    backend = None
    for part in info.split("|"):
        part = part.strip()
        if not part:
            continue
        if " : " in part:  # "CPU : SSE3 = 1" starts a backend
            backend, part = (s.strip() for s in part.split(" : ", 1))
            out.setdefault(backend, set())
        name, _, value = part.partition("=")
        if backend is not None and value.strip() not in ("", "0"):
            out[backend].add(name.strip())
    return out


def requested(cmake_args: str) -> tuple[set[str], set[str], bool]:
    """(features the flags turn on, features they turn off, whether GGML_NATIVE is on) (pure)."""
    on, off, native = set(), set(), True  # llama.cpp's default is a native build
    for name, value in _FLAG.findall(cmake_args):
        enabled = value.upper() in ("ON", "1", "TRUE")
        name = name.upper()
        if name == "GGML_NATIVE":
            native = enabled
        elif name in CMAKE_FEATURES:
            (on if enabled else off).add(CMAKE_FEATURES[name])
    return on, off, native


def build_problems(cmake_args: str, info: str) -> list[str]:
    """What is wrong with a build made from ``cmake_args`` whose system info is ``info`` (pure)."""
    cpu = parse_features(info).get("CPU")
    if cpu is None:
        return [f"llama_print_system_info() names no CPU backend: {info!r}"]
    on, off, native = requested(cmake_args)
    problems = []
    if native:
        problems.append("the build flags leave GGML_NATIVE on (-march=native): the build uses whatever this CPU "
                        "reports, which may crash elsewhere or here (AMX/AVX-512 reported but not allowed); "
                        "pass -DGGML_NATIVE=OFF")
    problems += [f"{f} was asked for (-D...={f}=ON) but is not compiled in" for f in sorted(on - cpu)]
    problems += [f"{f} is compiled in although the flags turn it off" for f in sorted(off & cpu)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cmake-args", required=True, help="the CMAKE_ARGS the installed build was made with")
    args = parser.parse_args(argv)
    info = system_info()
    print(f"llama-cpp-python build: {info.strip()}")
    problems = build_problems(args.cmake_args, info)
    if problems:
        print("llama-cpp-python build check FAILED:\n  " + "\n  ".join(problems) + "\nRebuild it: delete "
              "the venv's .llama-cpp-build-key and rerun scripts/setup.sh with the right LLAMA_CMAKE_ARGS",
              file=sys.stderr)
        return 1
    print("llama-cpp-python build check passed: compile-time features match the build flags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
