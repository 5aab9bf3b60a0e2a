"""The tokenizer's files as Tokenizer.from_pretrained reads them: the first byte picks the file
(tokenizer_config.json, generation_config.json, chat_template.json, chat_template.jinja,
tokenizer.json), the rest is its text, in a copy of the tiny fixture's tokenizer folder. A
tokenizer that loads must then encode, decode and render a short chat. Allowed: the results, a
CheckpointError for the files, and the documented ValueError of a chat template that rejects the
messages (or of a tokenizer that has none)."""

import os
import tempfile
from pathlib import Path

from ryzjupyter.engine.checkpoint import CheckpointError
from ryzjupyter.engine.tokenizer import Tokenizer

from ..common import Finding, expect

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "bitnet" / "packed"
FILES = ("tokenizer_config.json", "generation_config.json", "chat_template.json", "chat_template.jinja",
         "tokenizer.json")
_DIR = Path(tempfile.mkdtemp(prefix="ryz-fuzz-tok-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
for _f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
    (_DIR / _f).symlink_to(FIXTURE / _f)
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "naïve 🙂 {{ x }}"}]


def _use(tok):
    ids = tok.encode("Hello naïve 🙂 world")
    text = tok.decode(ids)
    if not isinstance(text, str):
        raise Finding(f"decode returned {type(text).__name__}")
    d = tok.decoder()
    "".join(d.push(i) for i in ids) + d.flush()
    if tok.chat_template is not None:
        expect(lambda: tok.apply_chat_template(CHAT), ValueError)
    for i in tok.stop_token_ids:
        if not isinstance(i, int):
            raise Finding(f"stop id {i!r} is not an int")


def one_input(data: bytes):
    if not data:
        return
    name = FILES[data[0] % len(FILES)]
    target = _DIR / name
    target.unlink(missing_ok=True)
    try:
        target.write_bytes(data[1:])
        tok = expect(lambda: Tokenizer.from_pretrained(_DIR), CheckpointError)
        if tok is not None:
            expect(lambda: _use(tok), CheckpointError)
    finally:
        target.unlink(missing_ok=True)
        if (FIXTURE / name).is_file():
            target.symlink_to(FIXTURE / name)
