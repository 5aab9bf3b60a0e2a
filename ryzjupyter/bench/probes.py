"""The machine's limits that the benchmarks hold the kernels to, measured here.

- Read bandwidth: ``_native.probe_read`` streams a buffer far larger than the caches with the
  widest loads the CPU has (AVX-512, AVX2, else 64-bit scalar), once with non-temporal
  prefetches and once with plain loads, and keeps the faster. GB/s = bytes / seconds.
- int8 compute peak of the ISA level in use: ``_native.probe_int8`` runs a register-only loop
  in the instruction sequence of that level's ternary kernels (avx512vnni: vpdpbusd; avx2:
  vpmaddubsw summed in int16, widened every 8 with vpmaddwd + vpaddd). GOPS = 2 x multiply-adds
  / seconds. The scalar level has no SIMD peak: :func:`int8_peak_loop` is None there and the
  peak functions return None.

Each figure is the median of many short probes: on a shared machine a long probe is mostly
preemption, a short one spoils only itself. C loops: ``ryzjupyter/_native/matmul_*.c``.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from pathlib import Path

import numpy as np

from ryzjupyter import _native

OPS_PER_MAC = 2           # an int8 multiply-add counts as two operations (GOPS)
INT8_ITERS = 100_000      # one int8 probe: 1024 x INT8_ITERS multiply-adds a thread (~1 ms)


def read_loop() -> str:
    """The loads probe_read uses on this CPU: "avx512", "avx2" or "scalar"."""
    return _native.probe_loops()["read"]


def int8_peak_loop() -> str | None:
    """The int8 peak loop of the ISA level in use (``native_info()["isa"]``), None at scalar."""
    return _native.probe_loops()["int8"]


def read_gbps(buf: np.ndarray, threads: int) -> float:
    """One streaming read of ``buf`` (uint8) split over ``threads`` threads: GB/s."""
    seconds, nbytes, _ = _native.probe_read(buf, threads)
    return nbytes / seconds / 1e9


def measure_bandwidth(mib: int, threads: int, repeat: int) -> tuple[float, list[float]]:
    """Median and runs (GB/s) of ``repeat`` reads of a ``mib`` MiB buffer (after one warm-up)."""
    buf = np.ones(mib << 20, np.uint8)  # touched: every page is real memory
    runs = [read_gbps(buf, threads) for _ in range(repeat + 1)][1:]
    return statistics.median(runs), runs


def bandwidth_for(buf: np.ndarray, threads: int, seconds: float) -> float:
    """GB/s of streaming ``buf`` again and again for about ``seconds`` (at least once): a probe
    as long as the run it is compared with sees the same drift of a shared machine's bandwidth."""
    total_b, total_t = 0, 0.0
    while total_t < seconds or total_b == 0:
        dt, nb, _ = _native.probe_read(buf, threads)
        total_b, total_t = total_b + nb, total_t + dt
    return total_b / total_t / 1e9


def int8_gops(threads: int, iters: int = INT8_ITERS) -> tuple[float, float] | None:
    """One int8 peak probe on ``threads`` threads: (GOPS, seconds), None at the scalar level."""
    if int8_peak_loop() is None:
        return None
    seconds, macs = _native.probe_int8(iters, threads)
    return OPS_PER_MAC * macs / seconds / 1e9, seconds


def measure_int8_peak(threads: int, repeat: int, iters: int = INT8_ITERS):
    """Median and runs (GOPS) of ``20 x repeat`` short int8 peak probes (after one warm-up);
    (None, []) at the scalar level."""
    if int8_peak_loop() is None:
        return None, []
    runs = [int8_gops(threads, iters)[0] for _ in range(20 * repeat + 1)][1:]
    return statistics.median(runs), runs


def peak_for(threads: int, seconds: float, iters: int = INT8_ITERS) -> float | None:
    """Median GOPS of short int8 peak probes run for about ``seconds`` (at least one): the
    compute this machine gives right now, read right after a run and as long as it. None at
    the scalar level."""
    if int8_peak_loop() is None:
        return None
    runs, total = [], 0.0
    while total < seconds or not runs:
        gops, dt = int8_gops(threads, iters)
        runs.append(gops)
        total += dt
    return statistics.median(runs)


def _cpuinfo() -> dict:
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break                       # the first CPU is enough
                k, _, v = line.partition(":")
                info[k.strip()] = v.strip()
    except OSError:
        pass
    return info


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or "unknown"


def _git_commit() -> str | None:
    """The checkout's commit (+ "-dirty" with uncommitted changes), None outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine(argv: list[str] | None = None) -> dict:
    """What a benchmark record says about where it ran: the CPU, the ISA level, the probes' loops,
    whether under a hypervisor, the date, the command (``argv``: the bench's arguments) and the
    commit."""
    c = _cpuinfo()
    info = _native.info()
    flags = set(c.get("flags", "").split())
    return {
        "cpu": c.get("model name") or platform.processor() or "unknown",
        "cpu_family": int(c["cpu family"]) if c.get("cpu family", "").isdigit() else None,
        "cpu_model": int(c["model"]) if c.get("model", "").isdigit() else None,
        "hypervisor": "hypervisor" in flags,
        "logical_cpus": os.cpu_count(),
        "physical_cores": info["physical_cores"],
        "supported_isas": list(info["supported_isas"]),
        "isa": info["isa"],
        "probe_loops": _native.probe_loops(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": None if argv is None else " ".join(["python -m ryzjupyter.bench", *map(str, argv)]),
        "commit": _git_commit(),
    }
