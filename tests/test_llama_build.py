"""The installed llama-cpp-python is the portable build ``scripts/setup.sh`` asks for: its compile-time CPU
features (``llama_print_system_info()``) hold AVX2 and none of the instruction sets that crash on machines
reporting them without allowing them (AVX-512, AMX); and the check itself flags native and AVX-512 builds."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest

from policies.agent import llama_build
from policies.agent.llama_build import NON_PORTABLE, build_problems, parse_features, requested

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"
INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "
        "OPENMP = 1 | REPACK = 1 |")
NATIVE_INFO = INFO.replace("BMI2 = 1 |", "BMI2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 |")


def setup_flags() -> str:
    """The x86-64 ``LLAMA_CMAKE_ARGS`` default of scripts/setup.sh (its PORTABLE_X86 string)."""
    match = re.search(r'PORTABLE_X86="(.*?)"', SETUP.read_text(), re.DOTALL)
    assert match, f"{SETUP} has no PORTABLE_X86=\"...\" assignment"
    return match.group(1).replace("\\\n", " ")


def test_parse_features_and_requested_flags():
    assert parse_features(INFO)["CPU"] >= {"AVX", "AVX2", "FMA", "F16C", "BMI2"}
    assert "AVX512" not in parse_features(INFO)["CPU"]
    assert parse_features("CPU : AVX2 = 0 | AVX = 1 |")["CPU"] == {"AVX"}
    on, off, native = requested(setup_flags())
    assert {"AVX2", "FMA", "F16C"} <= on and set(NON_PORTABLE) <= off and native is False


def test_build_problems_flags_native_and_avx512_builds():
    assert build_problems(setup_flags(), INFO) == []
    problems = build_problems(setup_flags(), NATIVE_INFO)  # the flags turn them off, the build has them
    assert any("AVX512 is compiled in" in p for p in problems) and any("AMX_INT8" in p for p in problems)
    native = build_problems("-DGGML_AVX2=ON", INFO)  # GGML_NATIVE left at its default (on)
    assert any("GGML_NATIVE" in p for p in native)
    assert any("AVX2 was asked for" in p for p in build_problems(setup_flags(), INFO.replace("AVX2 = 1", "AVX2 = 0")))
    assert build_problems(setup_flags(), "no backends here") == ["llama_print_system_info() names no CPU backend: "
                                                                 "'no backends here'"]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="setup.sh's portable x86-64 flags")
def test_the_installed_build_is_portable():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/setup.sh builds it)")
    info = llama_build.system_info()
    cpu = parse_features(info).get("CPU", set())
    assert "AVX2" in cpu, info
    assert not cpu & set(NON_PORTABLE), f"non-portable instruction sets compiled in: {sorted(cpu & set(NON_PORTABLE))}"
    assert build_problems(setup_flags(), info) == [], info
