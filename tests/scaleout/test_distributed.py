"""ryzjupyter.distributed on a real LocalCluster of 2 single-threaded worker processes (one cluster
for the module), against the same engine run in this process: the bundled demo model."""
import os
import signal
import time

import numpy as np
import pytest

import ryzjupyter
from ryzjupyter import distributed as rd
from ryzjupyter.bench.ppl import perplexity as single_process_perplexity
from ryzjupyter.models import MODELS_DIR

distributed = pytest.importorskip("distributed", reason="distributed (dask) is in the ci extra")

PROMPTS = [f"And {w} said unto" for w in ("Moses", "Aaron", "the LORD", "David", "Saul", "Jacob",
                                          "Joseph", "Pharaoh", "Abraham", "Isaac", "Samuel", "Elijah")]


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"},
                                       env={"RYZ_NUM_THREADS": "1"})
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def model():
    return ryzjupyter.load("demo")


def test_greedy_outputs_equal_the_single_process_outputs(client, model):
    got = rd.generate_many(PROMPTS, model="demo", client=client, max_new_tokens=24, temperature=0,
                           batch_size=3, progress=False)
    for p, r in zip(PROMPTS, got):
        ref = model.generate(p, 24, temperature=0)
        assert (r.text, r.tokens, r.finish_reason) == (ref.text, ref.tokens, ref.finish_reason)
        assert r.prompt_tokens == ref.prompt_tokens


def test_sampled_outputs_with_per_prompt_seeds_equal_the_single_process_outputs(client, model):
    seeds = [100 + i for i in range(len(PROMPTS))]
    got = rd.generate_many(PROMPTS, model="demo", client=client, max_new_tokens=20, temperature=0.9,
                           top_k=40, seed=seeds, batch_size=4, progress=False)
    refs = [model.generate(p, 20, temperature=0.9, top_k=40, seed=s) for p, s in zip(PROMPTS, seeds)]
    assert [r.tokens for r in got] == [r.tokens for r in refs]
    assert [r.settings["seed"] for r in got] == seeds
    assert len({tuple(r.tokens) for r in got}) > 1


def test_the_model_is_loaded_once_per_worker(client):
    for _ in range(2):
        rd.generate_many(PROMPTS[:4], model="demo", client=client, max_new_tokens=4, progress=False)
    loads = rd.model_loads(client)
    assert len(loads) == 2
    name = rd.ModelPlugin("demo").name
    assert [counts[name] for counts in loads.values()] == [1, 1]


def test_a_relative_model_folder_is_sent_as_an_absolute_path(client, model, tmp_path, monkeypatch):
    monkeypatch.chdir(MODELS_DIR)                       # the workers' working folder is not this one
    got = rd.generate_many(["In the beginning"], model="./demo", client=client, max_new_tokens=4,
                           temperature=0, progress=False)
    assert got[0].tokens == model.generate("In the beginning", 4, temperature=0).tokens
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()                         # a folder that is not a model: "demo" stays the bundled name
    got = rd.generate_many(["In the beginning"], model="demo", client=client, max_new_tokens=4,
                           temperature=0, progress=False)
    assert got[0].tokens == model.generate("In the beginning", 4, temperature=0).tokens


def test_terminal_progress_bar_and_the_callback(client, capsys):
    seen = []
    rd.generate_many(PROMPTS[:8], model="demo", client=client, max_new_tokens=4, batch_size=2,
                     progress=lambda done, total: seen.append((done, total)))
    assert [d for d, _ in seen] == [2, 4, 6, 8] and {t for _, t in seen} == {8}
    rd.generate_many(PROMPTS[:8], model="demo", client=client, max_new_tokens=4, batch_size=2)
    err = capsys.readouterr().err
    assert "generate" in err and "8/8" in err and "prompt" in err


