"""Server settings and lifecycle: a key is required by default (generated when not given), no-auth
only on 127.0.0.1, a busy port is a clear error, one server per process, the queue limit is 429,
stop() ends open streams, and the command line prints the URL and key and serves until Ctrl-C."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ryzjupyter import serve
from ryzjupyter.serve import ServeConfigError, ServeSettings

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"model": "demo", "prompt": "The LORD is my", "max_tokens": 8, "temperature": 0}


def test_settings_rules():
    s = ServeSettings().resolved()
    assert s.host == "127.0.0.1" and s.auth and s.api_key.startswith("ryz-") and len(s.api_key) > 30
    assert ServeSettings().resolved().api_key != s.api_key                      # a fresh key each time
    assert ServeSettings(api_key="my-secret-key").resolved().api_key == "my-secret-key"
    assert ServeSettings(auth=False).resolved().api_key is None
    assert ServeSettings(auth=False, host="::1").resolved().api_key is None
    for host in ("0.0.0.0", "192.168.1.5", "example.com", "::"):
        with pytest.raises(ServeConfigError, match="only allowed on 127.0.0.1"):
            ServeSettings(auth=False, host=host).resolved()
        assert ServeSettings(host=host).resolved().api_key                     # with a key: allowed
    for bad in (dict(port=70000), dict(port=-1), dict(api_key="short"), dict(api_key="has space inside"),
                dict(max_batch=0), dict(max_body_bytes=-1), dict(host="")):
        with pytest.raises(ServeConfigError):
            ServeSettings(**bad).resolved()


def test_lifecycle(manager):
    h = serve.start(manager, port=0, max_batch=1, max_queue=1)
    try:
        assert serve.current() is h and h.running and serve.status()["url"] == h.url
        with pytest.raises(ServeConfigError, match="already running"):
            serve.start(manager, port=0)
        from ryzjupyter.serve.server import _bind
        with pytest.raises(ServeConfigError, match="cannot listen on 127.0.0.1:.*another --port"):
            _bind("127.0.0.1", h.port)                 # the port is taken
        with httpx.Client(base_url=h.url, headers={"Authorization": f"Bearer {h.api_key}"}, timeout=60) as c:
            # max_batch 1 + max_queue 1: a request for 4 generations cannot be queued
            r = c.post("/completions", json={**GOOD, "max_tokens": 100, "ignore_eos": True, "n": 4})
            assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
            assert c.post("/completions", json=GOOD).status_code == 200
            # stop() while a stream is open: the stream ends, the port is released
            with c.stream("POST", "/completions", json={**GOOD, "max_tokens": 200, "ignore_eos": True,
                                                        "stream": True}) as r:
                lines = r.iter_lines()
                next(lines)
                serve.stop()
                rest = list(lines)
            assert [ln for ln in rest if ln][-1] == "data: [DONE]"       # ended, not cut off
        assert serve.current() is None and serve.status() is None and not h.running
    finally:
        serve.stop()
    h2 = serve.start(manager, port=h.port)                 # the port is free again
    assert h2.port == h.port
    serve.stop()


def test_events_reach_subscribers(manager):
    events = []
    unsubscribe = serve.subscribe(events.append)
    try:
        h = serve.start(manager, port=0)
        with httpx.Client(base_url=h.url, headers={"Authorization": f"Bearer {h.api_key}"}, timeout=60) as c:
            assert c.post("/completions", json=GOOD).status_code == 200
        deadline = time.time() + 10
        while not any(e["reason"] == "traffic" and e["status"]["requests"] >= 1 for e in events):
            assert time.time() < deadline
            time.sleep(0.05)
        serve.stop()
    finally:
        unsubscribe()
        serve.stop()
    assert events[0]["reason"] == "started" and events[-1] == {"event": "server", "reason": "stopped", "status": None}


def test_command_line(tmp_path):
    """python -m ryzjupyter serve: prints the URL and a generated key, serves, stops on Ctrl-C."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RYZ_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "ryzjupyter", "serve", "--port", "0"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = p.stdout.readline().split(" at ")[-1].strip()
        key = p.stdout.readline().split("API key: ")[-1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1") and key.startswith("ryz-")
        with httpx.Client(base_url=url, timeout=60) as c:
            assert c.get("/models").status_code == 401
            r = c.post("/completions", json=GOOD, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.json()["model"] == "demo"
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    r = subprocess.run([sys.executable, "-m", "ryzjupyter", "serve", "--host", "0.0.0.0", "--no-auth", "--port", "0"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "only allowed on 127.0.0.1" in r.stderr


def test_magic_options():
    from IPython.core.error import UsageError

    from ryzjupyter.jupyter.magics.parsers import parse_line_command
    c = parse_line_command("serve")
    assert c.command == "serve" and c.options == {"action": "start", "port": 8000, "host": "127.0.0.1",
                                                  "api_key": None, "no_auth": False, "max_batch": 16}
    c = parse_line_command("serve --port 0 --host ::1 --no-auth --max-batch 4")
    assert c.options == {"action": "start", "port": 0, "host": "::1", "api_key": None, "no_auth": True,
                         "max_batch": 4}
    assert parse_line_command("serve stop").options["action"] == "stop"
    assert parse_line_command("serve status --api-key abcdefgh").options["api_key"] == "abcdefgh"
    for bad in ("serve restart", "serve --port -1", "serve --max-batch 0", "serve --api-key k --no-auth",
                "serve --prot 1"):
        with pytest.raises(UsageError):
            parse_line_command(bad)
