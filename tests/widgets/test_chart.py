"""The live chart's message protocol and throttling, checked on the messages the kernel sends."""
import re

import pytest

from ryzjupyter.engine.profiling import Profiler
from ryzjupyter.jupyter.widgets import ThroughputChart, ThroughputRecorder, render_svg
from ryzjupyter.jupyter.widgets.chart import MAX_RATE, StaticChart, downsample


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_chart_ships_its_js_and_css_and_no_network_imports():
    c = ThroughputChart()
    assert "export default" in c._esm and "initialize" in c._esm and "render" in c._esm
    # no CDN: no import statements, no URLs fetched
    assert not re.search(r"^\s*import\s", c._esm, re.M)
    assert "http://" not in c._esm and "https://" not in c._esm
    assert "https://" not in c._css
    state = c.get_state()
    assert state["uid"] and state["points"] == [] and "_esm" in state


def test_protocol_reset_points_done():
    clock = FakeClock()
    chart = ThroughputChart()
    rec = ThroughputRecorder(chart, clock=clock, title="tiny")
    rec.start(n_prefill=10)
    assert chart.sent[-1] == {"type": "reset", "title": "tiny"}
    for i in range(1, 6):                    # first token at 0.5 s, then one every 0.1 s
        clock.t = 100.0 + 0.4 + 0.1 * i
        rec.token()
    rec.finish()
    kinds = [m["type"] for m in chart.sent]
    assert kinds[0] == "reset" and kinds[-1] == "done" and "points" in kinds
    pts = [p for m in chart.sent if m["type"] == "points" for p in m["points"]]
    assert pts[0] == [pytest.approx(0.5), pytest.approx(20.0), "prefill"]      # 10 prompt tokens in 0.5 s
    dec = [p for p in pts if p[2] == "decode"]
    assert len(dec) == 4 and all(p[1] == pytest.approx(10.0) for p in dec)     # 10 tok/s
    for p in pts:                            # the wire format: [t, tok_s, phase]
        assert isinstance(p[0], float) and isinstance(p[1], float) and p[2] in ("prefill", "decode")
    done = chart.sent[-1]["summary"]
    assert done["n_generated"] == 5 and done["decode_tok_s"] == pytest.approx(10.0)
    assert chart.points == pts               # the persisted series = what was streamed
    assert chart.summary == done


def test_at_most_max_rate_messages_per_second():
    clock = FakeClock()
    chart = ThroughputChart()
    rec = ThroughputRecorder(chart, clock=clock)
    rec.start(n_prefill=4)
    n = 1000
    for i in range(n):                       # 1000 tokens over 2 s (500 tok/s)
        clock.t = 100.0 + 0.002 * (i + 1)
        rec.token()
    rec.finish()
    point_msgs = [m for m in chart.sent if m["type"] == "points"]
    assert len(point_msgs) <= 2 * MAX_RATE + 2
    assert sum(len(m["points"]) for m in point_msgs) == n     # batched, nothing dropped (1 prefill + 999)
    # times between consecutive sends >= 1/max_rate (the clock values at send time)
    assert rec.messages == len(point_msgs)


def test_poll_reads_profiler_token_timestamps():
    prof = Profiler(enabled=True)
    chart = ThroughputChart()
    rec = ThroughputRecorder(chart, profiler=prof, max_rate=1e9)
    rec.start(n_prefill=3)
    prof.begin()
    t0 = prof.t0_ns
    prof.token_ns.extend([t0 + 300_000_000, t0 + 400_000_000, t0 + 500_000_000])
    rec.poll()
    pts = [p for m in chart.sent if m["type"] == "points" for p in m["points"]]
    assert pts[0] == [pytest.approx(0.3), pytest.approx(10.0), "prefill"]
    assert [p[2] for p in pts[1:]] == ["decode", "decode"]
    assert pts[-1][1] == pytest.approx(10.0)
    # a new generation (begin makes a new token list) starts a new series
    prof.begin()
    rec2 = ThroughputRecorder(chart, profiler=prof)
    rec2.poll()
    assert rec2.points == []


