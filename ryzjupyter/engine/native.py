"""The C extension's state as Python sees it: which ISA level runs, the threads."""
from __future__ import annotations

from contextlib import contextmanager

from ryzjupyter import _native

ISA_LEVELS = ("scalar", "avx2", "avx512vnni")


def native_info() -> dict:
    """What the C kernels run on.

    Keys: ``isa`` (selected level: "avx512vnni", "avx2" or "scalar"), ``best_isa``,
    ``supported_isas``, ``cpu_features`` (list of str), ``threads``,
    ``physical_cores``, ``kernels`` (kernel name -> variant in use), ``version``,
    ``sanitized``. ``RYZ_ISA`` (environment, read at import) forces a level and
    ``RYZ_NUM_THREADS`` the thread count.
    """
    return _native.info()


def supported_isas() -> list[str]:
    """The ISA levels this CPU (and OS) can run, lowest first."""
    return list(_native.info()["supported_isas"])


def set_isa(name: str) -> None:
    """Select the kernel variants of one ISA level for the whole process."""
    _native.set_isa(name)


@contextmanager
def using_isa(name: str):
    """Run a block with one ISA level selected, then restore the previous one."""
    previous = _native.info()["isa"]
    _native.set_isa(name)
    try:
        yield
    finally:
        _native.set_isa(previous)


def set_num_threads(n: int) -> None:
    """Size the kernels' thread pool (default: the physical cores, or ``RYZ_NUM_THREADS``)."""
    _native.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads the kernels run on (the caller included)."""
    return _native.get_num_threads()


@contextmanager
def using_threads(n: int):
    """Run a block with ``n`` kernel threads, then restore the previous count."""
    previous = _native.get_num_threads()
    _native.set_num_threads(int(n))
    try:
        yield
    finally:
        _native.set_num_threads(previous)
