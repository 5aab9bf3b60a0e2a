"""The magics in a real IPython kernel (jupyter_client), the path JupyterLab uses: streaming
messages, the stop button (interrupt latency during prefill and decode), errors and %config.

One kernel serves the module; it starts with `c.InteractiveShellApp.extensions = ['ryzjupyter']`
(what a user puts in ipython_config.py), so no %load_ext is needed. Models: the tiny fixture and a
random BitNet model big enough that prefill and decode take seconds (written with the engine's
random_model helper)."""
import os
import queue
import re
import time

import pytest

from .conftest import FAMILY_FIXTURES, REPO, TINY

pytestmark = pytest.mark.slow

# The README's claim: the stop button ends a generation "within 0.1 s" (docs/magics.md: ~15 ms on an
# idle 2-core Zen 4). On a shared machine the kernel gets a fraction of a core and a try can lose
# the CPU for a scheduler period: with the machine's load average at 17 on its 2 cores the medians
# were 0.10-0.22 s during prefill (3 tries) and 0.02-0.07 s during decode (5 tries). So the tests
# take the median of several tries and allow it 3x the claim; no single try may pass 3 s (a stop
# that does not stop: single tries of 1.3-1.7 s were seen at that load).
CLAIM_S = 0.1
NOISE_MARGIN = 3
LATENCY_LIMIT_S = CLAIM_S * NOISE_MARGIN
SINGLE_TRY_LIMIT_S = 3.0


def _check_latencies(latencies, what):
    import statistics
    med = statistics.median(latencies)
    print(f"\ninterrupt latency {what}: median {med * 1000:.0f} ms of {[round(t * 1000) for t in latencies]} ms")
    assert max(latencies) < SINGLE_TRY_LIMIT_S, latencies
    assert med < LATENCY_LIMIT_S, f"median {med:.3f} s of {latencies} (claim {CLAIM_S} s x {NOISE_MARGIN})"


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    from ryzjupyter.families.random_bitnet import write_random_bitnet
    return write_random_bitnet(tmp_path_factory.mktemp("big"), hidden_size=1024, intermediate_size=2816,
                               num_hidden_layers=6, num_attention_heads=16, num_key_value_heads=4,
                               vocab_size=1024, max_position_embeddings=4096)


class Kernel:
    def __init__(self, km, kc):
        self.km, self.kc = km, kc

    def execute(self, code, timeout=60):
        """Run code; return (reply content, iopub messages of this request, arrival times)."""
        msg_id = self.kc.execute(code)
        return self.collect(msg_id, timeout)

    def collect(self, msg_id, timeout=60, stop_on=None):
        msgs, times = [], []
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no idle after {timeout} s; got {[m['msg_type'] for m in msgs]}")
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            now = time.monotonic()
            msgs.append(msg)
            times.append(now)
            if stop_on is not None and stop_on(msg):
                return None, msgs, times
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return reply["content"], msgs, times

    def value(self, expr):
        content, msgs, _ = self.execute(f"print(repr({expr}))")
        assert content["status"] == "ok", content
        return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream").strip()


@pytest.fixture(scope="module")
def kernel(big_model):
    from jupyter_client.manager import start_new_kernel
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RYZ_STREAM", None)
    env["HF_HUB_OFFLINE"] = "1"
    km, kc = start_new_kernel(kernel_name="python3", env=env, startup_timeout=60,
                              extra_arguments=["--InteractiveShellApp.extensions=ryzjupyter"])
    k = Kernel(km, kc)
    try:
        content, _, _ = k.execute(f"%ryz load {TINY} --name tiny\n%ryz load {big_model} --name big\n"
                                  "%ryz use tiny\n%config RyzMagics.temperature = 0\n"
                                  "%config RyzMagics.live_chart = False")
        assert content["status"] == "ok", content
        yield k
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def slow_recurrent(tmp_path_factory):
    """Random Mamba and RWKV-4 models slow enough (~5-30 ms a token here, idle to loaded) to stream
    for a while and be stopped mid-decode, with the tiny fixtures' tokenizers."""
    from ryzjupyter.families.random_recurrent import write_folder
    return {f: write_folder(f, tmp_path_factory.mktemp(f"slow-{f}"), seed=3, hidden_size=512, num_hidden_layers=6,
                            tokenizer_from=FAMILY_FIXTURES[f]) for f in ("mamba", "rwkv")}