def test_finish_with_profile_rebuilds_exact_series_and_summary():
    prof = Profiler(enabled=True)
    prof.begin()
    prof.stage("prefill")
    t0 = prof.t0_ns
    prof.stage("decode")
    prof._stage_wall["prefill"] = 200_000_000              # as if the prompt pass took 0.2 s
    prof.token_ns.extend([t0 + 200_000_000 + k * 50_000_000 for k in range(5)])
    profile = prof.end(n_prompt=8, n_prefill=8)
    chart = ThroughputChart()
    rec = ThroughputRecorder(chart)          # fed nothing live (e.g. streaming off)
    rec.start()
    sm = rec.finish(stats={"n_generated": 5, "decode_tok_s": 20.0, "prefill_tok_s": 40.0, "total_s": 0.4},
                    profile=profile)
    assert sm["n_generated"] == 5 and sm["decode_tok_s"] == 20.0
    assert chart.points[0] == [pytest.approx(0.2), pytest.approx(40.0), "prefill"]
    assert len([p for p in chart.points if p[2] == "decode"]) == 4
    assert chart.sent[-1] == {"type": "done", "summary": sm}


def test_recorder_without_chart_only_records():
    clock = FakeClock()
    rec = ThroughputRecorder(None, clock=clock)
    rec.start()
    for i in range(3):
        clock.t += 0.1
        rec.token()
    sm = rec.finish()
    assert sm["n_generated"] == 3 and len(rec.points) == 2


def test_svg_final_figure_and_downsampling():
    pts = [[0.2, 40.0, "prefill"]] + [[0.2 + 0.01 * i, 100.0 + i % 7, "decode"] for i in range(5000)]
    small = downsample(pts, 500)
    assert len(small) == 500 and small[0][2] == "prefill" and small[-1] == pts[-1]
    svg = render_svg(small, {"n_generated": 5000, "decode_tok_s": 103.0, "prefill_tok_s": 40.0, "total_s": 50.2})
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count(",") > 400 and "prefill 40.0 tok/s" in svg
    assert "5000 tokens" not in svg and "50.2 s" not in svg   # the numbers are the footer's, not repeated
    assert "tokens/s while the reply was written (shaded: the prompt pass)" in svg
    bundle = StaticChart(small, {"n_generated": 1}, "t")._repr_mimebundle_()
    assert "image/svg+xml" in bundle and "text/plain" in bundle


def test_attach_polls_after_every_token_and_books_display_time():
    prof = Profiler(enabled=True)
    chart = ThroughputChart()
    rec = ThroughputRecorder(chart, profiler=prof, max_rate=1e9).start(n_prefill=2).attach()
    prof.begin()
    prof.stage("decode")
    for _ in range(4):
        prof.token()
    assert len(rec._tok_t) == 4 and len([p for p in rec.points if p[2] == "decode"]) == 3
    rec.detach()
    prof.token()
    assert len(rec._tok_t) == 4 and prof.token_hooks == []
    profile = prof.end()
    assert profile.counts["display"] == 4


def test_broken_token_hook_is_dropped():
    prof = Profiler(enabled=True)
    prof.token_hooks.append(lambda: 1 / 0)
    prof.begin()
    prof.token()
    prof.token()
    assert prof.token_hooks == [] and len(prof.token_ns) == 2


def test_scale_ignores_a_few_spikes():
    from ryzjupyter.jupyter.widgets.chart import robust_max
    assert robust_max([]) == 0.0 and robust_max([1.0, 5.0]) == 5.0
    vals = [8000.0, 5000.0] + [30.0 + i % 5 for i in range(198)]
    assert robust_max(vals) < 60


@pytest.mark.parametrize("t_last, end, step", [(0.013, 0.015, 0.005), (0.044, 0.05, 0.01), (0.2, 0.2, 0.05),
                                               (0.21, 0.25, 0.05), (0.9, 1.0, 0.2), (3.7, 4.0, 1.0),
                                               (52.0, 60.0, 20.0)])
def test_time_axis_ends_just_past_the_last_point(t_last, end, step):
    from ryzjupyter.jupyter.widgets.chart import time_axis
    e, st = time_axis(t_last)
    assert e == pytest.approx(end) and st == pytest.approx(step)
    assert t_last <= e < t_last + st and 3 <= round(e / st) <= 6


def test_a_short_reply_fills_the_chart():
    """The bundled model writes a reply in 0.01-0.2 s: its curve spans the plot, ticks in ms."""
    pts = [[0.002, 3000.0, "prefill"]] + [[0.002 + 0.0004 * i, 2500.0, "decode"] for i in range(1, 31)]
    svg = render_svg(pts, {}, width=640)
    xs = [float(v.split(",")[0]) for v in re.search(r'class="ryz-decode" points="([^"]+)"', svg).group(1).split()]
    L, R = 44, 8
    assert (max(xs) - L) / (640 - L - R) > 0.85          # the last point near the right edge
    assert ">15 ms<" in svg and ">5 ms<" in svg and " s<" not in svg   # axis 0 .. 15 ms (last point at 14 ms)


