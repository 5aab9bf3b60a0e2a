"""Shared fixtures. `isa` runs a test once per ISA level this CPU supports, with the
kernels of that level selected; levels the CPU lacks are skipped with the reason.
On a machine that has AVX-512 VNNI (the CI machine), RYZ_REQUIRE_ISA=avx512vnni
turns a missing level into a failure, so the fast path can never go untested.

Under CI (CI=true) a skipped test is a failed test unless its reason matches one of the
patterns in RYZ_ALLOWED_SKIPS (regular expressions, one a line), which .ci/run sets and
justifies: a check CI is meant to run can never drop out silently (a missing package, a
missing kernel, a fixture that is not there)."""
import os
import re

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


# ---------------------------------------------------------------- no silent skip under CI

def _skip_not_allowed(report):
    """The skip reason if this report is a skip CI does not allow, else None."""
    if os.environ.get("CI", "").lower() != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    allowed = [p for p in os.environ.get("RYZ_ALLOWED_SKIPS", "").splitlines() if p.strip()]
    if any(re.search(p.strip(), reason) for p in allowed):
        return None
    return reason


def _fail_the_skip(report, reason):
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, and no pattern in RYZ_ALLOWED_SKIPS (.ci/run) allows "
                       f"this skip: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    reason = _skip_not_allowed(report)
    if reason is not None:
        _fail_the_skip(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield                          # a module-level skip (skipif, importorskip) is a collect report
    report = outcome.get_result()
    reason = _skip_not_allowed(report)
    if reason is not None:
        _fail_the_skip(report, reason)
