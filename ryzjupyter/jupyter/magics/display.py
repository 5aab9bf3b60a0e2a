"""What a `%%ryz` cell shows: the Reply object, the throttled live output, the stats footer.

The reply's display bundle depends only on its text, format and interrupted flag, so the final
output of a cell is the same whether it was streamed (one display updated in place) or not (one
display at the end); nbval compares it.
"""

from __future__ import annotations

import html
import re
import time

from ryzjupyter.jupyter.units import format_duration, format_rate
from ryzjupyter.manager import finish_info

INTERRUPTED_MARK = "[interrupted]"


class Reply:
    """One `%%ryz` answer: `.text`, `.tokens`, `.stats` (n_prompt, n_generated, ttft_s,
    prefill_tok_s, decode_tok_s, ...), `.settings` (every sampling setting used), `.model`,
    `.finish_reason` (the engine's: length, stop, context, interrupted), `.finish` (why it stopped,
    for people: {"reason": length | context | stop_token | stop_string | interrupted, "label",
    "detail"}), `.interrupted`, `.recycled` (with --recycle: the memory units put before the prompt,
    each with id, text, score, source). `str(reply)` is the text. Shown as text or Markdown."""

    def __init__(self, text="", tokens=(), stats=None, settings=None, *, model=None, format="text",
                 finish_reason="length", prompt=None, finish=None):
        self.text = text
        self.tokens = list(tokens)
        self.stats = stats
        self.settings = dict(settings or {})
        self.model = model
        self.format = format
        self.finish_reason = finish_reason
        self.prompt = prompt
        self.finish = finish or finish_info(self)
        self.recycled = []      # %%ryz --recycle: the units put before the prompt (id, text, score, source)

    @classmethod
    def from_result(cls, result, *, model, format, prompt=None, extra_settings=None, tokenizer=None,
                    max_context=None):
        settings = dict(result.settings)
        settings.update(extra_settings or {})
        return cls(result.text, result.tokens, result.stats, settings, model=model, format=format,
                   finish_reason=result.finish_reason, prompt=prompt,
                   finish=finish_info(result, tokenizer, max_context))

    @property
    def interrupted(self) -> bool:
        return self.finish_reason == "interrupted"

    def __str__(self):
        return self.text

    def __repr__(self):
        t = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        n = getattr(self.stats, "n_generated", len(self.tokens))
        tps = getattr(self.stats, "decode_tok_s", 0.0) or 0.0
        flag = ", interrupted" if self.interrupted else ""
        return f"Reply({t!r}, {n} tokens, {tps:.1f} tok/s, model={self.model!r}{flag})"

    def __eq__(self, other):       # comparing with a string compares the text
        if isinstance(other, str):
            return self.text == other
        return NotImplemented

    __hash__ = object.__hash__

    def code(self) -> str:
        """The first fenced code block of the text, or the whole text when there is none."""
        return extract_code(self.text)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return reply_bundle(self.text, self.format, self.interrupted)


def extract_code(text: str) -> str:
    m = re.search(r"```[^\n`]*\n(.*?)(?:```|\Z)", text, re.S)
    return (m.group(1) if m else text).strip("\n")


def reply_bundle(text: str, fmt: str, interrupted: bool = False) -> dict:
    """The display bundle: text/plain always (terminal IPython, nbval), text/markdown for the
    markdown and code formats."""
    plain = text + (f"\n\n{INTERRUPTED_MARK}" if interrupted else "")
    if fmt == "text":
        return {"text/plain": plain}
    if fmt == "code":
        md = f"```\n{extract_code(text)}\n```"
    else:
        md = text
    if interrupted:
        md += f"\n\n*{INTERRUPTED_MARK}*"
    return {"text/plain": plain, "text/markdown": md}


class _Partial:
    """What the live display shows while tokens arrive: plain text (Markdown is rendered once, at
    the end, so half-finished fences and formulas do not flicker)."""

    def __init__(self, text):
        self.text = text

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": self.text or "\u2026"}


class LiveOutput:
    """One display handle updated at most `max_rate` times per second while text streams in, and
    once more with the final reply. `display` is IPython.display.display (injectable for the
    throttling unit test), `clock` a monotonic clock."""

    def __init__(self, max_rate=15.0, display=None, clock=time.monotonic):
        if display is None:
            from IPython.display import display
        self._display = display
        self._clock = clock
        self.min_interval = 1.0 / max_rate if max_rate and max_rate > 0 else 0.0
        self.parts: list[str] = []
        self.updates = 0                 # update_display_data messages sent (final one included)
        self._dirty = False
        self._handle = self._display(_Partial(""), display_id=True)
        self._last = self._clock()

    @property
    def text(self):
        return "".join(self.parts)

    def push(self, piece: str):
        self.parts.append(piece)
        self._dirty = True
        now = self._clock()
        if now - self._last >= self.min_interval:
            self._handle.update(_Partial(self.text))
            self.updates += 1
            # measured from when the update went out: a send delayed by a busy kernel must not
            # let the next one follow it closely
            self._last = self._clock()
            self._dirty = False

    def finish(self, final, metadata=None):
        """Replace the live text by the final object (always sent, so the saved output is final)."""
        self._handle.update(final, metadata=metadata)
        self.updates += 1
        self._dirty = False


class TerminalStream:
    """Streaming in terminal IPython, whose display prints every update in full: print the new
    pieces as they come, then only a newline (the reply is not shown a second time)."""

    def __init__(self):
        import sys
        self._out = sys.stdout
        self.parts: list[str] = []

    @property
    def text(self):
        return "".join(self.parts)

    def push(self, piece: str):
        self.parts.append(piece)
        self._out.write(piece)
        self._out.flush()

    def finish(self, final, metadata=None):
        tail = f"\n\n{INTERRUPTED_MARK}" if getattr(final, "interrupted", False) else ""
        self._out.write(tail + "\n")
        self._out.flush()


def is_plain_terminal(shell) -> bool:
    """True in terminal IPython (the display publisher prints text/plain; no display updates)."""
    from IPython.core.displaypub import DisplayPublisher
    return type(getattr(shell, "display_pub", None)) is DisplayPublisher


class StatsFooter:
    """The one-line footer after a reply: tokens, speeds, time to first token, model."""

    def __init__(self, reply: Reply):
        self.reply = reply

    def line(self) -> str:
        s, r = self.reply.stats, self.reply
        bits = []
        if s is not None:
            bits.append(f"{s.n_generated} tokens")
            if getattr(s, "n_prefill", 0):
                bits.append(f"prefill {s.n_prefill} tok at {format_rate(s.prefill_tok_s)} tok/s")
            if getattr(s, "n_cached", 0):
                bits.append(f"{s.n_cached} cached")
            if s.n_generated > 1:
                bits.append(f"decode {format_rate(s.decode_tok_s)} tok/s")
            if getattr(s, "drafter", ""):
                bits.append(f"draft {s.drafter}: {s.accepted}/{s.drafted} accepted, "
                            f"{s.tokens_per_pass:.2f} tok/pass")
            bits.append(f"first token {format_duration(s.ttft_s)}")
        if r.model:
            bits.append(str(r.model))
        bits.append(f"stopped: {r.finish['label']}")       # why: max tokens, context full, stop token ...
        return " \u00b7 ".join(bits)

    def __repr__(self):
        return self.line()

    def _repr_mimebundle_(self, include=None, exclude=None):
        line = self.line()
        return {"text/plain": line,
                "text/html": f'<div style="font-size:85%;opacity:0.65">{html.escape(line)}</div>'}


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
