"""%%ryz and %ryz in an in-process IPython shell, on the real engine and the real tiny BitNet
fixture model (tests/fixtures/bitnet/packed). No engine doubles."""
import os
import signal
import threading
import time

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from traitlets import TraitError

from .conftest import REPO, TINY

UNTIED = REPO / "tests" / "fixtures" / "bitnet" / "untied"


def run(ip, line, cell):
    """Run a %%ryz cell through run_cell (as a notebook does); fail on errors."""
    r = ip.run_cell(f"%%ryz {line}\n{cell}", store_history=True)
    if r.error_in_exec is not None:
        raise r.error_in_exec
    if r.error_before_exec is not None:
        raise r.error_before_exec
    return ip._ryz_magics.last_reply


def test_greedy_reply_is_the_engine_greedy_generation(ip, tiny):
    reply = run(ip, "-n 12 --no-stream", "The train left the station")
    ref = tiny.new_session().generate("The train left the station", 12, temperature=0.0)
    assert reply.text == ref.text and reply.tokens == ref.tokens
    assert reply.stats.n_generated == len(ref.tokens) > 0
    assert reply.stats.n_prompt == ref.stats.n_prompt
    for k in ("ttft_s", "prefill_tok_s", "decode_tok_s"):
        assert getattr(reply.stats, k) >= 0
    s = reply.settings
    assert (s["temperature"], s["max_new_tokens"], s["model"], s["chat"]) == (0.0, 12, "tiny", False)
    for k in ("top_k", "top_p", "min_p", "repetition_penalty", "seed", "stop"):
        assert k in s
    assert ip.user_ns["_"] is reply                     # `_` holds the reply
    assert str(reply) == reply.text and "tiny" in repr(reply)


def test_options_reach_the_engine(ip, tiny):
    reply = run(ip, "-n 7 -t 1.3 --top-k 5 --top-p 0.9 --min-p 0.01 --repetition-penalty 1.1 --seed 11 -o ans",
                "Once upon a time")
    s = reply.settings
    assert (s["temperature"], s["top_k"], s["top_p"], s["min_p"], s["repetition_penalty"], s["seed"]) == \
        (1.3, 5, 0.9, 0.01, 1.1, 11)
    assert ip.user_ns["ans"] is reply
    ref = tiny.new_session().generate("Once upon a time", 7, temperature=1.3, top_k=5, top_p=0.9, min_p=0.01,
                                      repetition_penalty=1.1, seed=11)
    assert reply.tokens == ref.tokens                   # seeded sampling reproduces the engine's draw
    again = run(ip, "-n 7 -t 1.3 --top-k 5 --top-p 0.9 --min-p 0.01 --repetition-penalty 1.1 --seed 11",
                "Once upon a time")
    assert again.tokens == reply.tokens


def test_config_traits_are_the_defaults(ip, tiny):
    ip.run_line_magic("config", "RyzMagics.max_new_tokens = 3")
    ip.run_line_magic("config", "RyzMagics.seed = 5")
    ip.run_line_magic("config", "RyzMagics.temperature = 0.9")
    r = run(ip, "", "Hello")
    assert r.stats.n_generated <= 3 and r.settings["max_new_tokens"] == 3
    assert (r.settings["seed"], r.settings["temperature"]) == (5, 0.9)
    r = run(ip, "-n 2 -t 0", "Hello")                    # the cell's options win, for that cell only
    assert r.settings["max_new_tokens"] == 2 and r.settings["temperature"] == 0.0
    assert ip._ryz_magics.max_new_tokens == 3
    with pytest.raises(TraitError, match="temperature must be >= 0"):
        ip._ryz_magics.temperature = -1.0
    with pytest.raises(TraitError):
        ip._ryz_magics.format = "html"


def test_streamed_and_unstreamed_final_outputs_are_identical(ip, tiny):
    old = list(ip.display_formatter.active_types)
    ip.display_formatter.active_types = ["text/plain", "text/markdown"]
    try:
        outs = {}
        for mode in ("--stream", "--no-stream"):
            tiny.reset()
            with capture_output() as cap:
                run(ip, f"-n 20 -f markdown {mode}", "The train left the station")
            outs[mode] = cap.outputs
    finally:
        ip.display_formatter.active_types = old
    streamed, plain = outs["--stream"], outs["--no-stream"]
    assert len(plain) == 1 and not plain[0].update
    assert streamed[0].transient["display_id"] and not streamed[0].update     # the live display ...
    assert all(o.update for o in streamed[1:])                                # ... updated in place
    assert streamed[-1].data == plain[0].data                                # same final bundle
    assert plain[0].data["text/markdown"] == ip._ryz_magics.last_reply.text


