"""The sidebar shows the OpenAI server of %ryz serve, in a real browser (chromium + Playwright against
a real `jupyter lab`, the fixtures of test_browser.py): its URL while it runs, its traffic as
requests arrive from outside the notebook, and nothing once it is stopped."""
import json
import re

import pytest

from .test_browser import _notebook, _open_sidebar, _shot, lab, page  # noqa: F401 - the fixtures

openai = pytest.importorskip("openai")


def test_sidebar_shows_the_server(lab, page):  # noqa: F811
    (lab["root"] / "serve.ipynb").write_text(json.dumps(_notebook([
        "%load_ext ryzjupyter\n%ryz serve --port 0", "%ryz serve stop"])))
    page.goto(f"{lab['base']}/lab/tree/serve.ipynb?token={lab['token']}&reset")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").wait_for()
    side = _open_sidebar(page)
    page.locator('#ryzjupyter-sidebar[data-state="ready"]').wait_for(timeout=60000)
    assert side.locator(".ryz-server").count() == 0                 # no server yet

    first = page.locator(".jp-Notebook .jp-CodeCell").first
    first.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    out = first.locator(".jp-OutputArea-output").filter(has_text="API key")
    out.wait_for(timeout=60000)
    text = out.inner_text()
    url = re.search(r"(http://127\.0\.0\.1:\d+/v1)", text).group(1)
    key = re.search(r"API key: (\S+)", text).group(1)

    server = side.locator(".ryz-server")
    server.wait_for(timeout=30000)
    assert url in server.locator(".ryz-server-url").inner_text()
    assert "demo" in server.inner_text() and "required" in server.inner_text()

    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
    for p in ("And God said", "The LORD is my", "Blessed are the"):
        client.completions.create(model="demo", prompt=p, max_tokens=12, temperature=0)
    server.locator(".ryz-server-requests").filter(has_text=re.compile(r"^requests\s*3 \(0 now, 0 errors\)")) \
        .wait_for(timeout=30000)
    assert re.search(r"36 generated", server.inner_text())
    assert re.search(r"p50 \d+ ms", server.inner_text())
    _shot(page, "sidebar-server.png", side)

    second = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
    second.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    second.locator(".jp-OutputArea-output").filter(has_text="stopped the server").wait_for(timeout=30000)
    server.wait_for(state="detached", timeout=30000)
    assert not [e for e in page.errors if "ryz" in e.lower()], page.errors
