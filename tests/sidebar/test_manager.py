"""ModelManager in-process, with the real engine and real tiny models (tests/fixtures/bitnet; the
generation lock and stop also with a slow random Mamba and RWKV-4 model)."""
import threading
import time

import pytest

from ryzjupyter.manager import (MemoryBudgetError, ModelBusyError, ModelManager, estimate_model_bytes,
                                format_bytes, parse_bytes)

from .conftest import FIXTURES


def fx(name):
    return str(FIXTURES / name)


@pytest.fixture
def mgr():
    m = ModelManager(memory_budget="1GiB")
    yield m
    m.clear()


def test_parse_and_format_bytes():
    assert parse_bytes("6GiB") == 6 * 2**30
    assert parse_bytes("512 MB") == 512 * 10**6
    assert parse_bytes(4_000_000) == 4_000_000
    assert parse_bytes("1.5k") == 1500
    for bad in ("lots", "", "-3GB", 0, -1, True, None, [1]):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(3 * 2**30) == "3.0 GiB"


def test_estimate_matches_loaded_size(mgr):
    for name in ("packed", "online", "untied", "float_noquant"):
        est = estimate_model_bytes(fx(name))
        _, model = mgr.load(fx(name))
        # the estimate is close to what the engine reports after loading (which holds one or two ternary
        # layouts, depending on which kernel measured faster on this machine)
        assert 0.75 * model.nbytes <= est["weights"] <= 1.6 * model.nbytes, (name, est, model.nbytes)
        mgr.unload(name)


def test_estimate_and_reserve_follow_the_kv_cache_format(mgr):
    full = estimate_model_bytes(fx("packed"))
    for kv, frac in (("f16", 0.5), ("bf16", 0.5)):
        assert estimate_model_bytes(fx("packed"), kv_cache=kv)["kv"] == frac * full["kv"]
        name, model = mgr.load(fx("packed"), name=f"packed-{kv}", kv_cache=kv)
        info = next(m for m in mgr.list() if m.name == name)
        assert info.nbytes - model.nbytes == frac * full["kv"]
        mgr.unload(name)


def test_registry_interface_and_hot_swap(mgr):
    name, model = mgr.load(fx("packed"))
    assert name == "packed" and mgr.current() is model and mgr.current_name == "packed"
    name2, model2 = mgr.load(fx("online"))
    assert mgr.current_name == "online" and mgr.names() == ["packed", "online"]
    # loading the same folder again returns the loaded model (no reload) and makes it current
    again, same = mgr.load(fx("packed"))
    assert again == "packed" and same is model and mgr.current_name == "packed"
    assert mgr.use("online") == ("online", model2)
    assert mgr.find(fx("online")) == "online" and mgr.find("nope") is None
    infos = {i.name: i for i in mgr.list()}
    assert infos["online"].current and not infos["packed"].current
    assert infos["packed"].nbytes > infos["packed"].weights_bytes > 0
    with pytest.raises(KeyError):
        mgr.use("nope")
    assert mgr.unload("online") == "online"
    assert mgr.current_name == "packed"
    # generation through the manager uses the current model
    r = mgr.generate("Hello", 4)
    assert r.stats.n_generated == 4
    assert mgr.last_generation["model"] == "packed" and mgr.last_generation["tokens"] == 4
    prof = mgr.last_generation["profile"]            # the engine's profile: where the time went
    assert "matmul" in prof and "python" in prof and all(v >= 0 for v in prof.values())


def test_loading_the_default_twice_holds_it_once(mgr):
    """load() with no spec is the bundled demo: a second call returns the loaded one (a sidebar that
    sent "load" a hundred times held a hundred copies, demo-2 ... demo-100, until memory ran out)."""
    name, model = mgr.load()
    mgr.load(fx("packed"))
    again, same = mgr.load()
    assert (again, same) == (name, model) and mgr.current_name == name
    assert sorted(mgr.names()) == sorted([name, "packed"])
    other, copy = mgr.load(name="demo-copy")          # a second copy only when asked for by name
    assert other == "demo-copy" and copy is not model