def test_stats_footer_after_reply_and_off_by_config(ip, tiny):
    ip.run_line_magic("config", "RyzMagics.show_stats = True")
    with capture_output() as cap:
        run(ip, "-n 4 --no-stream", "Hi")
    assert len(cap.outputs) == 2 and "tok/s" in cap.outputs[1].data["text/plain"]
    ip.run_line_magic("config", "RyzMagics.show_stats = False")
    with capture_output() as cap:
        run(ip, "-n 4 --no-stream", "Hi")
    assert len(cap.outputs) == 1


def test_interpolation(ip, tiny):
    ip.user_ns["x"] = "cats"
    r = run(ip, "-n 2", "Tell me about {x} and {{braces}}")
    assert r.prompt == "Tell me about cats and {braces}"
    with pytest.raises(UsageError, match="AttributeError"):
        run(ip, "-n 2", "{x.nope}")


def test_chat_history_across_cells_and_reset(ip, tiny):
    m = ip._ryz_magics
    r1 = run(ip, "--chat -n 5 --system 'Be kind.'", "Hello there")
    r2 = run(ip, "--chat -n 5", "And again")           # the conversation keeps its system prompt
    assert [t["role"] for t in m.history] == ["system", "user", "assistant", "user", "assistant"]
    assert m.history[2]["content"] == r1.text and m.history[4]["content"] == r2.text
    assert r2.settings["system"] == "Be kind."
    # the first turn's prompt came from the KV cache. (The engine also keeps the reply's own token
    # ids when the re-rendered conversation starts with what it generated; this fixture's template
    # trims the reply's leading space, so here the reply itself is re-tokenized.)
    assert r2.stats.n_cached >= r1.stats.n_prompt - 2
    s = tiny.new_session()                               # the engine's own multi-turn chat, fresh
    s.chat("Hello there", 5, system="Be kind.", temperature=0.0)
    ref = s.chat("And again", 5, temperature=0.0)
    assert r2.tokens == ref.tokens                      # the history really went into the prompt
    run(ip, "--chat -n 2 --system 'Be terse.'", "Third")  # a new system prompt replaces the old one
    assert m.history[0] == {"role": "system", "content": "Be terse."}
    assert [t["role"] for t in m.history].count("system") == 1
    with capture_output() as cap:
        ip.run_line_magic("ryz", "reset")
    assert "3 turns" in cap.stdout and m.history == []
    run(ip, "--no-chat -n 3", "plain")
    assert m.history == []


def test_system_prompt_uses_the_chat_template(ip, tiny):
    r = run(ip, "--system 'Be brief.' -n 4", "Hi")
    ref = tiny.new_session().chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                  max_new_tokens=4, temperature=0.0)
    assert r.tokens == ref.tokens and r.settings["system"] == "Be brief."
    assert ip._ryz_magics.history == []                 # no --chat: nothing kept


def test_code_format_fills_the_next_cell(ip, tiny, monkeypatch):
    got = []
    monkeypatch.setattr(ip, "set_next_input", lambda text, replace=False: got.append((text, replace)))
    r = run(ip, "-f code -n 6", "def f(x):")
    assert got == [(r.code(), False)]


def test_line_commands(ip):
    with capture_output() as cap:
        ip.run_line_magic("ryz", "list")
    assert "no model loaded" in cap.stdout
    with capture_output() as cap:
        ip.run_line_magic("ryz", f"load {TINY} --name tiny")
        ip.run_line_magic("ryz", f"load {UNTIED}")
        ip.run_line_magic("ryz", "list")
    out = cap.stdout
    assert "loaded tiny" in out and "loaded untied" in out
    assert "* untied" in out and "  tiny" in out and "KiB" in out
    with capture_output() as cap:
        ip.run_line_magic("ryz", "use tiny")
    assert "using tiny" in cap.stdout
    ip.run_line_magic("config", "RyzMagics.temperature = 0")
    r = run(ip, f"-m untied -n 3", "Hi")                 # -m: that model for this cell only
    assert r.model == "untied"
    assert ip._ryz_magics.registry.current_name == "tiny"
    with capture_output() as cap:
        ip.run_line_magic("ryz", "stats")
    assert "untied" in cap.stdout and "decode" in cap.stdout and "temperature" in cap.stdout
    with capture_output() as cap:
        ip.run_line_magic("ryz", "bench -p 16 -n 8")
    assert "prefill 16 tokens" in cap.stdout and "decode 8 tokens" in cap.stdout
    assert ip._ryz_magics.last_bench["decode_tok_s"] > 0
    with capture_output() as cap:
        ip.run_line_magic("ryz", "unload tiny")
        ip.run_line_magic("ryz", "list")
    assert "unloaded tiny" in cap.stdout and "* untied" in cap.stdout and " tiny " not in cap.stdout
    with pytest.raises(UsageError, match="no loaded model called 'tiny'; loaded: untied"):
        ip.run_line_magic("ryz", "unload tiny")


