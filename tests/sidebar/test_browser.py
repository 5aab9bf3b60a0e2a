"""The sidebar in a real browser: Debian chromium driven by Playwright, against a real `jupyter lab`
started here (localhost, random port, token, temporary root), with a real kernel and real models.

It opens a notebook, opens the sidebar, loads two models, hot-swaps between them, and checks the
notebook's kernel sees the change (BitNet fixtures, then the tiny Mamba and RWKV-4 fixtures); it also checks the "no notebook" and "package not installed"
states. Skipped (with the reason) when chromium, playwright or the built labextension are missing,
unless RYZ_REQUIRE_BROWSER=1 (CI), which turns those into failures.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import ryzjupyter

from .conftest import kernel_env

PKG = Path(ryzjupyter.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("RYZ_ARTIFACTS") or REPO / "build" / "test-artifacts")
CHROME_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run"]


def _need(cond, reason):
    if not cond:
        if os.environ.get("RYZ_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def _labextension_dir():
    """The built labextension: installed under share/jupyter/labextensions, or the package's own."""
    for base in [Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "ryzjupyter", PKG / "labextension"]:
        if (base / "package.json").is_file() and (base / "static").is_dir():
            return base
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(cells, kernel="python3"):
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                       "outputs": [], "source": src} for i, src in enumerate(cells)],
            "metadata": {"kernelspec": {"display_name": kernel, "language": "python", "name": kernel}},
            "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _need(Path(CHROMIUM).exists(), f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need(False, "the playwright package is not installed (pip install playwright)")
    ext = _labextension_dir()
    _need(ext is not None, "the labextension is not built (cd labextension && npm ci && npm run build:prod)")

    tmp = tmp_path_factory.mktemp("lab")
    root, jpath, cfg, data, rt = (tmp / d for d in ("root", "jupyter_path", "config", "data", "runtime"))
    for d in (root, jpath / "labextensions", cfg, data, rt):
        d.mkdir(parents=True)
    # every cell in the DOM (no windowing), so the tests can look at any cell's output
    tracker = cfg / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = cfg / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"     # no news pop-up
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    # the extension, found through JUPYTER_PATH (whether or not the package is installed)
    if ext.parent.name != "labextensions":
        (jpath / "labextensions" / "ryzjupyter").symlink_to(ext, target_is_directory=True)
    # a kernel that cannot import ryzjupyter, for the "not installed" state
    nopkg = jpath / "kernels" / "nopkg"
    nopkg.mkdir(parents=True)
    (nopkg / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", "import sys; sys.modules['ryzjupyter'] = None; "
                 "from ipykernel import kernelapp; kernelapp.launch_new_instance()", "-f", "{connection_file}"],
        "display_name": "Python without ryzjupyter", "language": "python"}))
    (root / "models.ipynb").write_text(json.dumps(_notebook([
        "from ryzjupyter.manager import MANAGER\nprint('CURRENT', MANAGER.current_name)",
        "%load_ext ryzjupyter\n%ryz list",
        "r = MANAGER.generate('Once upon a time', 3000, ignore_eos=True)\n"
        "print('GEN', r.finish_reason, r.stats.n_generated)",
    ])))
    # a model big enough that a generation runs long enough to be stopped from the sidebar
    from ryzjupyter.families.random_bitnet import write_random_bitnet
    extra = tmp / "models"
    write_random_bitnet(extra / "slow", hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                        num_attention_heads=8, num_key_value_heads=4, vocab_size=4096,
                        max_position_embeddings=4096, fmt="packed", seed=3)
    (root / "nopkg.ipynb").write_text(json.dumps(_notebook(["1 + 1"], kernel="nopkg")))
    shutil.copy(REPO / "notebooks" / "quickstart.ipynb", root / "quickstart.ipynb")
    # a model loaded by a %%ryz cell (the bundled demo: no %ryz load first)
    (root / "implicit.ipynb").write_text(json.dumps(_notebook([
        "%load_ext ryzjupyter", "%%ryz -n 8 -t 0 --draft lookup --num-draft 3\nAnd God said"])))

    port, token = _free_port(), os.urandom(12).hex()
    env = kernel_env({"RYZ_MODEL_DIRS": os.pathsep.join([kernel_env()["RYZ_MODEL_DIRS"], str(extra)]),
                      "JUPYTER_PATH": str(jpath), "JUPYTER_CONFIG_DIR": str(cfg),
                      "JUPYTER_DATA_DIR": str(data), "JUPYTER_RUNTIME_DIR": str(rt)})
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", "--ServerApp.allow_root=True",
         f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(root))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("jupyter lab exited:\n" + (tmp / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        else:
            raise RuntimeError("jupyter lab did not start in 60 s:\n" + (tmp / "lab.log").read_text()[-3000:])
        yield {"base": base, "token": token, "root": root, "log": tmp / "lab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture(scope="module")
def page(lab):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS, headless=True)
        ctx = browser.new_context(viewport={"width": 1400, "height": 900})
        pg = ctx.new_page()
        pg.set_default_timeout(30000)
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.add_init_script("window.__ryz_charts = {};")            # the live chart's test hook
        pg.errors = errors
        try:
            yield pg
        finally:
            ctx.close()
            browser.close()


def _open_sidebar(page):
    tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="ryzjupyter-sidebar"]')
    tab.wait_for()
    if "lm-mod-current" not in (tab.get_attribute("class") or ""):
        tab.click()
    page.locator("#ryzjupyter-sidebar").wait_for(state="visible")
    return page.locator("#ryzjupyter-sidebar")


def _magics_use_manager():
    from ryzjupyter.jupyter.magics import registry
    from ryzjupyter.manager import MANAGER
    return getattr(registry, "REGISTRY", None) is MANAGER


def _shot(page, name, locator=None):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (locator or page).screenshot(path=str(ARTIFACTS / name))


def test_sidebar_loads_and_swaps_models(lab, page):
    base, token = lab["base"], lab["token"]
    page.goto(f"{base}/lab?token={token}&reset")
    page.locator(".jp-LabShell").wait_for()
    side = _open_sidebar(page)
    # no notebook open yet
    page.locator("#ryzjupyter-sidebar .ryz-state").filter(has_text="Open a notebook").wait_for()

    page.goto(f"{base}/lab/tree/models.ipynb?token={token}&reset")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").wait_for()
    side = _open_sidebar(page)
    page.locator('#ryzjupyter-sidebar[data-state="ready"]').wait_for(timeout=60000)
    page.locator(".ryz-available .ryz-model-row[data-name='packed']").wait_for()
    assert "~" in side.locator(".ryz-available .ryz-model-row[data-name='packed'] .ryz-model-details").inner_text()

    # load two models; the second becomes current
    page.locator(".ryz-available .ryz-model-row[data-name='packed'] .ryz-load").click()
    page.locator(".ryz-loaded .ryz-model-row[data-name='packed']").wait_for(timeout=60000)
    page.locator(".ryz-available .ryz-model-row[data-name='online'] .ryz-load").click()
    page.locator(".ryz-loaded .ryz-model-row[data-name='online'].ryz-mod-current").wait_for(timeout=60000)
    assert side.locator(".ryz-current").inner_text() == "online"
    assert "KiB" in side.locator(".ryz-memory").inner_text()

    # hot-swap back to the first one
    page.locator(".ryz-loaded .ryz-model-row[data-name='packed'] .ryz-use").click()
    page.locator(".ryz-loaded .ryz-model-row[data-name='packed'].ryz-mod-current").wait_for()
    assert side.locator(".ryz-current").inner_text() == "packed"

    # the notebook's kernel sees the swap
    page.locator(".jp-Notebook .jp-Cell").first.click()
    page.keyboard.press("Shift+Enter")
    out = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-OutputArea-output")
    out.filter(has_text="CURRENT packed").wait_for(timeout=30000)
    # and so does %ryz list (the magics use the manager)
    assert _magics_use_manager()
    page.keyboard.press("Shift+Enter")
    out2 = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea-output")
    out2.first.wait_for(timeout=30000)
    text = out2.first.inner_text()
    assert "online" in text and re.search(r"^\*\s+packed", text, re.M), text   # * = current

    _shot(page, "sidebar-loaded.png")

    # unload
    page.locator(".ryz-loaded .ryz-model-row[data-name='online'] .ryz-unload").click()
    page.locator(".ryz-available .ryz-model-row[data-name='online']").wait_for()
    assert page.locator(".ryz-loaded .ryz-model-row").count() == 1

    # the Mamba and RWKV-4 fixtures through the same rows: estimate, load, hot-swap, unload
    mamba, rwkv = (f".ryz-model-row[data-name='{n}']" for n in ("mamba_f32", "rwkv_f32"))
    assert "~" in side.locator(f".ryz-available {mamba} .ryz-model-details").inner_text()
    page.locator(f".ryz-available {mamba} .ryz-load").click()
    page.locator(f".ryz-loaded {mamba}.ryz-mod-current").wait_for(timeout=60000)
    page.locator(f".ryz-available {rwkv} .ryz-load").click()
    page.locator(f".ryz-loaded {rwkv}.ryz-mod-current").wait_for(timeout=60000)
    assert side.locator(".ryz-current").inner_text() == "rwkv_f32"
    page.locator(f".ryz-loaded {mamba} .ryz-use").click()
    page.locator(f".ryz-loaded {mamba}.ryz-mod-current").wait_for()
    assert side.locator(".ryz-current").inner_text() == "mamba_f32"
    page.locator(".jp-Notebook .jp-Cell").first.click()            # the kernel sees the swap
    page.keyboard.press("Shift+Enter")
    out.filter(has_text="CURRENT mamba_f32").wait_for(timeout=30000)
    _shot(page, "sidebar-recurrent-loaded.png")
    page.locator(".ryz-loaded .ryz-model-row[data-name='packed'] .ryz-use").click()
    page.locator(".ryz-loaded .ryz-model-row[data-name='packed'].ryz-mod-current").wait_for()
    for row in (mamba, rwkv):
        page.locator(f".ryz-loaded {row} .ryz-unload").click()
        page.locator(f".ryz-available {row}").wait_for()
    assert page.locator(".ryz-loaded .ryz-model-row").count() == 1

    # a long generation: live tokens/s in the sidebar, the stop button ends it, the partial
    # answer is kept, and the last generation's stats and profile are shown
    page.locator(".ryz-available .ryz-model-row[data-name='slow'] .ryz-load").click()
    page.locator(".ryz-loaded .ryz-model-row[data-name='slow'].ryz-mod-current").wait_for(timeout=60000)
    cell = page.locator(".jp-Notebook .jp-Cell").nth(2)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    page.locator("#ryzjupyter-sidebar .ryz-tps").wait_for(timeout=30000)
    page.locator("#ryzjupyter-sidebar .ryz-stop:not([disabled])").wait_for()
    busy = page.locator('#ryzjupyter-sidebar[data-state="busy"] .ryz-state')
    busy.filter(has_text="generating").wait_for(timeout=10000)
    page.wait_for_timeout(1500)
    # one story while it generates: the current model is listed under Loaded, busy, with a speed
    assert side.locator(".ryz-current").inner_text() == "slow"
    assert page.locator(".ryz-loaded .ryz-model-row[data-name='slow'].ryz-mod-busy").count() == 1
    assert side.locator(".ryz-loaded h3").inner_text().lower() != "loaded (0)"
    assert page.locator(".ryz-available .ryz-model-row[data-name='slow']").count() == 0
    tps = side.locator(".ryz-tps").inner_text()
    assert re.fullmatch(r"\d+\.\d tok/s", tps) and not tps.startswith("0.0"), tps
    assert re.search(r"· \d+ tokens · slow", side.locator(".ryz-live").inner_text())
    _shot(page, "sidebar-generating.png")
    t0 = time.monotonic()
    page.locator("#ryzjupyter-sidebar .ryz-stop").click()
    cell.locator(".jp-OutputArea-output").filter(has_text="GEN interrupted").wait_for(timeout=30000)
    stop_s = time.monotonic() - t0
    n = int(cell.locator(".jp-OutputArea-output").inner_text().split()[-1])
    assert 0 < n < 3000
    # the comm stop works during the cell (comms on a subshell): well before the sidebar's
    # fallback, which interrupts the kernel after 2 s
    assert stop_s < 1.5, stop_s
    last = page.locator("#ryzjupyter-sidebar .ryz-last")
    last.filter(has_text="interrupted").wait_for(timeout=15000)
    finish = last.locator(".ryz-finish")
    assert finish.get_attribute("data-reason") == "interrupted"
    assert finish.locator(".ryz-stat-key").inner_text() == "stopped"
    assert last.locator(".ryz-profile-row").count() >= 2
    assert "tok/s" in last.inner_text() and "matmul" in last.inner_text()   # the engine's profile
    page.locator(".ryz-loaded .ryz-model-row[data-name='slow']:not(.ryz-mod-busy)").wait_for(timeout=5000)
    _shot(page, "sidebar-stopped.png")
    print(f"stopped {n} tokens in, {stop_s:.2f} s after the click")
    assert not [e for e in page.errors if "ryz" in e.lower()], page.errors


def test_package_missing_state(lab, page):
    base, token = lab["base"], lab["token"]
    page.goto(f"{base}/lab/tree/nopkg.ipynb?token={token}&reset")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").wait_for()
    _open_sidebar(page)
    state = page.locator('#ryzjupyter-sidebar[data-state="missing"] .ryz-state')
    state.wait_for(timeout=60000)
    assert "not installed in this kernel" in state.inner_text()
    _shot(page, "sidebar-missing.png")


def test_kernel_restart_state_and_reconnect(lab, page):
    base, token = lab["base"], lab["token"]
    page.goto(f"{base}/lab/tree/models.ipynb?token={token}&reset")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").wait_for()
    _open_sidebar(page)
    page.locator('#ryzjupyter-sidebar[data-state="ready"]').wait_for(timeout=60000)
    page.locator(".ryz-model-row[data-name='packed']").wait_for()
    if page.locator(".ryz-loaded .ryz-model-row[data-name='packed']").count() == 0:
        page.locator(".ryz-available .ryz-model-row[data-name='packed'] .ryz-load").click()
    page.locator(".ryz-loaded .ryz-model-row[data-name='packed']").wait_for(timeout=60000)
    # restart the notebook's kernel as a user does: Kernel > Restart Kernel…, then confirm
    page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").click()
    page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel…").first.click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    side = page.locator("#ryzjupyter-sidebar")
    page.wait_for_function("() => document.querySelector('#ryzjupyter-sidebar').dataset.restarts >= '1'",
                           timeout=30000)
    state = page.locator("#ryzjupyter-sidebar .ryz-state")
    # the sidebar says the kernel restarted, then reconnects (re-importing the package silently)
    try:
        page.locator('#ryzjupyter-sidebar[data-state="ready"]').wait_for(timeout=60000)
        page.locator(".ryz-available .ryz-model-row[data-name='packed']").wait_for(timeout=30000)
    finally:
        _shot(page, "sidebar-after-restart.png")
    assert page.locator(".ryz-loaded .ryz-model-row").count() == 0
    assert state.is_hidden() or "restarting" not in state.inner_text()
    assert int(side.get_attribute("data-connections")) >= 2      # reconnected after the restart


def _cell_with(page, text):
    return page.locator(".jp-Notebook .jp-CodeCell").filter(
        has=page.locator(".jp-InputArea-editor", has_text=text)).first


def test_quickstart_with_the_sidebar(lab, page):
    """The quickstart notebook run in JupyterLab with the sidebar installed: the %ryz stats profile
    table keeps its table layout (the sidebar's CSS is scoped to its panel), the live chart's time
    axis fits the demo model's short replies, and the sidebar lists the demo model once, under
    Loaded, with what its memory figure is made of and why the last reply stopped."""
    base, token = lab["base"], lab["token"]
    page.goto(f"{base}/lab/tree/quickstart.ipynb?token={token}&reset")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").wait_for()
    side = _open_sidebar(page)
    page.locator('#ryzjupyter-sidebar[data-state="ready"]').wait_for(timeout=60000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    bench = _cell_with(page, "%ryz bench")
    try:
        bench.locator(".jp-OutputArea-output").filter(has_text="demo: prefill 32 tokens").wait_for(timeout=120000)
    finally:
        _shot(page, "quickstart-run.png")

    # the profile table in the notebook's output: real table rows, header cells over their columns
    stats = _cell_with(page, "%ryz stats")
    table = stats.locator(".jp-OutputArea-output .ryz-profile table")
    table.wait_for()
    layout = table.evaluate("""t => {
        const rows = [...t.querySelectorAll('tr')];
        const lefts = r => [...r.children].map(c => Math.round(c.getBoundingClientRect().left));
        return {display: rows.slice(1).map(r => getComputedStyle(r).display),
                cells: rows.slice(1).map(r => getComputedStyle(r.children[1]).display),
                head: lefts(rows[0]), body: rows.slice(1).map(lefts)};
    }""")
    assert page.locator("#ryzjupyter-sidebar").count() == 1              # the extension is installed
    assert set(layout["display"]) == {"table-row"} and set(layout["cells"]) == {"table-cell"}, layout
    assert all(b == layout["head"] for b in layout["body"]), layout     # columns line up under the header
    _shot(page, "quickstart-profile-table.png", stats.locator(".jp-OutputArea-output .ryz-profile"))

    # the chart of the first reply: the final figure stays (SVG); the live canvas's time axis ended
    # just past the last point (the demo model answers in a few ms)
    first = _cell_with(page, "And it came to pass")
    figure = first.locator(".jp-OutputArea-output img[src^='data:image/svg'], .jp-RenderedSVG svg").first
    figure.wait_for()
    charts = page.evaluate("() => window.__ryz_charts")
    done = [e for e in charts.values() if e.get("done") and e.get("tLast")]
    assert done, charts
    for e in done:
        assert e["tLast"] <= e["tEnd"] < 1.5 * e["tLast"] + 1e-3, e
        assert "tokens/s while the reply was written" in e["caption"] and "decode" not in e["caption"]
    _shot(page, "quickstart-chart.png", first.locator(".jp-Cell-outputWrapper"))

    # the sidebar: demo once, under Loaded, its memory figure explained; why the last reply stopped
    page.locator(".ryz-loaded .ryz-model-row[data-name='demo']").wait_for()
    assert page.locator(".ryz-available .ryz-model-row[data-name='demo']").count() == 0
    details = side.locator(".ryz-loaded .ryz-model-row[data-name='demo'] .ryz-model-details").inner_text()
    assert re.search(r"MiB = [\d.]+ MiB weights \+ [\d.]+ MiB KV cache", details), details
    chat = _cell_with(page, "And what can you do?")
    footer = chat.locator(".jp-OutputArea-output").last.inner_text()
    reason = footer.split("stopped: ", 1)[1].strip()
    finish = side.locator(".ryz-last .ryz-finish .ryz-stat-value")
    finish.wait_for()
    assert finish.inner_text() == reason, (finish.inner_text(), footer)
    _shot(page, "quickstart-sidebar-after.png")
    assert not [e for e in page.errors if "ryz" in e.lower()], page.errors


def test_a_model_loaded_by_a_cell_is_listed_once(lab, page):
    base, token = lab["base"], lab["token"]
    page.goto(f"{base}/lab/tree/implicit.ipynb?token={token}&reset")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").wait_for()
    side = _open_sidebar(page)
    page.locator('#ryzjupyter-sidebar[data-state="ready"]').wait_for(timeout=60000)
    page.locator(".ryz-available .ryz-model-row[data-name='demo']").wait_for()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    out = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea-output")
    out.filter(has_text="stopped: ").first.wait_for(timeout=60000)
    page.locator(".ryz-loaded .ryz-model-row[data-name='demo'].ryz-mod-current").wait_for(timeout=10000)
    page.wait_for_timeout(500)                                    # the list refresh after the pushes
    assert page.locator(".ryz-available .ryz-model-row[data-name='demo']").count() == 0
    assert side.locator(".ryz-loaded h3").inner_text().lower() == "loaded (1)"
    # the cell's load message gives the same memory figure as the sidebar, and says what it is
    text = out.first.inner_text()
    m = re.search(r"loaded demo in [\d.]+ s: ([\d.]+ MiB) \(([\d.]+ MiB) weights \+ ([\d.]+ MiB) KV cache reserve\)", text)
    assert m, text
    details = side.locator(".ryz-loaded .ryz-model-row[data-name='demo'] .ryz-model-details").inner_text()
    assert f"{m.group(1)} = {m.group(2)} weights + {m.group(3)} KV cache" in details, details
    # the cell decoded speculatively: the last generation shows the acceptance and where the time went
    spec = side.locator(".ryz-last .ryz-speculative .ryz-stat-value")
    spec.wait_for(timeout=10000)
    assert re.fullmatch(r"lookup: \d+/\d+ drafts accepted \(\d+%\), \d\.\d\d tokens/pass", spec.inner_text())
    assert "draft / verify / sampling" in side.locator(".ryz-last").inner_text()
    _shot(page, "sidebar-loaded-by-a-cell.png")