def test_out_keeps_given_results_and_computes_only_the_missing(client, model):
    keep = object()
    out = [keep, None, keep, None]
    rd.generate_many(PROMPTS[:4], model="demo", client=client, max_new_tokens=6, temperature=0,
                     out=out, progress=False)
    assert out[0] is keep and out[2] is keep
    assert out[1].tokens == model.generate(PROMPTS[1], 6, temperature=0).tokens
    assert out[3].tokens == model.generate(PROMPTS[3], 6, temperature=0).tokens


def test_an_interrupted_run_keeps_what_came_back_and_resumes(client, model):
    def interrupt(done, total):
        raise KeyboardInterrupt                         # the stop button, after the first task's results

    out = [None] * 8
    with pytest.raises(KeyboardInterrupt):
        rd.generate_many(PROMPTS[:8], model="demo", client=client, max_new_tokens=6, temperature=0,
                         batch_size=2, out=out, progress=interrupt)
    kept = {i: r for i, r in enumerate(out) if r is not None}
    assert 2 <= len(kept) < 8
    rd.generate_many(PROMPTS[:8], model="demo", client=client, max_new_tokens=6, temperature=0,
                     batch_size=2, out=out, progress=False)
    assert all(out[i] is r for i, r in kept.items())    # not run again
    assert [r.tokens for r in out] == [model.generate(p, 6, temperature=0).tokens for p in PROMPTS[:8]]


def test_a_failing_task_raises_and_the_results_that_came_back_stay(client, model):
    too_long = list(range(300))                         # the demo model's context holds 256 tokens
    prompts = PROMPTS[:5] + [too_long]
    out = [None] * len(prompts)
    with pytest.raises(ValueError, match="context holds") as e:
        rd.generate_many(prompts, model="demo", client=client, max_new_tokens=4, temperature=0,
                         batch_size=1, out=out, progress=False)
    assert "kept in `out`" in "".join(getattr(e.value, "__notes__", []))
    assert out[5] is None
    for p, r in zip(prompts[:5], out):
        assert r is None or r.tokens == model.generate(p, 4, temperature=0).tokens


def test_options_are_checked_before_anything_runs():
    with pytest.raises(ValueError, match="one value per prompt"):
        rd.generate_many(PROMPTS[:3], seed=[1, 2], client=object())
    with pytest.raises(TypeError, match="unknown generation option"):
        rd.generate_many(PROMPTS[:3], temprature=0.5, client=object())
    with pytest.raises(ValueError, match="temperature"):
        rd.generate_many(PROMPTS[:3], temperature=-1, client=object())
    with pytest.raises(TypeError, match="prompt 1"):
        rd.generate_many(["a", 3.5], client=object())