def test_time_labels_keep_the_tick_digits():
    from ryzjupyter.jupyter.widgets.chart import time_label
    assert [time_label(t, 0.0125) for t in (0, 0.0025, 0.0125)] == ["0 ms", "2.5 ms", "12.5 ms"]
    assert [time_label(t, 12.5) for t in (0, 7.5, 12.5)] == ["0 s", "7.5 s", "12.5 s"]
    assert time_label(0.6000000000000001, 1.0) == "0.6 s"


def test_summary_and_caption_show_speculative_figures():
    from ryzjupyter.decoding.generation import GenerationStats
    rec = ThroughputRecorder(None, clock=FakeClock())
    rec.start()
    plain = rec.finish(GenerationStats(n_generated=10, decode_tok_s=50.0))
    assert "drafter" not in plain and "acceptance" not in plain
    st = GenerationStats(n_generated=10, drafter="lookup", drafted=8, accepted=6, acceptance=0.75,
                         tokens_per_pass=2.5, draft_s=0.001, verify_s=0.08, sampling_s=0.003)
    rec = ThroughputRecorder(None, clock=FakeClock())
    rec.start()
    sm = rec.finish(st)
    assert (sm["drafter"], sm["accepted"], sm["drafted"]) == ("lookup", 6, 8)
    svg = render_svg([[0.1, 5.0, "decode"], [0.2, 6.0, "decode"]], sm)
    assert "draft lookup: 75% accepted, 2.50 tokens/pass (draft 1 ms, verify 80 ms, sampling 3 ms)" in svg
    js = open(__import__("ryzjupyter.jupyter.widgets.chart", fromlist=["x"]).__file__.replace("chart.py",
                                                                                            "static/chart.js")).read()
    assert "sm.drafter" in js and "tokens/pass" in js


# ---- number formats: times in ms under a second, rate ticks readable at every scale ----------

RATE_SCALES = [0.004, 0.3, 0.8, 1.1, 7.0, 45.0, 180.0, 2860.0, 12000.0, 150000.0]


@pytest.mark.parametrize("vmax", RATE_SCALES)
def test_rate_axis_ticks_are_round_numbers_with_units(vmax):
    from ryzjupyter.jupyter.units import rate_axis, rate_label
    top, step = rate_axis(vmax)
    n = round(top / step)
    assert top >= vmax and 3 <= n <= 5 and top < vmax + step * 1.0001
    labels = [rate_label(i * step, step) for i in range(n + 1)]
    assert labels[0] == "0" and len(set(labels)) == len(labels)          # distinct: no "0.00, 0.00"
    for t in labels[1:]:
        assert re.fullmatch(r"\d+(\.\d+)?k? tok/s", t), t                 # a number and its unit, no exponent
        assert len(t) <= 12
        num = float(t.split()[0].rstrip("k")) * (1000 if "k " in t else 1)
        assert num == pytest.approx(round(num / step) * step)           # the tick's own value


def test_rate_labels_at_several_scales():
    from ryzjupyter.jupyter.units import rate_axis, rate_label

    def ticks(v):
        top, step = rate_axis(v)
        return [rate_label(i * step, step) for i in range(round(top / step) + 1)]
    assert ticks(0.004) == ["0", "0.001 tok/s", "0.002 tok/s", "0.003 tok/s", "0.004 tok/s"]
    assert ticks(1.0) == ["0", "0.25 tok/s", "0.5 tok/s", "0.75 tok/s", "1 tok/s"]
    assert ticks(45.0) == ["0", "20 tok/s", "40 tok/s", "60 tok/s"]
    assert ticks(180.0) == ["0", "50 tok/s", "100 tok/s", "150 tok/s", "200 tok/s"]
    assert ticks(2860.0) == ["0", "1k tok/s", "2k tok/s", "3k tok/s"]
    assert ticks(9000.0) == ["0", "2.5k tok/s", "5k tok/s", "7.5k tok/s", "10k tok/s"]
    assert ticks(0.9) == ["0", "0.25 tok/s", "0.5 tok/s", "0.75 tok/s", "1 tok/s"]


