"""The `ryzjupyter` comm protocol against a real kernel, through jupyter_client.

Real tiny BitNet, Mamba and RWKV-4 models (tests/fixtures) and, for the stop test, a random model
of each family big enough that a generation runs for seconds. No mocks: the kernel runs the real manager and engine.
"""
import time

import pytest

from .conftest import RECURRENT_FIXTURES, CommClient, execute


@pytest.fixture(scope="module")
def client(kernel):
    km, kc = kernel
    r = execute(kc, "import ryzjupyter.jupyter.comm as _rc; assert _rc.register()")
    assert r["status"] == "ok", r
    c = CommClient(kc)
    hello = c.open()
    assert hello["protocol"] == 1
    assert "load" in hello["ops"] and "stop" in hello["ops"]
    return c


def test_status_and_list(client):
    r = client.request("status")
    assert r["ok"] is True and r["protocol"] == 1
    assert r["state"]["memory"]["budget"] > 0
    r = client.request("list")
    assert r["ok"] is True and r["id"] == client.next_id - 1
    names = {m["name"]: m for m in r["models"]}
    assert {"packed", "online", "untied"} <= set(names)       # the fixtures, from $RYZ_MODEL_DIRS
    m = names["packed"]
    assert m["loaded"] is False and m["memory_bytes"] > 100_000 and m["family"] == "bitnet"
    assert m["memory"].startswith("~")
    for family, folder in RECURRENT_FIXTURES.items():     # the recurrent fixtures, with their estimate
        assert names[folder]["family"] == family and names[folder]["memory_bytes"] > 10_000, names[folder]


def test_memory_before_the_magics_are_loaded(client):
    """The sidebar's Memory section before %load_ext ryzjupyter (tests/sidebar/test_comm_memory.py: after)."""
    r = client.request("memory")
    assert r["ok"] is True and r["memory"] == {"open": False, "magics": False}
    r = client.request("memory", action="open")
    assert r["ok"] is False and "%load_ext ryzjupyter" in r["error"]


@pytest.mark.parametrize("data, expect", [
    ("status", "JSON object"),
    ([1, 2], "JSON object"),
    (None, "JSON object"),
    ({"op": "status"}, "missing 'id'"),
    ({"id": 1}, "missing 'op'"),
    ({"id": 2, "op": 7}, "missing 'op'"),
    ({"id": 3, "op": "explode"}, "unknown op 'explode'"),
    ({"id": [1], "op": "status"}, "'id' must be"),
    ({"id": True, "op": "status"}, "'id' must be"),
    ({"id": 4, "op": "load", "model": 12}, "'model' must be a non-empty string"),
    ({"id": 5, "op": "load", "model": "packed", "options": {"rm_rf": True}}, "unknown load option"),
    ({"id": 6, "op": "load", "model": "packed", "options": {"max_context": "big"}}, "must be int"),
    ({"id": 7, "op": "load", "model": "packed", "options": []}, "'options' must be an object"),
    ({"id": 8, "op": "use"}, "'model' must be a non-empty string"),
    ({"id": 9, "op": "use", "model": "not-loaded"}, "no loaded model called 'not-loaded'"),
    ({"id": 10, "op": "unload", "model": "nope"}, "no loaded model called 'nope'"),
    ({"id": 11, "op": "budget"}, "'bytes' is required"),
    ({"id": 12, "op": "budget", "bytes": "lots"}, "cannot read 'lots'"),
    ({"id": 13, "op": "budget", "bytes": -5}, "must be positive"),
    ({"id": 14, "op": "register", "path": "/nonexistent/folder"}, "not a model folder"),
    ({"id": 15, "op": "load", "model": "/nonexistent/model"}, "Error"),
    ({"id": 16, "op": "status", "pad": "x" * 70000}, "at most 65536"),
])
def test_malformed_messages_get_errors(client, kernel, data, expect):
    client.send_raw(data)
    rid = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), int) \
        and not isinstance(data.get("id"), bool) else None
    if isinstance(data, dict) and len(str(data)) > 65536:
        rid = data["id"]
    r = client.wait_reply(rid, 30)
    assert r["ok"] is False
    assert expect in r["error"], r["error"]
    # the kernel is fine and answers the next request
    assert client.request("status")["ok"] is True
    assert client.stray == []


