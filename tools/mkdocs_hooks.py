"""MkDocs hook: the `%config RyzMagics.*` settings table, generated from the traitlets themselves.

A page that holds the line ``<!-- ryz: magics settings -->`` gets, in its place, one table row per
configurable trait of ``ryzjupyter.jupyter.magics.magics.RyzMagics``: name, type, default and the
trait's help text, so the reference cannot drift from the code.
"""
from __future__ import annotations

MARKER = "<!-- ryz: magics settings -->"


def settings_table() -> str:
    from ryzjupyter.jupyter.magics.magics import RyzMagics

    rows = ["| setting | type | default | what it does |", "|---|---|---|---|"]
    for name, trait in RyzMagics.class_traits(config=True).items():
        default = trait.default_value
        shown = "None" if default is None else repr(default)
        rows.append(f"| `{name}` | {type(trait).__name__} | `{shown}` | "
                    f"{trait.help.replace('|', '/').replace('%%', '%%')} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, settings_table())
    return markdown
