"""Where the time of a generation went: a rich display (`%ryz stats`) and a widget that follows
every generation. The numbers are the engine's counters (ryzjupyter.engine.profiling.Profile), not
estimates: `python` is the wall time outside every measured phase.
"""

from __future__ import annotations

import html

import ipywidgets as W

from ryzjupyter.engine.profiling import PHASE_HELP, Profile, _fmt_bytes
from ryzjupyter.jupyter.units import format_duration, format_rate

COLORS = {
    "matmul": "#1976d2", "attention": "#7b1fa2", "lm_head": "#00897b", "norm": "#5c6bc0",
    "embed": "#8d6e63", "sampling": "#f57c00", "detokenize": "#c0ca33", "draft": "#26a69a",
    "retrieval": "#ab47bc", "display": "#e53935", "python": "#9e9e9e", "scan": "#c2185b", "conv": "#0097a7",
}
_EXTRA = ["#6d4c41", "#43a047", "#fb8c00", "#3949ab", "#d81b60"]


def _color(name, i):
    return COLORS.get(name) or _EXTRA[i % len(_EXTRA)]


def profile_html(profile: Profile, title: str = "") -> str:
    """A stacked bar (share of wall time per phase) and a table with ms, %, calls, per stage."""
    if profile is None:
        return "<i>no generation profiled yet</i>"
    rows = profile.ordered()
    stage_names = [s for s in ("prefill", "decode") if s in profile.stages]
    bar = "".join(
        f'<div title="{html.escape(n)} {f * 100:.1f}%" style="width:{max(f * 100, 0):.3f}%;'
        f'background:{_color(n, i)};height:100%"></div>'
        for i, (n, _s, f) in enumerate(rows) if f > 0)
    head = ("<tr><th style='text-align:left'>phase</th><th>ms</th><th>%</th><th>calls</th>" +
            "".join(f"<th>{s} ms</th>" for s in stage_names) + "<th style='text-align:left'>what</th></tr>")
    body = []
    for i, (n, sec, f) in enumerate(rows):
        cells = "".join(f"<td>{profile.stages[s].phases.get(n, 0.0) * 1e3:.2f}</td>" for s in stage_names)
        body.append(
            f"<tr class='ryz-profile-row' data-phase='{html.escape(n)}'>"
            f"<td style='text-align:left;white-space:nowrap'><span style='display:inline-block;width:9px;height:9px;"
            f"background:{_color(n, i)};margin-right:4px'></span>{html.escape(n)}</td>"
            f"<td>{sec * 1e3:.2f}</td><td>{f * 100:.1f}</td><td>{profile.counts.get(n, '')}</td>{cells}"
            f"<td style='text-align:left;opacity:.7'>{html.escape(PHASE_HELP.get(n, ''))}</td></tr>")
    speed = [f"{profile.n_generated} tokens in {format_duration(profile.wall_s)}"]
    if profile.prefill_tok_s:
        speed.append(f"prefill {profile.n_prefill} tok at {format_rate(profile.prefill_tok_s)} tok/s")
    if profile.decode_tok_s:
        speed.append(f"decode {format_rate(profile.decode_tok_s)} tok/s")
    mem = ", ".join(f"{k.replace('_bytes', '').replace('_', ' ')} {_fmt_bytes(v)}"
                    for k, v in profile.memory.items() if isinstance(v, (int, float)))
    notes = []
    if profile.profiler_overhead_s:
        notes.append(f"profiler's own cost ~{profile.profiler_overhead_s * 1e3:.2f} ms (inside the phases)")
    if not profile.enabled:
        notes.append("phase counters were off (RYZ_PROFILE=0): only wall time is known")
    t = f"<b>{html.escape(title)}</b> " if title else ""
    return (
        f"<div class='ryz-profile' style='font-size:90%;max-width:760px'>"
        f"<div>{t}{html.escape(' · '.join(speed))}</div>"
        f"<div style='display:flex;height:14px;margin:4px 0;border:1px solid #ccc'>{bar}</div>"
        f"<table style='border-collapse:collapse' cellpadding='2'>{head}{''.join(body)}</table>"
        + (f"<div style='opacity:.75'>memory: {html.escape(mem)}</div>" if mem else "")
        + "".join(f"<div style='opacity:.6'>{html.escape(n)}</div>" for n in notes)
        + "</div>")


class ProfileDisplay:
    """Displays a Profile as HTML (notebook) and as the plain-text table (terminal, nbval)."""

    def __init__(self, profile: Profile, title: str = ""):
        self.profile, self.title = profile, title

    def __repr__(self):
        return self.profile.table() if self.profile is not None else "no generation profiled yet"

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": repr(self), "text/html": profile_html(self.profile, self.title)}


class ProfileView(W.VBox):
    """A widget showing the last generation's profile; with follow=True it updates itself after
    every generation the profiler sees (Profiler.listeners)."""

    def __init__(self, profile=None, *, profiler=None, follow=True, **kw):
        self.html = W.HTML()
        self.html.add_class("ryz-profile-view")
        super().__init__([self.html], **kw)
        if profiler is None:
            from ryzjupyter.engine.profiling import PROFILER as profiler
        self.profiler = profiler
        self.updates = 0
        self.update(profile if profile is not None else profiler.last)
        self._listener = None
        if follow:
            self._listener = self.update
            profiler.listeners.append(self._listener)

    def update(self, profile):
        self.profile = profile
        self.html.value = profile_html(profile)
        self.updates += 1

    def close(self):
        if self._listener is not None and self._listener in self.profiler.listeners:
            self.profiler.listeners.remove(self._listener)
        super().close()


def profile_view(profile=None, *, profiler=None, follow=True) -> ProfileView:
    return ProfileView(profile, profiler=profiler, follow=follow)