def test_load_use_unload_and_list(client, kernel):
    km, kc = kernel
    start = len(client.pushes)
    r = client.request("load", model="packed")
    assert r["ok"] is True, r
    assert r["name"] == "packed" and r["state"]["current"] == "packed"
    prog = [p for p in client.pushes[start:] if p["push"] == "progress"]
    assert prog and prog[-1].get("finished") and prog[-1]["fraction"] == 1.0
    assert any(0 < p.get("fraction", 0) < 1 or p.get("total") for p in prog)   # per-layer progress
    r = client.request("load", model="online")
    assert r["ok"] and r["state"]["current"] == "online"
    r = client.request("list")
    loaded = {m["name"]: m for m in r["models"] if m["loaded"]}
    assert set(loaded) == {"packed", "online"} and loaded["online"]["current"]
    assert loaded["packed"]["memory_bytes"] > 0
    # hot-swap: no reload (the same model object stays in memory)
    execute(kc, "from ryzjupyter.manager import MANAGER; _obj = id(MANAGER.get('packed'))")
    r = client.request("use", model="packed")
    assert r["ok"] and r["state"]["current"] == "packed"
    rep = execute(kc, "assert id(MANAGER.get('packed')) == _obj and MANAGER.current_name == 'packed'")
    assert rep["status"] == "ok", rep
    r = client.request("unload", model="online")
    assert r["ok"] and [m["name"] for m in r["state"]["loaded"]] == ["packed"]
    assert client.stray == []


def test_load_use_unload_recurrent_models(client, kernel):
    """A Mamba and an RWKV-4 fixture through the same ops: load (with progress), hot-swap without a
    reload, a generation whose stats carry the recurrent phases, unload."""
    km, kc = kernel
    mamba, rwkv = RECURRENT_FIXTURES["mamba"], RECURRENT_FIXTURES["rwkv"]
    start = len(client.pushes)
    r = client.request("load", model=mamba)
    assert r["ok"] is True, r
    assert r["name"] == mamba and r["state"]["current"] == mamba
    prog = [p for p in client.pushes[start:] if p["push"] == "progress"]
    assert prog and prog[-1].get("finished") and prog[-1]["fraction"] == 1.0
    r = client.request("load", model=rwkv)
    assert r["ok"] and r["state"]["current"] == rwkv
    loaded = {m["name"]: m for m in client.request("list")["models"] if m["loaded"]}
    assert {mamba, rwkv} <= set(loaded) and loaded[rwkv]["current"]
    assert loaded[mamba]["memory_bytes"] > 0 and loaded[mamba]["family"] == "mamba"
    execute(kc, f"from ryzjupyter.manager import MANAGER; _obj = id(MANAGER.get({mamba!r}))")
    r = client.request("use", model=mamba)
    assert r["ok"] and r["state"]["current"] == mamba
    rep = execute(kc, f"assert id(MANAGER.get({mamba!r})) == _obj and MANAGER.current_name == {mamba!r}\n"
                      "MANAGER.generate('Hello', 5, temperature=0, ignore_eos=True)")
    assert rep["status"] == "ok", rep
    r = client.request("stats")
    assert r["ok"] and r["last"]["model"] == mamba and r["last"]["tokens"] == 5
    assert {"scan", "conv", "matmul"} <= set(r["last"]["profile"]), r["last"]["profile"]
    for name in (rwkv, mamba):
        assert client.request("unload", model=name)["ok"]
    assert client.stray == []


def test_a_1024_token_context_through_the_sidebar(client, kernel, tmp_path):
    """A model whose context is 1024 tokens, loaded from the sidebar with max_context 1024: a
    prompt of 900+ tokens answered in the kernel, the sidebar's stats of that generation, then the
    prefix reused by a longer prompt (only the new tokens prefilled)."""
    from pathlib import Path

    import ryzjupyter
    from ryzjupyter.families.random_bitnet import write_random_bitnet
    folder = write_random_bitnet(tmp_path / "ctx1024", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
                                 max_position_embeddings=1024, seed=11,
                                 tokenizer_from=Path(ryzjupyter.__file__).parent / "models" / "demo")
    km, kc = kernel
    r = client.request("load", model=str(folder), options={"max_context": 1024})
    assert r["ok"] is True, r
    name = r["name"]
    words = "and the LORD said unto Moses go up into the mountain of the city ".split()
    rep = execute(kc, "from ryzjupyter.manager import MANAGER\n"
                      f"_m = MANAGER.get({name!r}); assert _m.max_context == 1024\n"
                      f"_w = {words!r}\n"
                      "_p = ' '.join(_w[i % len(_w)] for i in range(2000))\n"
                      "_ids = _m.tokenizer.encode(_p)[:900]\n"
                      "_r1 = MANAGER.generate(_ids, 8, temperature=0, ignore_eos=True)\n"
                      "_r2 = MANAGER.generate(_ids + _ids[:40], 8, temperature=0, ignore_eos=True)\n"
                      "assert _r1.stats.n_prompt == 900 and _r2.stats.n_prompt == 940, (_r1.stats, _r2.stats)\n"
                      "assert _r2.stats.n_cached >= 899 and _r2.stats.n_prefill <= 41, _r2.stats", timeout=120)
    assert rep["status"] == "ok", rep
    r = client.request("stats")
    assert r["ok"] and r["last"]["model"] == name and r["last"]["tokens"] == 8
    assert client.request("unload", model=name)["ok"]
    assert client.stray == []


