"""Reply bundles and the throttled live display.

The throttling unit test drives LiveOutput with a recording stand-in for IPython's display()
(`RecordingDisplay`) and a manual clock; no model is involved. The same behaviour is checked
end to end, through a real kernel and the real engine, in test_kernel.py::test_streaming_messages."""
from types import SimpleNamespace

from ryzjupyter.jupyter.magics.display import (INTERRUPTED_MARK, LiveOutput, Reply, StatsFooter, extract_code,
                                       format_bytes, reply_bundle)


class ManualClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class RecordingDisplay:
    """Stands in for IPython.display.display: records (kind, bundle) per call/update."""

    def __init__(self):
        self.events = []

    def __call__(self, obj, display_id=None):
        self.events.append(("display", obj._repr_mimebundle_()))
        rec = self

        class Handle:
            def update(self, obj, metadata=None):
                rec.events.append(("update", obj._repr_mimebundle_()))
        return Handle()


def test_live_output_updates_at_most_max_rate():
    clock, rec = ManualClock(), RecordingDisplay()
    live = LiveOutput(max_rate=15, display=rec, clock=clock)
    for i in range(200):                       # 200 pieces over 2 s (one every 10 ms)
        clock.t += 0.010
        live.push(f"t{i} ")
    final = Reply(live.text, format="markdown")
    live.finish(final)
    kinds = [k for k, _ in rec.events]
    assert kinds[0] == "display" and kinds.count("display") == 1      # one display handle
    n_updates = kinds.count("update")
    assert 25 <= n_updates <= 2 * 15 + 1 + 1                           # ~15/s for 2 s, plus the final one
    assert rec.events[-1][1] == final._repr_mimebundle_()              # the last update is the final reply
    assert rec.events[-2][1]["text/plain"].startswith("t0 t1 ")       # partial text is plain text
    assert "text/markdown" not in rec.events[-2][1]


def test_live_output_sends_first_piece_only_after_interval_and_always_final():
    clock, rec = ManualClock(), RecordingDisplay()
    live = LiveOutput(max_rate=15, display=rec, clock=clock)
    live.push("a")                                                     # same instant: no update yet
    assert [k for k, _ in rec.events] == ["display"]
    clock.t += 0.5
    live.push("b")
    assert rec.events[-1] == ("update", {"text/plain": "ab"})
    live.finish(Reply("ab"))
    assert live.updates == 2


def test_reply_bundle_by_format():
    assert reply_bundle("hi *x*", "text") == {"text/plain": "hi *x*"}
    assert reply_bundle("hi *x*", "markdown") == {"text/plain": "hi *x*", "text/markdown": "hi *x*"}
    b = reply_bundle("Here:\n```python\nprint(1)\n```\nbye", "code")
    assert b["text/markdown"] == "```\nprint(1)\n```"
    b = reply_bundle("partial", "markdown", interrupted=True)
    assert b["text/plain"] == f"partial\n\n{INTERRUPTED_MARK}"
    assert b["text/markdown"].endswith(f"*{INTERRUPTED_MARK}*")


def test_extract_code():
    assert extract_code("x = 1\n") == "x = 1"
    assert extract_code("text\n```py\na = 2\n```\nmore ```\nb\n```") == "a = 2"
    assert extract_code("```\nunterminated\n") == "unterminated"


def stats(**kw):
    base = dict(n_prompt=5, n_cached=0, n_prefill=5, n_generated=12, ttft_s=0.05, prefill_tok_s=100.0,
                decode_tok_s=25.25, total_s=0.5)
    base.update(kw)
    return SimpleNamespace(**base)


def test_reply_object():
    r = Reply("hello there", [1, 2], stats(), {"temperature": 0.0}, model="tiny", format="text")
    assert str(r) == "hello there" and r == "hello there"
    assert repr(r) == "Reply('hello there', 12 tokens, 25.2 tok/s, model='tiny')"
    assert not r.interrupted
    long = Reply("x" * 100, stats=stats(), model="m", finish_reason="interrupted")
    assert len(repr(long)) < 100 and repr(long).endswith("interrupted)")


def test_stats_footer():
    r = Reply("t", stats=stats(n_cached=3), model="tiny")
    line = StatsFooter(r).line()
    assert line == ("12 tokens \u00b7 prefill 5 tok at 100 tok/s \u00b7 3 cached \u00b7 decode 25.2 tok/s"
                    " \u00b7 first token 50 ms \u00b7 tiny \u00b7 stopped: max tokens reached")
    b = StatsFooter(r)._repr_mimebundle_()
    assert b["text/plain"] == line and line.replace("\u00b7", "&middot;") not in b["text/html"]
    assert "interrupted" in StatsFooter(Reply("t", stats=stats(), finish_reason="interrupted")).line()


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**20) == "3.0 MiB"
    assert format_bytes(5 * 2**30) == "5.0 GiB"


def test_get_magics_and_unload(shell):
    from ryzjupyter.jupyter.magics import RyzMagics, get_magics, unload_ipython_extension, load_ipython_extension
    m = get_magics(shell)
    assert isinstance(m, RyzMagics) and m in shell.configurables
    load_ipython_extension(shell)                       # loading twice registers once
    assert get_magics(shell) is m and shell.configurables.count(m) == 1
    unload_ipython_extension(shell)
    assert get_magics(shell) is None and "ryz" not in shell.magics_manager.magics["cell"]
    shell.extension_manager.loaded.discard("ryzjupyter")
    shell.extension_manager.load_extension("ryzjupyter")
    assert isinstance(get_magics(shell), RyzMagics) and "ryz" in shell.magics_manager.magics["line"]