@pytest.mark.parametrize("seconds, text", [(0.0, "0 ms"), (0.0004, "400 \u00b5s"), (0.001, "1 ms"),
                                           (0.0025, "2.5 ms"), (0.038, "38 ms"), (0.9994, "999 ms"),
                                           (0.9996, "1.00 s"), (2.345, "2.35 s"), (12.34, "12.3 s"),
                                           (125.0, "2 min 05 s")])
def test_durations_under_a_second_are_in_ms(seconds, text):
    from ryzjupyter.jupyter.units import format_duration
    assert format_duration(seconds) == text


@pytest.mark.parametrize("v, text", [(0.0, "0"), (0.0031, "0.0031"), (0.042, "0.042"), (0.5, "0.50"),
                                     (1.25, "1.25"), (40.0, "40.0"), (2500.4, "2500")])
def test_single_rates_never_read_zero(v, text):
    from ryzjupyter.jupyter.units import format_rate
    assert format_rate(v) == text


@pytest.mark.parametrize("rate", [0.02, 0.6, 9.0, 75.0, 900.0, 3500.0])
def test_svg_axis_reads_right_at_every_scale(rate):
    """Decode points at `rate` tok/s: the y ticks are the rate axis's labels, the curve sits
    inside the plot (neither clipped at the top nor flat on the floor), no tick reads 0.00."""
    pts = [[0.05, rate * 3, "prefill"]] + [[0.05 + 0.1 * i, rate * (1 + 0.05 * (i % 3)), "decode"]
                                           for i in range(1, 40)]
    svg = render_svg(pts, {"n_generated": 40}, width=640, height=160)
    yt = re.findall(r'class="ryz-ytick"[^>]*>([^<]*)<', svg)
    assert yt[0] == "0" and all(t.endswith(" tok/s") for t in yt[1:]) and "0.00" not in svg
    top = float(yt[-1].split()[0].rstrip("k")) * (1000 if "k " in yt[-1] else 1)
    assert rate * 1.1 <= top <= rate * 1.1 * 2.6
    ys = [float(v.split(",")[1]) for v in re.search(r'class="ryz-decode" points="([^"]+)"', svg).group(1).split()]
    T, B, H = 8, 20, 160
    assert min(ys) > T and max(ys) < H - B - 0.3 * (H - T - B)         # in the upper 70 % of the plot
    assert f"prefill {__import__('ryzjupyter.jupyter.units', fromlist=['x']).format_rate(rate * 3)} tok/s" in svg


NODE = __import__("shutil").which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_chart_js_formats_like_python():
    """chart.js (what the browser draws) and units.py (the SVG, the footer) give the same labels."""
    import json
    import subprocess
    from pathlib import Path
    from ryzjupyter.jupyter import units
    from ryzjupyter.jupyter.widgets.chart import time_axis, time_label
    js = Path(units.__file__).parent / "widgets" / "static" / "chart.js"
    rates = RATE_SCALES + [1.0, 9000.0, 0.05]
    durs = [0.0, 0.0004, 0.001, 0.0025, 0.038, 0.9994, 0.9996, 2.345, 12.34, 125.0]
    vals = [0.0, 0.0031, 0.042, 0.5, 1.25, 40.0, 2500.4, 25.26]     # (ties like 25.25 round apart)
    times = [0.013, 0.2, 0.9, 3.7, 52.0]
    script = f"""
const m = await import({json.dumps(js.as_uri())});
const out = {{axes: {json.dumps(rates)}.map((v) => {{ const [t, s] = m.rateAxis(v); const l = [];
  for (let i = 0; i <= Math.round(t / s); i++) l.push(m.rateLabel(i * s, s)); return l; }}),
  durs: {json.dumps(durs)}.map(m.fmtDuration), rates: {json.dumps(vals)}.map(m.fmtRate),
  times: {json.dumps(times)}.map((v) => {{ const [t, s] = m.timeAxis(v); const l = [];
  for (let i = 0; i <= Math.round(t / s); i++) l.push(m.timeLabel(i * s, t)); return l; }})}};
console.log(JSON.stringify(out));
"""
    res = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)

    def py_axis(v):
        t, s = units.rate_axis(v)
        return [units.rate_label(i * s, s) for i in range(round(t / s) + 1)]

    def py_time(v):
        t, s = time_axis(v)
        return [time_label(i * s, t) for i in range(round(t / s) + 1)]
    assert got["axes"] == [py_axis(v) for v in rates]
    assert got["durs"] == [units.format_duration(v) for v in durs]
    assert got["rates"] == [units.format_rate(v) for v in vals]
    assert got["times"] == [py_time(v) for v in times]
