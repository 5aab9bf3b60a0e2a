"""Running the app: uvicorn on a socket we bind ourselves, in a background thread.

The socket is bound before uvicorn starts, so a busy port or a bad host is a clear error here (not
a log line in a thread), and port 0 picks a free port that the handle reports. The same thread runs
the server for the CLI (the main thread waits for Ctrl-C) and for ``%ryz serve`` (the notebook
keeps working).
"""

from __future__ import annotations

import socket
import threading
import time

from . import running as _status
from .app import create_app
from .backend import Backend
from .settings import ServeConfigError


class ServerHandle:
    """A server over a model manager's loaded models. ``start()`` returns once it accepts
    connections; ``stop()`` cancels its generations and closes it."""

    def __init__(self, manager, settings):
        import uvicorn
        self.settings = settings
        self.manager = manager
        self.backend = Backend(manager, settings, on_change=lambda: _status.publish("traffic"))
        self.app = create_app(self.backend, settings)
        self._config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                      timeout_graceful_shutdown=2, timeout_keep_alive=5)
        self._server = uvicorn.Server(self._config)
        self._sock = None
        self._thread = None
        self.port = None
        self.started_at = None

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def url(self) -> str:
        """The OpenAI base URL (…/v1)."""
        h = self.settings.host
        h = f"[{h}]" if ":" in h and not h.startswith("[") else h
        return f"http://{h}:{self.port}/v1"

    @property
    def api_key(self) -> str | None:
        return self.settings.api_key

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._server.should_exit

    def start(self, timeout=30.0) -> "ServerHandle":
        self._sock = _bind(self.settings.host, self.settings.port)
        self.port = self._sock.getsockname()[1]
        self.backend.warm()
        self._thread = threading.Thread(target=self._run, name="ryz-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServeConfigError(f"the server did not start on {self.settings.host}:{self.port}")
            time.sleep(0.01)
        self.started_at = time.time()
        return self

    def _run(self):
        try:
            self._server.run(sockets=[self._sock])
        except BaseException:                 # noqa: BLE001 - reported by start() / running
            pass

    def stop(self, timeout=10.0) -> None:
        self.backend.close()                  # cancels the generations: open streams end
        self._server.should_exit = True
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        if _status.current() is self:
            _status._set_current(None, "stopped")

    def status(self) -> dict:
        d = {"url": self.url, "host": self.settings.host, "port": self.port, "auth": self.settings.api_key is not None,
             "running": self.running, "started_at": self.started_at}
        d.update(self.backend.snapshot())
        return d

    def __repr__(self):
        return f"ServerHandle({self.url}, {'running' if self.running else 'stopped'})"


def _bind(host, port) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeConfigError(f"cannot listen on {host!r}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        hint = "; pick another --port (0 picks a free one)" if e.errno in (98, 48) else ""
        raise ServeConfigError(f"cannot listen on {host}:{port}: {e.strerror}{hint}") from None
    sock.set_inheritable(True)
    return sock
