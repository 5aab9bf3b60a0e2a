"""End to end in a real IPython kernel (jupyter_client, the path JupyterLab uses): a streamed
%%ryz reply on each real tiny fixture (BitNet, Mamba, RWKV-4; one kernel, the three loaded and
made current in turn with `%ryz use`) draws the live chart (anywidget comm messages, at most 20 a
second, a final summary, a static SVG left in the output), the reply carries the engine's profile
with the phases of its family, `%ryz stats` shows it, and `%ryz controls` builds the panel bound to
the settings and generates with the current model."""
import os
import queue
import time
from pathlib import Path

import anywidget  # noqa: F401  (a dependency: its absence is an error, not a skip)
import pytest

REPO = Path(__file__).resolve().parents[2]
FAMILIES = {"bitnet": REPO / "tests" / "fixtures" / "bitnet" / "packed",
            "mamba": REPO / "tests" / "fixtures" / "recurrent" / "mamba_f32",
            "rwkv": REPO / "tests" / "fixtures" / "recurrent" / "rwkv_f32"}
# the phases each family's profile must show (BitNet attends; Mamba scans and convolves; RWKV-4 scans)
PHASES = {"bitnet": ("matmul", "attention", "lm_head", "sampling", "python"),
          "mamba": ("matmul", "scan", "conv", "lm_head", "sampling", "python"),
          "rwkv": ("matmul", "scan", "lm_head", "sampling", "python")}


class Kernel:
    def __init__(self, km, kc):
        self.km, self.kc = km, kc

    def execute(self, code, timeout=90):
        msg_id = self.kc.execute(code)
        msgs, times = [], []
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no idle after {timeout} s: {[m['msg_type'] for m in msgs]}")
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msgs.append(msg)
            times.append(time.monotonic())
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return reply["content"], msgs, times

    def value(self, expr):
        content, msgs, _ = self.execute(f"print(repr({expr}))")
        assert content["status"] == "ok", content
        return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream").strip()


@pytest.fixture(scope="module")
def kernel():
    from jupyter_client.manager import start_new_kernel
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RYZ_STREAM", None)
    env["HF_HUB_OFFLINE"] = "1"
    km, kc = start_new_kernel(kernel_name="python3", env=env, startup_timeout=60)
    k = Kernel(km, kc)
    try:
        loads = "".join(f"%ryz load {folder} --name {family}\n" for family, folder in FAMILIES.items())
        content, msgs, _ = k.execute(f"%load_ext ryzjupyter\n{loads}%config RyzMagics.temperature = 0")
        assert content["status"] == "ok", msgs
        yield k
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture(params=sorted(FAMILIES))
def family(kernel, request):
    """Each fixture model in turn, made the current model of the kernel."""
    content, msgs, _ = kernel.execute(f"%ryz use {request.param}")
    assert content["status"] == "ok", _errors(msgs)
    assert kernel.value("__import__('ryzjupyter.jupyter.magics').jupyter.magics.REGISTRY.current().family") \
        == repr(request.param)
    return request.param


def _errors(msgs):
    return [m["content"] for m in msgs if m["msg_type"] == "error"]


def test_streamed_reply_draws_the_chart(kernel, family):
    content, msgs, times = kernel.execute("%%ryz -n 120 --stream\nOnce upon a time")
    assert content["status"] == "ok", _errors(msgs)
    opens = [m for m in msgs if m["msg_type"] == "comm_open"
             and m["content"]["data"]["state"].get("_model_name") == "AnyModel"
             and "ryz-chart" in m["content"]["data"]["state"].get("_css", "")]
    assert len(opens) == 1, "no chart widget was created"
    cid = opens[0]["content"]["comm_id"]
    custom = [(m, t) for m, t in zip(msgs, times) if m["msg_type"] == "comm_msg"
              and m["content"]["comm_id"] == cid and m["content"]["data"].get("method") == "custom"]
    kinds = [m["content"]["data"]["content"]["type"] for m, _ in custom]
    assert kinds[0] == "reset" and kinds[-1] == "done" and "points" in kinds
    point_times = [t for (m, t), k in zip(custom, kinds) if k == "points"]
    span = max(point_times[-1] - point_times[0], 0.0)
    assert len(point_times) <= 20 * span + 2, (len(point_times), span)        # <= 20 messages/s
    pts = [p for m, _ in custom if m["content"]["data"]["content"]["type"] == "points"
           for p in m["content"]["data"]["content"]["points"]]
    n_gen = int(kernel.value("_.stats.n_generated"))
    assert [p[2] for p in pts].count("prefill") == 1
    assert [p[2] for p in pts].count("decode") == n_gen - 1                   # one point per token
    done = custom[-1][0]["content"]["data"]["content"]["summary"]
    assert done["n_generated"] == n_gen
    assert done["decode_tok_s"] == pytest.approx(float(kernel.value("_.stats.decode_tok_s")), rel=1e-3)
    # the final figure stays in the output as SVG (the chart's display was updated to it)
    svg = [m for m in msgs if m["msg_type"] == "update_display_data" and "image/svg+xml" in m["content"]["data"]]
    assert svg and "<polyline" in svg[-1]["content"]["data"]["image/svg+xml"]


