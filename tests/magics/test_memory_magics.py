"""%%ryz --recycle, RyzMagics.recycle and %ryz memory on a real bank in a temporary folder, with the
tiny fixture model: what goes in, what the reply says it used, and the errors."""
import pytest
from IPython.core.error import UsageError

pytest.importorskip("qdrant_client", reason="qdrant-client is in the memory extra (ci pulls it)")

FACT = "The secret harbour of Port Lumen opens only at the third bell after midnight."


def run(ip, line, cell):
    ip.run_cell_magic("ryz", line, cell)
    return ip.user_ns["_"]


@pytest.fixture
def mem(ip, tiny, tmp_path, capsys):
    ip.run_line_magic("config", f"RyzMagics.memory_path = {str(tmp_path / 'bank')!r}")
    ip.run_line_magic("config", "RyzMagics.stream = False")
    bank = ip._ryz_magics.bank()
    yield bank
    bank.close()


def test_recycle_puts_units_before_the_prompt_and_says_which(ip, mem, tiny):
    ids = mem.add(FACT, source="file", segment_text=False)
    reply = run(ip, "-n 4 --recycle 3", "When does the harbour of Port Lumen open?")
    assert [r.id for r in reply.recycled] == ids and reply.recycled[0].source == "file"
    assert reply.recycled[0].score > 0.3
    ref = tiny.new_session().generate(FACT + "\n\nWhen does the harbour of Port Lumen open?", 4, temperature=0.0)
    assert reply.tokens == ref.tokens                    # the model read the unit before the prompt
    plain = run(ip, "-n 4", "When does the harbour of Port Lumen open?")
    assert plain.recycled == []


def test_recycle_config_remembers_prompts_and_replies(ip, mem):
    ip.run_line_magic("config", "RyzMagics.recycle = True")
    reply = run(ip, "-n 3", "Remember the blue lighthouse")
    sources = {h.source: h.text for h in mem.list()}
    assert sources["prompt"] == "Remember the blue lighthouse"
    assert ("reply" in sources) == bool(reply.text.strip())


def test_memory_line_commands(ip, mem, capsys):
    ids = mem.add(FACT, source="cell", segment_text=False)
    ip.run_line_magic("ryz", "memory list")
    assert ids[0] in capsys.readouterr().out
    hits = ip.run_line_magic("ryz", "memory search harbour bell -k 2")
    assert hits[0].id == ids[0]
    stats = ip.run_line_magic("ryz", "memory stats")
    assert stats["rsus"] == 1 and stats["sources"] == {"cell": 1}
    ip.run_line_magic("ryz", f"memory forget {ids[0]}")
    assert "forgot 1 of 1" in capsys.readouterr().out and len(mem) == 0
    mem.add("another note", segment_text=False)
    ip.run_line_magic("ryz", "memory clear")
    assert len(mem) == 0


def test_memory_errors(ip, mem):
    with pytest.raises(UsageError, match="list | search"):
        ip.run_line_magic("ryz", "memory shred")
    with pytest.raises(UsageError, match="needs the text"):
        ip.run_line_magic("ryz", "memory search")
    with pytest.raises(UsageError, match="needs the id"):
        ip.run_line_magic("ryz", "memory forget")
    with pytest.raises(UsageError, match="--recycle"):
        run(ip, "-n 2 --recycle 0", "x")


QUESTION = "When does the harbour of Port Lumen open?"


def test_recycle_with_system_puts_units_in_the_user_turn(ip, mem, tiny):
    ids = mem.add(FACT, source="file", segment_text=False)
    reply = run(ip, "-n 4 --system 'Answer briefly.' --recycle 2 --recycle-budget 64", QUESTION)
    assert [r.id for r in reply.recycled] == ids and reply.recycled[0].tokens <= 64
    ref = tiny.new_session().chat([{"role": "system", "content": "Answer briefly."},
                                   {"role": "user", "content": FACT + "\n\n" + QUESTION}], 4, temperature=0.0)
    assert reply.tokens == ref.tokens                    # the system prompt first, the unit in the user's turn
    assert reply.settings["system"] == "Answer briefly." and ip._ryz_magics.history == []
    plain = run(ip, "-n 4 --system 'Answer briefly.'", QUESTION)
    nothing = tiny.new_session().chat([{"role": "system", "content": "Answer briefly."},
                                       {"role": "user", "content": QUESTION}], 4, temperature=0.0)
    assert plain.recycled == [] and plain.tokens == nothing.tokens


