"""%ryz serve in a real IPython kernel (jupyter_client): the server runs on a background thread of
the kernel and serves the kernel's own models; the notebook keeps working (cells run, a %%ryz
generation on the same model runs while the server decodes, both exact); the sidebar's comm state
carries the server; %ryz serve status / stop; bad settings are one-line UsageErrors."""
import os
import queue
import re
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("jupyter_client")

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


class Kernel:
    def __init__(self, km, kc):
        self.km, self.kc = km, kc

    def execute(self, code, timeout=120):
        """Run code; (status, printed text, error evalue)."""
        msg_id = self.kc.execute(code)
        out, err = [], None
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no idle after {timeout} s: {out}")
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            t = msg["msg_type"]
            if t == "stream":
                out.append(msg["content"]["text"])
            elif t == "error":
                err = msg["content"]["evalue"]
            elif t == "status" and msg["content"]["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        content = reply["content"]
        if content["status"] == "error":
            err = f"{content['ename']}: {content['evalue']}"
        return content["status"], "".join(out), err

    def value(self, expr):
        status, out, err = self.execute(f"print(repr({expr}))")
        assert status == "ok", err
        return out.strip()


@pytest.fixture(scope="module")
def kernel():
    from jupyter_client.manager import start_new_kernel
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["RYZ_NUM_THREADS"] = "1"
    km, kc = start_new_kernel(kernel_name="python3", env=env, startup_timeout=60,
                              extra_arguments=["--InteractiveShellApp.extensions=ryzjupyter"])
    k = Kernel(km, kc)
    try:
        yield k
    finally:
        k.execute("%ryz serve stop")
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_serve_from_the_kernel(kernel):
    status, out, err = kernel.execute("%ryz serve --port 0")
    assert status == "ok", err
    url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", out).group(1)
    key = re.search(r"API key: (\S+)", out).group(1)
    assert "serving demo" in out                     # nothing was loaded: the default model was
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["demo"]

    # the engine's answers alone, computed in the kernel
    kernel.execute("_m = get_ipython()._ryz_magics.registry.get('demo')")
    want_srv = eval(kernel.value("_m.new_session().generate('And the LORD said', 200, temperature=0, top_k=0, "
                                 "min_p=0.0, top_p=1.0, ignore_eos=True).text"))
    want_cell = eval(kernel.value("_m.new_session().generate('Blessed are the', 60, temperature=0).text"))

    # a long streaming request runs on the server while the notebook runs cells
    got, first = {}, threading.Event()

    def stream():
        parts = []
        for c in client.completions.create(model="demo", prompt="And the LORD said", max_tokens=200, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True}):
            if c.choices and c.choices[0].text:
                parts.append(c.choices[0].text)
                first.set()
        got["text"] = "".join(parts)

    t = threading.Thread(target=stream)
    t.start()
    assert first.wait(60)
    t0 = time.monotonic()
    status, out, _ = kernel.execute("print(6 * 7)")
    assert status == "ok" and out.strip() == "42" and time.monotonic() - t0 < 10
    status, out, err = kernel.execute("%%ryz -n 60 -t 0 --no-stream -o cell\nBlessed are the")
    assert status == "ok", err
    assert eval(kernel.value("cell.text")) == want_cell
    t.join(120)
    assert got["text"] == want_srv

    # status, in the magic and in the sidebar's comm state
    status, out, _ = kernel.execute("%ryz serve status")
    assert status == "ok" and url in out and "requests" in out
    state = eval(kernel.value("__import__('ryzjupyter.jupyter.comm', fromlist=['x'])._state()['server']"))
    assert state["url"] == url and state["requests"] >= 2 and state["completion_tokens"] >= 200
    status, out, _ = kernel.execute("%ryz serve --port 0")
    assert status == "ok" and "already serving" in out

    status, out, _ = kernel.execute("%ryz serve stop")
    assert status == "ok" and "stopped" in out
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    assert kernel.value("__import__('ryzjupyter.serve', fromlist=['x']).status()") == "None"
    status, out, _ = kernel.execute("%ryz serve stop")
    assert status == "ok" and "no server" in out


def test_bad_settings_are_usage_errors(kernel):
    for cell, text in [("%ryz serve --host 0.0.0.0 --no-auth", "only allowed on 127.0.0.1"),
                       ("%ryz serve --port 99999", "--port must be in"),
                       ("%ryz serve restart", "start, stop or status"),
                       ("%ryz serve --api-key x --no-auth", "contradict")]:
        status, out, err = kernel.execute(cell)
        assert status == "error" and err.startswith("UsageError") and text in err, (cell, err)
    assert kernel.value("__import__('ryzjupyter.serve', fromlist=['x']).status()") == "None"


def test_a_given_key_is_not_echoed(kernel):
    status, out, err = kernel.execute("KEY = 'my-secret-key-123'\n%ryz serve --port 0 --api-key $KEY")
    assert status == "ok", err
    assert "my-secret-key-123" not in out and "the one given" in out
    url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", out).group(1)
    client = openai.OpenAI(base_url=url, api_key="my-secret-key-123", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["demo"]
    kernel.execute("%ryz serve stop")


@pytest.mark.parametrize("family, folder", [("mamba", "mamba_f32"), ("rwkv", "rwkv_f32")])
def test_serve_a_recurrent_model_from_the_kernel(kernel, family, folder):
    """%ryz serve with a Mamba / RWKV-4 fixture loaded in the kernel: the server serves it, a
    streaming request runs while a %%ryz cell generates with the same model, both exact."""
    path = REPO / "tests" / "fixtures" / "recurrent" / folder
    status, out, err = kernel.execute(f"%ryz load {path} --name {family}\n%ryz serve --port 0")
    assert status == "ok", err
    url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", out).group(1)
    key = re.search(r"API key: (\S+)", out).group(1)
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
    try:
        assert family in [m.id for m in client.models.list()]
        kernel.execute(f"_m = get_ipython()._ryz_magics.registry.get('{family}')")
        want_srv = eval(kernel.value("_m.new_session().generate('The capital', 120, temperature=0, top_k=0, "
                                     "min_p=0.0, top_p=1.0, ignore_eos=True).text"))
        want_cell = eval(kernel.value("_m.new_session().generate('Hello there', 20, temperature=0).text"))
        got, first = {}, threading.Event()

        def stream():
            parts = []
            for c in client.completions.create(model=family, prompt="The capital", max_tokens=120, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True}):
                if c.choices and c.choices[0].text:
                    parts.append(c.choices[0].text)
                    first.set()
            got["text"] = "".join(parts)

        t = threading.Thread(target=stream)
        t.start()
        assert first.wait(60)
        status, out, err = kernel.execute(f"%%ryz -m {family} -n 20 -t 0 --no-stream -o cell\nHello there")
        assert status == "ok", err
        assert eval(kernel.value("cell.text")) == want_cell
        t.join(120)
        assert got["text"] == want_srv
    finally:
        kernel.execute(f"%ryz serve stop\n%ryz unload {family}")
