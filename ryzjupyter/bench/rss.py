"""Resident memory of this process (Linux /proc; other systems: getrusage, no reset).

``peak()`` is the high-water mark (VmHWM) in bytes, ``current()`` the resident set now
(VmRSS), ``reset_peak()`` sets the high-water mark back to the current RSS (writes "5" to
/proc/self/clear_refs, Linux >= 4.0), so the peak of one phase can be measured on its own.
"""
from __future__ import annotations

import os


def _status(key: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current() -> int | None:
    return _status("VmRSS")


def peak() -> int | None:
    v = _status("VmHWM")
    if v is None:
        try:
            import resource
            v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except Exception:
            return None
    return v


def reset_peak() -> bool:
    """True if the peak was reset (else peak() keeps the process-lifetime maximum)."""
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, b"5")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