def test_loading_the_same_folder_twice_reuses_it(ip):
    ip.run_line_magic("ryz", f"load {TINY}")
    ip.run_line_magic("ryz", f"load {TINY}")
    assert ip._ryz_magics.registry.names() == ["packed"]


def test_help(ip):
    with capture_output() as cap:
        ip.run_cell_magic("ryz", "--help", "ignored prompt")
    assert "--temperature" in cap.stdout and "%ryz load" in cap.stdout
    assert ip._ryz_magics.last_reply is None             # --help generates nothing
    with capture_output() as cap:
        ip.run_line_magic("ryz", "help")
    assert "%ryz bench" in cap.stdout
    with capture_output() as cap:
        ip.run_line_magic("ryz", "load --help")
    assert "--max-context" in cap.stdout
    doc = ip.find_line_magic("ryz").__doc__               # what %ryz? shows
    assert "--max-new-tokens" in doc and "%ryz list" in doc


@pytest.mark.parametrize("line, cell, match", [
    ("--bogus", "x", "unknown option --bogus"),
    ("-t -2", "x", "--temperature must be in"),
    ("", "   \n  ", "the cell is empty"),
    ("-m /no/such/folder", "x", "does not exist"),
])
def test_user_mistakes_are_usage_errors(ip, tiny, line, cell, match):
    r = ip.run_cell(f"%%ryz {line}\n{cell}")
    assert isinstance(r.error_in_exec, UsageError)
    assert match in str(r.error_in_exec)


def test_missing_model_says_how_to_get_one(ip):
    with pytest.raises(UsageError) as e:
        ip.run_line_magic("ryz", "load /no/such/model")
    assert "config.json" in str(e.value)
    with pytest.raises(UsageError) as e:
        ip.run_line_magic("ryz", "load nobody/no-such-model-xyz")      # hub id, offline
    assert "no-such-model-xyz" in str(e.value)


def test_load_with_a_16bit_kv_cache(ip):
    with capture_output() as cap:
        ip.run_line_magic("ryz", f"load {TINY} --name half --kv-cache f16")
    assert "64.0 KiB KV cache reserve" in cap.stdout     # half the f32 cache's 128 KiB
    model = ip._ryz_magics.registry.get("half")
    assert model.kv_dtype == "f16" and str(model.new_cache(4).k[0].dtype) == "float16"
    r = ip.run_cell("%%ryz -m half -n 3 --no-stream\nHi")
    assert r.error_in_exec is None


def test_prompt_longer_than_the_context(ip):
    ip.run_line_magic("ryz", f"load {TINY} --name short --max-context 16")
    with pytest.raises(UsageError, match="context holds 16"):
        run(ip, "-n 2", "word " * 40)


def test_real_failures_are_not_swallowed(ip, tiny, monkeypatch):
    """A genuine error inside the engine fails the cell with its own exception type."""
    def broken(*a, **k):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(tiny, "forward", broken)
    r = ip.run_cell("%%ryz -n 3 --no-stream\nHi")
    assert isinstance(r.error_in_exec, RuntimeError)


@pytest.fixture(scope="module")
def slow_model_path(tmp_path_factory):
    """A random BitNet model big enough that decoding many tokens takes seconds."""
    from ryzjupyter.families.random_bitnet import write_random_bitnet
    return write_random_bitnet(tmp_path_factory.mktemp("slow"), hidden_size=512, intermediate_size=1376,
                               num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                               vocab_size=1024, max_position_embeddings=2048)


