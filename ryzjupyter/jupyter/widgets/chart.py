"""The live tokens/s chart: a small anywidget (canvas, JS vendored in the package, no CDN) and the
recorder the streaming loop feeds.

Message protocol, kernel -> browser (custom widget messages, ``widget.send``):

    {"type": "reset", "title": str}                               a new generation starts
    {"type": "points", "points": [[t_s, tok_s, phase], ...]}     batched, <= max_rate messages/s
    {"type": "done", "summary": {n_generated, decode_tok_s, prefill_tok_s, total_s, ...}}

``phase`` is "prefill" (one point: end of the prompt pass, prompt tokens/s) or "decode" (tokens/s
over a short sliding window, one point per token). At the end the whole series is also set on the
synced ``points`` trait, so views opened later (and saved widget state) show the final figure, and
``ThroughputRecorder.finish`` can replace the live widget by a static SVG of the same figure that
survives saving and reopening the notebook. Nothing is rendered on the kernel's CPU while tokens
are generated: the browser draws; the SVG is written once, after the last token.
"""

from __future__ import annotations

import html
import time
import uuid
from importlib import resources

import ipywidgets  # noqa: F401  (anywidget needs it; imported for a clear error if missing)
import traitlets

from ryzjupyter.jupyter.units import format_duration, format_rate, rate_axis, rate_label

try:
    import anywidget
except ImportError:                       # pragma: no cover - anywidget is a dependency
    anywidget = None

MAX_RATE = 20.0                            # chart messages per second, at most
MAX_POINTS = 2000                          # points kept in the synced trait / SVG (downsampled)


def _static(name: str) -> str:
    return resources.files("ryzjupyter.jupyter.widgets").joinpath("static", name).read_text(encoding="utf-8")


if anywidget is not None:
    class ThroughputChart(anywidget.AnyWidget):
        """Tokens/s over time. Drive it with ThroughputRecorder (or send() the messages yourself)."""

        _esm = _static("chart.js")
        _css = _static("chart.css")
        uid = traitlets.Unicode("").tag(sync=True)
        points = traitlets.List([]).tag(sync=True)        # [[t, tok_s, phase], ...] set at the end
        summary = traitlets.Dict({}).tag(sync=True)
        title = traitlets.Unicode("").tag(sync=True)
        height = traitlets.Int(160).tag(sync=True)

        def __init__(self, **kw):
            kw.setdefault("uid", uuid.uuid4().hex)
            super().__init__(**kw)
            self.sent: list[dict] = []        # the last messages sent (tests, debugging); bounded
            self.n_sent = 0

        def send(self, content, buffers=None):
            self.n_sent += 1
            self.sent.append(content)
            if len(self.sent) > 256:
                del self.sent[:128]
            super().send(content, buffers)

        def reset(self, title: str | None = None):
            msg = {"type": "reset"}
            if title is not None:
                msg["title"] = title
                self.title = title
            self.summary = {}
            self.points = []
            self.send(msg)

        def to_svg(self, width=640, height=None) -> str:
            return render_svg(self.points, self.summary, title=self.title, width=width,
                              height=height or self.height)
else:                                      # pragma: no cover
    class ThroughputChart:                 # type: ignore[no-redef]
        def __init__(self, *a, **k):
            raise ImportError("the live chart needs the anywidget package: pip install anywidget")