def errors(msgs):
    return [m["content"] for m in msgs if m["msg_type"] == "error"]


def test_extension_loaded_by_config_and_config_magic(kernel):
    assert kernel.value("get_ipython()._ryz_magics.temperature") == "0.0"
    content, msgs, _ = kernel.execute("%config RyzMagics.max_new_tokens = 5")
    assert content["status"] == "ok"
    try:
        content, msgs, _ = kernel.execute("%%ryz --no-stream\nHello")
        assert content["status"] == "ok", errors(msgs)
        assert int(kernel.value("_.stats.n_generated")) <= 5
        assert kernel.value("_.settings['max_new_tokens']") == "5"
    finally:
        kernel.execute("%config RyzMagics.max_new_tokens = 128")


def test_streaming_messages(kernel):
    """Tokens arrive through one display updated <= ~15 times a second; the final update is the reply."""
    # ~1 s of decoding (the random 1024x6 model decodes ~500 tok/s here): several throttled updates
    content, msgs, times = kernel.execute("%%ryz -m big -n 500 -t 0 -f markdown\nOnce upon a time", timeout=120)
    assert content["status"] == "ok", errors(msgs)
    displays = [(m, t) for m, t in zip(msgs, times) if m["msg_type"] in ("display_data", "update_display_data")]
    first, rest = displays[0][0], displays[1:]
    assert first["msg_type"] == "display_data"
    did = first["content"]["transient"]["display_id"]
    updates = [(m, t) for m, t in rest if m["msg_type"] == "update_display_data"]
    assert all(m["content"]["transient"]["display_id"] == did for m, _ in updates)
    assert len(updates) >= 3, "the reply did not stream"
    # at most ~15 per second, judged by the kernel's send times (header dates) of the live updates
    # (all but the final one): the throttle spaces them >= 1/15 s apart; a message can be built a
    # little later than the throttle decided to send it, so single gaps get some slack
    sent = [m["header"]["date"].timestamp() for m, _ in updates[:-1]]
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert len(sent) - 1 <= 15 * (sent[-1] - sent[0]) + 1, gaps
    assert min(gaps) >= 0.5 / 15, gaps
    final = updates[-1][0]["content"]["data"]
    text = kernel.value("_.text")
    assert final["text/markdown"] == eval(text)
    assert "text/markdown" not in updates[0][0]["content"]["data"]     # partial text is plain
    footer = [m for m, _ in rest if m["msg_type"] == "display_data"]
    assert footer and "tok/s" in footer[-1]["content"]["data"]["text/plain"]


def test_stream_off_gives_the_same_final_bundle(kernel):
    bundles = []
    for opt in ("--stream", "--no-stream"):
        kernel.execute("get_ipython()._ryz_magics.registry.current().reset()")
        content, msgs, _ = kernel.execute(f"%%ryz {opt} -n 20 -f markdown\nThe train left the station")
        assert content["status"] == "ok", errors(msgs)
        shown = [m["content"]["data"] for m in msgs if m["msg_type"] in ("display_data", "update_display_data")]
        bundles.append(shown[-2])                        # the reply (the last one is the stats footer)
    assert bundles[0] == bundles[1]


def test_usage_errors_are_short_and_fail_the_cell(kernel):
    for cell, text in [("%%ryz --temprature 2\nhi", "did you mean --temperature?"),
                       ("%ryz load /no/such/folder", "does not exist"),
                       ("%ryz frobnicate", "unknown command")]:
        content, msgs, _ = kernel.execute(cell)
        assert content["status"] == "error"                            # the cell fails ("Run All" stops)
        assert content["ename"] == "UsageError" and text in content["evalue"]
        shown = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
        shown += "".join("".join(e["traceback"]) for e in errors(msgs))
        assert text in shown and "Traceback" not in shown             # one line, no wall of traceback
        assert len(shown.strip().splitlines()) <= 2, shown


