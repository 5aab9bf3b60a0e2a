"""Build the training corpus: the King James Version of the Bible (public domain), from Debian.

Source: Debian packages ``bible-kjv`` + ``bible-kjv-text`` (``apt-get install bible-kjv``); the ``bible``
program prints every verse as ``<Book><chapter>:<verse> <text>`` with ``bible -f gen1:1-rev22:21``.

Output (plain UTF-8 text, one verse per line without its reference, chapters separated by one empty line):
  kjv-train.txt  all chapters except the held-out ones (~4.1 MB)
  kjv-valid.txt  held-out chapters: chapter index i (0-based, canonical order, 1189 chapters) with i % 40 == 20
                 (30 chapters spread over the whole book, ~110 KB)

    python -m ryzjupyter.train.corpus --out-dir /tmp/kjv
"""
from __future__ import annotations

import argparse
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--raw", help="use this file (output of `bible -f gen1:1-rev22:21`) instead of running bible")
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


if __name__ == "__main__":
    main()
