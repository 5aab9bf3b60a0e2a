"""The grammar of `%%ryz` and `%ryz`: options in, typed arguments out, one-line errors.

Everything here is pure (no IPython shell, no engine), so it is tested on its own.

    parse_cell_line("-m demo -n 64 -t 0.7 -o answer")  -> CellArgs(model='demo', max_new_tokens=64, ...)
    parse_line_command("load tests/fixtures/bitnet/packed --name tiny") -> LineCommand('load', ...)
    interpolate("Summarise {text}", user_ns)           -> the prompt with {text} replaced

Mistakes raise IPython's `UsageError` (shown as one line, the cell fails, "Run All" stops), with a
hint that says how to fix them.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import shlex
import string
from dataclasses import dataclass, field

from IPython.core.error import UsageError

FORMATS = ("text", "markdown", "code")
LINE_COMMANDS = ("list", "load", "unload", "use", "stats", "controls", "reset", "help", "bench", "serve", "map",
                 "memory")
MEMORY_ACTIONS = ("list", "search", "forget", "clear", "stats")

# names of the sampling settings, as the engine spells them (model.generate keywords)
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line + a fix hint) instead of exiting the kernel."""

    def __init__(self, *a, hint="", **kw):
        super().__init__(*a, add_help=False, allow_abbrev=False, exit_on_error=False, **kw)
        self._hint = hint

    def error(self, message):
        raise UsageError(_friendly(message, self) + self._hint)

    def exit(self, status=0, message=None):          # never sys.exit() in a kernel
        raise UsageError((message or "invalid arguments").strip() + self._hint)


def _friendly(message, parser):
    """Turn argparse's message into ours; suggest the option the user probably meant."""
    m = re.match(r"unrecognized arguments: (.*)", message)
    if m:
        words = m.group(1).split() or [""]
        bad = next((w for w in words if w.startswith("-")), None)
        if bad is None:
            return (f"unexpected argument {words[0]!r}: options start with '-', and the prompt goes in "
                    f"the cell body below the %%ryz line")
        known = [s for a in parser._actions for s in a.option_strings]
        near = difflib.get_close_matches(bad.split("=")[0], known, n=1, cutoff=0.6)
        tip = f"; did you mean {near[0]}?" if near else ""
        return f"unknown option {bad}{tip}"
    return message


# ----------------------------------------------------------------------------
# value checks (argparse `type=` callables: a ValueError/TypeError message is shown as is)

def _number(name, lo=None, hi=None, lo_open=False, integer=False, unit=""):
    def conv(text):
        try:
            v = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {text!r}") from None
        if not integer and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be finite, got {text!r}")
        if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and v > hi:
            lo_s = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(
                f"{name} must be in {lo_s}{lo}, {'inf' if hi is None else hi}]{unit}, got {text}")
        return v
    conv.__name__ = name
    return conv


def _identifier(text):
    if not text.isidentifier():
        raise argparse.ArgumentTypeError(f"-o needs a Python variable name, got {text!r}")
    return text


# ----------------------------------------------------------------------------
# %%ryz [options]

CELL_USAGE_HINT = " (%%ryz --help lists the options)"


