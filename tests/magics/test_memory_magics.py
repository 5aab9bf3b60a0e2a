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
    with pytest.raises(UsageError, match="--no-chat"):
        run(ip, "-n 2 --recycle --chat", "x")
