"""The server running in this process (at most one), its live status, and who listens to it.

    from ryzjupyter.serve import status, subscribe
    status()                 # None, or {"url", "models", "requests", "tok_s", "ttft_p50_s", ...}
    unsubscribe = subscribe(lambda event: ...)   # {"event": "server", "status": {...} | None}

Light on purpose (no HTTP stack is imported): the sidebar's comm reads it in every kernel.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_listeners: list = []
_current = None          # the ServerHandle of the running server


def current():
    """The running server's handle, or None."""
    return _current


def status() -> dict | None:
    """The running server's live status, or None when no server runs in this process."""
    h = _current
    if h is None:
        return None
    try:
        return h.status()
    except Exception:                       # noqa: BLE001 - a status read must never raise
        return None


def subscribe(callback):
    """callback(event) on the server's start, stop and traffic (at most a few times a second),
    from any thread. Returns a function that unsubscribes."""
    with _lock:
        _listeners.append(callback)

    def unsubscribe():
        with _lock:
            if callback in _listeners:
                _listeners.remove(callback)
    return unsubscribe


def publish(reason="traffic"):
    """Tell the listeners (the server calls this; a broken listener is ignored)."""
    event = {"event": "server", "reason": reason, "status": status()}
    with _lock:
        listeners = list(_listeners)
    for cb in listeners:
        try:
            cb(event)
        except Exception:                   # noqa: BLE001
            pass


def _set_current(handle, reason):
    global _current
    with _lock:
        _current = handle
    publish(reason)