class ThroughputRecorder:
    """Turns token timestamps into chart points and sends them in batches, at most `max_rate`
    messages per second. Feed it with token() per token, or poll() to read a Profiler's token
    timestamps (ryzjupyter.engine.profiling); prefill() marks the end of the prompt pass; finish() sends
    the summary and leaves the final figure.

    Works without a chart (chart=None): it only records (`points`, `summary`)."""

    def __init__(self, chart=None, *, max_rate=MAX_RATE, window_s=0.5, profiler=None,
                 clock=time.perf_counter, title=""):
        self.chart = chart
        self.min_interval = 1.0 / max_rate if max_rate and max_rate > 0 else 0.0
        self.window_s = float(window_s)
        self.profiler = profiler
        self.clock = clock
        self.title = title
        self.points: list[list] = []           # [t, tok_s, phase]
        self.summary: dict = {}
        self.messages = 0                      # "points" messages sent
        self._pending: list[list] = []
        self._tok_t: list[float] = []          # decode token times (s since start)
        self._t0 = None
        self._last_send = None
        self._n_prefill = None
        self._prefill_marked = False
        self._src = None                       # the profiler's token list being read
        self._idx = 0
        self._handle = None
        self.finished = False

    # ------------------------------------------------------------------ lifecycle
    def display(self):
        """Show the chart (if any) in the current output; returns self."""
        if self.chart is not None:
            from IPython.display import display
            self._handle = display(self.chart, display_id=True)
        return self

    def start(self, n_prefill=None, t0=None):
        """A generation starts now (or at clock time `t0`); `n_prefill` prompt tokens to run."""
        self._t0 = self.clock() if t0 is None else t0
        self._n_prefill = n_prefill
        if self.chart is not None:
            self.chart.reset(self.title)
        return self

    def _now_rel(self):
        if self._t0 is None:
            self.start()
        return self.clock() - self._t0

    # ------------------------------------------------------------------ feeding
    def prefill(self, n_tokens, seconds):
        """The prompt pass took `seconds` for `n_tokens` computed tokens."""
        if self._prefill_marked or not n_tokens or seconds <= 0:
            self._prefill_marked = True
            return
        self._prefill_marked = True
        self._add([round(float(seconds), 6), round(n_tokens / seconds, 3), "prefill"])

    def token(self, n=1, t=None):
        """`n` tokens were sampled now (or at `t` seconds since start)."""
        t = self._now_rel() if t is None else t
        for _ in range(n):
            self._token_at(t)
        self._maybe_send()

    def poll(self):
        """Read the tokens a Profiler recorded since the last poll (exact timestamps)."""
        prof = self.profiler
        if prof is None:
            return
        toks = prof.token_ns
        if toks is not self._src:              # a new generation (Profiler.begin made a new list)
            self._src = toks
            self._idx = 0
            self._tok_t = []
        n = len(toks)
        if n > self._idx:
            t0 = prof.t0_ns
            for i in range(self._idx, n):
                self._token_at((toks[i] - t0) / 1e9)
            self._idx = n
        self._maybe_send()

    def _token_at(self, t):
        if not self._tok_t and not self._prefill_marked:
            # the first token ends the prompt pass (prefill + the first sampling)
            if self._n_prefill:
                self.prefill(self._n_prefill, t)
            self._prefill_marked = True
        self._tok_t.append(t)
        tt = self._tok_t
        if len(tt) < 2:
            return
        # tokens/s over the last window_s (at least one interval)
        j = len(tt) - 2
        while j > 0 and t - tt[j - 1] <= self.window_s:
            j -= 1
        dt = t - tt[j]
        if dt > 0:
            self._add([round(t, 6), round((len(tt) - 1 - j) / dt, 3), "decode"])

    def _add(self, p):
        self.points.append(p)
        self._pending.append(p)

    def _maybe_send(self, force=False):
        if not self._pending:
            return
        now = self.clock()
        if not force and self._last_send is not None and now - self._last_send < self.min_interval:
            return
        batch, self._pending = self._pending, []
        self._last_send = now
        self.messages += 1
        if self.chart is not None:
            self.chart.send({"type": "points", "points": batch})

    def flush(self):
        self._maybe_send(force=True)

    def attach(self):
        """Poll the profiler after every token (Profiler.token_hooks), for loops this code does not
        run itself (e.g. a %%ryz cell run by the controls panel)."""
        if self.profiler is not None and self.poll not in self.profiler.token_hooks:
            self.profiler.token_hooks.append(self.poll)
        return self

    def detach(self):
        if self.profiler is not None:
            while self.poll in self.profiler.token_hooks:
                self.profiler.token_hooks.remove(self.poll)

    # ------------------------------------------------------------------ the end
    def finish(self, stats=None, profile=None, *, freeze=False):
        """Send the last points and the summary; set the chart's persisted series. With a Profile
        (exact token timestamps) the series is rebuilt from it. `stats` is the engine's
        GenerationStats (or a dict). freeze=True replaces the displayed widget by a static SVG of
        the final figure (it then survives saving and reopening the notebook)."""
        if self.profiler is not None:
            self.poll()
        self.flush()
        if profile is not None and getattr(profile, "token_times", None):
            self._rebuild(profile)
        sm = {}
        src = stats if stats is not None else profile
        if src is not None:
            get = src.get if isinstance(src, dict) else (lambda k, d=None: getattr(src, k, d))
            for k in ("n_prompt", "n_prefill", "n_cached", "n_generated", "prefill_tok_s", "decode_tok_s",
                      "ttft_s", "total_s", "wall_s", "drafter", "drafted", "accepted", "acceptance",
                      "tokens_per_pass", "draft_s", "verify_s", "sampling_s"):
                v = get(k)
                if k in ("drafter", "drafted", "accepted", "acceptance", "tokens_per_pass", "draft_s",
                         "verify_s", "sampling_s") and not get("drafter"):
                    continue                                 # speculative decoding's figures, when it ran
                if v is not None:
                    sm[k] = round(float(v), 4) if isinstance(v, float) else v
            if "total_s" not in sm and "wall_s" in sm:
                sm["total_s"] = sm["wall_s"]
        else:
            sm["n_generated"] = len(self._tok_t)
            dec = [p for p in self.points if p[2] == "decode"]
            if len(self._tok_t) > 1 and self._tok_t[-1] > self._tok_t[0]:
                sm["decode_tok_s"] = (len(self._tok_t) - 1) / (self._tok_t[-1] - self._tok_t[0])
            elif dec:
                sm["decode_tok_s"] = dec[-1][1]
            pf = [p for p in self.points if p[2] == "prefill"]
            if pf:
                sm["prefill_tok_s"] = pf[-1][1]
            sm["total_s"] = round(self._tok_t[-1], 4) if self._tok_t else 0.0
        self.summary = sm
        self.finished = True
        if self.chart is not None:
            self.chart.points = downsample(self.points, MAX_POINTS)
            self.chart.summary = sm
            self.chart.send({"type": "done", "summary": sm})
            if freeze and self._handle is not None:
                self._handle.update(StaticChart(self.chart.points, sm, self.title))
        return sm

    def _rebuild(self, profile):
        """Exact series from the profile's token timestamps and prefill numbers (not sent as
        points: finish() sets it on the chart's `points` trait)."""
        self.points, self._tok_t, self._prefill_marked = [], [], True
        if profile.prefill_s > 0 and profile.n_prefill:
            self.points.append([round(profile.prefill_s, 6), round(profile.n_prefill / profile.prefill_s, 3),
                                "prefill"])
        for t in profile.token_times:
            self._token_at(t)
        self._pending = []


