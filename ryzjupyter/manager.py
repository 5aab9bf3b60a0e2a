"""The kernel's model manager: several models loaded at once under a memory budget.

    from ryzjupyter.manager import MANAGER
    name, model = MANAGER.load("tests/fixtures/bitnet/packed")   # loads, makes it current
    MANAGER.use("demo")                                           # hot-swap: no reload
    with MANAGER.generating() as gen:                             # nothing is unloaded or swapped meanwhile
        for piece in gen.wrap(model.stream("Hello", 32)): ...
    MANAGER.list(); MANAGER.available(); MANAGER.snapshot()

It offers the magics' registry interface (names / get / current / current_name / find / list / add /
load / use / unload / clear) plus:

* a memory budget (bytes; default 80 % of the RAM available when the manager is created, or
  $RYZ_MEMORY_BUDGET, or `set_memory_budget("6GiB")`, which `%config RyzMagics.memory_budget` sets);
* an estimate of what a model will take *before* loading it (weights in compute format + a KV-cache
  reserve), so a model that cannot fit is refused with its size instead of getting the kernel
  OOM-killed;
* LRU unloading of idle models when a new one needs room (never one that is generating);
* a generation lock (`generating()`): while a model generates, it cannot be unloaded and the
  current model cannot be swapped; `stop()` asks the running generation to end (cooperative, at the
  next token; the partial answer is kept);
* events for whoever subscribes (the sidebar's comm): load progress, changes, live stats during
  generation, and the stats + profile of the last generation.

Thread-safe: the sidebar's comm handlers run on a kernel subshell thread while a cell generates.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ryzjupyter.models import DEFAULT_MODEL, MODELS_DIR, bundled_names, is_bundled

__all__ = ["ModelManager", "ModelInfo", "ModelBusyError", "MemoryBudgetError", "MANAGER",
           "parse_bytes", "format_bytes", "estimate_model_bytes", "finish_info", "token_text"]

KV_RESERVE_TOKENS = 2048          # the KV cache is counted for this many tokens (or the context, if smaller)
STATS_INTERVAL_S = 0.2            # live stats pushes: at most 5 per second


class ModelBusyError(RuntimeError):
    """The model (or the current-model slot) is in use by a running generation."""


class MemoryBudgetError(MemoryError):
    """A model would not fit in the memory budget (or in the machine's free memory)."""

    def __init__(self, message, *, needed=0, budget=0):
        super().__init__(message)
        self.needed, self.budget = needed, budget


@dataclass
class ModelInfo:
    """One loaded model, as ``ModelManager.list()`` reports it.

    Attributes:
        name: its name in the manager.
        source: what it was loaded from (folder, hub id, bundled name).
        nbytes: the memory it is counted for against the budget (weights + KV cache reserve).
        current: whether it is the current model.
        family: the model family (``"bitnet"``).
        busy: whether a generation is running on it.
        last_used: ``time.time()`` of its last use.
        weights_bytes: the memory of its weights alone.
    """

    name: str
    source: str        # what it was loaded from (folder, hub id, "bundled")
    nbytes: int        # memory it is counted for (weights + KV reserve)
    current: bool
    family: str
    busy: bool = False
    last_used: float = 0.0
    weights_bytes: int = 0

    def as_dict(self):
        return dict(self.__dict__)


# ----------------------------------------------------------------------------
# sizes

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_bytes(value) -> int:
    """4_000_000, "4e9", "6GiB", "512 MB" -> bytes. Raises ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"a memory size must be a number of bytes or a string like '6GiB', got {value!r}")
    if isinstance(value, (int, float)):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"cannot read {value!r} as a memory size; write e.g. '6GiB', '512MB' or 4000000000")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise ValueError(f"a memory size must be a number of bytes or a string like '6GiB', got {value!r}")
    if n != n or n <= 0 or n == float("inf"):
        raise ValueError(f"a memory size must be positive, got {value!r}")
    return int(n)


def format_bytes(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def available_ram() -> int:
    """Bytes the OS can give us now (MemAvailable), psutil if present, else /proc/meminfo."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


def default_memory_budget() -> int:
    """``RYZ_MEMORY_BUDGET`` if set, else 80 % of the memory available now."""
    env = os.environ.get("RYZ_MEMORY_BUDGET")
    if env:
        return parse_bytes(env)
    return int(0.8 * available_ram())


def _weight_files(folder: Path):
    return [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth")
            and p.is_file()] if folder.is_dir() else []


def estimate_model_bytes(folder, *, lm_head="f32", max_context=None, kv_cache="f32") -> dict:
    """What loading `folder` will take, without loading it.

    BitNet: ternary linears at 2 bits per weight in up to two layouts (packed, online and 1bitLLM
    formats all run ternary), float linears ("float" format) at 4 bytes, the lm_head as float32 (or int8 + scales, or int4 + float16 group scales),
    an untied embedding as stored (memory-mapped: "mapped"), and a KV-cache reserve of
    2 * layers * min(context, 2048) * kv_heads * head_dim * 4 bytes (kv_cache "f16" / "bf16": 2
    bytes a value; "int8": 1, plus a float32 scale a row and kv head). Mamba, Mamba-2 and RWKV: the
    weights in float32 (twice an F16/BF16 file) and their recurrent state with its snapshots
    (constant in the context). Other families: the weight files' size. Returns {"weights" (comparable to model.nbytes),
    "mapped", "kv", "total", "files", "family", "variant", "params"}.
    """
    folder = Path(folder)
    files_bytes = sum(p.stat().st_size for p in _weight_files(folder))
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    family, variant = _family_of(cfg, folder)
    out = {"family": family, "variant": variant, "params": 0, "files": files_bytes}
    try:
        D = int(cfg["hidden_size"])
        L = int(cfg["num_hidden_layers"])
        V = int(cfg["vocab_size"])
        I = int(cfg.get("intermediate_size") or 4 * D)
        nh = int(cfg.get("num_attention_heads") or 1)
        nkv = int(cfg.get("num_key_value_heads") or nh)
        hd = int(cfg.get("head_dim") or D // nh)
        ctx = int(max_context or cfg.get("max_position_embeddings") or 2048)
    except (KeyError, TypeError, ValueError):
        out.update(weights=files_bytes, kv=0, total=int(files_bytes * 1.1))
        return out
    row = _KV_ROW_BYTES.get(kv_cache if family == "bitnet" else "f32", _KV_ROW_BYTES["f32"])(hd)
    kv = 2 * L * min(ctx, KV_RESERVE_TOKENS) * nkv * row
    if family == "bitnet":
        q, kvd = nh * hd, nkv * hd
        linear = L * (q * D + 2 * kvd * D + D * q + 3 * I * D)
        # ternary: 2 bits a weight, in up to two layouts (I2 and lookup-table: ryzjupyter.engine.ternary
        # keeps the one measured fastest per shape and batch size, often both)
        lin_bytes = linear * 4 if variant == "float" else 2 * (linear // 4) + linear // 16 + L * 7 * 64
        if lm_head == "int4":        # 4 bits a weight + a float16 scale per 32 columns (head4.h)
            head = -(-V // 16) * 16 * -(-D // 32) * (32 // 2 + 2)
        else:
            head = V * D * (4 if lm_head == "f32" else 1) + (0 if lm_head == "f32" else V * 4)
        tied = cfg.get("tie_word_embeddings", True)
        embed = 0 if (tied and lm_head == "f32") else V * D * 2
        norms = L * (2 * D + q + I) * 4 + D * 4
        weights = lin_bytes + head + norms
        mapped = embed
        out["params"] = linear + V * D * (1 if tied else 2)
    elif family in ("mamba", "mamba2", "rwkv", "rwkv7"):
        # float32 at run time (F16/BF16 files widen to twice their size); the "kv" reserve is the
        # recurrent state and its snapshots (9 states: constant in the context length)
        dt = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
        weights, mapped = files_bytes * (2 if dt in ("bfloat16", "float16") else 1), 0
        if family.startswith("mamba"):
            I = int(cfg.get("intermediate_size") or cfg.get("expand", 2) * D)
        if family == "mamba":
            state = L * I * (int(cfg.get("conv_kernel", 4)) + int(cfg.get("state_size", 16))) * 4
        elif family == "mamba2":
            G, N = int(cfg.get("n_groups", 1)), int(cfg.get("state_size", 128))
            state = L * ((I + 2 * G * N) * int(cfg.get("conv_kernel", 4)) + I * N) * 4
        elif family == "rwkv":
            state = L * 5 * D * 4
        else:
            N = int(cfg.get("head_size") or cfg.get("head_dim") or D // int(cfg.get("num_heads") or D // 64))
            state = L * (2 * D + D * N) * 4
        kv = 9 * state
        out["params"] = int(weights // 4)
    else:
        weights, mapped = files_bytes, 0
    out.update(weights=int(weights), mapped=int(mapped), kv=int(kv), total=int(weights + mapped + kv))
    return out


def _family_of(cfg: dict, folder: Path):
    try:
        from ryzjupyter.engine.checkpoint import detect_kind   # the engine's detection (config only: no tensor names)
        kind = detect_kind(cfg)
        variant = kind.variant
        if kind.family == "bitnet" and variant == "packed":
            # without opening the file, packed and offline_float look alike; both run ternary
            variant = "packed"
        return kind.family, variant
    except Exception:
        pass
    mt = str(cfg.get("model_type", "")).lower()
    if mt == "bitnet" or "BitNetForCausalLM" in (cfg.get("architectures") or []):
        return "bitnet", ("float" if not cfg.get("quantization_config") else "packed")
    return (mt or "unknown"), ""


# ----------------------------------------------------------------------------
# generation tracking

@dataclass
class Generation:
    """One running generation (see ModelManager.generating)."""
    manager: "ModelManager"
    name: str | None
    stop_event: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)
    n_pieces: int = 0
    n_tokens: int = 0
    first_piece: float | None = None
    stream: object = None
    _last_push: float = 0.0

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()

    def request_stop(self):
        self.stop_event.set()
        s = self.stream
        if s is not None:
            req = getattr(s, "request_stop", None)
            if callable(req):
                req()
            elif hasattr(s, "_interrupted"):
                s._interrupted = True          # the engine's TextStream checks this flag between tokens

    def wrap(self, stream):
        """Iterate a model's text stream, counting tokens for live stats and ending it when stop()
        is requested (the stream then finishes with finish_reason 'interrupted')."""
        self.stream = stream
        session = getattr(stream, "session", None)
        base = getattr(session, "tokens_processed", None)
        for piece in stream:
            now = time.perf_counter()
            if self.first_piece is None:
                self.first_piece = now
                base = getattr(session, "tokens_processed", None)
            self.n_pieces += 1
            done = getattr(session, "tokens_processed", None)
            counted = getattr(stream, "n_generated", None)      # the engine's TextStream counts every token
            if counted is not None:
                self.n_tokens = counted
            else:
                self.n_tokens = (done - base + 1) if (done is not None and base is not None) else self.n_pieces
            self.tick(now)
            yield piece
            if self.stopped:
                interrupt = getattr(stream, "interrupt", None)
                if callable(interrupt):
                    interrupt()
                break

    def tick(self, now=None, n_tokens=None):
        """Record progress (n_tokens generated so far) and push live stats at most 5 times a second."""
        now = time.perf_counter() if now is None else now
        if n_tokens is not None:
            self.n_tokens = n_tokens
            if self.first_piece is None:
                self.first_piece = now
        if now - self._last_push >= STATS_INTERVAL_S:
            self._last_push = now
            self.manager._emit({"event": "stats", "live": self.live()})

    def live(self) -> dict:
        now = time.perf_counter()
        counted = getattr(self.stream, "n_generated", None)
        if counted is not None and self.first_piece is not None:
            # a token whose bytes are not yet a whole character shows no text piece; count it
            self.n_tokens = max(self.n_tokens, counted)
        d = {"model": self.name, "running": True, "elapsed_s": now - self.started,
             "tokens": self.n_tokens, "tok_s": 0.0}
        if self.first_piece is not None and self.n_tokens > 1 and now > self.first_piece:
            d["tok_s"] = (self.n_tokens - 1) / (now - self.first_piece)
        if self.first_piece is not None:
            d["ttft_s"] = self.first_piece - self.started
        return d


FINISH_LABELS = {"length": "max tokens reached", "context": "context full", "stop_token": "stop token",
                 "stop_string": "stop string", "interrupted": "interrupted"}


def finish_info(result, tokenizer=None, max_context=None) -> dict:
    """Why a generation stopped, for people: {"reason", "label", "detail"}.

    reason: "length" (max_new_tokens reached), "context" (the model's context is full), "stop_token"
    (the model wrote a stop token, e.g. end of turn), "stop_string" (a --stop string appeared) or
    "interrupted"; the engine's single "stop" is split into the last two by looking at the last
    token. label: a short phrase for footers ("stop token '</s>'", "context full (256 tokens)")."""
    reason = getattr(result, "finish_reason", None) or "length"
    tokens = list(getattr(result, "tokens", None) or [])
    settings = getattr(result, "settings", None) or {}
    stops = settings.get("stop") or []
    stop_ids = {s for s in stops if isinstance(s, int) and not isinstance(s, bool)}
    detail = None
    if reason == "stop":
        if tokens and (tokens[-1] in stop_ids or (tokenizer is not None
                                                  and tokens[-1] in getattr(tokenizer, "stop_token_ids", ()))):
            reason, detail = "stop_token", token_text(tokenizer, tokens[-1])
        else:
            reason = "stop_string"
            strings = [s for s in stops if isinstance(s, str)]
            detail = _which_stop_string(result, tokenizer, strings)
    elif reason == "length":
        detail = settings.get("max_new_tokens")
    elif reason == "context":
        detail = max_context
    label = FINISH_LABELS.get(reason, str(reason))
    if reason in ("stop_token", "stop_string") and detail is not None:
        label += f" {detail!r}"
    elif reason in ("length", "context") and detail:
        label += f" ({detail} tokens)"
    return {"reason": reason, "label": label, "detail": detail}


def token_text(tokenizer, token_id) -> str:
    """A token id as its text in the vocabulary ('</s>', '<|eot_id|>'), or '#id' without a tokenizer."""
    try:
        t = tokenizer.id_to_token(int(token_id))
    except Exception:
        t = None
    return t if isinstance(t, str) and t else f"#{token_id}"


def _which_stop_string(result, tokenizer, strings):
    if len(strings) == 1 or tokenizer is None:
        return strings[0] if len(strings) == 1 else None
    try:                # the stop string is cut from the text: find it in the decoded tokens
        full = tokenizer.decode(list(result.tokens))
    except Exception:
        return None
    at = [(full.find(s, max(0, len(result.text) - 1)), s) for s in strings]
    at = [(i, s) for i, s in at if i >= 0]
    return min(at)[1] if at else None


def generation_report(result, name=None, tokenizer=None, max_context=None) -> dict:
    """Stats and profile breakdown of a finished generation (an engine GenerationResult)."""
    stats = getattr(result, "stats", None)
    s = stats.as_dict() if hasattr(stats, "as_dict") else dict(getattr(stats, "__dict__", {}) or {})
    prof = getattr(result, "profile", None) or getattr(stats, "profile", None)
    profile = None
    if prof is not None and hasattr(prof, "phases"):           # ryzjupyter.engine.profiling.Profile
        try:
            items = [(k, v) for k, v, _ in prof.ordered()]
        except Exception:
            items = list(prof.phases.items())
        profile = {str(k): float(v) for k, v in items if v}
    elif isinstance(prof, dict) and prof:
        profile = {str(k): float(v) for k, v in prof.items()}
    if not profile:
        total = float(s.get("total_s", 0.0))
        prefill = float(s.get("prefill_s", 0.0))
        decode = float(s.get("decode_s", 0.0))
        first = max(0.0, float(s.get("ttft_s", 0.0)) - prefill)   # sampling the first token etc.
        profile = {"prefill": prefill, "first token": first, "decode": decode,
                   "other": max(0.0, total - prefill - first - decode)}
    return {"model": name, "running": False, "stats": {k: v for k, v in s.items() if k != "profile"},
            "profile": profile, "finish_reason": getattr(result, "finish_reason", None),
            "finish": finish_info(result, tokenizer, max_context),
            "tok_s": float(s.get("decode_tok_s", 0.0)), "tokens": int(s.get("n_generated", 0))}


# ----------------------------------------------------------------------------
# the manager

class ModelManager:
    """Several models loaded at once under a memory budget, one of them current.

    The kernel has one, ``ryzjupyter.manager.MANAGER``: ``%ryz load | use | unload | list``, the
    ``%%ryz`` cells, the widgets and the sidebar all go through it. A load estimates the model's
    memory first and unloads idle models (least recently used first) to make room, or refuses
    with ``MemoryBudgetError``; a model that is generating is never unloaded or swapped out
    (``ModelBusyError``). ``stop()`` ends running generations at their next token; ``subscribe``
    reports loads, changes and live generation stats.

    Args:
        memory_budget: bytes or a string like ``"6GiB"``; None: 80 % of the memory available
            (``RYZ_MEMORY_BUDGET`` sets the kernel's).
    """

    def __init__(self, memory_budget=None):
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()           # one load at a time
        self._models: dict[str, object] = {}         # name -> model, in LRU order (oldest first)
        self._sources: dict[str, str] = {}
        self._folders: dict[str, Path] = {}           # name -> the local folder it was loaded from
        self._mem: dict[str, int] = {}                # name -> bytes counted against the budget
        self._weights: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._busy: dict[str, int] = {}               # name -> running generations
        self._current: str | None = None
        self._registered: dict[str, Path] = {}        # name -> folder (available models)
        self._subscribers: list = []
        self._loading: dict | None = None
        self._generations: list[Generation] = []
        self.last_generation: dict | None = None
        self._budget = parse_bytes(memory_budget) if memory_budget is not None else None
        self._auto_budget = None

    # -- budget
    @property
    def memory_budget(self) -> int:
        """The budget in bytes (settable: bytes, a string like ``"6GiB"``, None for the default)."""
        if self._budget is not None:
            return self._budget
        if self._auto_budget is None:
            self._auto_budget = default_memory_budget()
        return self._auto_budget

    @memory_budget.setter
    def memory_budget(self, value):
        self.set_memory_budget(value)

    def set_memory_budget(self, value):
        """Bytes (int), a string like '6GiB', or None / 0 for the default (80 % of available RAM)."""
        with self._lock:
            self._budget = None if value in (None, 0, "", "auto") else parse_bytes(value)
            self._auto_budget = None
        self._emit({"event": "changed"})

    @property
    def used_bytes(self) -> int:
        """Bytes counted against the budget by the loaded models."""
        with self._lock:
            return sum(self._mem.values())

    # -- registry interface (what the magics use)
    def names(self) -> list[str]:
        """The loaded models' names, least recently used first."""
        with self._lock:
            return list(self._models)

    def get(self, name):
        """The loaded model called ``name``, or None."""
        with self._lock:
            return self._models.get(name)

    @property
    def current_name(self) -> str | None:
        """The current model's name, or None."""
        return self._current

    def current(self):
        """The current model, or None when none is loaded."""
        with self._lock:
            return self._models.get(self._current) if self._current else None

    def find(self, spec):
        """The loaded model called `spec`, or loaded from `spec` (a folder or hub id), or None."""
        if spec is None:
            return None
        spec = str(spec)
        with self._lock:
            if spec in self._models:
                return spec
            for name, src in self._sources.items():
                if src == spec or _same_path(src, spec):
                    return name
            folder = self._registered.get(spec)
            if folder is not None:
                for name, src in self._sources.items():
                    if _same_path(src, str(folder)):
                        return name
            if self._folders:                  # a model name of a folder that is loaded under another name
                folder = self._candidates().get(spec)
                folder = folder.resolve() if folder is not None and folder.exists() else None
                for name, f in self._folders.items():
                    if folder is not None and f == folder:
                        return name
            return None

    def list(self) -> list[ModelInfo]:
        """A ``ModelInfo`` for each loaded model."""
        with self._lock:
            return [ModelInfo(name, self._sources[name], self._mem.get(name, 0), name == self._current,
                              getattr(m, "family", type(m).__name__), self._busy.get(name, 0) > 0,
                              self._last_used.get(name, 0.0), self._weights.get(name, 0))
                    for name, m in self._models.items()]

    def add(self, name: str, model, source: str = "", make_current: bool = True, nbytes=None):
        """Register an already loaded model (counted at `nbytes`, else its own estimate)."""
        with self._lock:
            if name in self._models and self._models[name] is not model:
                raise ValueError(f"a model named {name!r} is already loaded; unload it first or pick another name")
            if make_current and self._current is not None and self._current != name:
                self._check_swap_allowed(name)
            self._models[name] = model
            self._sources[name] = source or name
            folder = Path(os.path.expanduser(str(source))) if source else None
            if folder is not None and (folder / "config.json").is_file():
                self._folders[name] = folder.resolve()
            w = _nbytes(model)
            self._weights[name] = w
            self._mem[name] = int(nbytes) if nbytes is not None else w + _kv_reserve(model)
            self._touch(name)
            if make_current or self._current is None:
                self._current = name
        self._emit({"event": "changed"})
        return model

    def load(self, spec=None, *, name=None, progress=None, **options):
        """Load `spec` (folder, hub id, bundled or registered name; None = the bundled demo model)
        unless it is already loaded; make it current; return (name, model).

        Before loading, the model's memory is estimated; idle models are unloaded, least recently
        used first, until it fits the budget. If it cannot fit, MemoryBudgetError says how much it
        needs, the budget, and what is loaded or busy; nothing is unloaded in that case."""
        with self._lock:
            # spec None is the bundled default model: loaded twice it would be held twice
            found = self.find(spec if spec is not None else DEFAULT_MODEL)
            if found is not None and (name is None or name == found):
                self._check_swap_allowed(found)
                self._current = found
                self._touch(found)
                self._emit({"event": "changed"})
                return found, self._models[found]
            if name is not None and name in self._models:
                raise ValueError(f"a model named {name!r} is already loaded; unload it first or pick another name")
        with self._load_lock:
            target = self._resolve_local(spec)
            est = self.estimate(spec, **{k: options[k] for k in ("lm_head", "max_context", "kv_cache")
                                         if k in options}) \
                if target is not None else None
            label = name or (self._name_for(spec, target))
            with self._lock:
                if est is not None:
                    self._make_room(label, est["total"])
                self._loading = {"name": label, "source": str(spec) if spec is not None else "bundled",
                                 "done": 0, "total": 0, "fraction": 0.0,
                                 "estimate": est["total"] if est else None, "started": time.time()}
            self._emit({"event": "progress", **self._loading})

            def on_progress(done, total):
                with self._lock:
                    if self._loading is not None:
                        self._loading.update(done=int(done), total=int(total),
                                             fraction=(done / total) if total else 0.0)
                        ev = dict(self._loading)
                self._emit({"event": "progress", **ev})
                if progress is not None:
                    progress(done, total)

            from ryzjupyter.families.loading import load as _load
            load_spec = spec if spec is None or is_bundled(spec) or target is None else str(target)
            options.setdefault("name", name or label)
            try:
                model = _load(load_spec, progress=on_progress, **options)
            except BaseException as e:
                with self._lock:
                    self._loading = None
                self._emit({"event": "progress", "name": label, "done": 0, "total": 0, "fraction": 0.0,
                            "finished": True, "error": f"{type(e).__name__}: {e}"})
                raise
            final = name or label
            if final in self._models:
                final = _unique(final, self._models)
            counted = est["total"] if est is not None else None
            w = _nbytes(model)
            if w:
                counted = w + _kv_reserve(model)
            with self._lock:
                self._loading = None
                self._models[final] = model
                self._sources[final] = str(spec) if spec is not None else "bundled"
                if target is not None:
                    self._folders[final] = Path(target).resolve()
                self._weights[final] = w
                self._mem[final] = int(counted or 0)
                self._touch(final)
                if not any(self._busy.values()) or self._current is None:
                    self._current = final
            self._emit({"event": "progress", "name": final, "done": 1, "total": 1, "fraction": 1.0,
                        "finished": True})
            self._emit({"event": "changed"})
            return final, model

    def use(self, spec):
        """Make a loaded model current (hot-swap: nothing is reloaded). KeyError if not loaded;
        ModelBusyError while a generation runs."""
        with self._lock:
            found = self.find(spec)
            if found is None:
                raise KeyError(spec)
            self._check_swap_allowed(found)
            self._current = found
            self._touch(found)
            model = self._models[found]
        self._emit({"event": "changed"})
        return found, model

    def unload(self, spec) -> str:
        """Unload a loaded model (by name or source) and return its name. KeyError if it is not
        loaded; ModelBusyError while it generates."""
        with self._lock:
            found = self.find(spec)
            if found is None:
                raise KeyError(spec)
            if self._busy.get(found):
                raise ModelBusyError(f"{found} is generating; stop the generation first (the stop button, "
                                     "or interrupt the kernel), then unload it")
            model = self._drop(found)
        _close(model)
        self._emit({"event": "changed"})
        return found

    def clear(self):
        """Unload every model that is not generating."""
        for name in self.names():
            try:
                self.unload(name)
            except ModelBusyError:
                pass

    # -- available models
    def register(self, folder, name=None) -> str:
        """Make a model folder (config.json + weights) available by name, or every model folder
        inside `folder`. Returns the (first) name."""
        folder = Path(os.path.expanduser(folder))
        try:
            is_model = (folder / "config.json").is_file()
            subs = [] if is_model or not folder.is_dir() else \
                sorted(p for p in folder.iterdir() if (p / "config.json").is_file())
        except OSError as e:                 # a path the system cannot look up (a name too long...)
            raise FileNotFoundError(f"{str(folder)[:200]} cannot be read ({e.strerror}); pass a model folder "
                                    "(config.json + weights) or a folder of them") from None
        if is_model:
            key = name or folder.name
            with self._lock:
                self._registered[key] = folder.resolve()
            self._emit({"event": "changed"})
            return key
        if subs:
            with self._lock:
                for p in subs:
                    self._registered[p.name] = p.resolve()
            self._emit({"event": "changed"})
            return subs[0].name
        raise FileNotFoundError(f"{folder} is not a model folder (no config.json) and holds none")

    def _candidates(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for name in bundled_names():
            out[name] = MODELS_DIR / name
        for entry in filter(None, os.environ.get("RYZ_MODEL_DIRS", "").split(os.pathsep)):
            d = Path(os.path.expanduser(entry))
            if (d / "config.json").is_file():
                out.setdefault(d.name, d)
            elif d.is_dir():
                for p in sorted(d.iterdir()):
                    if (p / "config.json").is_file():
                        out.setdefault(p.name, p)
        with self._lock:
            out.update(self._registered)
        return out

    def available(self) -> list[dict]:
        """Models that can be loaded: bundled (ryzjupyter/models/*), registered, $RYZ_MODEL_DIRS."""
        with self._lock:
            loaded_sources = dict(self._sources)
            loaded_folders = dict(self._folders)
        rows = []
        for name, folder in self._candidates().items():
            try:
                est = estimate_model_bytes(folder)
            except OSError:
                continue
            resolved = folder.resolve() if folder.exists() else folder
            # loaded already (under this name or another, from this folder): the sidebar lists it
            # under Loaded only
            loaded_as = next((n for n, f in loaded_folders.items() if f == resolved), None) or next(
                (n for n, s in loaded_sources.items() if s == name or _same_path(s, str(folder))), None)
            rows.append({"name": name, "path": str(folder), "family": est["family"], "variant": est["variant"],
                         "params": est["params"], "file_bytes": est["files"], "estimate_bytes": est["total"],
                         "loaded": loaded_as is not None, "loaded_as": loaded_as,
                         "bundled": folder.parent == MODELS_DIR})
        return rows

    def estimate(self, spec=None, **options) -> dict:
        """What loading ``spec`` (a local folder or a known model name; None: the bundled model)
        would take, without loading it: ``estimate_model_bytes``'s dict (bytes of the weights
        and the KV cache). ``options``: ``lm_head``, ``max_context``, ``kv_cache``."""
        folder = self._resolve_local(spec)
        if folder is None:
            raise FileNotFoundError(f"cannot estimate {spec!r}: not a local model folder or a known model name")
        return estimate_model_bytes(folder, **options)

    def _resolve_local(self, spec):
        """A local folder for spec, or None (e.g. a hub id not downloaded: the engine resolves it)."""
        if spec is None:
            try:
                from ryzjupyter.families.loading import bundled_model_path
                return bundled_model_path()
            except Exception:
                return None
        spec = str(spec)
        cands = self._candidates()
        if spec in cands:
            return cands[spec]
        p = Path(os.path.expanduser(spec))
        try:
            if (p / "config.json").is_file():
                return p
        except (OSError, ValueError):        # a name no file can have (too long, NUL): not a local folder
            pass
        return None

    def _name_for(self, spec, folder):
        if spec is None:
            return folder.name if folder is not None else "demo"
        if folder is not None and str(spec) in self._candidates():
            return str(spec)
        return Path(str(spec)).name or str(spec)

    # -- memory
    def _make_room(self, label, needed):
        """Unload idle models (LRU first) until `needed` bytes fit, or raise without unloading."""
        budget = self.memory_budget
        loaded = ", ".join(f"{n} ({format_bytes(self._mem.get(n, 0))}{', generating' if self._busy.get(n) else ''})"
                           for n in self._models) or "nothing"
        if needed > budget:
            raise MemoryBudgetError(
                f"{label} needs about {format_bytes(needed)} but the memory budget is {format_bytes(budget)}; "
                f"raise it (%config RyzMagics.memory_budget = '...', or RYZ_MEMORY_BUDGET) if the machine "
                f"has the RAM, or pick a smaller model", needed=needed, budget=budget)
        victims, free = [], budget - self.used_bytes
        for n in list(self._models):                       # dict order = least recently used first
            if free >= needed:
                break
            if self._busy.get(n):
                continue
            victims.append(n)
            free += self._mem.get(n, 0)
        if free < needed:
            raise MemoryBudgetError(
                f"{label} needs about {format_bytes(needed)}; the budget is {format_bytes(budget)} and the "
                f"models that are generating cannot be unloaded (loaded: {loaded})", needed=needed, budget=budget)
        ram = available_ram() + sum(self._mem.get(n, 0) for n in victims)
        if needed > ram:
            raise MemoryBudgetError(
                f"{label} needs about {format_bytes(needed)} but this machine has only {format_bytes(ram)} "
                f"free (after unloading idle models); close other kernels or pick a smaller model",
                needed=needed, budget=budget)
        for n in victims:
            _close(self._drop(n))
            self._emit({"event": "unloaded", "name": n, "reason": "lru"})

    def _drop(self, name):
        model = self._models.pop(name)
        for d in (self._sources, self._folders, self._mem, self._weights, self._last_used, self._busy):
            d.pop(name, None)
        if self._current == name:
            self._current = next(reversed(self._models), None) if self._models else None
        return model

    def _touch(self, name):
        self._last_used[name] = time.time()
        if name in self._models:                           # move to the most recently used end
            self._models[name] = self._models.pop(name)

    def _check_swap_allowed(self, new):
        if self._current != new and any(self._busy.values()):
            busy = ", ".join(n for n, c in self._busy.items() if c)
            raise ModelBusyError(f"{busy} is generating; the current model cannot change until it ends "
                                 "(stop it first)")

    # -- generation lock
    @contextlib.contextmanager
    def generating(self, name=None):
        """Mark a model as generating (default: the current one) for the duration of the block.
        Yields a Generation: wrap the stream with gen.wrap(stream), or call gen.tick(n_tokens)."""
        with self._lock:
            name = self.find(name) if name is not None else self._current
            if name is not None:
                self._busy[name] = self._busy.get(name, 0) + 1
                self._touch(name)
            gen = Generation(self, name)
            self._generations.append(gen)
        self._emit({"event": "generation", "running": True, "model": name})
        try:
            yield gen
        finally:
            with self._lock:
                if name is not None and name in self._busy:
                    self._busy[name] -= 1
                    if self._busy[name] <= 0:
                        del self._busy[name]
                self._generations.remove(gen)
                s = gen.stream
                result = getattr(s, "result", None) if s is not None else None
                if result is not None:
                    session = getattr(s, "session", None)
                    self.last_generation = generation_report(
                        result, name, getattr(getattr(session, "model", None), "tokenizer", None),
                        getattr(session, "max_context", None))
                elif gen.n_tokens:
                    self.last_generation = {**gen.live(), "running": False, "profile": {}, "stats": {}}
                report = self.last_generation
            self._emit({"event": "generation", "running": False, "model": name, "last": report})

    def record(self, result, name=None, tokenizer=None, max_context=None):
        """Record a finished generation's stats (for generations not run under generating())."""
        with self._lock:
            self.last_generation = generation_report(result, name or self._current, tokenizer, max_context)
        self._emit({"event": "stats", "last": self.last_generation})

    def generate(self, prompt, max_new_tokens=128, *, model=None, **kw):
        """Generate with a loaded model (default: current) under the generation lock; returns the
        engine's GenerationResult (finish_reason 'interrupted' if stop() was called)."""
        with self._lock:
            name = self.find(model) if model is not None else self._current
            if name is None:
                raise KeyError(model if model is not None else "no model is loaded")
            m = self._models[name]
        with self.generating(name) as gen:
            stream = m.stream(prompt, max_new_tokens, **kw)
            for _ in gen.wrap(stream):
                pass
            return stream.result

    def stop(self) -> bool:
        """Ask every running generation to stop at its next token. True if one was running."""
        with self._lock:
            gens = list(self._generations)
        for g in gens:
            g.request_stop()
        return bool(gens)

    @property
    def generating_now(self) -> bool:
        """Whether a generation is running."""
        with self._lock:
            return bool(self._generations)

    def live_stats(self) -> dict:
        """``{"running": [...], "last": ...}``: the running generations' live stats (tokens,
        tokens/s) and the last finished generation's report."""
        with self._lock:
            gens = list(self._generations)
            last = self.last_generation
        return {"running": [g.live() for g in gens], "last": last}

    # -- state for the sidebar
    def snapshot(self) -> dict:
        """The state the sidebar shows: current model, loaded models, memory, loading, generating."""
        with self._lock:
            return {
                "current": self._current,
                "loaded": [i.as_dict() for i in self.list()],
                "memory": {"budget": self.memory_budget, "used": self.used_bytes,
                           "available_ram": available_ram()},
                "loading": dict(self._loading) if self._loading else None,
                "generating": [g.name for g in self._generations],
            }

    # -- events
    def subscribe(self, callback):
        """callback(event: dict) on load progress, changes and generation stats; from any thread.
        Returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe():
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def _emit(self, event):
        with self._lock:
            subs = list(self._subscribers)
        for cb in subs:
            try:
                cb(event)
            except Exception:
                pass          # a broken subscriber must never break loading or generation


def _nbytes(model) -> int:
    n = getattr(model, "nbytes", 0)
    try:
        return int(n)
    except (TypeError, ValueError):
        return 0


def _kv_reserve(model) -> int:
    """The memory a model's sessions are counted for beside its weights: BitNet's KV cache for
    KV_RESERVE_TOKENS tokens (or its context), a recurrent model's state and its snapshots (constant
    in the context length; what estimate_model_bytes counts as "kv" before loading)."""
    state_bytes = getattr(model, "state_bytes", None)
    if callable(state_bytes):
        return int(state_bytes()) * (1 + int(getattr(model, "n_snapshots", 8)))
    cfg = getattr(model, "config", None)
    try:
        L, nkv, hd = int(cfg.n_layers), int(cfg.n_kv_heads), int(cfg.head_dim)
        ctx = int(getattr(model, "max_context", KV_RESERVE_TOKENS))
    except (AttributeError, TypeError, ValueError):
        return 0
    row = _KV_ROW_BYTES.get(getattr(model, "kv_dtype", "f32"), lambda hd: 4 * hd)(hd)
    return 2 * L * min(ctx, KV_RESERVE_TOKENS) * nkv * row


# bytes of one (row, kv head) of keys or values, per KV cache format (kv_cache= at load)
_KV_ROW_BYTES = {"f32": lambda hd: 4 * hd, "f16": lambda hd: 2 * hd, "bf16": lambda hd: 2 * hd,
                 "int8": lambda hd: hd + 4}


def _close(model):
    close = getattr(model, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            pass


def _same_path(a: str, b: str) -> bool:
    try:
        pa, pb = Path(os.path.expanduser(a)), Path(os.path.expanduser(b))
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except (OSError, ValueError):
        return False


def _unique(name, taken):
    i = 2
    while f"{name}-{i}" in taken:
        i += 1
    return f"{name}-{i}"


# one manager per kernel process, shared by the magics, the widgets and the sidebar
MANAGER = ModelManager()
