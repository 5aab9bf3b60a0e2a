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


@pytest.mark.slow
def test_sidebar_lists_the_newest_units_of_a_large_bank(lab, page):  # noqa: F811
    """A bank of 20 000 units (kept in memory) and then one new note: the Memory section shows the
    count and the 20 newest units, the note first, then the newest of the 20 000 in order (the
    request reads those units only: bank.newest)."""
    (lab["root"] / "large.ipynb").write_text(json.dumps(_notebook([
        "%load_ext ryzjupyter\n%config RyzMagics.memory_path = ':memory:'\n"
        "%config RyzMagics.memory_namespace = 'large'\n"
        "from ryzjupyter.bench.memory import fill_units\n"
        "b = get_ipython()._ryz_magics.bank()\nORDER = fill_units(b, 20000)\n"
        f"b.add({TEXTS[0]!r}, source='cell', segment_text=False)\n"
        "print('FILLED', len(b), '|'.join(h.text for h in b.list()[1:20]))",
    ])))
    page.goto(f"{lab['base']}/lab/tree/large.ipynb?token={lab['token']}&reset")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").wait_for()
    side = _open_sidebar(page)
    page.locator('#ryzjupyter-sidebar[data-state="ready"]').wait_for(timeout=60000)
    out = _run_cell(page, 0).locator(".jp-OutputArea-output").filter(has_text="FILLED 20001")
    out.wait_for(timeout=240000)
    newest = out.inner_text().split("FILLED 20001 ", 1)[1].strip().split("|")   # the full listing's, in the kernel
    bank = side.locator(".ryz-bank")
    bank.locator(".ryz-bank-info").filter(has_text="20001 units").wait_for(timeout=60000)
    units = bank.locator(".ryz-bank-units .ryz-unit")
    units.nth(19).wait_for(timeout=30000)
    texts = [units.nth(i).locator(".ryz-unit-text").inner_text() for i in range(units.count())]
    assert texts == [TEXTS[0]] + newest and len(texts) == 20
    # the request itself, from the browser, as the section sends it
    ms = page.evaluate("""async () => {
        const w = [...window.jupyterapp.shell.widgets('left')].find(w => w.id === 'ryzjupyter-sidebar');
        const t0 = performance.now();
        const r = await w.link.request('memory', {action: 'status', limit: 20});
        return [performance.now() - t0, r.ok, r.units.length, r.memory.rsus]; }""")
    assert ms[1:] == [True, 20, 20001], ms
    print(f"the Memory request at 20001 units took {ms[0]:.0f} ms in the browser")
    bank.scroll_into_view_if_needed()
    _shot(page, "sidebar-memory-20k.png", side)
    assert not [e for e in page.errors if "ryz" in e.lower()], page.errors
