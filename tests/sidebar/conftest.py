"""Fixtures for the sidebar tests: real tiny models, a real kernel, a comm client.

The kernel runs the same ryzjupyter as the tests (its folder goes first on PYTHONPATH) and sees the
BitNet, Mamba and RWKV test fixtures as available models through $RYZ_MODEL_DIRS.
"""
import os
import queue
import sys
import time
import uuid
from pathlib import Path

import pytest

import ryzjupyter

ROOT = Path(ryzjupyter.__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitnet"
RECURRENT = Path(__file__).resolve().parents[1] / "fixtures" / "recurrent"
# the Mamba and RWKV-4 fixtures the surface tests run beside BitNet's
RECURRENT_FIXTURES = {"mamba": "mamba_f32", "rwkv": "rwkv_f32"}


def kernel_env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["RYZ_MODEL_DIRS"] = os.pathsep.join([str(FIXTURES), str(RECURRENT)])
    env.setdefault("RYZ_NUM_THREADS", "1")
    env.pop("RYZ_MEMORY_BUDGET", None)
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A random BitNet model large enough that generating 2000 tokens takes seconds."""
    return write_slow_model("bitnet", tmp_path_factory.mktemp("models") / "slow")


def write_slow_model(family, folder):
    """A random model of `family` ("bitnet", "mamba", "rwkv") large enough that generating 3000
    tokens takes seconds; the recurrent ones get the tiny fixture's tokenizer (vocabulary 384)."""
    if family == "bitnet":
        from ryzjupyter.families.random_bitnet import write_random_bitnet
        write_random_bitnet(folder, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                            num_attention_heads=8, num_key_value_heads=4, vocab_size=4096,
                            max_position_embeddings=4096, fmt="packed", seed=3)
        return folder
    from ryzjupyter.families.random_recurrent import write_folder
    # RWKV-4's config bounds the context (context_length): large, so a long generation is not cut
    extra = {"context_length": 1 << 24} if family == "rwkv" else {}
    return write_folder(family, folder, seed=3, hidden_size=256, num_hidden_layers=4,
                        tokenizer_from=RECURRENT / RECURRENT_FIXTURES[family], **extra)


@pytest.fixture(scope="module")
def slow_models(tmp_path_factory):
    """One slow random model a family (write_slow_model), written when first asked for."""
    made = {}

    def get(family):
        if family not in made:
            made[family] = write_slow_model(family, tmp_path_factory.mktemp("models") / f"slow-{family}")
        return made[family]
    return get


class CommClient:
    """The sidebar's side of the protocol, over jupyter_client: open the `ryzjupyter` comm,
    send requests with ids, collect replies and pushes."""

    def __init__(self, kc, subshell_id=None):
        self.kc = kc
        self.comm_id = uuid.uuid4().hex
        self.subshell_id = subshell_id
        self.next_id = 1
        self.pushes = []
        self.replies = {}
        self.closed = False
        self.stray = []          # output produced while handling comm messages (must stay empty)

    def _send(self, msg_type, content):
        msg = self.kc.session.msg(msg_type, content)
        if self.subshell_id is not None:
            msg["header"]["subshell_id"] = self.subshell_id
        self.kc.shell_channel.send(msg)

    def open(self, timeout=30):
        self._send("comm_open", {"comm_id": self.comm_id, "target_name": "ryzjupyter", "data": {}})
        return self.wait_push("hello", timeout)

    def send_raw(self, data):
        self._send("comm_msg", {"comm_id": self.comm_id, "data": data})

    def request(self, op, timeout=60, **args):
        rid = self.next_id
        self.next_id += 1
        self.send_raw({"id": rid, "op": op, **args})
        return self.wait_reply(rid, timeout)

    def pump(self, timeout):
        """Read one iopub message (or return None on timeout); file comm messages away."""
        try:
            msg = self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return None
        c = msg["content"]
        if (msg["msg_type"] in ("stream", "display_data", "error", "execute_result")
                and msg["parent_header"].get("msg_type", "").startswith("comm_")):
            self.stray.append(msg)
        if msg["msg_type"] == "comm_msg" and c.get("comm_id") == self.comm_id:
            data = c["data"]
            if "push" in data:
                self.pushes.append(data)
            else:
                self.replies[data.get("id")] = data
        elif msg["msg_type"] == "comm_close" and c.get("comm_id") == self.comm_id:
            self.closed = True
        return msg

    def wait_reply(self, rid, timeout=60):
        end = time.monotonic() + timeout
        while rid not in self.replies:
            if time.monotonic() > end:
                raise TimeoutError(f"no reply to request {rid} in {timeout} s")
            self.pump(0.2)
        return self.replies.pop(rid)

    def wait_push(self, kind, timeout=30, start=0):
        end = time.monotonic() + timeout
        while True:
            for p in self.pushes[start:]:
                if p["push"] == kind:
                    return p
            if time.monotonic() > end:
                raise TimeoutError(f"no {kind!r} push in {timeout} s")
            self.pump(0.2)


def execute(kc, code, timeout=60):
    """Run code on the main shell and wait for its reply (content)."""
    msg_id = kc.execute(code)
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return reply["content"]


@pytest.fixture(scope="module")
def kernel():
    from jupyter_client import KernelManager
    km = KernelManager(kernel_name="python3")
    km.kernel_spec.argv[0] = sys.executable
    km.start_kernel(env=kernel_env(), cwd=str(ROOT))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)
