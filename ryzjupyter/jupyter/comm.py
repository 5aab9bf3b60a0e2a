"""The kernel comm target `ryzjupyter`: how the JupyterLab sidebar talks to the models in the kernel.

    import ryzjupyter.jupyter.comm; ryzjupyter.jupyter.comm.register()      # %load_ext ryzjupyter does this too

Protocol (JSON; version PROTOCOL):
  frontend -> kernel: {"id": <int|str>, "op": <op>, ...arguments}
  kernel -> frontend: {"id": <same>, "ok": true, ...result}  or  {"id": <same>, "ok": false, "error": "..."}
  kernel -> frontend pushes (no id): {"push": "hello"|"state"|"progress"|"stats"|"generation"|"server"|"memory", ...}
  ("memory": {"event": "magics"|"open"|"add"|"forget"|"clear"|"expire", "namespace"?}: the magics
  were loaded, or their bank was opened or its units changed; the sidebar asks for them again)
  (state.server and the "server" push: the OpenAI server of %ryz serve, or null: ryzjupyter.serve.status())

Ops:
  status                     -> {"protocol", "version", "state": snapshot}
  list                       -> {"models": [loaded and available models, with memory], "state"}
  load   {"model", "name"?, "options"?}  -> {"name", "state"}   (progress pushes while it loads;
                                 refused with {"ok": false, "error", "needed", "budget"} when it cannot fit)
  unload {"model"}           -> {"name", "state"}
  use    {"model"}           -> {"name", "state"}               (hot-swap, no reload)
  stop                       -> {"stopped": bool}              (ends a running generation at its next token)
  stats                      -> {"running": [...], "last": {stats, profile} | null}
  budget {"bytes"}           -> {"state"}                      (a number, "6GiB", or null for the default)
  register {"path"}          -> {"name", "models"}
  memory {"action"?, "query"?, "k"?, "limit"?}  -> {"memory": {"open", "namespace", "store", "rsus"?,
                                 "model"?}, "units"?: [...], "hits"?: [...]}
                                 the memory bank of %ryz memory (the magics' RecycleBank, a thin
                                 client): action "status" (default) says what the bank is ("magics":
                                 false before %load_ext ryzjupyter) and, if it is open in this
                                 kernel, its count and newest `limit` units (RecycleBank.newest); "open"
                                 opens it (as %ryz memory does) and answers like status; "search"
                                 adds the `k` units most similar to `query` (their uses unchanged).
                                 Units: {"id", "text" (first 400 characters), "source", "time",
                                 "uses", "score"}

Every message is validated; an unknown op, a missing or malformed field, an oversized message or a
failing operation gets {"ok": false, "error": ...}. Handlers never print or display: output from a
comm handler would be attached to the comm message (and lost), and these handlers may run on a
kernel subshell thread while a cell is generating. Loads run on a worker thread, so `status`,
`stats` and `stop` keep answering while a model loads.
"""

from __future__ import annotations

import json
import threading
import warnings

from ryzjupyter.manager import MANAGER, MemoryBudgetError, ModelBusyError, format_bytes

TARGET = "ryzjupyter"
PROTOCOL = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_OPEN_COMMS = 16        # a reloaded page leaves its comm open in the kernel; keep the newest ones
OPS = ("status", "list", "load", "unload", "use", "stop", "stats", "budget", "register", "memory")
MEMORY_ACTIONS = ("status", "open", "search")
UNIT_TEXT_CHARS = 400
_LOAD_OPTIONS = {"max_context": int, "lm_head": str, "kv_cache": str, "prefill_chunk": int, "convert_cache": bool,
                 "local_files_only": bool, "revision": str}

_comms: dict[str, object] = {}
_routes: dict[str, object] = {}       # comm id -> the subshell the frontend talks to us on
_comms_lock = threading.Lock()
_registered_on = None
_unsubscribe = None


class RequestError(ValueError):
    """A malformed request: the reply's error says what is wrong."""


def _version():
    try:
        from ryzjupyter import __version__
        return __version__
    except Exception:
        return "unknown"


# ----------------------------------------------------------------------------
# registration