def test_interrupt_keeps_the_partial_reply_and_reraises(ip, slow_model_path):
    m = ip._ryz_magics
    ip.run_line_magic("ryz", f"load {slow_model_path} --name slow")
    ip.run_line_magic("config", "RyzMagics.show_stats = False")
    cache = m.registry.get("slow").session.cache
    sent, done = {}, threading.Event()

    def interrupt_when_decoding():                      # SIGINT once 10 tokens have been decoded
        while not done.is_set():
            if len(cache.tokens) > 60:                  # the chat prompt is ~40 tokens
                sent["t"] = time.monotonic()
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.002)

    armed = [True]

    def on_sigint(signum, frame):                       # Python's default, but only while armed, so a
        if armed[0]:                                     # late signal cannot hit pytest itself
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    watcher = threading.Thread(target=interrupt_when_decoding, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            try:
                ip.run_cell_magic("ryz", "--chat -n 1900 -t 0 --no-stream", "Tell me a long story")
            finally:
                sent["caught"] = time.monotonic()
                armed[0] = False
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGINT, previous)
    latency = sent["caught"] - sent["t"]
    assert latency < 0.2, f"stopped {latency:.3f} s after SIGINT"
    r = m.last_reply
    assert r.interrupted and 0 < r.stats.n_generated < 1900
    assert ip.user_ns["_"] is r
    assert m.history[-1] == {"role": "assistant", "content": r.text, "interrupted": True}
    r2 = run(ip, "--no-chat -n 3 -t 0 --no-stream", "Next")         # the next cell works normally
    assert not r2.interrupted and r2.stats.n_generated == 3


def test_model_option_loads_a_model_for_one_cell(ip, tiny):
    r = run(ip, f"-m {UNTIED} -n 3 --no-stream", "Hi")
    assert r.model == "untied"
    reg = ip._ryz_magics.registry
    assert reg.current_name == "tiny" and sorted(reg.names()) == ["tiny", "untied"]
    ref = reg.get("untied").new_session().generate("Hi", 3, temperature=0.0)
    assert r.tokens == ref.tokens


def test_default_model_is_loaded_by_the_first_cell(ip):
    ip.run_line_magic("config", f"RyzMagics.default_model = {str(TINY)!r}")
    ip.run_line_magic("config", "RyzMagics.temperature = 0")
    with capture_output() as cap:
        r = run(ip, "-n 2 --no-stream", "Hi")
    assert "loaded packed" in cap.stdout and r.model == "packed"
    assert ip._ryz_magics.registry.current_name == "packed"


def test_terminal_ipython_streams_pieces_once(ip, tiny, capsys):
    """In terminal IPython (display prints every update in full) the pieces are printed as they
    come and the reply is not printed again."""
    from ryzjupyter.jupyter.magics.display import is_plain_terminal
    assert is_plain_terminal(ip)
    capsys.readouterr()
    r = run(ip, "-n 12 --stream", "The train left the station")
    out = capsys.readouterr().out
    assert out == r.text + "\n"