def test_reply_profile_and_stats(kernel, family):
    content, msgs, _ = kernel.execute("%%ryz -n 30 --no-stream\nThe train left the station")
    assert content["status"] == "ok", _errors(msgs)
    phases = eval(kernel.value("sorted(_.profile.phases)"))
    for name in PHASES[family]:
        assert name in phases, (family, phases)
    wall = float(kernel.value("_.profile.wall_s"))
    total = float(kernel.value("_.stats.total_s"))
    # the same generation measured twice: the profile's clock starts a bit before the stats' clock
    # and stops a bit after it (slack for a preempted process on a busy machine)
    assert total - 1e-6 <= wall <= total * 1.1 + 0.05
    assert float(kernel.value("sum(_.profile.phases.values())")) == pytest.approx(wall, rel=1e-6)
    assert int(kernel.value("_.profile.counts['sampling']")) == int(kernel.value("_.stats.n_generated"))
    content, msgs, _ = kernel.execute("%ryz stats")
    assert content["status"] == "ok", _errors(msgs)
    html = [m["content"]["data"]["text/html"] for m in msgs if m["msg_type"] == "display_data"
            and "text/html" in m["content"]["data"]]
    assert html and "data-phase='matmul'" in html[-1]


def test_controls_panel_in_the_kernel(kernel, family):
    content, msgs, _ = kernel.execute("%ryz controls")
    assert content["status"] == "ok", _errors(msgs)
    assert any(m["msg_type"] == "display_data" and
               "application/vnd.jupyter.widget-view+json" in m["content"]["data"] for m in msgs)
    code = ("from ryzjupyter.jupyter.widgets import controls_panel\n"
            "m = get_ipython()._ryz_magics\n"
            "p = controls_panel(m)\n"
            "p.controls['temperature'].value = 0.25\n"
            "assert m.temperature == 0.25\n"
            "get_ipython().run_line_magic('config', 'RyzMagics.top_k = 7')\n"
            "assert p.controls['top_k'].value == 7\n"
            "p.controls['max_new_tokens'].value = 6\n"
            "print('before', p.output.layout.display, p.finish.layout.display)\n"
            "p.prompt.value = 'Hello'\n"
            "p.generate_button.click()\n"
            "r = m.last_reply\n"
            "print(r.settings['temperature'], r.settings['top_k'], r.stats.n_generated <= 6)\n"
            "print('after', p.output.layout.display, repr(p.finish.value))\n"
            "print('expect', repr(f'{r.stats.n_generated} tokens &middot; stopped: {r.finish[\"label\"]}'))\n")
    content, msgs, _ = kernel.execute(code)
    assert content["status"] == "ok", _errors(msgs)
    out = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
    assert "0.25 7 True" in out
    # no empty bordered output box (nor an empty finish line) before the first generation
    assert "before none none" in out
    after = next(ln for ln in out.splitlines() if ln.startswith("after"))
    expect = next(ln for ln in out.splitlines() if ln.startswith("expect")).split(" ", 1)[1]
    assert after.startswith("after None ") and "stopped: max tokens reached (6 tokens)" in after
    assert expect.strip("'") in after, (expect, after)        # the reply's own reason, next to Generate
    kernel.execute("%config RyzMagics.temperature = 0\n%config RyzMagics.top_k = 40\n"
                   "%config RyzMagics.max_new_tokens = 128")