def _interrupt_latency(kernel, code, started):
    """Execute code, wait until `started(msg)` sees it running, interrupt; return the seconds from
    the interrupt request to the KeyboardInterrupt error message, and the request's messages."""
    msg_id = kernel.kc.execute(code)
    _, before, _ = kernel.collect(msg_id, timeout=60, stop_on=started)
    t0 = time.monotonic()
    kernel.km.interrupt_kernel()
    _, after, times = kernel.collect(msg_id, timeout=30, stop_on=lambda m: m["msg_type"] == "error")
    err = after[-1]["content"]
    assert err["ename"] == "KeyboardInterrupt", err
    latency = times[-1] - t0
    kernel.collect(msg_id, timeout=30)                   # drain to idle
    return latency, before + after


def test_stop_button_during_prefill(kernel):
    # size the prompt to ~3 s of prefill on this machine (measured with %ryz bench)
    kernel.execute("%ryz use big")
    content, msgs, _ = kernel.execute("%ryz bench -p 64 -n 2")
    assert content["status"] == "ok", errors(msgs)
    tok_s = float(kernel.value("get_ipython()._ryz_magics.last_bench['prefill_tok_s']"))
    n = int(min(4000, max(256, 3.0 * tok_s)))
    kernel.execute(f"long_prompt = 'a' * {n}")            # the byte tokenizer: one token per character
    latencies = []
    for _ in range(3):
        msg_id = kernel.kc.execute("%%ryz -n 50 --no-stream\n{long_prompt}")
        kernel.collect(msg_id, timeout=30, stop_on=lambda m: m["msg_type"] == "execute_input")
        time.sleep(0.7)                                  # the cell is running: 0.7 s into the prefill
        t0 = time.monotonic()
        kernel.km.interrupt_kernel()
        _, after, times = kernel.collect(msg_id, timeout=30, stop_on=lambda m: m["msg_type"] == "error")
        latencies.append(times[-1] - t0)
        assert after[-1]["content"]["ename"] == "KeyboardInterrupt"
        kernel.collect(msg_id, timeout=30)
        assert kernel.value("_.interrupted") == "True"
        assert kernel.value("_.stats.n_generated") == "0", "the interrupt landed after the prefill"
    _check_latencies(latencies, f"during prefill ({n} prompt tokens at {tok_s:.0f} tok/s)")
    content, msgs, _ = kernel.execute("%%ryz -n 3 --no-stream\nagain")     # works normally afterwards
    assert content["status"] == "ok", errors(msgs)
    assert kernel.value("_.interrupted") == "False"
    kernel.execute("%ryz use tiny")


def test_stop_button_during_decode_keeps_partial_text(kernel):
    kernel.execute("%ryz reset")

    def decoding(msg):                                   # a live update with text: decode is under way
        return (msg["msg_type"] == "update_display_data" and
                len(msg["content"]["data"]["text/plain"]) > 20)

    latencies = []
    for _ in range(5):
        kernel.execute("%ryz reset")
        latency, msgs = _interrupt_latency(kernel, "%%ryz -m big --chat -n 3000 -t 0\nTell me a story", decoding)
        latencies.append(latency)
        shown = [m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "update_display_data"]
        assert shown[-1].endswith("[interrupted]")           # the partial answer stays in the cell
        text = eval(kernel.value("_.text"))
        assert text and shown[-1].startswith(text)
        assert kernel.value("get_ipython()._ryz_magics.history[-1]['interrupted']") == "True"
        assert eval(kernel.value("get_ipython()._ryz_magics.history[-1]['content']")) == text
    _check_latencies(latencies, "during decode")
    content, msgs, _ = kernel.execute("%%ryz --chat -n 3 --no-stream\nGo on")
    assert content["status"] == "ok", errors(msgs)
    kernel.execute("%ryz reset")


