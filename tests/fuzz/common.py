"""What every harness checks: the outcome of one input is a result, or an exception of the
surface's documented types whose message says what is wrong and what to do."""

from __future__ import annotations

import json
import traceback


class Finding(AssertionError):
    """An input that got an outcome the surface does not allow (the fuzzer reports it)."""


def expect(fn, *allowed, min_message=12):
    """Run fn(); return its result, or None when it raised one of `allowed` with a real message.
    Any other exception, or an allowed one with an empty or one-word message, is a Finding."""
    try:
        return fn()
    except allowed as e:
        msg = str(e).strip()
        if len(msg) < min_message or " " not in msg:
            raise Finding(f"{type(e).__name__} with a message that says nothing: {msg!r}") from e
        return None
    except Exception as e:
        where = "".join(traceback.format_exception(e)[-6:])
        raise Finding(f"{type(e).__name__} escaped (allowed: "
                      f"{', '.join(t.__name__ for t in allowed)}): {e}\n{where}") from e


def json_from_bytes(data: bytes):
    """The JSON document in `data` if it is one, else the bytes as text in a JSON string: most
    mutations of a JSON seed still parse, the rest still exercise the reader's error path."""
    text = data.decode("utf-8", "replace")
    try:
        return json.loads(text), text
    except (ValueError, RecursionError):
        return None, text
