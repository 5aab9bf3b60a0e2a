"""Build the training corpus: the King James Version of the Bible (public domain), from Debian.

Source: Debian packages ``bible-kjv`` + ``bible-kjv-text`` (``apt-get install bible-kjv``); the ``bible``
program prints every verse as ``<Book><chapter>:<verse> <text>`` with ``bible -f gen1:1-rev22:21``.

Output (plain UTF-8 text, one verse per line without its reference, chapters separated by one empty line):
  kjv-train.txt  all chapters except the held-out ones (~4.1 MB)
  kjv-valid.txt  held-out chapters: chapter index i (0-based, canonical order, 1189 chapters) with i % 40 == 20
                 (30 chapters spread over the whole book, ~110 KB)

    python -m ryzjupyter.train.corpus --out-dir /tmp/kjv

Texts for the in-context copy mix (``train.py --copy-frac``; see copymix.py), with ``--sources pydoc,jargon,devil``:
each source is read from its Debian package's file (SOURCES: package, path, licence), cut into paragraphs (blank-line
separated, wrapped lines joined, paragraphs of fewer than 8 words dropped: menus, headings, tables of contents) and
grouped into documents of up to ~3000 characters; document i goes to the held-out part when i % 40 == 20, like the
chapters. Written in the chapters' format (one paragraph a line, documents separated by an empty line):
  copy-<source>-train.txt  the documents the copy mix may draw passages from
  copy-<source>-valid.txt  the held-out documents (never drawn)
  copy-valid.txt           all held-out documents of all sources, for ``python -m ryzjupyter.bench copy --file``
                           (copying measured on text the model never saw, outside the King James Version)

    apt-get install bible-kjv python3.11-doc jargon-text dict-devil
    python -m ryzjupyter.train.corpus --out-dir /tmp/kjv --sources pydoc,jargon,devil
"""
from __future__ import annotations

import argparse
import gzip
import os
import re
import subprocess

VERSE_RE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")
HOLDOUT_EVERY = 40
HOLDOUT_OFFSET = 20


def read_bible(raw_text: str | None = None) -> list[tuple[str, int, list[str]]]:
    """Return [(book, chapter, [verse, ...]), ...] in canonical order."""
    if raw_text is None:
        raw_text = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], check=True,
                                  capture_output=True, text=True).stdout
    chapters: list[tuple[str, int, list[str]]] = []
    for line in raw_text.splitlines():
        if not line.strip():
            continue
        m = VERSE_RE.match(line)
        if not m:
            raise ValueError(f"unexpected line from `bible`: {line!r}")
        book, ch, text = m.group(1), int(m.group(2)), m.group(4).strip()
        if not chapters or chapters[-1][0] != book or chapters[-1][1] != ch:
            chapters.append((book, ch, []))
        chapters[-1][2].append(text)
    return chapters


def split_chapters(chapters):
    train, valid = [], []
    for i, c in enumerate(chapters):
        (valid if i % HOLDOUT_EVERY == HOLDOUT_OFFSET else train).append(c)
    return train, valid


def chapters_to_text(chapters) -> str:
    return "\n".join("\n".join(verses) + "\n" for _, _, verses in chapters)


def text_to_chapters(text: str) -> list[list[str]]:
    """Inverse of chapters_to_text (verses only)."""
    return [[v for v in block.split("\n") if v] for block in text.split("\n\n") if block.strip()]


# The openly licensed texts the copy mix can draw from, each from a Debian package (apt-get install PACKAGE).
SOURCES = {
    "pydoc": {"package": "python3.11-doc", "path": "/usr/share/info/python3.11.info.gz",
              "title": "The Python 3.11 documentation (Info format)",
              "licence": "PSF License Agreement (the Python documentation is distributed under the Python "
                         "licence; Debian's /usr/share/doc/python3.11-doc/copyright)"},
    "jargon": {"package": "jargon-text", "path": "/usr/share/doc/jargon-text/jargon.txt.gz",
               "title": "The Jargon File 4.4.7 (Eric S. Raymond et al.)",
               "licence": "public domain (\"This document (the Jargon File) is in the public domain, to be freely "
                          "used, shared, and modified\"; Debian's /usr/share/doc/jargon-text/copyright)"},
    "devil": {"package": "dict-devil", "path": "/usr/share/dictd/devil.dict.dz",
              "title": "The Devil's Dictionary, Ambrose Bierce (1911)",
              "licence": "public domain (\"A Public Domain Text, Copyright Expired\"; Debian's "
                         "/usr/share/doc/dict-devil/copyright)"},
}
MIN_WORDS = 8
DOC_CHARS = 3000
_NOTE_RE = re.compile(r"\*[Nn]ote\s+([^:]*?):\s*[0-9a-fA-F]+\.?")
# Info lines that are not running text: menu entries (a "* " at column 0; the text's own bullets are indented),
# footnote URLs, node headers, the index's wrapped "(line N)"; the tag table at the end is cut off
_INFO_DROP_RE = re.compile(r"^(\* .*|\s*\(\d+\) \S+://\S*|File: .*Node: .*|\s*\(line +\d+\))\s*$")


