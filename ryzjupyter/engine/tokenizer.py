"""Tokenizer: the `tokenizers` library plus the pieces transformers adds around it.

- encode / decode over tokenizer.json (BPE, byte-level, SentencePiece-style: whatever the file says);
- an incremental decoder for streaming that never emits half a UTF-8 character;
- chat templates: the checkpoint's Jinja template rendered in a sandbox exactly as transformers'
  `apply_chat_template` renders it (same environment, filters and globals, the special tokens passed
  as variables), then encoded without adding special tokens, so there is no double BOS;
- stop ids: eos (from tokenizer_config, config.json and generation_config.json) plus the template's
  end-of-turn token (e.g. <|eot_id|>).
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
import threading
from datetime import datetime
from pathlib import Path

from .checkpoint import CheckpointError

_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Tokens that end an assistant turn in common chat templates.
_END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                "<|end_of_text|>", "<|eom_id|>")


def _token_text(v):
    """tokenizer_config stores special tokens as a string or as an AddedToken dict."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _read_json(path):
    """A JSON object from `path` (config files are objects), or a CheckpointError saying which file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({e}); the file is damaged, download it "
                              "again") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object, not {type(value).__name__}; the file "
                              "is damaged, download it again")
    return value


# ----------------------------------------------------------------------------
# chat templates (the environment transformers builds in utils/chat_template_utils.py)
#
# A template comes with the checkpoint: outside input. It renders in jinja2's immutable sandbox (no
# attribute access to Python internals, no mutation of the messages), bounded: a render stops
# after CHAT_TEMPLATE_SECONDS, its output stops at CHAT_TEMPLATE_MAX_CHARS (plus twice the
# messages' own length), and no single operation may build a value that large (`'x' * 10**9`,
# `|center(10**9)`, `'%999999999d' % 1`, `10 ** 10**9` are refused before they run).

CHAT_TEMPLATE_SECONDS = 5.0
CHAT_TEMPLATE_MAX_CHARS = 1_000_000
_MAX_TEMPLATE_INT = 1_000_000            # the largest number a template may pass as an argument
_TEMPLATE_CACHE: dict[str, object] = {}


class _TemplateLimit(Exception):
    """A chat template went past a bound (time, output, a value too large)."""


def _check_template_int(v):
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _MAX_TEMPLATE_INT:
        raise _TemplateLimit(f"the number {v if abs(v) < 10**30 else 'with ' + str(len(str(v))) + ' digits'} "
                             f"is larger than chat templates may use ({_MAX_TEMPLATE_INT})")


_WIDE_FORMAT = re.compile(r"%[-+ #0]*\d{7,}|%[-+ #0]*\d*\.\d{7,}|\{[^{}]*\d{7,}[^{}]*\}")


def _check_template_format(text):
    if isinstance(text, str) and _WIDE_FORMAT.search(text):
        raise _TemplateLimit("a format width or precision of a million characters or more")


def _check_template_size(n):
    if n > CHAT_TEMPLATE_MAX_CHARS:
        raise _TemplateLimit(f"a value of {n} characters (at most {CHAT_TEMPLATE_MAX_CHARS})")


def _bounded_filter(f):
    """A jinja filter whose number arguments are bounded (|center(10**9) and the like)."""
    @functools.wraps(f)
    def bounded(*args, **kwargs):
        for v in (*args, *kwargs.values()):
            _check_template_int(v)
        return f(*args, **kwargs)
    return bounded


def compile_chat_template(source: str):
    if source in _TEMPLATE_CACHE:
        return _TEMPLATE_CACHE[source]
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for a, b in ((left, right), (right, left)):
                    if isinstance(a, (str, list, tuple)) and isinstance(b, int):
                        _check_template_size(len(a) * max(b, 0))
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                    if abs(left).bit_length() * right > 64 * 1024:
                        raise _TemplateLimit(f"{left} ** {right} is too large a number")
                elif isinstance(right, int):
                    _check_template_int(right)
            elif operator == "%":
                _check_template_format(left)
            elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
                _check_template_size(len(left) + len(right))
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's spelling
            for v in (*args, *kwargs.values()):
                _check_template_int(v)
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value):          # 'text'.format(...): the format string checked
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:
                _check_template_format(value.__self__)
            return wrapped

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; transformers overrides it with plain json.dumps
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # namespaces reject underscore attributes (no reaching CPython internals)
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set attribute {name!r}")

    class GenerationTag(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks; it renders its body
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    for name in list(env.filters):
        env.filters[name] = _bounded_filter(env.filters[name])
    format_filter = env.filters["format"]

    def bounded_format(value, *args, **kwargs):
        _check_template_format(value)
        return format_filter(value, *args, **kwargs)
    env.filters["format"] = bounded_format
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    try:
        tmpl = env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise CheckpointError(f"the chat template does not parse (line {e.lineno}: {e.message}); fix "
                              "chat_template in tokenizer_config.json") from e
    except (RecursionError, MemoryError, SyntaxError, ValueError, TypeError, jinja2.exceptions.TemplateError) as e:
        # the template nests too deeply, or compiles to Python that does not (jinja's own limits)
        raise CheckpointError(f"the chat template cannot be compiled ({type(e).__name__}: {str(e)[:200]}); "
                              "fix chat_template in tokenizer_config.json") from e
    _TEMPLATE_CACHE[source] = tmpl
    return tmpl


def render_chat_template(tmpl, **variables) -> str:
    """Render a compiled chat template within its bounds (time, output size). A template that
    raises, loops past CHAT_TEMPLATE_SECONDS or writes more than the output bound is a ValueError
    naming what happened."""
    import jinja2
    limit = CHAT_TEMPLATE_MAX_CHARS + 2 * len(json.dumps(variables.get("messages"), ensure_ascii=False, default=str))
    parts, size = [], 0
    with _Deadline(CHAT_TEMPLATE_SECONDS) as deadline:
        try:
            try:
                for piece in tmpl.generate(**variables):
                    size += len(piece)
                    if size > limit:
                        raise _TemplateLimit(f"more than {limit} characters of output")
                    parts.append(piece)
            finally:
                deadline.disarm()
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"the chat template rejected these messages: {e}") from e
        except _TemplateLimit as e:
            raise ValueError(f"the chat template went past its bounds ({e}); the template is broken or "
                             "hostile: fix chat_template in tokenizer_config.json, or pass your own with "
                             "Tokenizer(..., chat_template=...)") from None
        except _TemplateTimeout:
            raise ValueError(f"the chat template ran for more than {CHAT_TEMPLATE_SECONDS:g} s without "
                             "finishing; the template loops: fix chat_template in tokenizer_config.json") from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - any failure inside the template is the template's
            raise ValueError(f"the chat template failed on these messages ({type(e).__name__}: "
                             f"{str(e)[:300]}); fix chat_template in tokenizer_config.json") from e
    return "".join(parts)


class _TemplateTimeout(BaseException):
    """Raised inside a render that ran past its time (BaseException: template code cannot catch it)."""


class _Deadline:
    """Ends a render that runs too long: a timer thread raises _TemplateTimeout in the rendering
    thread (at its next Python instruction: jinja templates compile to Python, so every loop of a
    template reaches one). `disarm()` must run before the render's result is used."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.lock = threading.Lock()
        self.armed = True
        self.thread_id = threading.get_ident()

    def _fire(self):
        with self.lock:
            if self.armed:
                self.armed = False
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id),
                                                           ctypes.py_object(_TemplateTimeout))

    def disarm(self):
        with self.lock:
            self.armed = False
        self.timer.cancel()

    def __enter__(self):
        self.timer = threading.Timer(self.seconds, self._fire)
        self.timer.daemon = True
        try:
            self.timer.start()             # waits for the thread to start: a Ctrl-C can land here,
            return self                    # and __exit__ does not run when __enter__ raises
        except BaseException:
            self.disarm()
            raise

    def __exit__(self, *exc):
        self.disarm()
        return False


