"""Install a built ryzjupyter wheel into a fresh virtual environment on a PATH with no compiler and
no Node.js, and check that it works there: the import comes from that environment, every kernel
level this CPU runs gives the same greedy text, selfcheck runs, a real kernel answers a `%%ryz`
cell, and the JupyterLab sidebar is installed, enabled, and connects in a real browser.

    python -m build && auditwheel repair -w dist/wheelhouse dist/*.whl    # the wheel (README)
    python tools/check_wheel.py dist/wheelhouse/ryzjupyter-*manylinux*.whl

Run it with a Python that has playwright (the test extra): the browser (Debian's chromium) is
driven from here, against a `jupyter lab` started from the fresh environment. .ci/run runs this.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

NO_BUILD_TOOLS = ("gcc", "cc", "c++", "g++", "clang", "ld", "make", "node", "npm", "nodejs")
KEEP_TOOLS = ("sh", "bash", "env", "uname", "cat", "ls", "rm", "mkdir", "cp", "mv", "readlink", "dirname")
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"


def run(cmd, env, cwd, timeout=600, check=True):
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def bare_path(tmp: Path, venv: Path) -> str:
    """A PATH with the fresh environment and a few shell tools, and no compiler, linker or node."""
    tools = tmp / "bin"
    tools.mkdir()
    for name in KEEP_TOOLS:
        found = shutil.which(name)
        if found:
            (tools / name).symlink_to(found)
    return f"{venv / 'bin'}{os.pathsep}{tools}"


def check(wheel: Path, python: str, keep: Path | None):
    tmp = Path(tempfile.mkdtemp(prefix="ryz-wheel-"))
    venv = keep or tmp / "venv"
    t0 = time.monotonic()
    subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "RYZ_"))}
    env.update(PATH=bare_path(tmp, venv), HOME=str(tmp), HF_HUB_OFFLINE="1", CC="false", CXX="false",
               PIP_DISABLE_PIP_VERSION_CHECK="1", JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
               JUPYTER_DATA_DIR=str(tmp / "jupyter-data"), JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"))
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    vpy = str(venv / "bin" / "python")
    missing = run([vpy, "-c", "import shutil, sys; print([t for t in sys.argv[1:] if shutil.which(t)])",
                   *NO_BUILD_TOOLS], env, tmp).stdout.strip()
    assert missing == "[]", f"build tools on the check's PATH: {missing}"
    # binary wheels only: nothing, ryzjupyter or a dependency, may be built from source here
    # (--no-compile: no .pyc writing, the slow part of installing JupyterLab's dependencies)
    r = run([vpy, "-m", "pip", "install", "--no-compile", "--only-binary", ":all:", str(wheel)], env, tmp,
            timeout=1200)
    assert "Building wheel" not in r.stdout and "setup.py" not in r.stdout, r.stdout[-2000:]
    print(f"installed {wheel.name} into a fresh venv in {time.monotonic() - t0:.0f} s (no compiler, no node)")

    where = run([vpy, "-c", "import ryzjupyter, json; print(json.dumps([ryzjupyter.__file__, "
                 "ryzjupyter.native_info()]))"], env, tmp).stdout
    path, info = json.loads(where)
    assert Path(path).resolve().is_relative_to(venv.resolve()), f"imported from {path}, not the fresh venv"
    print(f"import from the venv; ISA {info['isa']} (supported: {', '.join(info['supported_isas'])})")

    # every kernel level this CPU runs: the bundled model's greedy text, identical across levels
    texts = {}
    gen = ("import ryzjupyter, sys; m = ryzjupyter.load(); "
           "r = m.generate('And God said', max_new_tokens=16, temperature=0); "
           "assert ryzjupyter.native_info()['isa'] == sys.argv[1]; print(r.text)")
    for level in info["supported_isas"]:
        texts[level] = run([vpy, "-c", gen, level], dict(env, RYZ_ISA=level), tmp).stdout
    assert len(set(texts.values())) == 1 and texts[info["isa"]].strip(), texts
    print(f"greedy text identical on {', '.join(texts)}: {texts[info['isa']].strip()!r}")
    run([vpy, "-m", "ryzjupyter.selfcheck"], env, tmp)

    # the sidebar: installed from the wheel's data files, enabled
    r = run([str(venv / "bin" / "jupyter"), "labextension", "list"], env, tmp)
    listing = r.stdout + r.stderr
    line = next((ln for ln in listing.splitlines() if "ryzjupyter" in ln), "")
    assert "enabled" in line and "OK" in line and str(venv) in listing, listing
    print("jupyter labextension list:", " ".join(line.split()))

    # a real kernel (the venv's python3 kernelspec): %%ryz answers, the footer says why it stopped
    code = ("from jupyter_client.manager import start_new_kernel\n"
            "km, kc = start_new_kernel(kernel_name='python3')\n"
            "out = []\n"
            "def keep(msg):\n"
            "    c = msg['content']\n"
            "    if msg['msg_type'] in ('display_data', 'execute_result'): out.append(c['data'].get('text/plain', ''))\n"
            "    if msg['msg_type'] == 'stream': out.append(c['text'])\n"
            "    if msg['msg_type'] == 'error': out.append('ERROR ' + c['ename'] + ': ' + c['evalue'])\n"
            "for src in ['%load_ext ryzjupyter', '%%ryz -n 12 -t 0\\nAnd God said']:\n"
            "    r = kc.execute_interactive(src, timeout=120, output_hook=keep)\n"
            "    assert r['content']['status'] == 'ok', out\n"
            "kc.stop_channels(); km.shutdown_kernel(now=True)\n"
            "print('\\n'.join(out))\n")
    out = run([vpy, "-c", code], env, tmp, timeout=300).stdout
    assert "12 tokens" in out and "stopped: " in out and "ERROR" not in out, out
    print("%%ryz in a kernel:", out.strip().splitlines()[-1])
    browser_check(venv, env, tmp)
    print(f"wheel check passed in {time.monotonic() - t0:.0f} s")
    if keep is None:
        shutil.rmtree(tmp, ignore_errors=True)


def browser_check(venv: Path, env: dict, tmp: Path):
    """jupyter lab from the fresh venv; chromium opens a notebook, the sidebar connects and loads
    the bundled demo model into the notebook's kernel."""
    from playwright.sync_api import sync_playwright
    root = tmp / "lab"
    root.mkdir()
    (root / "nb.ipynb").write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5, "cells": [],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(12)
    log = open(tmp / "lab.log", "w")
    lab = subprocess.Popen(
        [str(venv / "bin" / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--ServerApp.allow_root=True", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if lab.poll() is not None:
                    break
                time.sleep(0.5)
        else:
            raise SystemExit("jupyter lab did not start:\n" + (tmp / "lab.log").read_text()[-3000:])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 800})
                page.goto(f"{base}/lab/tree/nb.ipynb?token={token}&reset")
                tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="ryzjupyter-sidebar"]')
                tab.wait_for(timeout=60000)
                tab.click()
                page.locator('#ryzjupyter-sidebar[data-state="ready"]').wait_for(timeout=90000)
                page.locator("#ryzjupyter-sidebar .ryz-available .ryz-model-row[data-name='demo'] .ryz-load").click()
                page.locator("#ryzjupyter-sidebar .ryz-loaded .ryz-model-row[data-name='demo'].ryz-mod-current").wait_for(
                    timeout=60000)
                shots = Path(os.environ.get("RYZ_ARTIFACTS") or Path(__file__).resolve().parents[1] / "build" /
                             "test-artifacts")
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / "wheel-sidebar.png"))
            finally:
                browser.close()
        print("sidebar from the wheel: connected in chromium, loaded the bundled demo model")
    finally:
        lab.terminate()
        try:
            lab.wait(15)
        except subprocess.TimeoutExpired:
            lab.kill()
        log.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--python", default=shutil.which("python3") or sys.executable,
                    help="the interpreter the fresh venv is made from (default: python3 on PATH)")
    ap.add_argument("--keep", type=Path, help="make the venv here and keep it")
    a = ap.parse_args(argv)
    if not a.wheel.is_file():
        raise SystemExit(f"no wheel at {a.wheel}")
    check(a.wheel.resolve(), a.python, a.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