def _cell_parser():
    p = _Parser(prog="%%ryz", hint=CELL_USAGE_HINT,
                description="Send the cell to the current model as a prompt and stream the reply into the "
                            "cell. {name} in the cell is replaced by the Python variable `name` ({{ and }} "
                            "give literal braces). Options override the %config RyzMagics.* defaults for "
                            "this cell only.")
    a = p.add_argument
    a("-m", "--model", help="model to use: a loaded name, a folder or a hub id (loaded on first use)")
    a("-n", "--max-new-tokens", type=_number("--max-new-tokens", 0, integer=True), metavar="N",
      help="generate at most N tokens")
    a("-t", "--temperature", type=_number("--temperature", 0), metavar="T", help="0 = greedy")
    a("--top-k", type=_number("--top-k", 0, integer=True), metavar="K", help="0 = off")
    a("--top-p", type=_number("--top-p", 0, 1, lo_open=True), metavar="P", help="1 = off")
    a("--min-p", type=_number("--min-p", 0, 1), metavar="P", help="0 = off")
    a("--repetition-penalty", type=_number("--repetition-penalty", 0, lo_open=True), metavar="R",
      help="1 = off")
    a("--seed", type=_number("--seed", 0, integer=True), metavar="S", help="fixes the sampled tokens")
    a("--stop", action="append", metavar="TEXT", help="stop when TEXT is generated (repeatable)")
    a("--draft", metavar="DRAFT", help="speculative decoding (same output, fewer passes): lookup, adjacency, "
                                       "auto, off, or a draft model with the same tokenizer (demo-draft)")
    a("--num-draft", type=_number("--num-draft", 0, 15, integer=True), metavar="K",
      help="draft tokens per verify pass (default: adaptive)")
    a("--system", metavar="TEXT", help="system prompt (uses the model's chat template)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--chat", dest="chat", action="store_const", const=True,
                   help="multi-turn chat: keep the history across cells (%%ryz reset clears it)")
    g.add_argument("--no-chat", dest="chat", action="store_const", const=False,
                   help="plain completion of the cell text")
    a("-f", "--format", type=_format, metavar="FMT", help="text | markdown | code")
    a("-o", "--output", type=_identifier, metavar="NAME", help="also store the reply in variable NAME")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--stream", dest="stream", action="store_const", const=True, help="stream tokens")
    g.add_argument("--no-stream", dest="stream", action="store_const", const=False,
                   help="show the reply only when it is complete")
    a("--recycle", nargs="?", const=0, type=_number("--recycle", 1, integer=True), metavar="K",
      help="put up to K (default %%config RyzMagics.recycle_k) units recalled from the memory bank "
           "(%%ryz memory) before the prompt; the reply's .recycled lists them")
    a("--recycle-budget", type=_number("--recycle-budget", 1, integer=True), metavar="N",
      help="tokens the recalled units may take at most (default RyzMagics.recycle_budget)")
    a("-h", "--help", action="store_true", help="show this help and generate nothing")
    return p


KV_CACHE_FORMATS = ("f32", "f16", "bf16", "int8")


def _kv_cache(text):
    if text not in KV_CACHE_FORMATS:
        raise argparse.ArgumentTypeError(f"--kv-cache takes {' | '.join(KV_CACHE_FORMATS)}, got {text!r}")
    return text


def _serve_action(text):
    if text not in ("start", "stop", "status"):
        raise argparse.ArgumentTypeError(f"%ryz serve takes start, stop or status, got {text!r}")
    return text


def _memory_action(text):
    if text not in MEMORY_ACTIONS:
        raise argparse.ArgumentTypeError(f"%ryz memory takes {' | '.join(MEMORY_ACTIONS)}, got {text!r}")
    return text


def _format(text):
    if text not in FORMATS:
        near = difflib.get_close_matches(text, FORMATS, n=1)
        tip = f" (did you mean {near[0]}?)" if near else ""
        raise argparse.ArgumentTypeError(f"-f must be one of {', '.join(FORMATS)}, got {text!r}{tip}")
    return text


@dataclass
class CellArgs:
    """Parsed %%ryz options; None means "use the %config RyzMagics default"."""
    model: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list | None = None
    draft: str | None = None
    num_draft: int | None = None
    system: str | None = None
    chat: bool | None = None
    format: str | None = None
    output: str | None = None
    stream: bool | None = None
    recycle: int | None = None          # --recycle [K]: 0 = the default K
    recycle_budget: int | None = None
    help: bool = False


def _split(line):
    try:
        return shlex.split(line)
    except ValueError as e:                       # e.g. "No closing quotation"
        raise UsageError(f"cannot parse the options ({e}); close your quotes") from None


def parse_cell_line(line: str) -> CellArgs:
    parser = _cell_parser()
    try:
        ns = parser.parse_args(_split(line))
    except argparse.ArgumentError as e:
        raise UsageError(_argument_error(e) + CELL_USAGE_HINT) from None
    return CellArgs(**vars(ns))


def _argument_error(e: argparse.ArgumentError) -> str:
    msg = str(e.message) if hasattr(e, "message") else str(e)
    if msg.startswith("expected one argument"):
        return f"{e.argument_name} needs a value"
    if msg.startswith("not allowed with argument"):
        return f"{e.argument_name} and {msg.split()[-1]} contradict each other; keep one"
    return msg


def cell_help() -> str:
    return _cell_parser().format_help()


# ----------------------------------------------------------------------------
# %ryz COMMAND [...]

LINE_USAGE_HINT = " (%ryz help lists the commands)"


@dataclass
class LineCommand:
    command: str
    model: str | None = None        # load/unload/use: the model (name, folder or hub id)
    name: str | None = None         # load --name
    options: dict = field(default_factory=dict)


