"""The runner's own check (tests/fuzz/test_fuzz.py): a harness that fails the way
RYZ_FUZZ_SELFTEST says (segv, abort, keyerror, hang, ok) on its first input."""

import ctypes
import os
import time


def one_input(data: bytes):
    how = os.environ.get("RYZ_FUZZ_SELFTEST", "ok")
    if how == "segv":
        ctypes.string_at(0)                    # a read of address 0 in C: SIGSEGV
    elif how == "abort":
        os.abort()
    elif how == "keyerror":
        {}[data]
    elif how == "hang":
        while True:
            time.sleep(0.01)