def register(manager=None):
    """Register the `ryzjupyter` comm target with this kernel (idempotent). Returns True if a kernel
    comm manager was found (False outside a kernel)."""
    global _registered_on, _unsubscribe
    cm = _comm_manager()
    if cm is None:
        return False
    if _registered_on is cm:
        return True
    cm.register_target(TARGET, _on_open)
    _registered_on = cm
    if _unsubscribe is None:
        _unsubscribe = (manager or MANAGER).subscribe(_broadcast_event)
        from ryzjupyter import serve       # the OpenAI server started by %ryz serve, when one runs
        serve.subscribe(_broadcast_server)
    return True


def _comm_manager():
    try:
        from comm import get_comm_manager
        cm = get_comm_manager()
    except Exception:
        cm = None
    if cm is None or type(cm).__name__ == "DummyCommManager":
        try:
            from ipykernel.kernelbase import Kernel
            if Kernel.initialized():
                cm = getattr(Kernel.instance(), "comm_manager", None) or cm
        except Exception:
            pass
    return cm


def _on_open(comm, open_msg):
    with _comms_lock:
        _comms[comm.comm_id] = comm
        _routes[comm.comm_id] = _subshell_of(open_msg)
        stale = list(_comms.values())[:-MAX_OPEN_COMMS]
    for old in stale:                       # pushes go to every open comm: bound the fan-out
        with _comms_lock:
            _comms.pop(old.comm_id, None)
            _routes.pop(old.comm_id, None)
        try:
            old.close()
        except Exception:
            pass

    @comm.on_msg
    def _recv(msg):
        with _comms_lock:
            _routes[comm.comm_id] = _subshell_of(msg)
        data = msg.get("content", {}).get("data")
        for reply in handle(data, reply_later=lambda r: _send(comm, r)):
            _send(comm, reply)

    @comm.on_close
    def _closed(msg):
        with _comms_lock:
            _comms.pop(comm.comm_id, None)
            _routes.pop(comm.comm_id, None)

    _send(comm, {"push": "hello", "protocol": PROTOCOL, "version": _version(), "ops": list(OPS),
                 "state": _state()})


def _subshell_of(msg):
    try:
        return (msg.get("header") or {}).get("subshell_id")
    except AttributeError:
        return None


def _send(comm, data):
    try:
        comm.send(data)
    except Exception:
        with _comms_lock:
            _comms.pop(getattr(comm, "comm_id", None), None)
        return False
    _keep_route(comm)
    return True


def _keep_route(comm):
    """ipykernel >= 7 routes a comm's incoming messages to the subshell that last *sent* on it. A push
    sent from the main thread while a cell generates would route the sidebar's next requests (stop,
    status) to the busy main shell, where they wait for the cell to end. Put the route back to the
    subshell the frontend uses."""
    lock = getattr(comm, "_reply_subshell_lock", None)
    if lock is None:
        return
    with _comms_lock:
        if comm.comm_id not in _routes:
            return
        route = _routes[comm.comm_id]
    with lock:
        comm._reply_subshell_id = route


def _broadcast(data):
    with _comms_lock:
        comms = list(_comms.values())
    for c in comms:
        _send(c, data)


def _broadcast_event(event):
    kind = event.get("event")
    if kind == "progress":
        _broadcast({"push": "progress", **{k: v for k, v in event.items() if k != "event"}})
    elif kind == "stats":
        _broadcast({"push": "stats", **{k: v for k, v in event.items() if k != "event"}})
    elif kind == "generation":
        _broadcast({"push": "generation", **{k: v for k, v in event.items() if k != "event"},
                    "state": _state()})
    else:
        _broadcast({"push": "state", "reason": kind, "state": _state()})


def _broadcast_server(event):
    """The server's start, stop and traffic (at most ~4 pushes a second while it works)."""
    _broadcast({"push": "server", "reason": event.get("reason"), "server": event.get("status")})


def magics_loaded():
    """%load_ext ryzjupyter ran: the sidebars' Memory section may now reach the bank."""
    _broadcast({"push": "memory", "event": "magics"})


def watch_bank(bank):
    """Push {"push": "memory"} to the sidebars when the magics' bank opens and whenever its units
    change (called by RyzMagics.bank())."""
    ns = bank.namespace
    bank.subscribe(lambda event: _broadcast({"push": "memory", "event": event, "namespace": ns}))
    _broadcast({"push": "memory", "event": "open", "namespace": ns})


def _state():
    from ryzjupyter import serve
    snap = MANAGER.snapshot()
    snap["last"] = MANAGER.last_generation
    snap["server"] = serve.status()        # None, or {"url", "models", "requests", "streams", "tok_s", ...}
    return snap


