"""Mamba and RWKV-4 on the surfaces BitNet runs on (the magics tests that take `tiny` run all
three families): the model manager (estimate, load, hot-swap, generation), `%ryz stats` with the
recurrent phases, a re-run cell that reuses the state, the CLI, and the OpenAI-compatible server.
Real fixture models, real engine."""
import subprocess
import sys

import pytest

from .conftest import FAMILY_FIXTURES, REPO

RECURRENT = ["mamba", "rwkv"]


@pytest.mark.parametrize("family", RECURRENT)
def test_manager_estimates_loads_swaps_and_generates(family):
    from ryzjupyter.manager import ModelManager, estimate_model_bytes
    folder = FAMILY_FIXTURES[family]
    est = estimate_model_bytes(folder)
    assert est["family"] == family and est["kv"] > 0
    mgr = ModelManager(memory_budget="1GiB")
    try:
        name, model = mgr.load(str(folder))
        assert model.family == family and mgr.current() is model
        assert 0.5 * model.nbytes <= est["weights"] <= 4 * model.nbytes   # the folder also holds the references
        # counted against the budget: the weights and the state reserve (the state and its snapshots)
        # the estimate counted before loading, not a KV cache
        info = next(i for i in mgr.list() if i.name == name)
        assert info.nbytes - info.weights_bytes == est["kv"] == model.state_bytes() * (1 + model.n_snapshots)
        name2, other = mgr.load(str(FAMILY_FIXTURES["bitnet"]))          # hot-swap to BitNet and back
        assert mgr.current_name == name2
        assert mgr.use(name) == (name, model)
        r = mgr.generate("Hello", 4, temperature=0, ignore_eos=True)
        assert r.stats.n_generated == 4 and mgr.last_generation["model"] == name
        prof = mgr.last_generation["profile"]
        assert {"scan", "matmul", "lm_head"} <= set(prof), prof
    finally:
        mgr.clear()


@pytest.mark.parametrize("family", RECURRENT)
def test_rerun_cell_reuses_the_state_and_stats_show_the_phases(ip, family):
    ip.run_line_magic("ryz", f"load {FAMILY_FIXTURES[family]} --name rec")
    ip.run_line_magic("config", "RyzMagics.temperature = 0")
    ip.run_line_magic("config", "RyzMagics.show_stats = False")
    prompt = "The small river ran past the mill and under the old stone bridge."
    ip.run_cell_magic("ryz", "-n 6 --no-stream", prompt)
    first = ip._ryz_magics.last_reply
    assert {"scan", "conv", "matmul", "lm_head"} <= set(first.profile.phases), first.profile.phases
    from IPython.utils.capture import capture_output
    with capture_output() as cap:
        ip.run_line_magic("ryz", "stats")                  # the first cell's profile: a real prefill
    shown = [o.data.get("text/plain", "") + o.data.get("text/html", "") for o in cap.outputs]
    ip.run_cell_magic("ryz", "-n 6 --no-stream", prompt)
    again = ip._ryz_magics.last_reply
    assert again is not first
    assert again.tokens == first.tokens
    assert again.stats.n_prefill == 1 and again.stats.n_cached == first.stats.n_prompt - 1
    assert any("scan" in t for t in shown), shown       # the profile view lists the recurrent phases


@pytest.mark.parametrize("family", RECURRENT)
def test_cli_generate(family):
    out = subprocess.run([sys.executable, "-m", "ryzjupyter", "generate", "--model", str(FAMILY_FIXTURES[family]),
                          "-n", "5", "-t", "0", "--stats", "The capital"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "5 generated" in out.stderr


@pytest.mark.parametrize("family", RECURRENT)
def test_openai_server_completes_with_the_model(family):
    pytest.importorskip("starlette", reason="the server needs the serve extra (in the test extras)")
    openai = pytest.importorskip("openai")
    from ryzjupyter import serve
    from ryzjupyter.manager import ModelManager
    mgr = ModelManager(memory_budget="1GiB")
    name, model = mgr.load(str(FAMILY_FIXTURES[family]))
    h = serve.start(mgr, port=0)
    try:
        client = openai.OpenAI(base_url=h.url, api_key=h.api_key, max_retries=0, timeout=120)
        r = client.completions.create(model=name, prompt="The capital", max_tokens=5, temperature=0)
        want = model.new_session().generate("The capital", 5, temperature=0)
        assert r.choices[0].text == want.text
        chunks = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=4, temperature=0, stream=True)
        assert sum(1 for _ in chunks) >= 1
    finally:
        serve.stop()
        mgr.clear()
