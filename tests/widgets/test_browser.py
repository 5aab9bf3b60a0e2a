"""A real browser (Debian chromium driven by Playwright) against a real JupyterLab started on
localhost by the test: open a notebook, run `%ryz controls` and a streamed `%%ryz` on a random BitNet
model, and check that the live chart drew points on its canvas, the final figure stayed in the
output, and the controls panel changes the settings and generates. Before them, a short streamed
`%%ryz` on the tiny Mamba and RWKV-4 fixtures each draws its chart and leaves its figure, and
`%ryz stats` shows the recurrent phases (one tiny load each: milliseconds).

Skipped when chromium, playwright, jupyterlab, the engine or the magics are missing, unless
RYZ_REQUIRE_BROWSER=1 (then it fails). Screenshots go to $RYZ_ARTIFACTS (default build/test-artifacts).
"""
import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECURRENT = {"mamba": REPO / "tests" / "fixtures" / "recurrent" / "mamba_f32",
             "rwkv": REPO / "tests" / "fixtures" / "recurrent" / "rwkv_f32"}
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("RYZ_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(os.environ.get("RYZ_ARTIFACTS") or REPO / "build" / "test-artifacts")


def _need(cond, why):
    if not cond:
        if REQUIRED:
            pytest.fail(f"browser test required (RYZ_REQUIRE_BROWSER=1) but {why}")
        pytest.skip(why)


def _importable(name):
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _need(os.path.exists(CHROMIUM), f"no chromium at {CHROMIUM} (apt-get install chromium)")
    for mod in ("playwright", "jupyterlab", "anywidget", "ryzjupyter.jupyter.magics", "ryzjupyter.decoding.generation"):
        _need(_importable(mod), f"{mod} is not installed")
    root = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("RYZ_STREAM", None)
    env["JUPYTER_CONFIG_DIR"] = str(root / ".jupyter")          # no user settings leak in
    env["JUPYTERLAB_SETTINGS_DIR"] = str(root / ".lab-settings")
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(root / ".lab-workspaces")
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.token={token}", "--ServerApp.password=", "--ServerApp.allow_root=True",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.disable_check_xsrf=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError("jupyter lab did not start:\n" + (root / "lab.log").read_text()[-3000:])
            time.sleep(0.3)
        yield {"base": base, "token": token, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _notebook(cells):
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "cells": [{"cell_type": "code", "metadata": {}, "source": c, "outputs": [],
                       "execution_count": None, "id": f"c{i}"} for i, c in enumerate(cells)]}


def _shot(page, name, locator=None):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (locator or page).screenshot(path=str(ARTIFACTS / f"widgets-{name}.png"))


def test_chart_and_controls_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    # A mid-sized random model and 400 tokens: about a second of decoding here (~500 tok/s), so the
    # chart draws many frames at its 20 updates/s, however fast the tiny fixture would decode.
    from ryzjupyter.families.random_bitnet import write_random_bitnet
    model = write_random_bitnet(lab["root"] / "medium", hidden_size=1024, intermediate_size=2816,
                                num_hidden_layers=6, num_attention_heads=16, num_key_value_heads=4)
    cells = [
        "%load_ext ryzjupyter\n%config RyzMagics.temperature = 0",
        # the recurrent families first, 12 tokens each (fewer decode points than the BitNet chart's 20)
        f"%%ryz -m {RECURRENT['mamba']} -n 12 --stream\nOnce upon a time",
        f"%%ryz -m {RECURRENT['rwkv']} -n 12 --stream\nOnce upon a time",
        "%ryz stats",
        f"%ryz load {model} --name tiny",
        "%ryz controls",
        "%%ryz -n 400 --stream\nOnce upon a time",
        "%ryz stats",
        "print('settings:', get_ipython()._ryz_magics.temperature, get_ipython()._ryz_magics.max_new_tokens)",
    ]
    (lab["root"] / "ryz.ipynb").write_text(json.dumps(_notebook(cells)))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            external = []
            page.on("request", lambda r: external.append(r.url)
                    if not r.url.startswith(("http://127.0.0.1", "data:", "blob:", "about:")) else None)
            page.add_init_script("window.__ryz_charts = {};")
            page.goto(f"{lab['base']}/lab/tree/ryz.ipynb?token={lab['token']}")
            page.wait_for_selector(".jp-NotebookPanel", timeout=60000)
            # the kernel is up when the toolbar's status says idle
            page.wait_for_function(
                "() => { const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                " return k && k.status === 'idle'; }", timeout=60000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            # the live chart: the browser drew frames with decode points on its canvas
            page.wait_for_function(
                "() => Object.values(window.__ryz_charts).some(e => e.done && e.maxDecode >= 20)",
                timeout=90000)
            charts = page.evaluate("() => window.__ryz_charts")
            # the Mamba and RWKV-4 replies drew their charts too (done, decode points, a canvas PNG)
            small = [e for e in charts.values() if e["done"] and e["maxDecode"] < 20]
            assert len(small) == 2 and all(e["maxDecode"] >= 2 and e.get("png") for e in small), small
            (entry,) = [e for e in charts.values() if e["done"] and e["maxDecode"] >= 20]
            assert entry["frames"] >= 2 and entry["maxPoints"] >= 21
            png = base64.b64decode(entry["png"].split(",", 1)[1])
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000          # not a blank canvas
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "widgets-live-chart-canvas.png").write_bytes(png)

            # the final figure stays in the output (static SVG with the decode line)
            svg = page.locator(".jp-OutputArea-output img[src^='data:image/svg'], .jp-RenderedSVG svg")
            svg.first.wait_for(timeout=30000)
            page.wait_for_function(                      # one final figure a reply: Mamba, RWKV, BitNet
                "() => document.querySelectorAll(\".jp-OutputArea-output img[src^='data:image/svg'],"
                " .jp-RenderedSVG svg\").length >= 3", timeout=30000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-Cell')].some(c => c.querySelector('.jp-InputArea')"
                " && c.textContent.includes('settings:'))", timeout=60000)
            _shot(page, "notebook")
            # %ryz stats: the profile breakdown from the engine's counters
            profs = page.locator(".jp-OutputArea-output .ryz-profile")         # not the sidebar's
            profs.nth(1).wait_for(timeout=30000)
            rec = profs.first                                                   # the RWKV-4 reply's
            for phase in ("matmul", "scan", "lm_head", "sampling", "python"):
                assert rec.locator(f"tr[data-phase='{phase}']").count() == 1, phase
            assert rec.locator("tr[data-phase='attention']").count() == 0
            prof = profs.nth(1)
            for phase in ("matmul", "attention", "lm_head", "sampling", "python"):
                assert prof.locator(f"tr[data-phase='{phase}']").count() == 1, phase
            _shot(page, "profile", prof)

            # the controls panel: move the temperature setting from the browser, see it in the kernel
            panel = page.locator(".ryz-controls")
            panel.wait_for(timeout=30000)
            # before the first generation: no empty bordered output box, no finish line
            assert panel.locator(".ryz-controls-output").is_hidden()
            assert panel.locator(".ryz-controls-finish").is_hidden()
            _shot(page, "controls", panel)
            temp = panel.locator(".ryz-control-temperature .widget-readout")
            temp.click()
            temp.fill("0.45")
            temp.press("Enter")
            n_box = panel.locator(".ryz-control-max-new-tokens .widget-readout")
            n_box.click()
            n_box.fill("8")
            n_box.press("Enter")
            page.locator(".ryz-controls-prompt textarea").fill("Hello there")
            page.locator(".ryz-controls-generate").click()
            # the Generate area shows the reply and its stats footer, and the panel's own chart drew
            out = panel.locator(".ryz-controls-output")
            out.get_by_text("tok/s").first.wait_for(timeout=60000)
            assert out.locator(".jp-RenderedMarkdown").count() >= 1          # the reply, complete
            page.wait_for_function(
                "() => Object.values(window.__ryz_charts).filter(e => e.done).length >= 4", timeout=30000)
            assert panel.locator(".ryz-controls-chart canvas").count() == 1
            # why the reply stopped, next to the Generate button (8 tokens: max tokens, or a stop token)
            finish = panel.locator(".ryz-controls-finish .ryz-finish")
            finish.wait_for(timeout=10000)
            assert "stopped: " in finish.inner_text()
            assert finish.get_attribute("data-reason") in ("length", "stop_token")
            _shot(page, "controls-after-generate", panel)
            # re-run the last cell: the kernel sees the settings the browser set
            page.evaluate("() => { const nb = window.jupyterapp.shell.currentWidget.content;"
                          " nb.activeCellIndex = nb.widgets.length - 1; }")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")
            page.wait_for_function(
                "() => document.body.textContent.includes('settings: 0.45 8')", timeout=30000)
            assert not external, f"requests left localhost: {external[:5]}"
        finally:
            browser.close()