# ----------------------------------------------------------------------------
# requests

def handle(data, reply_later=None):
    """Validate and run one request; yields the replies to send now. A slow op (load) given a
    `reply_later` callable runs on a worker thread and sends its reply through it."""
    rid = None
    try:
        if not isinstance(data, dict):
            raise RequestError(f"a request must be a JSON object like {{\"id\": 1, \"op\": \"status\"}}, "
                               f"got {type(data).__name__}")
        rid = data.get("id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (int, str))):
            rid = None
            raise RequestError("'id' must be an integer or a string")
        if isinstance(rid, str) and len(rid) > 200:
            rid = None
            raise RequestError("'id' is too long (at most 200 characters)")
        try:
            size = len(json.dumps(data))
        except (TypeError, ValueError):
            raise RequestError("the request is not plain JSON") from None
        if size > MAX_MESSAGE_BYTES:
            raise RequestError(f"the request is {size} bytes; at most {MAX_MESSAGE_BYTES} are accepted")
        if rid is None:
            raise RequestError("missing 'id' (an integer or a string the reply will carry)")
        op = data.get("op")
        if not isinstance(op, str):
            raise RequestError(f"missing 'op'; one of: {', '.join(OPS)}")
        if op not in OPS:
            raise RequestError(f"unknown op {op!r}; one of: {', '.join(OPS)}")
        if op == "load" and reply_later is not None:
            args = _load_args(data)
            threading.Thread(target=lambda: reply_later(_run(rid, lambda _: _do_load(args), None)), daemon=True,
                             name="ryzjupyter-load").start()
            return
        yield _run(rid, _OPS[op], data)
    except RequestError as e:
        yield {"id": rid, "ok": False, "error": str(e)}
    except Exception as e:          # never an exception in the kernel
        yield {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"}


def _run(rid, fn, data):
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn(data)
        reply = {"id": rid, "ok": True, **result}
        if caught:
            reply["warnings"] = [str(w.message) for w in caught]
        return reply
    except RequestError as e:
        return {"id": rid, "ok": False, "error": str(e)}
    except MemoryBudgetError as e:
        return {"id": rid, "ok": False, "error": str(e), "reason": "memory", "needed": e.needed,
                "budget": e.budget, "state": _state()}
    except ModelBusyError as e:
        return {"id": rid, "ok": False, "error": str(e), "reason": "busy", "state": _state()}
    except KeyError as e:
        if fn not in (_op_use, _op_unload):
            return {"id": rid, "ok": False, "error": f"KeyError: {e}"}
        name = e.args[0] if e.args else "?"
        return {"id": rid, "ok": False, "error": f"no loaded model called {name!r}; loaded: "
                f"{', '.join(MANAGER.names()) or 'none'}", "reason": "not-loaded"}
    except KeyboardInterrupt:
        return {"id": rid, "ok": False, "error": "interrupted"}
    except Exception as e:
        return {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"}


def _str_arg(data, key, required=True, limit=4096):
    v = data.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip():
        raise RequestError(f"'{key}' must be a non-empty string")
    if len(v) > limit:
        raise RequestError(f"'{key}' is too long")
    return v


def _op_status(data):
    return {"protocol": PROTOCOL, "version": _version(), "state": _state()}


def _op_list(data):
    loaded = MANAGER.list()
    models = []
    for i in loaded:
        models.append({"name": i.name, "source": i.source, "loaded": True, "current": i.current,
                       "busy": i.busy, "family": i.family, "memory_bytes": i.nbytes,
                       "weights_bytes": i.weights_bytes, "memory": format_bytes(i.nbytes)})
    for a in MANAGER.available():
        if a["loaded"]:
            continue
        models.append({"name": a["name"], "source": a["path"], "loaded": False, "current": False,
                       "busy": False, "family": a["family"], "variant": a["variant"],
                       "params": a["params"], "file_bytes": a["file_bytes"],
                       "memory_bytes": a["estimate_bytes"], "memory": "~" + format_bytes(a["estimate_bytes"]),
                       "bundled": a["bundled"]})
    return {"models": models, "state": _state()}


def _load_args(data):
    spec = data.get("model")
    if spec is not None:
        spec = _str_arg(data, "model")
    name = _str_arg(data, "name", required=False, limit=200)
    opts = data.get("options")
    opts = {} if opts is None else opts
    if not isinstance(opts, dict):
        raise RequestError("'options' must be an object")
    clean = {}
    for k, v in opts.items():
        typ = _LOAD_OPTIONS.get(k)
        if typ is None:
            raise RequestError(f"unknown load option {k!r}; valid: {', '.join(sorted(_LOAD_OPTIONS))}")
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise RequestError(f"load option {k!r} must be {typ.__name__}")
        clean[k] = v
    return {"model": spec, "name": name, "options": clean}


def _op_load(data):
    return _do_load(_load_args(data))


def _do_load(args):
    name, _ = MANAGER.load(args["model"], name=args["name"], **args["options"])
    return {"name": name, "state": _state()}


def _op_unload(data):
    return {"name": MANAGER.unload(_str_arg(data, "model")), "state": _state()}


def _op_use(data):
    name, _ = MANAGER.use(_str_arg(data, "model"))
    return {"name": name, "state": _state()}


def _op_stop(data):
    return {"stopped": MANAGER.stop()}


def _op_stats(data):
    return MANAGER.live_stats()


def _op_budget(data):
    if "bytes" not in data:
        raise RequestError("'bytes' is required: a number of bytes, a string like '6GiB', or null")
    try:
        MANAGER.set_memory_budget(data["bytes"])
    except ValueError as e:
        raise RequestError(str(e)) from None
    return {"state": _state()}


def _op_register(data):
    try:
        name = MANAGER.register(_str_arg(data, "path"))
    except FileNotFoundError as e:
        raise RequestError(str(e)) from None
    return {"name": name, **_op_list({})}


def _int_arg(data, key, default, lo, hi):
    v = data.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise RequestError(f"'{key}' must be an integer in {lo}..{hi}")
    return v


def _magics_or_none():
    try:
        from IPython import get_ipython
        ip = get_ipython()
    except ImportError:
        ip = None
    return getattr(ip, "_ryz_magics", None) if ip is not None else None


def _magics():
    m = _magics_or_none()
    if m is None:
        raise RequestError("the memory bank is reached through the ryzjupyter magics; run %load_ext ryzjupyter")
    return m


def _open_bank(m):
    """The magics' bank if it is open with the current settings, else None (nothing is opened)."""
    bank = getattr(m, "_bank", None)
    if bank is None or bank._closed or getattr(m, "_bank_key", None) != (m.memory_path or None, m.memory_namespace):
        return None
    return bank


def _unit(h):
    text = h.text if len(h.text) <= UNIT_TEXT_CHARS else h.text[:UNIT_TEXT_CHARS - 1] + "\u2026"
    return {"id": h.id, "text": text, "source": h.source, "time": h.time, "uses": h.uses,
            "score": round(float(h.score), 4)}


def _op_memory(data):
    action = data.get("action", "status")
    if action not in MEMORY_ACTIONS:
        raise RequestError(f"unknown memory action {action!r}; one of: {', '.join(MEMORY_ACTIONS)}")
    limit = _int_arg(data, "limit", 20, 1, 200)
    k = _int_arg(data, "k", 5, 1, 50)
    query = _str_arg(data, "query", limit=2000) if action == "search" else None
    if action == "status" and _magics_or_none() is None:
        return {"memory": {"open": False, "magics": False}}
    m = _magics()
    bank = _open_bank(m)
    if bank is None and action == "status":
        from ryzjupyter.memory.bank import default_path
        return {"memory": {"open": False, "namespace": m.memory_namespace,
                           "store": str(m.memory_path or default_path())}}
    if bank is None:
        from IPython.core.error import UsageError
        try:
            bank = m.bank()            # what %ryz memory opens: the same object, shared with the cells
        except UsageError as e:        # another kernel holds it, or the folder is not a bank
            raise RequestError(str(e)) from None
    with bank._lock:                   # a cell may be adding units on the main thread meanwhile
        units = bank.newest(limit)     # reads only these units, not the whole bank
        info = {"open": True, "namespace": bank.namespace, "store": bank.store,
                "rsus": bank.count(), "model": bank.model_name}
    out = {"memory": info, "units": [_unit(u) for u in units]}
    if action == "search":
        out["hits"] = [_unit(h) for h in bank.search(query, k=k, count_use=False)]
    return out


_OPS = {"status": _op_status, "list": _op_list, "load": _op_load, "unload": _op_unload, "use": _op_use,
        "stop": _op_stop, "stats": _op_stats, "budget": _op_budget, "register": _op_register,
        "memory": _op_memory}
