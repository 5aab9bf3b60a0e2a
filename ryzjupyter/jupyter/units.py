"""How the notebook surface writes times and speeds (the stats footer, `%ryz stats`, the live
chart's axes and labels). No widget imports: the magics use it in a terminal too.

    format_duration(0.038)   -> "38 ms"        format_duration(2.345) -> "2.35 s"
    format_rate(0.042)       -> "0.042"        format_rate(2500.0)    -> "2500"
    rate_axis(2600)          -> (3000, 1000)   rate_label(1500, 500)  -> "1.5k tok/s"

The same rules are written in JavaScript in ``widgets/static/chart.js`` (the live chart draws in
the browser); tests/widgets/test_chart.py runs both on the same values.
"""

from __future__ import annotations

import math


def format_duration(seconds) -> str:
    """A time for people: under a second in milliseconds ("38 ms", "2.5 ms"; "400 µs" below one), under a
    minute in seconds ("2.35 s", "12.3 s"), else minutes and seconds ("2 min 05 s")."""
    s = float(seconds)
    if not math.isfinite(s):
        return "-"
    if s < 0:
        return "-" + format_duration(-s)
    ms = s * 1e3
    if ms == 0:
        return "0 ms"
    if ms < 0.9995:
        return f"{ms * 1e3:.0f} \u00b5s"
    if ms < 9.95:
        return f"{ms:.1f}".removesuffix(".0") + " ms"
    if ms < 999.5:
        return f"{ms:.0f} ms"
    if s < 9.995:
        return f"{s:.2f} s"
    if s < 59.95:
        return f"{s:.1f} s"
    m, r = divmod(int(round(s)), 60)
    return f"{m} min {r:02d} s"


def format_rate(v) -> str:
    """A tokens/s figure with three significant digits and no exponent, however small or large:
    "2500", "40.0", "1.25", "0.042", "0.0031" (never "0.00" for a rate that is not zero)."""
    v = float(v)
    if not math.isfinite(v):
        return "-"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    digits = min(12, 1 - math.floor(math.log10(a)))     # two significant digits below 1
    return f"{v:.{digits}f}"


def rate_axis(vmax):
    """(axis top, tick step) for a tokens/s axis: 3-5 intervals of 1, 2, 2.5 or 5 x 10^k tok/s,
    the top at or above ``vmax`` (so every tick is a round number at any scale, 0.01 to 10^5)."""
    v = float(vmax) if vmax and math.isfinite(vmax) and vmax > 0 else 1.0
    raw = v / 4
    e = 10 ** math.floor(math.log10(raw))
    step = next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= raw * (1 - 1e-9))
    n = max(1, math.ceil(v / step - 1e-9))
    return n * step, step


def rate_label(v, step, unit="tok/s") -> str:
    """A tick label of a rate axis with the digits the step needs and the unit: "0", "0.25 tok/s",
    "12.5 tok/s", "750 tok/s", "1.5k tok/s", "25k tok/s"."""
    v = float(v)
    if abs(v) < step * 1e-6:
        return "0"
    k = abs(step) >= 1000 or abs(v) >= 1000
    if k:
        v, step = v / 1000, step / 1000
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10 ** decimals, 6) % 1:                 # 2.5 x 10^k needs one digit more
        decimals += 1
    text = f"{v:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}{'k' if k else ''} {unit}"