def test_a_model_that_cannot_load_is_a_clear_error_not_a_hang(client, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(rd.ModelLoadError, match="failed to load on a Dask worker.*does not exist"):
        rd.generate_many(PROMPTS[:2], model=str(tmp_path / "missing"), client=client, progress=False)
    assert time.perf_counter() - t0 < 60
    assert rd.ModelPlugin(str(tmp_path / "missing")).name not in client.run_on_scheduler(
        lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    # the cluster still works
    assert len(rd.generate_many(PROMPTS[:2], model="demo", client=client, max_new_tokens=2, progress=False)) == 2


def test_perplexity_equals_the_single_process_figures(client, model):
    path = MODELS_DIR / "demo" / "validation.txt"
    text = path.read_text(encoding="utf-8")[:6000]
    short = "In the beginning God created the heaven and the earth."
    got = rd.perplexity([text, short], model="demo", client=client, n_ctx=64, batch_size=4, progress=False)
    for res, t, source in zip(got, (text, short), ("text 0", "text 1")):
        ref = single_process_perplexity(model, t, n_ctx=64)
        for k in ("ppl", "nll_sum", "predicted_tokens", "tokens", "windows", "n_ctx"):
            assert res[k] == ref[k], k
        assert res["source"] == source
    assert got[0]["windows"] > 4
    with pytest.raises(ValueError, match="too short"):
        rd.perplexity(["x"], model="demo", client=client, progress=False)


def test_ryz_map_runs_the_cell_template_over_a_list(client, model):
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython
    ip = get_ipython()
    ip.extension_manager.load_extension("ryzjupyter")
    names = ["Moses", "Aaron", "David"]
    ip.user_ns.update(names=names, prompts=[f"And {n} went" for n in names])
    with client.as_current():                           # the notebook's default Dask client
        r = ip.run_cell("%%ryz map names -o replies -n 8 -t 0 -m demo\nAnd {item} said unto")
        r.raise_error()
        r = ip.run_cell("%ryz map prompts -o sampled -n 8 -t 0.9 --seed 7 -m demo")
        r.raise_error()
        with pytest.raises(UsageError, match="no variable named 'nope'"):
            ip.run_line_magic("ryz", "map nope")
    assert [x.tokens for x in ip.user_ns["replies"]] == [
        model.generate(f"And {n} said unto", 8, temperature=0).tokens for n in names]
    assert [x.tokens for x in ip.user_ns["sampled"]] == [
        model.generate(f"And {n} went", 8, temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, seed=7 + i).tokens
        for i, n in enumerate(names)]


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(client, model):
    """SIGKILL one worker process when the first result arrives: its tasks run again on the other
    worker (or on its restarted self), every prompt gets its result, each written exactly once."""
    prompts = [f"{p} {i}" for i in range(2) for p in PROMPTS]            # 24 prompts
    refs = [model.generate(p, 40, temperature=0) for p in prompts]
    pids = client.run(os.getpid)
    victim = pids[sorted(pids)[0]]

    class Recording(list):
        def __setitem__(self, i, v):
            writes.append(i)
            super().__setitem__(i, v)

    writes, killed = [], []

    def kill_once(done, total):
        if not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(done)

    out = Recording([None] * len(prompts))
    rd.generate_many(prompts, model="demo", client=client, max_new_tokens=40, temperature=0, batch_size=2,
                     out=out, progress=kill_once)
    assert killed and killed[0] < len(prompts)
    assert sorted(writes) == list(range(len(prompts)))                # every result exactly once
    assert [r.tokens for r in out] == [r.tokens for r in refs]
    client.wait_for_workers(2, timeout=300)           # the nanny restarts the killed worker
    assert victim not in client.run(os.getpid).values()
    name = rd.ModelPlugin("demo").name
    deadline = time.monotonic() + 300                   # its plugin loads the model after it registers
    while (loads := [c.get(name, 0) for c in rd.model_loads(client).values()]) != [1, 1]:
        assert time.monotonic() < deadline and all(n <= 1 for n in loads), loads
        time.sleep(0.5)


def test_embed_many_equals_the_single_process_embeddings(client):
    texts = ["", "In the beginning God created the heaven and the earth.", "def main(): pass",
             "word " * 400] + [f"text number {i}" for i in range(9)]
    got = rd.embed_many(texts, client=client, batch_size=3, progress=False)
    ref = ryzjupyter.embed(texts)
    assert got.shape == ref.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)          # the same kernels, the same rows
    rd.embed_many(texts[:4], client=client, batch_size=1, progress=False)
    name = rd._encoder_name(None)
    loads = [per.get(name, 0) for per in rd.model_loads(client).values()]
    assert sum(loads) >= 1 and max(loads) == 1                     # once per worker that ran a task
    out = [None] * 3
    out[1] = ref[1]
    kept = rd.embed_many(texts[:3], client=client, out=out, progress=False)
    assert np.array_equal(kept[1], ref[1]) and np.allclose(kept, ref[:3], atol=1e-6)
    assert rd.embed_many([], client=client, progress=False).shape == (0, 384)
    with pytest.raises(TypeError, match="list of texts"):
        rd.embed_many("one text", client=client)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        rd.embed_many(["a", 3], client=client)