def _line_parsers():
    sub = {}
    p = _Parser(prog="%ryz load", hint=LINE_USAGE_HINT,
                description="Load a model (folder, hub id, or a bundled model name; no argument = the "
                            "bundled demo model) and make it current.")
    p.add_argument("model", nargs="?")
    p.add_argument("--name", help="the name to refer to it by (default: its folder name)")
    p.add_argument("--max-context", type=_number("--max-context", 1, integer=True), metavar="N")
    p.add_argument("--kv-cache", type=_kv_cache, metavar="f32|f16|bf16|int8",
                   help="KV cache format (default f32, exact; f16/bf16: half the cache's bytes, int8: a quarter; "
                        "rounded, see docs/performance.md)")
    sub["load"] = p
    for cmd, what in (("unload", "Unload a loaded model and free its memory."),
                      ("use", "Make a loaded model (or one to load) the current model.")):
        p = _Parser(prog=f"%ryz {cmd}", hint=LINE_USAGE_HINT, description=what)
        p.add_argument("model")
        sub[cmd] = p
    p = _Parser(prog="%ryz bench", hint=LINE_USAGE_HINT,
                description="Measure prefill and decode speed of the current model (a fresh session; the "
                            "chat history and the model's cache are untouched).")
    p.add_argument("-p", "--prompt-tokens", type=_number("--prompt-tokens", 1, integer=True), default=64,
                   metavar="N", help="prompt length for the prefill measurement (default 64)")
    p.add_argument("-n", "--new-tokens", type=_number("--new-tokens", 2, integer=True), default=32,
                   metavar="N", help="tokens to decode (default 32)")
    sub["bench"] = p
    p = _Parser(prog="%ryz serve", hint=LINE_USAGE_HINT,
                description="Serve the kernel's loaded models over OpenAI's API from a background thread (the "
                            "notebook keeps working): %ryz serve [--port N] starts, %ryz serve status shows the "
                            "traffic, %ryz serve stop stops (docs/serving.md).")
    p.add_argument("action", nargs="?", default="start", type=_serve_action, metavar="start|stop|status")
    p.add_argument("--port", type=_number("--port", 0, 65535, integer=True), default=8000, metavar="N",
                   help="port (default 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--api-key", metavar="KEY", help="the key clients must send (default: a new random key)")
    g.add_argument("--no-auth", action="store_true", help="no key (only with --host 127.0.0.1)")
    p.add_argument("--max-batch", type=_number("--max-batch", 1, 256, integer=True), default=16, metavar="N",
                   help="streams decoded together per model (default 16)")
    sub["serve"] = p
    p = _Parser(prog="%ryz map", hint=LINE_USAGE_HINT,
                description="Run a prompt for every item of the list VAR on a Dask cluster (ryzjupyter.distributed): "
                            "%%ryz map VAR with the prompt template in the cell ({item} is the item; a dict item's "
                            "keys are names too), or %ryz map VAR when the items are the prompts. The progress "
                            "shows in the cell; the results are GenerationResults in the items' order.")
    p.add_argument("var", metavar="VAR", help="the name of a list (or any iterable) in the notebook")
    p.add_argument("-o", "--output", type=_identifier, metavar="NAME",
                   help="store the results in NAME (filled as they arrive: an interrupted run keeps them)")
    p.add_argument("-m", "--model", dest="model", help="the model the workers load (default: the current model's "
                                                       "folder, else the bundled demo model)")
    p.add_argument("-n", "--max-new-tokens", type=_number("--max-new-tokens", 0, integer=True), metavar="N")
    p.add_argument("-t", "--temperature", type=_number("--temperature", 0), metavar="T", help="0 = greedy")
    p.add_argument("--top-k", type=_number("--top-k", 0, integer=True), metavar="K")
    p.add_argument("--top-p", type=_number("--top-p", 0, 1, lo_open=True), metavar="P")
    p.add_argument("--min-p", type=_number("--min-p", 0, 1), metavar="P")
    p.add_argument("--repetition-penalty", type=_number("--repetition-penalty", 0, lo_open=True), metavar="R")
    p.add_argument("--seed", type=_number("--seed", 0, integer=True), metavar="S",
                   help="item i is sampled with seed S + i (the same results on every run)")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop when TEXT is generated (repeatable)")
    p.add_argument("--batch-size", type=_number("--batch-size", 1, integer=True), metavar="N",
                   help="prompts per Dask task, decoded together on a worker")
    sub["map"] = p
    p = _Parser(prog="%ryz memory", hint=LINE_USAGE_HINT,
                description="The memory bank of recycled semantic units (docs/memory.md): list | search TEXT | "
                            "forget ID | clear | stats.")
    p.add_argument("action", nargs="?", default="stats", type=_memory_action, metavar="list|search|forget|clear|stats")
    p.add_argument("words", nargs="*", metavar="TEXT_OR_ID")
    p.add_argument("-k", type=_number("-k", 1, integer=True), default=5, metavar="K",
                   help="hits to show for search (default 5)")
    sub["memory"] = p
    for cmd, what in (("list", "List loaded models and their memory."),
                      ("stats", "Statistics and the profile (where the time went) of the last reply."),
                      ("controls", "Sampling controls bound to these settings, and a Generate box."),
                      ("reset", "Clear the chat history and the current model's cache."),
                      ("help", "Show this help.")):
        sub[cmd] = _Parser(prog=f"%ryz {cmd}", hint=LINE_USAGE_HINT, description=what)
    return sub


