"""The `%%ryz` / `%ryz` grammar (jupyter/magics/parsers.py): the first byte picks the parser (the
cell line, a line command, or the {name} interpolation of a prompt against a namespace of
awkward objects), the rest is the text. Allowed: the parsed options (each within its documented
range) or IPython's UsageError with a one-line message; an interpolation pads a field to less than
a million characters (a wider format spec is a UsageError), so its output stays within 10**6 per
field."""

import math

from IPython.core.error import UsageError

from ryzjupyter.jupyter.magics.parsers import (LINE_COMMANDS, CellArgs, LineCommand, interpolate,
                                               parse_cell_line, parse_line_command)

from ..common import Finding, expect


class _Awkward:
    attr = "value"

    def __format__(self, spec):
        raise RuntimeError("a __format__ that fails")

    def __getitem__(self, key):
        raise KeyError(key)


NAMESPACE = {"text": "some text", "n": 42, "x": 1.5, "d": {"a": 1, "b": [1, 2]}, "lst": [1, 2, 3],
             "obj": _Awkward(), "none": None, "big": 10**50, "s": "é🙂"}


def _check_cell(a: CellArgs):
    if a.max_new_tokens is not None and a.max_new_tokens < 0:
        raise Finding(f"max_new_tokens={a.max_new_tokens} accepted")
    for k in ("temperature", "top_p", "min_p", "repetition_penalty"):
        v = getattr(a, k)
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise Finding(f"{k}={v} accepted")
    if a.output is not None and not a.output.isidentifier():
        raise Finding(f"-o {a.output!r} accepted")


def one_input(data: bytes):
    if not data:
        return
    which, text = data[0] % 3, data[1:].decode("utf-8", "replace")
    if which == 0:
        a = expect(lambda: parse_cell_line(text), UsageError)
        if a is not None:
            _check_cell(a)
    elif which == 1:
        c = expect(lambda: parse_line_command(text), UsageError)
        if c is not None and (not isinstance(c, LineCommand) or c.command not in LINE_COMMANDS):
            raise Finding(f"parsed as {c!r}")
    else:
        out = expect(lambda: interpolate(text, NAMESPACE), UsageError)
        if out is not None and (not isinstance(out, str) or len(out) > 200_000 * len(text) + 1000):
            raise Finding(f"interpolation gave {type(out).__name__} of {len(out)} characters")
