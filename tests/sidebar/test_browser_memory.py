"""The sidebar's Memory section in a real browser (chromium + Playwright against a real `jupyter lab`,
the fixtures of test_browser.py): before the magics are loaded, a bank that is not open yet, the
units a cell adds (pushed to the sidebar), the namespace and count, and the search box ranking the
units by similarity to what is typed, on the real embedder."""
import json

import pytest

from .test_browser import _notebook, _open_sidebar, _shot, lab, page  # noqa: F401 - the fixtures

pytest.importorskip("qdrant_client", reason="qdrant-client is in the memory extra (ci pulls it)")

TEXTS = ["The secret harbour of Port Lumen opens only at the third bell after midnight.",
         "The csv module reads rows of comma separated values.",
         "Knead the dough for ten minutes, let it rise, then bake it at 220 degrees."]


def _run_cell(page, n):
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(n)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    return cell


def test_sidebar_shows_and_searches_the_bank(lab, page):  # noqa: F811
    bank_dir = lab["root"].parent / "bank"
    (lab["root"] / "memory.ipynb").write_text(json.dumps(_notebook([
        f"%load_ext ryzjupyter\n%config RyzMagics.memory_path = {str(bank_dir)!r}\n"
        "%config RyzMagics.memory_namespace = 'harbour-notes'\nprint('LOADED')",
        "b = get_ipython()._ryz_magics.bank()\n"
        + "".join(f"b.add({t!r}, source='file', segment_text=False)\n" for t in TEXTS)
        + "print('ADDED', len(b))",
    ])))
    page.goto(f"{lab['base']}/lab/tree/memory.ipynb?token={lab['token']}&reset")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").wait_for()
    side = _open_sidebar(page)
    page.locator('#ryzjupyter-sidebar[data-state="ready"]').wait_for(timeout=60000)
    bank = side.locator(".ryz-bank")
    info = bank.locator(".ryz-bank-info")
    try:
        info.filter(has_text="magics are not loaded").wait_for(timeout=30000)
    finally:
        _shot(page, "sidebar-memory-before.png", side)
    assert bank.locator("h3").inner_text().lower() == "memory"

    # %load_ext: the section learns of it and shows the bank, not open yet (nothing opened by looking)
    _run_cell(page, 0).locator(".jp-OutputArea-output").filter(has_text="LOADED").wait_for(timeout=60000)
    info.filter(has_text="not open in this kernel").wait_for(timeout=30000)
    assert "harbour-notes" in info.inner_text()
    assert bank.locator(".ryz-bank-open").is_visible() and not bank.locator(".ryz-bank-search").is_visible()
    assert not bank_dir.exists()

    # a cell opens the bank and adds units: they appear, newest first, with the count
    _run_cell(page, 1).locator(".jp-OutputArea-output").filter(has_text="ADDED 3").wait_for(timeout=120000)
    page.locator('#ryzjupyter-sidebar .ryz-bank[data-open="true"]').wait_for(timeout=30000)
    info.filter(has_text="3 units").wait_for(timeout=30000)
    assert "namespace harbour-notes" in info.inner_text() and str(bank_dir) in info.inner_text()
    units = bank.locator(".ryz-bank-units .ryz-unit")
    assert units.count() == 3
    assert [units.nth(i).locator(".ryz-unit-text").inner_text() for i in range(3)] == TEXTS[::-1]
    assert "file" in units.first.locator(".ryz-unit-meta").inner_text()

    # the search box: the harbour unit first, with its cosine
    box = bank.locator(".ryz-bank-search")
    box.fill("When does the harbour open?")
    box.press("Enter")
    hits = bank.locator(".ryz-bank-hits .ryz-unit")
    hits.first.wait_for(timeout=60000)
    assert hits.count() == 3
    assert hits.first.locator(".ryz-unit-text").inner_text() == TEXTS[0]
    scores = [float(hits.nth(i).locator(".ryz-unit-score").inner_text()) for i in range(3)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.3, scores
    assert box.input_value() == "When does the harbour open?"       # the box keeps what was typed
    bank.scroll_into_view_if_needed()
    _shot(page, "sidebar-memory.png", bank)
    assert not [e for e in page.errors if "ryz" in e.lower()], page.errors
