"""The machine probes the benchmarks hold the kernels to (matmul_*.c, ryzjupyter.bench.probes):
the read probe reads every byte of the aligned buffer exactly once with each loop the CPU can run,
and by default with the widest; the int8 peak probe runs the active level's loop and does the
multiply-adds it is credited with (its accumulators count them); the scalar level has none."""
import numpy as np
import pytest

from ryzjupyter import _native
from ryzjupyter.bench import probes

READ_LOOPS = ("avx512", "avx2", "scalar")
LOOP_NEEDS = {"avx512": "avx512vnni", "avx2": "avx2", "scalar": "scalar"}


def _aligned_part(buf):
    start = -buf.ctypes.data % 4096
    pages = (buf.size - start) // 4096
    return buf[start:start + pages * 4096]


@pytest.mark.parametrize("loop", READ_LOOPS)
def test_probe_read_reads_each_aligned_byte_once(loop, threads, rng):
    if LOOP_NEEDS[loop] not in _native.info()["supported_isas"]:
        with pytest.raises(ValueError, match=f"cannot run the {loop} loop"):
            _native.probe_read(np.ones(8192, np.uint8), 1, loop)
        pytest.skip(f"this CPU does not support ISA level {LOOP_NEEDS[loop]!r} (the {loop} read loop)")
    words = rng.integers(0, 2**63, (3 << 20) // 8 + 1024, dtype=np.uint64)
    buf = words.view(np.uint8)[1000:]                    # starts off a page boundary
    part = _aligned_part(buf)
    seconds, nbytes, checksum = _native.probe_read(buf, threads, loop)
    assert nbytes == part.size and nbytes % 4096 == 0 and nbytes > (3 << 20) - 8192
    assert checksum == int(part.view(np.uint64).sum(dtype=np.uint64))   # mod 2^64, every byte once
    assert 0 < seconds < 5


def test_probe_read_uses_the_widest_loads():
    supported = _native.info()["supported_isas"]
    widest = next(l for l in READ_LOOPS if LOOP_NEEDS[l] in supported)
    assert probes.read_loop() == widest
    if "avx2" in supported:
        assert widest != "scalar"                           # vector loads on AVX2 machines too
    buf = np.arange(1 << 18, dtype=np.uint64).view(np.uint8)
    assert _native.probe_read(buf, 1)[2] == _native.probe_read(buf, 1, widest)[2]
    with pytest.raises(ValueError, match="unknown loop"):
        _native.probe_read(buf, 1, "sse")


def test_probe_read_empty_and_bad_buffers():
    assert _native.probe_read(np.ones(100, np.uint8), 1)[1:] == (0, 0)     # no whole page
    with pytest.raises((TypeError, ValueError)):
        _native.probe_read(np.ones(8192, np.float32), 1)


@pytest.mark.parametrize("iters", [1, 7, 1000])
def test_probe_int8_does_the_work_it_counts(isa, threads, iters):
    loop = probes.int8_peak_loop()
    if isa == "scalar":
        assert loop is None
        with pytest.raises(RuntimeError, match="no SIMD int8 peak"):
            _native.probe_int8(iters, threads)
        assert probes.int8_gops(threads) is None and probes.peak_for(threads, 0.01) is None
        assert probes.measure_int8_peak(threads, 1) == (None, [])
        return
    assert loop.startswith(isa + ":")                        # the active level's instructions
    assert ("vpdpbusd" in loop) == (isa == "avx512vnni")
    assert ("vpmaddubsw" in loop and "vpmaddwd" in loop) == (isa == "avx2")
    seconds, macs = _native.probe_int8(iters, threads)
    # every multiply-add is 1 x 1 into the accumulators: their sum is the count of them
    assert macs == 1024 * iters * threads
    assert 0 < seconds < 5
    gops, dt = probes.int8_gops(threads, iters)
    assert gops == pytest.approx(2 * 1024 * iters * threads / dt / 1e9)


def test_probe_int8_bounds(isa):
    for bad in (0, -1, (1 << 20) + 1):                  # checked before the level, at every level
        with pytest.raises(ValueError, match="iters must be in 1..1048576"):
            _native.probe_int8(bad, 1)
    if isa != "scalar":
        assert _native.probe_int8(1 << 20, 1)[1] == 1024 << 20              # still exact at the bound


def test_machine_record_names_where_it_ran():
    m = probes.machine(["kernels", "--quick"])
    info = _native.info()
    assert m["isa"] == info["isa"] and m["supported_isas"] == info["supported_isas"]
    assert m["probe_loops"] == _native.probe_loops()
    assert m["command"] == "python -m ryzjupyter.bench kernels --quick"
    assert m["cpu"] and isinstance(m["hypervisor"], bool) and m["date"].endswith("UTC")
