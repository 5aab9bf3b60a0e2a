"""The speed figures in the docs are the committed records' (docs/data/*.json, written by the
benches' --json), rendered by `python -m ryzjupyter.bench report`:

- every report block in a page equals a fresh rendering of the records it names;
- every record in docs/data/ is shown by some block, and every block's records exist;
- a speed figure (GB/s, GOPS, tok/s, a ratio like 2.39x) written in a page's prose appears in one
  of that page's report blocks (the README's in docs/performance.md's), or inside a block marked
  as a measurement without a committed record, which must name its machine, date, commit and
  command.
"""
import re
from pathlib import Path

import pytest

from ryzjupyter.bench import report

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
FIGURE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(GB/s|GOPS|tok/s|tokens/s)|(?<![\w.])(\d+\.\d+)x\b")
UNRECORDED = re.compile(r"<!-- unrecorded: (?P<what>[^>]*) -->\n(?P<body>.*?)<!-- end unrecorded -->", re.S)


def _figures(text):
    return {m.group(1) or m.group(3) for m in FIGURE.finditer(text)}


def _numbers(text):
    return set(re.findall(r"\d+(?:\.\d+)?", text))


def _strip_blocks(text):
    """The page without its report blocks and unrecorded blocks (what is left is prose)."""
    out = UNRECORDED.sub("", text)
    for files, body in list(report.blocks(out)):
        out = out.replace(body, "")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_report_blocks_are_their_records(page):
    text = page.read_text()
    for files, body in report.blocks(text):
        paths = [ROOT / f for f in files]
        for p in paths:
            assert p.is_file(), f"{page.name}: a report block names {p}, which is not in the repository"
        assert body == report.render(paths), (
            f"{page.name}: the block for {' '.join(files)} differs from "
            f"`python -m ryzjupyter.bench report {' '.join(files)}`; paste that command's output")


def test_every_record_is_shown():
    shown = {f for page in PAGES for files, _ in report.blocks(page.read_text()) for f in files}
    records = {str(p.relative_to(ROOT)) for p in (DOCS / "data").glob("*.json")}
    assert records, "docs/data/ holds the records the docs' figures come from"
    assert records <= shown, f"records no page shows: {sorted(records - shown)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_prose_figures_come_from_the_records(page):
    text = page.read_text()
    recorded = set()
    for source in {page, DOCS / "performance.md"}:
        for files, body in report.blocks(source.read_text()):
            recorded |= _numbers(body)
    stray = _figures(_strip_blocks(text)) - recorded
    assert not stray, (f"{page.name}: figures in the prose that no report block of the page shows: "
                       f"{sorted(stray)}")
    for m in UNRECORDED.finditer(text):
        for needed in ("machine", "date", "commit", "command"):
            assert needed in m["what"], f"{page.name}: an unrecorded block must name its {needed}"


def test_the_check_catches_a_changed_figure(tmp_path):
    # a figure edited in a block, or a prose figure that no block shows, is caught
    page = DOCS / "performance.md"
    text = page.read_text()
    files, body = next(report.blocks(text))
    fig = re.search(r"\*\*(\d+\.\d)\*\*", body).group(1)
    assert body.replace(fig, fig + "1", 1) != report.render([ROOT / f for f in files])
    assert "123.4" in _figures(_strip_blocks(text + "\nDecode ran at 123.4 tok/s.\n")) - _numbers(body)


def test_report_update_rewrites_the_blocks(tmp_path):
    # `bench report --update PAGE` puts each block's fresh rendering between its markers
    rec = ROOT / "docs" / "data" / "ppl-demo-int4.json"
    page = tmp_path / "page.md"
    page.write_text(f"intro\n\n<!-- bench report: {rec.relative_to(ROOT)} -->\n\nstale 9.99 tok/s\n"
                    f"<!-- end bench report -->\n\nafter\n")
    assert report.update(page, ROOT) == 1
    text = page.read_text()
    (files, body), = list(report.blocks(text))
    assert body == report.render([rec]) and "9.99" not in text
    assert text.startswith("intro\n\n") and text.endswith("<!-- end bench report -->\n\nafter\n")
