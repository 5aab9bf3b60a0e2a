"""native_info(), ISA selection and the thread pool settings."""
import os
import subprocess
import sys

import pytest

import ryzjupyter
from ryzjupyter import _native


def test_native_info_shape():
    info = ryzjupyter.native_info()
    assert info["isa"] in ("scalar", "avx2", "avx512vnni")
    assert isinstance(info["cpu_features"], list) and all(isinstance(f, str) for f in info["cpu_features"])
    assert info["threads"] >= 1
    assert info["kernels"]["quantize_row_i8"] == info["isa"]


def test_best_isa_selected_by_default():
    if os.environ.get("RYZ_ISA"):
        pytest.skip("RYZ_ISA forces a level in this run")
    info = _native.info()
    assert info["isa"] == info["best_isa"]


def test_ci_machine_runs_avx512vnni():
    """On the project's machine type the fast path must be the one selected."""
    if "avx512vnni" not in _native.info()["cpu_features"]:
        pytest.skip("this CPU does not support ISA level 'avx512vnni'")
    if os.environ.get("RYZ_ISA"):
        pytest.skip("RYZ_ISA forces a level in this run")
    assert ryzjupyter.native_info()["isa"] == "avx512vnni"


def _import_with(env_extra):
    env = dict(os.environ, **env_extra)
    code = "import ryzjupyter; print(ryzjupyter.native_info()['isa'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512vnni"])
def test_ryz_isa_env_forces_level(level):
    r = _import_with({"RYZ_ISA": level})
    if level in _native.info()["supported_isas"]:
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == level
    else:
        assert r.returncode != 0 and "does not support" in r.stderr


def test_ryz_isa_unknown_name_is_a_clear_error():
    r = _import_with({"RYZ_ISA": "sse9"})
    assert r.returncode != 0
    assert "use scalar, avx2 or avx512vnni" in r.stderr


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError, match="not an ISA level"):
        _native.set_isa("neon")


def test_ryz_num_threads_env():
    env = dict(os.environ, RYZ_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", "import ryzjupyter; print(ryzjupyter.native_info()['threads'])"],
                         env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "3", out.stderr


def test_set_num_threads_bounds():
    prev = _native.get_num_threads()
    with pytest.raises(ValueError):
        _native.set_num_threads(0)
    _native.set_num_threads(1)
    assert _native.get_num_threads() == 1
    _native.set_num_threads(prev)
    assert _native.get_num_threads() == prev
