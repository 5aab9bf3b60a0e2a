"""An OpenAI-compatible HTTP server for the models of a model manager, with continuous batching.

    from ryzjupyter import serve
    h = serve.start(port=8000)               # the kernel's loaded models (MANAGER), background thread
    h.url, h.api_key                         # http://127.0.0.1:8000/v1 and the generated key
    serve.status()                           # live traffic; serve.subscribe(callback) for pushes
    serve.stop()

`python -m ryzjupyter serve` (the CLI) and `%ryz serve` (the magics) call start(). Needs the
`serve` extra (starlette, uvicorn): pip install 'ryzjupyter[serve]'. docs/serving.md.
"""

from __future__ import annotations

import threading

from .settings import ServeConfigError, ServeSettings, is_loopback, new_api_key
from .running import current, status, subscribe

__all__ = ["start", "stop", "current", "status", "subscribe", "ServeSettings", "ServeConfigError",
           "is_loopback", "new_api_key"]

_start_lock = threading.Lock()


def start(manager=None, *, models=(), **settings):
    """Start the server in a background thread and return its handle (one server per process).

    manager: whose loaded models are served (default: the kernel's MANAGER); models: specs to load
    into it first (names, folders, hub ids; the bundled demo model is "demo" or None). settings:
    the ServeSettings fields (host, port, api_key, auth, limits). Raises ServeConfigError for a
    setting that cannot work (--no-auth off 127.0.0.1, a busy port) and ImportError when the
    serve extra is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the server needs the 'serve' extra ({e.name} is missing): "
                          "pip install 'ryzjupyter[serve]'") from None
    cfg = ServeSettings(**settings).resolved()
    if manager is None:
        from ryzjupyter.manager import MANAGER as manager
    from . import running as _status
    from .server import ServerHandle
    with _start_lock:
        running = _status.current()
        if running is not None and running.running:
            raise ServeConfigError(f"a server is already running at {running.url}; stop it first "
                                   "(%ryz serve stop, or ryzjupyter.serve.stop())")
        for spec in models:
            manager.load(spec)
        h = ServerHandle(manager, cfg).start()
        _status._set_current(h, "started")
    return h


def stop() -> bool:
    """Stop the running server (its generations are cancelled). False if none was running."""
    h = current()
    if h is None:
        return False
    h.stop()
    return True