@pytest.mark.parametrize("family", ["mamba", "rwkv"])
def test_recurrent_model_streams_and_stops_during_decode(kernel, slow_recurrent, family):
    """A Mamba / RWKV-4 reply streams through one display updated in place (its final update the
    reply), and the stop button during its decode keeps the partial text."""
    content, msgs, _ = kernel.execute(f"%ryz load {slow_recurrent[family]} --name slow-{family}")
    assert content["status"] == "ok", errors(msgs)
    try:
        content, msgs, _ = kernel.execute("%%ryz -n 120 -t 0 -f markdown\nOnce upon a time", timeout=120)
        assert content["status"] == "ok", errors(msgs)
        displays = [m for m in msgs if m["msg_type"] in ("display_data", "update_display_data")]
        did = displays[0]["content"]["transient"]["display_id"]
        updates = [m for m in displays[1:] if m["msg_type"] == "update_display_data"]
        assert len(updates) >= 2 and all(m["content"]["transient"]["display_id"] == did for m in updates)
        assert updates[-1]["content"]["data"]["text/markdown"] == eval(kernel.value("_.text"))
        assert 0 < int(kernel.value("_.stats.n_generated")) <= 120          # random weights may draw EOS

        def decoding(msg):
            return msg["msg_type"] == "update_display_data" and len(msg["content"]["data"]["text/plain"]) > 20
        kernel.execute("%ryz reset")
        latency, msgs = _interrupt_latency(kernel, "%%ryz -n 3000 -t 0\nTell me a story", decoding)
        shown = [m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "update_display_data"]
        assert shown[-1].endswith("[interrupted]")
        text = eval(kernel.value("_.text"))
        assert text and shown[-1].startswith(text) and kernel.value("_.interrupted") == "True"
        assert latency < SINGLE_TRY_LIMIT_S, latency
    finally:
        kernel.execute(f"%ryz use tiny\n%ryz unload slow-{family}")


@pytest.mark.parametrize("family", sorted(FAMILY_FIXTURES))
def test_load_progress_becomes_the_loaded_message(kernel, family):
    """In a kernel the load progress is one display line, updated per layer, that ends as the
    'loaded ...' message: a saved notebook keeps that message, not a stale progress bar. BitNet
    reserves a KV cache; Mamba and RWKV their state and snapshots."""
    content, msgs, _ = kernel.execute(f"%ryz load {FAMILY_FIXTURES[family]} --name again")
    assert content["status"] == "ok", errors(msgs)
    shown = [m for m in msgs if m["msg_type"] in ("display_data", "update_display_data", "stream")]
    assert shown[0]["msg_type"] == "display_data" and "widget" not in str(shown[0]["content"]["data"])
    display_id = shown[0]["content"]["transient"]["display_id"]
    assert "loading" in shown[0]["content"]["data"]["text/plain"]
    assert all(m["msg_type"] == "update_display_data" and m["content"]["transient"]["display_id"] == display_id
               for m in shown[1:]), [m["msg_type"] for m in shown]
    final = shown[-1]["content"]["data"]["text/plain"]
    reserve = "KV cache reserve" if family == "bitnet" else "state reserve"
    assert re.fullmatch(rf"loaded again in [\d.]+ s: [\d.]+ KiB \([\d.]+ KiB weights \+ [\d.]+ KiB {reserve}\)",
                        final), final
    kernel.execute("%ryz unload again\n%ryz use tiny")


def test_committed_notebooks_keep_no_progress_bars():
    import json
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            for out in cell.get("outputs", []):
                text = json.dumps(out)
                assert "application/vnd.jupyter.widget-view+json" not in text, (nb.name, text[:200])
                assert "%|" not in text and "layer/s" not in text, (nb.name, text[:200])
