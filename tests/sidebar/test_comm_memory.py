"""The comm's `memory` op (the sidebar's Memory section) against a real kernel through jupyter_client:
the magics' own bank in a temporary folder, with the real embedder. Status opens nothing; open,
the newest units and their count; search by similarity without counting a use; bad requests."""
import json

import pytest

from .conftest import CommClient, execute

pytest.importorskip("qdrant_client", reason="qdrant-client is in the memory extra (ci pulls it)")

FACT = "The secret harbour of Port Lumen opens only at the third bell after midnight."
NOTES = ["The csv module reads rows of comma separated values.",
         "Asyncio runs coroutines on an event loop."]


@pytest.fixture(scope="module")
def client(kernel, tmp_path_factory):
    km, kc = kernel
    bank_dir = tmp_path_factory.mktemp("mem") / "bank"
    r = execute(kc, f"%load_ext ryzjupyter\n%config RyzMagics.memory_path = {str(bank_dir)!r}\n"
                    "%config RyzMagics.memory_namespace = 'sidebar'")
    assert r["status"] == "ok", r
    c = CommClient(kc)
    hello = c.open()
    assert "memory" in hello["ops"]
    c.bank_dir = bank_dir
    return c


def test_status_opens_nothing_then_open_lists_the_units(client, kernel):
    km, kc = kernel
    r = client.request("memory")
    assert r["ok"] is True, r
    assert r["memory"] == {"open": False, "namespace": "sidebar", "store": str(client.bank_dir)}
    assert not client.bank_dir.exists()                           # nothing opened, nothing written
    r = client.request("memory", action="open", timeout=120)
    assert r["ok"] is True, r
    assert r["memory"]["open"] is True and r["memory"]["rsus"] == 0 and r["units"] == []
    opened = [p for p in client.pushes if p["push"] == "memory"]
    assert opened and opened[-1] == {"push": "memory", "event": "open", "namespace": "sidebar"}
    seen = len(client.pushes)
    # the cells' bank is the same object: what a cell adds, the sidebar lists (newest first)
    code = (f"_b = get_ipython()._ryz_magics.bank()\n_b.add({FACT!r}, source='file', segment_text=False)\n"
            + "".join(f"_b.add({t!r}, source='cell', segment_text=False)\n" for t in NOTES))
    assert execute(kc, code, timeout=120)["status"] == "ok"
    assert client.wait_push("memory", start=seen)["event"] == "add"      # the sidebar hears of it
    r = client.request("memory", limit=2)
    assert r["memory"]["rsus"] == 3 and len(r["units"]) == 2
    assert [u["text"] for u in r["units"]] == [NOTES[1], NOTES[0]]
    assert {"id", "text", "source", "time", "uses", "score"} <= set(r["units"][0])
    assert client.stray == []                                      # the handler printed nothing


def test_search_ranks_by_similarity_and_counts_no_use(client):
    client.request("memory", action="open", timeout=120)
    r = client.request("memory", action="search", query="When does the harbour open?", k=2, timeout=60)
    assert r["ok"] is True, r
    hits = r["hits"]
    assert len(hits) == 2 and hits[0]["text"] == FACT and hits[0]["source"] == "file"
    assert hits[0]["score"] > hits[1]["score"] > -1
    again = client.request("memory", action="search", query="When does the harbour open?", k=1)
    assert again["hits"][0]["uses"] == 0                          # looking is not using


@pytest.mark.parametrize("args, expect", [
    ({"action": "shred"}, "unknown memory action 'shred'"),
    ({"action": "search"}, "'query' must be a non-empty string"),
    ({"action": "search", "query": "  "}, "'query' must be a non-empty string"),
    ({"action": "search", "query": "x", "k": 0}, "'k' must be an integer in 1..50"),
    ({"action": "status", "limit": "many"}, "'limit' must be an integer in 1..200"),
    ({"action": "search", "query": "x" * 3000}, "'query' is too long"),
])
def test_bad_memory_requests(client, args, expect):
    r = client.request("memory", **args)
    assert r["ok"] is False and expect in r["error"], r


def test_a_folder_that_is_not_a_bank_is_a_clear_error(client, kernel, tmp_path):
    km, kc = kernel
    (tmp_path / "notes.txt").write_text("not a bank")
    assert execute(kc, f"%config RyzMagics.memory_path = {str(tmp_path)!r}")["status"] == "ok"
    try:
        assert client.request("memory")["memory"]["open"] is False
        r = client.request("memory", action="open", timeout=60)
        assert r["ok"] is False and "is not a RecycleBank folder" in r["error"], r
    finally:
        assert execute(kc, f"%config RyzMagics.memory_path = {json.dumps(str(client.bank_dir))}")["status"] == "ok"