def downsample(points, n):
    """At most `n` points: the prefill points and an even selection of the decode points (the last
    one kept)."""
    if len(points) <= n:
        return [list(p) for p in points]
    pre = [list(p) for p in points if p[2] == "prefill"]
    dec = [p for p in points if p[2] != "prefill"]
    k = max(n - len(pre), 2)
    step = (len(dec) - 1) / (k - 1)
    return pre + [list(dec[round(i * step)]) for i in range(k)]


def y_label_width(labels) -> int:
    """The left margin the rate-axis labels need (10 px sans-serif: ~6 px a character), 30-90 px."""
    return int(min(90, max(30, 8 + 6 * max((len(t) for t in labels), default=0))))


def rate_scale(points):
    """(axis top, tick step) of the chart's tokens/s axis: round ticks (rate_axis) over 1.05 x the
    robust maximum of the decode points (the prefill point's speed when there are none)."""
    dec = [p[1] for p in points if p[2] != "prefill"]
    pf = [p[1] for p in points if p[2] == "prefill"]
    top = robust_max(dec) or max(pf or [1.0])
    return rate_axis(top * 1.05)


def render_svg(points, summary=None, *, title="", width=640, height=160) -> str:
    """The final figure as a self-contained SVG string (written once, after generation)."""
    summary = summary or {}
    R, T, B = 8, 8, 20
    lab_h = 18
    W, H = int(width), int(height)
    dec = [p for p in points if p[2] != "prefill"]
    pf = [p for p in points if p[2] == "prefill"]
    tmax, tstep = time_axis(max([p[0] for p in points] + [0.0]))
    ymax, ystep = rate_scale(points)
    n_y = int(round(ymax / ystep))
    ylabels = [rate_label(i * ystep, ystep) for i in range(n_y + 1)]
    L = y_label_width(ylabels)
    pw, ph = W - L - R, H - T - B

    def X(t):
        return L + t / tmax * pw

    def Y(v):
        return T + ph - min(v, ymax) / ymax * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="ryz-chart-svg" width="{W}" height="{H + lab_h}" '
           f'viewBox="0 0 {W} {H + lab_h}" font-family="sans-serif" font-size="10">']
    for i, text in enumerate(ylabels):
        y = Y(i * ystep)
        out.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text class="ryz-ytick" x="{L - 4}" y="{y + 3:.1f}" text-anchor="end" fill="#888">{text}</text>')
    n_ticks = int(round(tmax / tstep))
    for i in range(n_ticks + 1):
        t = i * tstep
        anchor = "end" if i == n_ticks else "middle"          # the last label stays inside the figure
        out.append(f'<text class="ryz-xtick" x="{X(t):.1f}" y="{T + ph + 13}" text-anchor="{anchor}" fill="#888">'
                   f'{time_label(t, tmax)}</text>')
    if pf:
        p = pf[-1]
        out.append(f'<rect x="{X(0):.1f}" y="{T}" width="{max(2.0, X(p[0]) - X(0)):.1f}" height="{ph}" '
                   f'fill="#f5b041" fill-opacity="0.25"/>')
        out.append(f'<text x="{X(0) + 3:.1f}" y="{T + 11}" fill="#333">prefill {format_rate(p[1])} tok/s</text>')
    if dec:
        pts = " ".join(f"{X(p[0]):.1f},{Y(p[1]):.1f}" for p in dec)
        out.append(f'<polyline class="ryz-decode" points="{pts}" fill="none" stroke="#1976d2" stroke-width="1.5"/>')
    label = caption(title, bool(pf)) + speculative_caption(summary)
    out.append(f'<text x="{L}" y="{H + 12}" fill="#666">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def speculative_caption(summary) -> str:
    """' · draft lookup: 62% accepted, 2.30 tokens/pass (draft 1 ms, verify 80 ms, sampling 3 ms)'
    when the reply was decoded speculatively, else ''."""
    sm = summary or {}
    if not sm.get("drafter"):
        return ""
    return (f" \u00b7 draft {sm['drafter']}: {sm.get('acceptance', 0.0):.0%} accepted, "
            f"{sm.get('tokens_per_pass', 0.0):.2f} tokens/pass (draft {format_duration(sm.get('draft_s', 0.0))}, "
            f"verify {format_duration(sm.get('verify_s', 0.0))}, sampling {format_duration(sm.get('sampling_s', 0.0))})")


def robust_max(vals):
    """The largest value, or with 20+ values 1.25 x the 95th percentile when that is smaller (the
    chart's scale: a few spikes are drawn at the top edge instead of flattening the line)."""
    if not vals:
        return 0.0
    v = sorted(vals)
    if len(v) < 20:
        return v[-1]
    return min(v[-1], 1.25 * v[int(0.95 * (len(v) - 1))])


def time_axis(t_last):
    """(axis end, tick step) for a time axis that ends just past the last point: 3-5 intervals of
    1, 2, 2.5 or 5 x 10^k seconds, so a 0.03 s reply fills the chart like a 30 s one."""
    import math
    t = max(float(t_last), 1e-4)
    raw = t / 5
    e = 10 ** math.floor(math.log10(raw))
    step = next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= raw)
    n = math.ceil(t / step - 1e-9)
    return n * step, step