def read_source_text(name: str, path: str | None = None) -> str:
    path = path or SOURCES[name]["path"]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: apt-get install {SOURCES[name]['package']}")
    opener = gzip.open if path.endswith((".gz", ".dz")) else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def clean_source(name: str, raw: str) -> str:
    """Remove a source's markup so that what is left is running text."""
    if name == "pydoc":   # Info: node separators, node headers, menus, footnote URLs, cross-references
        raw = raw.split("\x1f\nTag Table:")[0]
        raw = raw.replace("\x1f", "\n")
        raw = _NOTE_RE.sub(r"\1", raw)
        raw = "\n".join(line for line in raw.split("\n") if not _INFO_DROP_RE.match(line))
    return raw


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, wrapped lines joined with one space, those of fewer than MIN_WORDS words
    dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        p = " ".join(w for w in block.split())
        if len(p.split(" ")) >= MIN_WORDS:
            out.append(p)
    return out


def documents(paras: list[str], max_chars: int = DOC_CHARS) -> list[list[str]]:
    """Consecutive paragraphs grouped into documents of up to max_chars characters (a longer paragraph is a
    document on its own)."""
    docs: list[list[str]] = []
    size = 0
    for p in paras:
        if not docs or size + len(p) > max_chars:
            docs.append([])
            size = 0
        docs[-1].append(p)
        size += len(p) + 1
    return docs


def source_documents(name: str, path: str | None = None) -> list[list[str]]:
    return documents(paragraphs(clean_source(name, read_source_text(name, path))))


def split_documents(docs):
    """The chapters' rule: document i is held out when i % HOLDOUT_EVERY == HOLDOUT_OFFSET."""
    train, valid = [], []
    for i, d in enumerate(docs):
        (valid if i % HOLDOUT_EVERY == HOLDOUT_OFFSET else train).append(d)
    return train, valid


def documents_to_text(docs) -> str:
    """The chapters' format: one paragraph a line, documents separated by an empty line (text_to_chapters reads
    it back)."""
    return "\n".join("\n".join(d) + "\n" for d in docs)


def write_sources(out_dir: str, names: list[str]) -> None:
    all_valid = []
    for name in names:
        if name not in SOURCES:
            raise SystemExit(f"unknown source {name!r}: choose from {', '.join(SOURCES)}")
        docs = source_documents(name)
        train, valid = split_documents(docs)
        all_valid.extend(valid)
        for part, ds in (("train", train), ("valid", valid)):
            p = os.path.join(out_dir, f"copy-{name}-{part}.txt")
            with open(p, "w", encoding="utf-8") as f:
                f.write(documents_to_text(ds))
            print(f"{p}: {len(ds)} documents, {os.path.getsize(p)} bytes ({SOURCES[name]['title']}; "
                  f"{SOURCES[name]['licence'].split(' (')[0]})")
    p = os.path.join(out_dir, "copy-valid.txt")
    with open(p, "w", encoding="utf-8") as f:
        f.write(documents_to_text(all_valid))
    print(f"{p}: {len(all_valid)} held-out documents of {', '.join(names)}, {os.path.getsize(p)} bytes")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--raw", help="use this file (output of `bible -f gen1:1-rev22:21`) instead of running bible")
    ap.add_argument("--sources", default="",
                    help=f"also write the copy mix's texts, comma-separated: {', '.join(SOURCES)} (see SOURCES)")
    a = ap.parse_args(argv)
    raw = open(a.raw, encoding="utf-8").read() if a.raw else None
    chapters = read_bible(raw)
    if len(chapters) != 1189:
        raise SystemExit(f"expected 1189 chapters, got {len(chapters)}")
    train, valid = split_chapters(chapters)
    os.makedirs(a.out_dir, exist_ok=True)
    for name, part in (("kjv-train.txt", train), ("kjv-valid.txt", valid)):
        p = os.path.join(a.out_dir, name)
        with open(p, "w", encoding="utf-8") as f:
            f.write(chapters_to_text(part))
        print(f"{p}: {len(part)} chapters, {os.path.getsize(p)} bytes")
    if a.sources:
        write_sources(a.out_dir, [n for n in a.sources.split(",") if n])


if __name__ == "__main__":
    main()