def test_recycle_with_chat_keeps_the_turn_and_does_not_repeat_units(ip, mem, tiny):
    ids = mem.add(FACT, source="file", segment_text=False)
    other = mem.add("Port Lumen's lighthouse keeper is called Ada Quill.", source="cell", segment_text=False)
    r1 = run(ip, "--chat -n 4 --recycle 1", QUESTION)
    assert [r.id for r in r1.recycled] == ids
    hist = ip._ryz_magics.history
    assert [t["role"] for t in hist] == ["user", "assistant"]
    assert hist[0]["content"] == FACT + "\n\n" + QUESTION          # the turn as the model read it
    s = tiny.new_session()                                           # the engine's own chat, fresh
    ref1 = s.chat(FACT + "\n\n" + QUESTION, 4, temperature=0.0)
    assert r1.tokens == ref1.tokens
    # the next turn: the harbour unit is already in the conversation, so only the keeper's comes
    r2 = run(ip, "--chat -n 4 --recycle 2", "Who keeps the lighthouse of Port Lumen, and when does the harbour open?")
    assert [r.id for r in r2.recycled] == other
    ref2 = s.chat("Port Lumen's lighthouse keeper is called Ada Quill.\n\n"
                  "Who keeps the lighthouse of Port Lumen, and when does the harbour open?", 4, temperature=0.0)
    assert r2.tokens == ref2.tokens
    # a budget smaller than any unit puts nothing in
    r3 = run(ip, "--chat -n 2 --recycle 2 --recycle-budget 1", "Tell me about Port Lumen's lighthouse keeper Ada")
    assert r3.recycled == [] and ip._ryz_magics.history[-2]["content"] == "Tell me about Port Lumen's lighthouse keeper Ada"


@pytest.mark.slow
def test_recycle_with_chat_in_a_jupyter_kernel(tmp_path):
    """--chat --system --recycle in a real IPython kernel (jupyter_client, the path JupyterLab
    uses): the reply's provenance and the kept turn come back through the kernel."""
    import os

    from jupyter_client.manager import start_new_kernel

    from .conftest import REPO, TINY
    from .test_kernel import Kernel, errors
    bank_dir = str(tmp_path / "bank")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1")
    env.pop("RYZ_STREAM", None)
    km, kc = start_new_kernel(kernel_name="python3", env=env, startup_timeout=60,
                              extra_arguments=["--InteractiveShellApp.extensions=ryzjupyter"])
    k = Kernel(km, kc)
    try:
        content, msgs, _ = k.execute(
            "import ryzjupyter\n"
            f"b = ryzjupyter.RecycleBank(path={bank_dir!r}, namespace='nb')\n"
            f"ids = b.add({FACT!r}, source='file', segment_text=False)\nb.close()\n"
            f"%config RyzMagics.memory_path = {bank_dir!r}\n"
            "%config RyzMagics.memory_namespace = 'nb'\n"
            "%config RyzMagics.live_chart = False\n"
            f"%ryz load {TINY} --name tiny", timeout=180)
        assert content["status"] == "ok", errors(msgs)
        content, msgs, _ = k.execute(f"%%ryz --chat --system 'Be brief.' -n 3 -t 0 --recycle 1\n{QUESTION}",
                                     timeout=120)
        assert content["status"] == "ok", errors(msgs)
        assert k.value("[r.id for r in _.recycled] == ids") == "True"
        assert k.value("_.recycled[0].source") == "'file'"
        assert k.value("[t['role'] for t in get_ipython()._ryz_magics.history]") == \
            "['system', 'user', 'assistant']"
        assert k.value("get_ipython()._ryz_magics.history[1]['content']") == repr(FACT + "\n\n" + QUESTION)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
