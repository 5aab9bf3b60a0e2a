"""The sidebar's comm messages (jupyter/comm.py `handle`): the bytes are the message's `data`
(JSON when they parse, else the text itself). Allowed: replies, each a JSON object carrying the
request's id (or null) with ok true, or ok false and an error that says what is wrong. `handle`
must never raise (an exception would reach the kernel), a reply must serialize (it goes over the
comm), and an error must not be a bare Python failure (`KeyError: ...`, `TypeError: ...`): those
are the checks that were missing."""

import json
import re

from ryzjupyter.jupyter import comm
from ryzjupyter.manager import MANAGER

# Loads under differently fuzzed names each hold a model: a budget well inside the fuzzer's memory
# limit (RYZ_FUZZ_RSS_MB) makes the manager unload the least recently used, as it would in a kernel.
# Set again before every input: a fuzzed "budget" message may have raised it. (The budget counts
# weights and KV cache; a tiny model's tokenizer and objects take ~3x that in RSS.)
BUDGET = "256MiB"

from ..common import Finding, json_from_bytes

BARE = re.compile(r"^(KeyError|IndexError|TypeError|AttributeError|NameError|UnboundLocalError|RecursionError|"
                  r"ZeroDivisionError|AssertionError|NotImplementedError|UnicodeError|UnicodeDecodeError|"
                  r"UnicodeEncodeError|OverflowError|MemoryError|StopIteration|RuntimeError|OSError|"
                  r"FileNotFoundError|PermissionError|IsADirectoryError|NotADirectoryError)\b")


def one_input(data: bytes):
    MANAGER.set_memory_budget(BUDGET)
    value, text = json_from_bytes(data)
    request = value if value is not None else text
    try:
        replies = list(comm.handle(request))          # reply_later=None: a load runs here, synchronously
    except BaseException as e:                        # noqa: BLE001 - nothing may escape to the kernel
        raise Finding(f"handle raised {type(e).__name__}: {e}") from e
    for r in replies:
        try:
            json.dumps(r)
        except (TypeError, ValueError) as e:
            raise Finding(f"a reply does not serialize: {e}") from e
        if not isinstance(r, dict) or "id" not in r or not isinstance(r.get("ok"), bool):
            raise Finding(f"malformed reply {r!r:.200}")
        if not r["ok"]:
            err = r.get("error")
            if not isinstance(err, str) or len(err.strip()) < 8:
                raise Finding(f"an error reply says nothing: {r!r:.200}")
            if BARE.match(err):
                raise Finding(f"a bare Python failure reached the sidebar: {err[:300]}")
