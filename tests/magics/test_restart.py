"""A kernel restarted in the middle of a load and in the middle of a generation leaves nothing
behind that breaks the next session: the converted-weights cache ($RYZ_CACHE_DIR) holds only
whole files (written to a temporary name and renamed), a temporary file left by a killed kernel
is removed by the next one, and the next kernel loads the same model and generates the same
tokens as a fresh process."""
import os
import queue
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

from ryzjupyter.families.random_bitnet import write_random_bitnet  # noqa: E402


@pytest.fixture(scope="module")
def latent_model(tmp_path_factory):
    # latent (bf16) weights: the load quantizes them to ternary and writes the converted cache,
    # which takes long enough (~1 s) to restart the kernel in the middle of it
    return write_random_bitnet(tmp_path_factory.mktemp("latent"), hidden_size=512, intermediate_size=1408,
                               num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                               vocab_size=512, max_position_embeddings=512, fmt="online", seed=3)


class _Kernel:
    def __init__(self, env):
        from jupyter_client.manager import start_new_kernel
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env, startup_timeout=120,
                                            extra_arguments=["--InteractiveShellApp.extensions=ryzjupyter"])

    def run(self, code, timeout=180, stop_on=None):
        """Run code until idle (or until stop_on(msg) is true); returns (status, iopub messages)."""
        msg_id = self.kc.execute(code)
        msgs, deadline = [], time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{code[:50]!r}: no idle after {timeout} s") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msgs.append(msg)
            if stop_on is not None and stop_on(msg):
                return None, msgs
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        return reply["content"]["status"], msgs

    def text(self, code):
        status, msgs = self.run(code)
        assert status == "ok", [m["content"] for m in msgs if m["msg_type"] == "error"]
        return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")

    def restart(self):
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=120)

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def _output(msg):
    return msg["msg_type"] in ("display_data", "update_display_data", "stream")


def test_restart_during_load_and_generation(latent_model, tmp_path):
    import ryzjupyter
    want = ryzjupyter.load(str(latent_model), convert_cache=False).generate("Hello", max_new_tokens=12,
                                                                            temperature=0).text
    cache = tmp_path / "converted"
    cache.mkdir()
    stale = cache / "0123456789abcdef0123456789abcdef.999999999.x1y2z3.tmp"   # a killed kernel's half write
    stale.write_bytes(b"\0" * 1000)
    env = {**os.environ, "RYZ_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "RYZ_STREAM": "0"}
    k = _Kernel(env)
    try:
        # 1. restart while the model loads (its weights are being quantized, or the cache written)
        status, _ = k.run(f"%ryz load {latent_model} --name latent", stop_on=_output)
        assert status is None, "the load finished before the restart: make the model larger"
        k.restart()
        assert k.text(f"%ryz load {latent_model} --name latent\n"
                      "print(get_ipython()._ryz_magics.registry.current().name)").strip().endswith("latent")
        got = k.text("get_ipython().run_cell_magic('ryz', '-m latent -n 12 -t 0 --no-chat --no-stream', 'Hello')\n"
                     "print(repr(get_ipython()._ryz_magics.last_reply.text))")
        assert got.strip().splitlines()[-1] == repr(want)
        files = sorted(p.name for p in cache.iterdir())
        assert len(files) == 1 and files[0].endswith(".safetensors"), files      # the stale temp file is gone

        # 2. restart while a reply is being generated
        status, _ = k.run("%%ryz -m latent -n 400 -t 0.8 --no-chat --stream\nOnce upon a time", stop_on=_output)
        assert status is None, "the generation finished before the restart"
        k.restart()
        got = k.text(f"%ryz load {latent_model} --name latent\n"
                     "get_ipython().run_cell_magic('ryz', '-m latent -n 12 -t 0 --no-chat --no-stream', 'Hello')\n"
                     "print(repr(get_ipython()._ryz_magics.last_reply.text))")
        assert got.strip().splitlines()[-1] == repr(want)
        assert sorted(p.name for p in cache.iterdir()) == files                   # the cache file was reused
    finally:
        k.close()
