"""Fixtures for the magics tests: an in-process IPython shell with the extension loaded, and the
real tiny fixture models run by the real engine: `tiny` is, in turn, BitNet
(tests/fixtures/bitnet/packed), Mamba and RWKV-4 (tests/fixtures/recurrent), so every test that
takes it runs with each family."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "bitnet" / "packed"
FAMILY_FIXTURES = {"bitnet": TINY, "mamba": REPO / "tests" / "fixtures" / "recurrent" / "mamba_f32",
                   "rwkv": REPO / "tests" / "fixtures" / "recurrent" / "rwkv_f32"}

os.environ.setdefault("HF_HUB_OFFLINE", "1")      # tests never reach the network


@pytest.fixture(scope="session")
def shell():
    from IPython.testing.globalipapp import get_ipython
    ip = get_ipython()
    ip.extension_manager.load_extension("ryzjupyter")
    return ip


@pytest.fixture
def ip(shell):
    """The shell with fresh magics state: no models, default settings, empty history."""
    from ryzjupyter.jupyter.magics import REGISTRY
    m = shell._ryz_magics
    REGISTRY.clear()
    m.history.clear()
    m.last_reply = None
    defaults = {name: trait.default_value for name, trait in m.traits(config=True).items()}
    yield shell
    REGISTRY.clear()
    m.history.clear()
    for name, value in defaults.items():
        setattr(m, name, value)
    for k in ("ans", "x"):
        shell.user_ns.pop(k, None)


@pytest.fixture
def magics(ip):
    return ip._ryz_magics


@pytest.fixture(params=sorted(FAMILY_FIXTURES))
def tiny(ip, request):
    """A tiny fixture model (BitNet, Mamba, RWKV-4 in turn) loaded as 'tiny' and current, greedy
    settings, no streaming."""
    ip.run_line_magic("ryz", f"load {FAMILY_FIXTURES[request.param]} --name tiny")
    ip.run_line_magic("config", "RyzMagics.temperature = 0")
    ip.run_line_magic("config", "RyzMagics.show_stats = False")
    from ryzjupyter.jupyter.magics import REGISTRY
    return REGISTRY.get("tiny")


@pytest.fixture(scope="session", autouse=True)
def _converted_cache_in_tmp(tmp_path_factory):
    """Converted-weight caches (and the kernels started by the tests, which inherit the
    environment) write to a temporary folder, never to ~/.cache."""
    old = os.environ.get("RYZ_CACHE_DIR")
    os.environ["RYZ_CACHE_DIR"] = str(tmp_path_factory.mktemp("ryz-cache"))
    yield
    if old is None:
        os.environ.pop("RYZ_CACHE_DIR", None)
    else:
        os.environ["RYZ_CACHE_DIR"] = old