def _plain(value):
    """Only plain JSON data reaches the template (as transformers' _plain_template_data)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item):
        return _plain(value.item())
    return f"<{type(value).__name__}>"


# ----------------------------------------------------------------------------
# incremental decoding for streaming

class IncrementalDecoder:
    """Turns a stream of token ids into text pieces whose concatenation is the decoded text.

    A piece is released only when the decoded text grew and does not end in U+FFFD, i.e. a token
    that holds the first bytes of a multi-byte character waits for the rest. Decoding always
    restarts a few tokens back (prefix_offset) so that decoders which treat the first token
    specially (SentencePiece's leading space) see it in context."""

    def __init__(self, tokenizer, context_ids=(), skip_special_tokens=True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        ctx = list(context_ids)[-6:]
        self.ids = list(ctx)
        self.prefix_offset = 0
        self.read_offset = len(ctx)

    def _decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id) -> str:
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            piece = new_text[len(prefix_text):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return piece
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes to U+FFFD)."""
        if self.read_offset >= len(self.ids):
            return ""
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        return new_text[len(prefix_text):]


# ----------------------------------------------------------------------------
# the tokenizer

class Tokenizer:
    """A checkpoint's tokenizer: ``tokenizer.json`` (read by the ``tokenizers`` library) with
    the special tokens and the chat template of ``tokenizer_config.json``.

    Usually made by ``Tokenizer.from_pretrained(folder)`` or found as ``model.tokenizer``.

    Attributes:
        bos_token_id: the beginning-of-text token id, or None.
        eos_token_id: the end-of-text token id, or None.
        eos_token_ids: every end-of-sequence id the checkpoint states (its config files and the
            tokenizer), sorted.
        end_of_turn_ids: the special tokens the chat template writes after each message.
        stop_token_ids: ``eos_token_ids`` and ``end_of_turn_ids``: generation stops at these.
        chat_template: the Jinja2 chat template, or None.
        special_tokens: ``{"bos_token": ..., "eos_token": ..., ...}`` as text.
    """

    def __init__(self, tokenizer_json, tokenizer_config=None, *, model_config=None, generation_config=None,
                 chat_template=None):
        from tokenizers import Tokenizer as _HFTokenizer
        path = Path(tokenizer_json)
        if not path.is_file():
            raise CheckpointError(f"{str(path.parent)!r} has no tokenizer.json; ryzjupyter needs the fast "
                                  "tokenizer file (save one with transformers: "
                                  "AutoTokenizer.from_pretrained(...).save_pretrained(folder))")
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the Rust error text is informative
            raise CheckpointError(f"{str(path)!r} could not be read by the tokenizers library ({e}); "
                                  "the file is damaged or from a newer tokenizers version") from e
        self.path = path
        self.config = dict(tokenizer_config or {})
        self.special_tokens = {}
        for k in _NAMED_SPECIAL:
            t = _token_text(self.config.get(k))
            if t is not None:
                self.special_tokens[k] = t
        tmpl = chat_template if chat_template is not None else self.config.get("chat_template")
        if isinstance(tmpl, list):  # several named templates: use "default"
            named = {d.get("name"): d.get("template") for d in tmpl
                     if isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("template"), str)}
            tmpl = named.get("default") or next(iter(named.values()), None)
        self.chat_template = tmpl if isinstance(tmpl, str) and tmpl.strip() else None
        self.bos_token_id = self.token_to_id(self.special_tokens.get("bos_token"))
        self.eos_token_id = self.token_to_id(self.special_tokens.get("eos_token"))
        # eos ids from every place a checkpoint may state them
        eos = set()
        for src in (model_config or {}, generation_config or {}):
            v = src.get("eos_token_id")
            for x in (v if isinstance(v, list) else [v]):
                if isinstance(x, int):
                    eos.add(x)
        if self.eos_token_id is not None:
            eos.add(self.eos_token_id)
        self.eos_token_ids = sorted(eos)
        # the template's end-of-turn token (a special token the template writes after each message)
        eot = set()
        if self.chat_template:
            for t in _END_OF_TURN:
                tid = self.token_to_id(t)
                if tid is not None and t in self.chat_template:
                    eot.add(tid)
        self.end_of_turn_ids = sorted(eot)
        self.stop_token_ids = sorted(eos | eot)

    @classmethod
    def from_pretrained(cls, folder):
        """Load from a model folder (or hub id) holding tokenizer.json [+ tokenizer_config.json]."""
        from .checkpoint import resolve_model_path
        folder = resolve_model_path(folder)
        cfg = {}
        if (folder / "tokenizer_config.json").is_file():
            cfg = _read_json(folder / "tokenizer_config.json")
        model_cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
        gen_cfg = (_read_json(folder / "generation_config.json")
                   if (folder / "generation_config.json").is_file() else {})
        template = None
        if (folder / "chat_template.jinja").is_file():  # transformers >= 4.43 saves it separately
            try:
                template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise CheckpointError(f"{str(folder / 'chat_template.jinja')!r} is not UTF-8 text ({e}); the "
                                      "file is damaged, download it again") from e
        elif (folder / "chat_template.json").is_file():
            template = _read_json(folder / "chat_template.json").get("chat_template")
        return cls(folder / "tokenizer.json", cfg, model_config=model_cfg, generation_config=gen_cfg,
                   chat_template=template)

    # -- basic
    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token):
        """The id of a token's text (``"<|eot_id|>"``), None if it is not in the vocabulary."""
        return None if token is None else self._tok.token_to_id(token)

    def id_to_token(self, i):
        """The text of token ``i`` as the vocabulary spells it (byte-level symbols included)."""
        return self._tok.id_to_token(int(i))

    def encode(self, text: str, add_special_tokens=True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds what the tokenizer's post-processor
        adds (for BitNet-2B-4T a beginning-of-text token), as transformers does."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens=True) -> str:
        """The text of token ids (special tokens left out unless ``skip_special_tokens=False``)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decoder(self, context_ids=(), skip_special_tokens=True) -> IncrementalDecoder:
        """An incremental decoder for streaming: ``push(id)`` returns the new text once it is
        whole (a multi-byte character split over tokens waits for its last byte), ``flush()``
        the rest. ``context_ids`` (the prompt) decide how the first pieces are spaced."""
        return IncrementalDecoder(self, context_ids, skip_special_tokens)

    # -- chat
    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, **kwargs):
        """Render `messages` ([{"role": ..., "content": ...}, ...]) with the checkpoint's template,
        as transformers does. tokenize=True returns token ids (encoded without added special
        tokens, as transformers does), tokenize=False the text."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json has no "
                             "'chat_template'); use generate() with a plain prompt instead of chat")
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
            raise TypeError("messages must be a list of dicts like {'role': 'user', 'content': 'Hi'}")
        for i, m in enumerate(messages):
            if "role" not in m:
                raise ValueError(f"message {i} has no 'role' (expected 'system', 'user' or 'assistant')")
        tmpl = compile_chat_template(self.chat_template)
        variables = {**self.special_tokens, **kwargs}
        text = render_chat_template(tmpl, messages=_plain(list(messages)), tools=None, documents=None,
                                    add_generation_prompt=add_generation_prompt, **_plain(variables))
        if not tokenize:
            return text
        return self.encode(text, add_special_tokens=False)

    def __repr__(self):
        return (f"Tokenizer(vocab={self.vocab_size}, bos={self.bos_token_id}, stop={self.stop_token_ids}, "
                f"chat_template={'yes' if self.chat_template else 'no'})")
