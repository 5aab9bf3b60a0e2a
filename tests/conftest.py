"""Shared fixtures. `isa` runs a test once per ISA level this CPU supports, with the
kernels of that level selected; levels the CPU lacks are skipped with the reason.
On a machine that has AVX-512 VNNI (the CI machine), RYZ_REQUIRE_ISA=avx512vnni
turns a missing level into a failure, so the fast path can never go untested."""
import os

import numpy as np
import pytest

from ryzjupyter import _native
from ryzjupyter.engine.native import ISA_LEVELS

FORCED = os.environ.get("RYZ_ISA")


def _levels():
    # With RYZ_ISA forced (CI runs the suite once per level), test that level only.
    return [FORCED] if FORCED else list(ISA_LEVELS)


@pytest.fixture(params=_levels())
def isa(request):
    name = request.param
    supported = _native.info()["supported_isas"]
    if name not in supported:
        if os.environ.get("RYZ_REQUIRE_ISA") and name in os.environ["RYZ_REQUIRE_ISA"].split(","):
            pytest.fail(f"ISA level {name!r} is required here but this CPU lacks it")
        pytest.skip(f"this CPU does not support ISA level {name!r}")
    previous = _native.info()["isa"]
    _native.set_isa(name)
    assert _native.info()["isa"] == name
    yield name
    _native.set_isa(previous)


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thr")
def threads(request):
    previous = _native.get_num_threads()
    _native.set_num_threads(request.param)
    yield request.param
    _native.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
