"""Engine-side counters: phases, stages, python overhead, cost per call, disabling."""
import time

import pytest

from ryzjupyter.engine.profiling import PHASE_ORDER, Profiler


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_phases_stages_and_python_overhead():
    p = Profiler(enabled=True)
    p.begin()
    p.stage("prefill")
    t = p.tic()
    spin(0.02)
    p.toc("matmul", t)
    with p.phase("attention"):
        spin(0.01)
    spin(0.005)                                   # unmeasured: python
    p.stage("decode")
    for _ in range(3):
        with p.phase("sampling"):
            spin(0.002)
        p.token()
    p.add("lm_head", 1_000_000)
    prof = p.end(n_prompt=12, n_prefill=10)
    assert prof.counts["sampling"] == 3 and prof.counts["matmul"] == 1
    # at least the time spent inside (more if the machine preempted us; never less)
    assert 0.02 <= prof.phases["matmul"] < 0.5
    assert 0.01 <= prof.phases["attention"] < 0.5
    assert prof.phases["lm_head"] == pytest.approx(0.001)
    assert prof.stages["prefill"].phases["matmul"] > 0 and "matmul" not in prof.stages["decode"].phases
    assert prof.stages["decode"].phases["sampling"] == pytest.approx(prof.phases["sampling"])
    # wall = measured + python, exactly
    assert prof.measured_s + prof.phases["python"] == pytest.approx(prof.wall_s, rel=1e-9)
    assert prof.phases["python"] >= 0.004
    assert sum(s.wall_s for s in prof.stages.values()) == pytest.approx(prof.wall_s, abs=1e-4)
    assert prof.n_generated == 3 and len(prof.token_times) == 3
    assert prof.n_prefill == 10 and prof.prefill_tok_s == pytest.approx(10 / prof.prefill_s)
    assert prof.decode_tok_s > 0
    assert prof.memory["rss_bytes"] > 1e6 and prof.memory["peak_rss_bytes"] >= prof.memory["rss_bytes"] * 0.5
    assert p.last is prof
    names = [n for n, _, _ in prof.ordered()]
    assert names[-1] == "python" and names.index("matmul") < names.index("sampling")
    table = prof.table()
    assert "matmul" in table and "python" in table and "prefill ms" in table


def test_cost_per_call_is_about_a_microsecond():
    ns = Profiler.calibrate(5000)
    assert ns < 3000, f"a tic/toc pair costs {ns:.0f} ns"   # ~0.3-0.6 us here; generous bound for busy CI


def test_disabled_is_a_no_op_but_keeps_wall_and_tokens():
    p = Profiler(enabled=False)
    p.begin()
    assert p.tic() == 0
    p.toc("matmul", 0)
    with p.phase("attention"):
        spin(0.002)
    p.add("x", 5)
    p.token()
    prof = p.end()
    assert set(prof.phases) == {"python"} and prof.enabled is False
    assert prof.n_generated == 1 and prof.wall_s > 0.0015
    assert "disabled" in prof.table()


def test_env_switch(monkeypatch):
    monkeypatch.setenv("RYZ_PROFILE", "0")
    assert Profiler().enabled is False
    monkeypatch.setenv("RYZ_PROFILE", "1")
    assert Profiler().enabled is True


def test_listeners_and_snapshot_and_broken_listener():
    p = Profiler(enabled=True)
    got = []
    p.listeners += [lambda pr: 1 / 0, got.append]
    p.begin()
    with p.phase("matmul"):
        pass
    snap = p.snapshot()
    assert snap.counts["matmul"] == 1 and p.active
    prof = p.end()
    assert got == [prof] and not p.active
    d = prof.as_dict()
    assert d["phases"]["matmul"] >= 0 and isinstance(d["stages"], dict)


def test_phase_order_has_the_issue_names():
    for n in ("matmul", "attention", "lm_head", "sampling", "python", "display"):
        assert n in PHASE_ORDER


def test_profiling_imports_no_surface():
    import subprocess, sys
    code = ("import sys, ryzjupyter.engine.profiling; "
            "bad=[m for m in ('IPython','ipywidgets','anywidget','ryzjupyter.jupyter.widgets','ryzjupyter.jupyter.magics') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