def time_label(t, axis_end) -> str:
    """A tick label: milliseconds below one second, else seconds, with the digits the tick has."""
    if axis_end < 1:
        return f"{round(t * 1e3, 6):g} ms"
    return f"{round(t, 6):g} s"


def caption(title="", prefill=False) -> str:
    """The line under the final figure: what is drawn (the numbers are in the stats footer)."""
    what = "tokens/s while the reply was written" + (" (shaded: the prompt pass)" if prefill else "")
    return f"{title} \u00b7 {what}" if title else what


class StaticChart:
    """The final figure as SVG (plus a text line) for a display update."""

    def __init__(self, points, summary, title=""):
        self.points, self.summary, self.title = points, summary, title

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"image/svg+xml": render_svg(self.points, self.summary, title=self.title),
                "text/plain": "tokens/s chart: " + caption(self.title, any(p[2] == "prefill" for p in self.points))}


def live_chart(title="", *, profiler=None, max_rate=MAX_RATE, display=True):
    """A chart + recorder pair, ready for one generation (what the %%ryz loop uses):

        rec = live_chart("demo", profiler=PROFILER)     # shows the chart
        rec.start(n_prefill=len(prompt_ids))
        for piece in stream: rec.poll(); ...
        rec.finish(result.stats, result.profile, freeze=True)
    """
    if profiler is None:
        from ryzjupyter.engine.profiling import PROFILER as profiler
    rec = ThroughputRecorder(ThroughputChart(), max_rate=max_rate, profiler=profiler, title=title)
    if display:
        rec.display()
    return rec