def test_load_refused_for_memory(client, kernel):
    km, kc = kernel
    r = client.request("load", model="packed")
    assert r["ok"]
    used = r["state"]["memory"]["used"]
    r = client.request("budget", bytes=used + 1000)
    assert r["ok"] and r["state"]["memory"]["budget"] == used + 1000
    r = client.request("load", model="float_noquant")      # ~560 KiB: larger than the whole budget
    assert r["ok"] is False and r["reason"] == "memory"
    assert "float_noquant needs about" in r["error"] and "memory budget" in r["error"]
    assert r["needed"] > r["budget"]
    # nothing was unloaded by the refusal
    assert [m["name"] for m in r["state"]["loaded"]] == ["packed"]
    # LRU: with room for two, loading a third unloads the least recently used idle one
    r = client.request("budget", bytes=int(2.5 * used))
    client.request("load", model="online")
    client.request("use", model="packed")                     # online is now least recently used
    r = client.request("load", model="untied")
    assert r["ok"], r
    assert sorted(m["name"] for m in r["state"]["loaded"]) == ["packed", "untied"]
    assert any(p["push"] == "state" and p.get("reason") == "unloaded" for p in client.pushes)
    client.request("budget", bytes=None)
    for name in ("packed", "untied"):
        client.request("unload", model=name)


@pytest.mark.parametrize("family", ["bitnet", "mamba", "rwkv"])
def test_stop_and_stats_during_generation_over_a_subshell(kernel, slow_models, family):
    """Like JupyterLab (commsOverSubshells): the comm runs on a subshell, so status, stats and
    stop are answered while a cell generates, and stop ends the generation with the partial text."""
    km, kc = kernel
    kc.control_channel.send(kc.session.msg("create_subshell_request", {}))
    msg = kc.get_control_msg(timeout=10)
    assert msg["content"]["status"] == "ok", msg["content"]
    sub = CommClient(kc, subshell_id=msg["content"]["subshell_id"])
    sub.open()
    r = sub.request("load", model=str(slow_models(family)), name="slow", timeout=120)
    assert r["ok"], r
    try:
        _stop_and_stats(kc, sub, family)
    finally:
        sub.request("unload", model="slow", timeout=60)     # the next family loads its own "slow"


def _stop_and_stats(kc, sub, family):
    # the BitNet model's context holds 3000 tokens; a recurrent one has no context limit and
    # decodes its small random model fast (3000 tokens took about a second on AVX-512): ask for more
    asked = 3000 if family == "bitnet" else 20000
    code = ("from ryzjupyter.manager import MANAGER\n"
            f"res = MANAGER.generate('Once upon a time', {asked}, ignore_eos=True)\n"
            "print('FINISH', res.finish_reason, res.stats.n_generated)")
    msg_id = kc.execute(code)
    # live stats pushes arrive while the cell runs
    sub.wait_push("stats", timeout=60)
    live = [p for p in sub.pushes if p["push"] == "stats"][-1]["live"]
    assert live["model"] == "slow" and live["running"] and live["tokens"] >= 1
    r = sub.request("stats", timeout=10)
    assert r["ok"] and r["running"] and r["running"][0]["model"] == "slow"
    # swapping or unloading the generating model is refused while it runs
    r = sub.request("unload", model="slow", timeout=10)
    assert r["ok"] is False and r["reason"] == "busy"
    time.sleep(0.5)
    t_stop = time.monotonic()
    r = sub.request("stop", timeout=10)
    assert r["ok"] and r["stopped"] is True
    out = ""
    while True:
        m = kc.get_iopub_msg(timeout=60)
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        if m["msg_type"] == "stream":
            out += m["content"]["text"]
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            break
    # the comm stop, not the end of the 3000 tokens nor the sidebar's 2 s interrupt fallback
    # (docs/sidebar.md; that it stops at the next token is counted in test_manager.py)
    assert time.monotonic() - t_stop < 2.0
    assert "FINISH interrupted" in out, out
    n = int(out.split()[-1])
    assert 0 < n < asked
    r = sub.request("stats", timeout=10)
    assert r["last"]["finish_reason"] == "interrupted" and r["last"]["tokens"] == n
    assert "matmul" in r["last"]["profile"] and ("attention" if family == "bitnet" else "scan") in r["last"]["profile"]
    assert sub.stray == []


def test_stale_comms_are_bounded(kernel):
    """A page reload leaves its comm open in the kernel; only the newest MAX_OPEN_COMMS stay."""
    km, kc = kernel
    from ryzjupyter.jupyter.comm import MAX_OPEN_COMMS
    clients = [CommClient(kc) for _ in range(MAX_OPEN_COMMS + 2)]
    for c in clients:
        c.open()
    assert clients[-1].request("status")["ok"] is True
    r = execute(kc, "import ryzjupyter.jupyter.comm as _c\n"
                    "assert len(_c._comms) == _c.MAX_OPEN_COMMS, len(_c._comms)\n"
                    f"assert {clients[0].comm_id!r} not in _c._comms and {clients[-1].comm_id!r} in _c._comms")
    assert r["status"] == "ok", r