def _scale_series(r):
    """The points of a made-up reply at about `r` tok/s: 8 prompt tokens, then 29 tokens whose
    spacing varies by 20 %. Run in the kernel (as source) and here (to know its axis)."""
    from ryzjupyter.jupyter.widgets.chart import ThroughputRecorder
    rec = ThroughputRecorder(None, max_rate=1e9)
    _feed(rec, r)
    return rec.points


FEED = """def _feed(rec, r):
    rec.start(n_prefill=8, t0=0.0)
    t = 8 / (3 * r)
    rec.prefill(8, t)
    for k in range(1, 30):
        t += 1 / (r * (1 + 0.1 * (k % 3)))
        rec.token(t=t)
    return rec
"""
exec(FEED)


def test_chart_axes_read_at_every_scale(lab):
    """Charts of replies at 0.05, 3, 250 and 4000 tok/s in JupyterLab: the canvas's y ticks are round
    numbers with their unit, the same labels as the SVG figure (units.py and chart.js, one rule), and
    a real reply's footer gives the time to its first token in ms. Screenshots: widgets-axes-*.png."""
    import re

    from playwright.sync_api import sync_playwright

    from ryzjupyter.jupyter.units import rate_label
    from ryzjupyter.jupyter.widgets.chart import rate_scale

    rates = [0.05, 3.0, 250.0, 4000.0]
    feed = FEED + (
        "from IPython.display import display\n"
        "from ryzjupyter.jupyter.widgets.chart import StaticChart, ThroughputChart, ThroughputRecorder\n"
        "for i, r in enumerate(RATES):\n"
        "    rec = ThroughputRecorder(ThroughputChart(uid=f'scale-{i}'), max_rate=1e9, title=f'{r:g} tok/s reply')\n"
        "    _feed(rec.display(), r).finish()\n"
        "    display(StaticChart(rec.points, rec.summary, rec.title))\n")
    cells = ["%load_ext ryzjupyter",
             f"%%ryz -m {RECURRENT['rwkv']} -n 12 --stream\nOnce upon a time",
             f"RATES = {rates!r}\n" + feed]
    (lab["root"] / "axes.ipynb").write_text(json.dumps(_notebook(cells)))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
                                           "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 2400})
            page.add_init_script("window.__ryz_charts = {};")
            # ?reset: a fresh workspace (not the other test's notebook restored beside this one)
            page.goto(f"{lab['base']}/lab/tree/axes.ipynb?reset&token={lab['token']}")
            page.wait_for_selector(".jp-NotebookPanel", timeout=60000)
            page.wait_for_function(
                "() => { const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
                " if (!w || !w.context || w.context.path !== 'axes.ipynb') return false;"
                " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                " return k && k.status === 'idle'; }", timeout=60000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(
                "() => [0, 1, 2, 3].every(i => (window.__ryz_charts['scale-' + i] || {}).done)", timeout=90000)
            page.wait_for_function("() => document.querySelectorAll('.jp-RenderedSVG svg,"
                                   " .jp-OutputArea-output img[src^=\"data:image/svg\"]').length >= 5",
                                   timeout=30000)
            charts = page.evaluate("() => window.__ryz_charts")
            for i, r in enumerate(rates):
                e = charts[f"scale-{i}"]
                assert e["maxDecode"] == 28
                top, step = rate_scale(_scale_series(r))
                want = [rate_label(k * step, step) for k in range(round(top / step) + 1)]
                assert e["yTicks"] == want, (r, e["yTicks"], want)
                assert want[0] == "0" and all(t.endswith(" tok/s") for t in want[1:])
                assert r * 1.05 <= top <= r * 1.2 * 1.05 * 2.5, (r, want)
            footer = page.locator(".jp-OutputArea-output").filter(has_text="first token").first
            footer.wait_for(timeout=30000)
            text = footer.inner_text()
            assert re.search(r"first token \d+(\.\d)? (ms|\u00b5s) \u00b7", text), text
            _shot(page, "axes-notebook")
            live = page.locator(".ryz-chart")                 # the RWKV reply's chart became its SVG
            for i in range(len(rates)):
                _shot(page, f"axes-canvas-{i}", live.nth(live.count() - len(rates) + i))
        finally:
            browser.close()