def test_chat_without_a_chat_template_is_a_usage_error(ip, tmp_path):
    import json
    import shutil
    folder = tmp_path / "notemplate"
    shutil.copytree(TINY, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    ip.run_line_magic("ryz", f"load {folder}")
    r = ip.run_cell("%%ryz --chat -n 2\nHi")
    assert isinstance(r.error_in_exec, UsageError)
    assert "no chat template" in str(r.error_in_exec) and "--no-chat" in str(r.error_in_exec)
    assert ip._ryz_magics.history == []
    assert run(ip, "--no-chat -n 2", "Hi").finish_reason in ("length", "stop")   # plain completion works


def test_why_a_reply_stopped(ip, tiny):
    """The footer, reply.finish and the manager's report (what the sidebar shows) say why a reply
    ended: max tokens, a stop string, the context being full; a stop token is named by its text."""
    from ryzjupyter.jupyter.magics.display import StatsFooter
    from ryzjupyter.manager import MANAGER, finish_info
    r = run(ip, "-n 3 --no-stream", "Once upon a time")
    assert r.finish == {"reason": "length", "label": "max tokens reached (3 tokens)", "detail": 3}
    assert StatsFooter(r).line().endswith(" \u00b7 stopped: max tokens reached (3 tokens)")
    assert MANAGER.last_generation["finish"]["reason"] == "length"

    full = run(ip, "-n 16 --no-stream", "Once upon a time").text
    stop = full.strip()[4:7]
    assert len(stop.strip()) == 3
    r = run(ip, f"-n 16 --no-stream --stop '{stop}'", "Once upon a time")
    assert r.finish_reason == "stop" and stop not in r.text and full.startswith(r.text)
    assert r.finish["reason"] == "stop_string" and r.finish["detail"] == stop
    assert f"stopped: stop string {stop!r}" in StatsFooter(r).line()

    # a stop token (the engine's API takes token ids): the third greedy token
    ref = tiny.new_session().generate("Once upon a time", 8, temperature=0.0)
    tid = ref.tokens[2]
    res = tiny.new_session().generate("Once upon a time", 8, temperature=0.0, stop=[tid])
    assert res.finish_reason == "stop" and res.tokens[-1] == tid
    info = finish_info(res, tiny.tokenizer)
    assert info["reason"] == "stop_token" and info["detail"] == tiny.tokenizer.id_to_token(tid)
    assert info["label"] == f"stop token {tiny.tokenizer.id_to_token(tid)!r}"

    # the context is full: a model loaded with a 16-token context
    ip.run_line_magic("ryz", f"load {TINY} --name short --max-context 16")
    r = run(ip, "-m short -n 40 --no-stream", "Once upon a time")
    # the cache holds the prompt and every generated token but the last (sampled from a full cache)
    assert r.finish_reason == "context" and r.stats.n_prompt + r.stats.n_generated - 1 == 16
    assert r.finish["label"] == "context full (16 tokens)"
    assert "stopped: context full (16 tokens)" in StatsFooter(r).line()
    assert MANAGER.last_generation["finish"] == r.finish


def test_stats_reads_as_text(ip, tiny):
    """%ryz stats: the model once, stop tokens as their text, no 'None'."""
    run(ip, "-n 4 --no-stream --stop END", "Once upon a time")
    with capture_output() as cap:
        ip.run_line_magic("ryz", "stats")
    out = cap.stdout
    rows = {ln.split()[0]: ln.split(None, 1)[1] for ln in out.splitlines() if ln.strip()}
    assert [ln.split()[0] for ln in out.splitlines()].count("model") == 1
    assert rows["system"] == "(none)" and "None" not in out
    stop_ids = tiny.tokenizer.stop_token_ids
    assert stop_ids
    assert rows["stop"] == ", ".join(["'END'"] + [f"{tiny.tokenizer.id_to_token(i)} (token {i})" for i in stop_ids])
    assert rows["stopped"] == "max tokens reached (4 tokens)"


def test_draft_option_and_config(ip, tiny):
    """--draft / %config RyzMagics.draft: speculative decoding, the same greedy reply, its figures
    in the footer and %ryz stats."""
    prompt = "the cat sat on the mat and the cat sat on the hat and the cat"
    ref = tiny.new_session().generate(prompt, 20, temperature=0.0)
    r = run(ip, "-n 20 -t 0 --no-stream --draft lookup --num-draft 4", prompt)
    assert r.tokens == ref.tokens
    assert (r.settings["draft"], r.settings["num_draft"]) == ("lookup", 4)
    assert r.stats.drafter == "lookup" and r.stats.target_passes == r.stats.n_generated - r.stats.accepted
    ip.run_line_magic("config", "RyzMagics.draft = 'adjacency'")
    r = run(ip, "-n 20 -t 0 --no-stream", prompt)
    assert r.tokens == ref.tokens and r.settings["draft"] == "adjacency"
    with capture_output() as cap:
        ip.run_line_magic("ryz", "stats")
    assert "draft tokens accepted" in cap.stdout and "tokens per target pass" in cap.stdout
    r = run(ip, "-n 5 -t 0 --no-stream --draft off", prompt)
    assert "draft" not in r.settings and r.stats.drafter == ""
    with pytest.raises(UsageError, match="same tokenizer"):
        run(ip, "-n 3 --draft demo-draft", prompt)


def test_an_interrupt_leaves_with_a_short_traceback(ip, tiny, monkeypatch):
    """An interrupt that lands deep below the magic (here: while the reply is displayed) leaves
    it as a fresh KeyboardInterrupt raised in magics.py, with no context and none of the frames it
    landed in: IPython's traceback display parses, and keeps for good, every source file a
    traceback shows (stack_data/executing), so interrupts that landed in ipykernel, threading or
    traitlets grew the kernel by each new module (the soak's RSS growth, docs/robustness.md)."""
    import traceback

    from ryzjupyter.jupyter.magics import magics as magics_module

    def display_interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(magics_module, "display", display_interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        ip.run_cell_magic("ryz", "-n 3 --no-stream", "Hello")
    e = info.value
    assert e.__context__ is None and e.__cause__ is None
    frames = traceback.extract_tb(e.__traceback__)
    assert [f.name for f in frames if f.filename == magics_module.__file__] == ["ryz", "_raise_interrupt"], frames
    assert "display_interrupted" not in [f.name for f in frames]
    assert magics_module.REGISTRY.get("tiny") is not None        # the kernel goes on: the model is still there