def test_refusal_names_the_size_and_unloads_nothing(mgr):
    mgr.load(fx("packed"))
    need = estimate_model_bytes(fx("float_noquant"))["total"]
    mgr.set_memory_budget(need - 1)
    with pytest.raises(MemoryBudgetError) as e:
        mgr.load(fx("float_noquant"))
    assert "float_noquant needs about " + format_bytes(need) in str(e.value)
    assert e.value.needed == need and e.value.budget == need - 1
    assert mgr.names() == ["packed"]


def test_lru_unloads_the_least_recently_used_idle_model(mgr):
    mgr.load(fx("packed"))
    one = mgr.list()[0].nbytes
    mgr.set_memory_budget(int(2.5 * one))
    events = []
    mgr.subscribe(events.append)
    mgr.load(fx("online"))
    mgr.use("packed")                          # online becomes the least recently used
    mgr.load(fx("rope_parameters"))
    assert sorted(mgr.names()) == ["packed", "rope_parameters"]
    assert {"event": "unloaded", "name": "online", "reason": "lru"} in events
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["finished"] and any(e.get("total") for e in progress)


@pytest.mark.parametrize("family", ["bitnet", "mamba", "rwkv"])
def test_generation_lock_and_stop(mgr, slow_models, family):
    mgr.load(fx("packed"))
    mgr.load(str(slow_models(family)), name="slow")
    assert mgr.get("slow").family == family
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "r", mgr.generate("Once upon a time", 3000, ignore_eos=True)))
    t.start()
    deadline = time.monotonic() + 30
    while not (mgr.generating_now and mgr.live_stats()["running"][0]["tokens"] > 2):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert mgr.list()[-1].busy
    with pytest.raises(ModelBusyError):
        mgr.unload("slow")
    with pytest.raises(ModelBusyError):
        mgr.use("packed")
    # a busy model is never evicted: a load that would need its memory is refused instead
    mgr.set_memory_budget(mgr.used_bytes + 10)
    with pytest.raises(MemoryBudgetError):
        mgr.load(fx("untied"))
    assert "slow" in mgr.names()
    t0 = time.monotonic()
    assert mgr.stop() is True
    seen = mgr.live_stats()["running"][0]["tokens"]     # tokens counted once the stop is requested
    t.join(10)
    assert not t.is_alive() and time.monotonic() - t0 < 2
    r = result["r"]
    # docs/sidebar.md: stop ends the generation at its next token (the one being computed)
    assert r.finish_reason == "interrupted" and 0 < r.stats.n_generated <= seen + 1, (r.stats.n_generated, seen)
    assert mgr.last_generation["finish_reason"] == "interrupted"
    assert mgr.stop() is False
    mgr.use("packed")
    mgr.unload("slow")


def test_estimate_counts_each_lm_head_format():
    """The estimate's weights differ between lm_head formats by exactly the head bytes the engine
    keeps (f32; int8 + row scales; int4 nibbles + float16 group scales)."""
    from ryzjupyter.families.loading import bundled_model_path, load
    folder = bundled_model_path()
    est = {h: estimate_model_bytes(folder, lm_head=h)["weights"] for h in ("f32", "int8", "int4")}
    head = {h: sum(a.nbytes for a in load(folder, lm_head=h).weights.head_arrays()) for h in est}
    assert est["f32"] - est["int4"] == head["f32"] - head["int4"]
    assert est["int8"] - est["int4"] == head["int8"] - head["int4"] > 0


def test_register_refuses_paths_that_cannot_be_read(mgr, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot be read"):      # stat() fails: ENAMETOOLONG
        mgr.register(str(tmp_path / ("x" * 300)))
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        mgr.register(str(tmp_path))
    assert mgr.register(fx("packed")) == "packed"
