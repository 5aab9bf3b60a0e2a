"""The %%ryz / %ryz grammar and {name} interpolation (pure: no shell, no model)."""
import pytest
from IPython.core.error import UsageError

from ryzjupyter.jupyter.magics.parsers import (FORMATS, LINE_COMMANDS, cell_help, full_help, interpolate,
                                       parse_cell_line, parse_line_command)


def test_every_cell_option():
    a = parse_cell_line("-m demo -n 64 -t 0.7 --top-k 20 --top-p 0.9 --min-p 0.1 --repetition-penalty 1.2 "
                        "--seed 3 --stop '\\n\\n' --stop END --system 'Be brief.' --chat -f code -o ans "
                        "--no-stream")
    assert (a.model, a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.min_p) == ("demo", 64, 0.7, 20, 0.9, 0.1)
    assert (a.repetition_penalty, a.seed, a.system, a.chat, a.format, a.output, a.stream) == \
        (1.2, 3, "Be brief.", True, "code", "ans", False)
    assert a.stop == ["\\n\\n", "END"]
    assert not a.help


def test_long_forms_and_defaults():
    a = parse_cell_line("--model x --max-new-tokens 5 --temperature 0 --format markdown --output y --no-chat")
    assert (a.model, a.max_new_tokens, a.temperature, a.format, a.output, a.chat) == ("x", 5, 0.0, "markdown", "y", False)
    b = parse_cell_line("")
    assert all(getattr(b, k) is None for k in ("model", "max_new_tokens", "temperature", "chat", "stream", "format"))
    assert parse_cell_line("--help").help and parse_cell_line("-h").help


@pytest.mark.parametrize("line, expected", [
    ("--temprature 1", "unknown option --temprature; did you mean --temperature?"),
    ("--top_k 3", "unknown option --top_k; did you mean --top-k?"),
    ("-t hot", "--temperature must be a number, got 'hot'"),
    ("-t -1", "--temperature must be in [0, inf]"),
    ("-n 1.5", "--max-new-tokens must be an integer"),
    ("-n -3", "--max-new-tokens must be in [0, inf]"),
    ("--top-p 0", "--top-p must be in (0, 1]"),
    ("--top-p 1.5", "--top-p must be in (0, 1]"),
    ("--min-p 2", "--min-p must be in [0, 1]"),
    ("--repetition-penalty 0", "--repetition-penalty must be in (0, inf]"),
    ("--seed -1", "--seed must be in [0, inf]"),
    ("-t nan", "--temperature must be finite"),
    ("-f html", "-f must be one of text, markdown, code"),
    ("-f mardown", "did you mean markdown?"),
    ("-o 2x", "-o needs a Python variable name"),
    ("-m", "--model needs a value"),
    ("--chat --no-chat", "contradict each other"),
    ("hello world", "unexpected argument 'hello'"),
    ("--system 'unclosed", "close your quotes"),
])
def test_cell_errors_are_one_line_usage_errors(line, expected):
    with pytest.raises(UsageError) as e:
        parse_cell_line(line)
    msg = str(e.value)
    assert expected in msg
    assert "\n" not in msg
    assert "--help" in msg or "quotes" in msg          # every message says where to look


def test_help_lists_every_option():
    h = cell_help()
    for opt in ("--model", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--min-p",
                "--repetition-penalty", "--seed", "--system", "--chat", "--no-chat", "--format", "--output",
                "--no-stream", "--stop", "{name}"):
        assert opt in h, opt
    full = full_help()
    for cmd in LINE_COMMANDS:
        assert f"%ryz {cmd}" in full
    assert all(f in h for f in FORMATS)


@pytest.mark.parametrize("line, cmd, model, name", [
    ("list", "list", None, None), ("load", "load", None, None),
    ("load some/folder --name tiny", "load", "some/folder", "tiny"),
    ("unload tiny", "unload", "tiny", None), ("use tiny", "use", "tiny", None),
    ("stats", "stats", None, None), ("reset", "reset", None, None), ("help", "help", None, None),
    ("", "help", None, None), ("--help", "help", None, None), ("bench", "bench", None, None),
    ("load --help", "help", "load", None),
])
def test_line_commands(line, cmd, model, name):
    c = parse_line_command(line)
    assert (c.command, c.model, c.name) == (cmd, model, name)


def test_bench_options():
    c = parse_line_command("bench -p 16 -n 8")
    assert c.options == {"prompt_tokens": 16, "new_tokens": 8}
    assert parse_line_command("bench").options == {"prompt_tokens": 64, "new_tokens": 32}
    c = parse_line_command("load x --max-context 128")
    assert c.options == {"max_context": 128, "kv_cache": None}
    assert parse_line_command("load x --kv-cache bf16").options == {"max_context": None, "kv_cache": "bf16"}
    with pytest.raises(UsageError, match=r"--kv-cache takes f32 \| f16 \| bf16 \| int8, got 'fp8'"):
        parse_line_command("load x --kv-cache fp8")


@pytest.mark.parametrize("line, expected", [
    ("lst", "did you mean %ryz list?"),
    ("unlod x", "did you mean %ryz unload?"),
    ("what is a kv cache", "use the cell magic %%ryz"),
    ("unload", "the following arguments are required: model"),
    ("list extra", "unexpected argument 'extra'"),
    ("bench -n 1", "--new-tokens must be in [2, inf]"),
])
def test_line_errors(line, expected):
    with pytest.raises(UsageError) as e:
        parse_line_command(line)
    assert expected in str(e.value)
    assert "%ryz help" in str(e.value) or "%%ryz" in str(e.value)


class Obj:
    name = "Ada"
    items = {"k": 5}


@pytest.mark.parametrize("text, expected", [
    ("Hello {who}!", "Hello world!"),
    ("{n:03d} and {n!r}", "007 and 7"),
    ("{obj.name} {obj.items[k]} {lst[1]}", "Ada 5 b"),
    ("literal {{who}} and }}", "literal {who} and }"),
    ("code: def f(): return {undefined_name}", "code: def f(): return {undefined_name}"),
    ("json {\"a\": 1}", "json {\"a\": 1}"),
    ("{ who }", "{ who }"),
])
def test_interpolate(text, expected):
    ns = {"who": "world", "n": 7, "obj": Obj(), "lst": ["a", "b"]}
    assert interpolate(text, ns) == expected


def test_interpolate_failing_expression_is_usage_error():
    with pytest.raises(UsageError, match=r"cannot interpolate \{obj.missing\}.*AttributeError"):
        interpolate("{obj.missing}", {"obj": Obj()})
    with pytest.raises(UsageError, match="IndexError"):
        interpolate("{lst[9]}", {"lst": []})


def test_found_by_fuzzing():
    """tests/fuzz (magic_options): an empty quoted argument was an IndexError; a format width of a
    billion built a billion-character prompt."""
    with pytest.raises(UsageError, match="unexpected argument ''"):
        parse_cell_line('""')
    with pytest.raises(UsageError, match="width"):
        interpolate("{n:999999999}", {"n": 1})
    assert interpolate("{n:>5}", {"n": 1}) == "    1"