def parse_line_command(line: str) -> LineCommand:
    words = _split(line)
    if not words:
        return LineCommand("help")
    cmd, rest = words[0], words[1:]
    if cmd in ("-h", "--help"):
        return LineCommand("help")
    parsers = _line_parsers()
    if cmd not in parsers:
        near = difflib.get_close_matches(cmd, LINE_COMMANDS, n=1)
        if near:
            raise UsageError(f"unknown command {cmd!r}; did you mean %ryz {near[0]}?" + LINE_USAGE_HINT)
        raise UsageError(f"unknown command {cmd!r}: %ryz takes one of {', '.join(LINE_COMMANDS)}; "
                         f"to send a prompt, use the cell magic %%ryz with the prompt in the cell body")
    if any(w in ("-h", "--help") for w in rest):
        return LineCommand("help", model=cmd)
    try:
        ns = vars(parsers[cmd].parse_args(rest))
    except argparse.ArgumentError as e:
        raise UsageError(_argument_error(e) + LINE_USAGE_HINT) from None
    model = ns.pop("model", None)
    name = ns.pop("name", None)
    return LineCommand(cmd, model=model, name=name, options=ns)


def line_help(command: str | None = None) -> str:
    parsers = _line_parsers()
    if command:
        return parsers[command].format_help()
    rows = [f"  %ryz {c:<8} {parsers[c].description}" for c in LINE_COMMANDS]
    return ("%ryz COMMAND: manage models and the conversation\n\n" + "\n".join(rows) +
            "\n\n%ryz COMMAND --help shows a command's options.\n"
            "%config RyzMagics shows the settings (%config RyzMagics.temperature = 0.7 changes one).\n")


def full_help() -> str:
    return cell_help() + "\n" + line_help()


# ----------------------------------------------------------------------------
# {name} interpolation

_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*|\[[^\[\]{}]*\])*)(![rsa])?(:[^{}]*)?\}")


_HUGE_WIDTH = re.compile(r"\d{7,}")


def interpolate(text: str, namespace: dict) -> str:
    """Replace {name}, {name.attr}, {name[key]}, with optional !r/!s/!a and :format_spec, by values
    from `namespace`; {{ and }} give literal braces. A {word} whose name is not defined is left as
    it is (prompts often contain code with braces); a defined name whose attribute or key fails is a
    UsageError."""
    fmt = string.Formatter()

    def sub(m):
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        name, rest, conv, spec = m.group(1), m.group(2), m.group(3), m.group(4)
        if name not in namespace:
            return tok
        if spec and _HUGE_WIDTH.search(spec):
            raise UsageError(f"cannot interpolate {tok}: a width of a million characters or more makes a "
                             f"prompt no model can read; use a smaller width (or {{{{ }}}} for literal braces)")
        try:
            value, _ = fmt.get_field(name + rest, (), namespace)
            if conv:
                value = fmt.convert_field(value, conv[1])
            return fmt.format_field(value, spec[1:] if spec else "")
        except Exception as e:   # noqa: BLE001 - any failure of the user's expression is a usage error
            raise UsageError(f"cannot interpolate {tok} into the prompt: {type(e).__name__}: {e} "
                             f"(write {{{{ and }}}} for literal braces)") from None

    return _FIELD.sub(sub, text)
