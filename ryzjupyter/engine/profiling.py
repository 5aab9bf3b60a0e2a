"""Engine-side counters: where the time of one generation went.

The engine measures named phases with ``time.perf_counter_ns``; a generation's wall time minus the
measured phases is reported as ``python`` (interpreter and framework overhead). Nothing here
imports a surface (IPython, widgets): the engine runs in plain scripts too.

Use (the engine):

    from ryzjupyter.engine.profiling import PROFILER as prof

    prof.begin()                       # a generation starts (TextStream)
    prof.stage("prefill")              # phases below are booked to the prefill ...
    t = prof.tic()
    K.attention(...)
    prof.toc("attention", t)           # ... cheapest form: two calls, no object
    with prof.phase("lm_head"):        # same thing as a context manager
        self._classifier(out, xb)
    prof.stage("decode")
    prof.token()                       # once per sampled token (timestamps feed the live chart)
    profile = prof.end(n_prompt=..., n_prefill=..., memory={...})   # a Profile snapshot

Phases must not nest (each is a leaf; nested phases would be counted twice). One call costs well
under a microsecond (``Profiler.calibrate()`` measures it; the Profile reports the estimated
profiler overhead). ``RYZ_PROFILE=0`` in the environment, or ``prof.enabled = False``, turns every
call into a no-op.

The profiler belongs to one thread at a time (the kernel's main thread runs generations); other
threads (a sidebar comm handler) only read ``last`` or ``snapshot()``.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field

_now = time.perf_counter_ns

# the order in which phases are listed; other names follow in order of appearance
PHASE_ORDER = ("layers", "matmul", "attention", "scan", "conv", "lm_head", "norm", "embed", "sampling", "detokenize",
               "draft", "retrieval", "display", "python")
PHASE_HELP = {
    "layers": "decode: whole layers in one fused C call each (linears, RoPE, attention, norms)",
    "matmul": "ternary/int8 linear layers (q, k, v, o, gate, up, down)",
    "attention": "RoPE + attention over the KV cache",
    "scan": "Mamba's selective scan, RWKV's WKV (the recurrent state update)",
    "conv": "Mamba's causal conv1d, RWKV's token shift",
    "lm_head": "final norm + output projection to the vocabulary",
    "norm": "RMSNorm, activations, residual adds (other small kernels)",
    "embed": "embedding lookup",
    "sampling": "temperature / top-k / top-p / min-p / repetition penalty, drawing the token",
    "detokenize": "token ids to text, stop strings",
    "draft": "speculative decoding: the draft model's proposals",
    "retrieval": "token recycling: embedding and retrieval",
    "display": "sending output to the notebook (text, chart)",
    "python": "Python/framework overhead: wall time not inside any measured phase",
}


class _NullPhase:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NULL = _NullPhase()


class _Phase:
    """A reusable context manager that books its time to one name of its profiler."""

    __slots__ = ("_prof", "name", "_t0")

    def __init__(self, prof, name):
        self._prof = prof
        self.name = name
        self._t0 = 0

    def __enter__(self):
        self._t0 = _now()
        return self

    def __exit__(self, *exc):
        d = _now() - self._t0
        acc = self._prof._cur
        e = acc.get(self.name)
        if e is None:
            acc[self.name] = [d, 1]
        else:
            e[0] += d
            e[1] += 1
        return False


@dataclass
class StageProfile:
    wall_s: float
    phases: dict            # name -> seconds (python = the unmeasured rest of this stage)
    counts: dict            # name -> number of measured intervals


@dataclass
class Profile:
    """Where one generation's time went (``result.profile``, ``%ryz stats``).

    Attributes:
        wall_s: the generation's wall time.
        phases: phase name (``"layers"``, ``"matmul"``, ``"attention"``, ``"lm_head"``, ``"sampling"``,
            ...) -> seconds, over the whole generation; ``"python"`` is the wall time the
            measured phases do not cover (interpreter and framework overhead).
        counts: phase name -> number of measured intervals.
        stages: ``"prefill"`` / ``"decode"`` / ... -> the same split for that stage alone.
        token_times: seconds from the start to each sampled token.
        n_prompt: prompt tokens; ``n_prefill`` of them were computed (the rest came from the
            KV cache).
        n_generated: tokens generated.
        prefill_s: seconds of the prefill; ``prefill_tok_s`` its tokens per second.
        decode_s: seconds from the first token to the end; ``decode_tok_s`` tokens per second.
        memory: ``rss_bytes``, ``peak_rss_bytes`` and what the engine adds (model and KV cache
            bytes).
        profiler_overhead_s: the estimated cost of the profiler's own calls (inside the phases).
        enabled: False when ``RYZ_PROFILE=0`` turned the counters off (phases then empty).
    """

    wall_s: float
    phases: dict
    counts: dict
    stages: dict                            # "prefill" / "decode" / ... -> StageProfile
    token_times: list                       # seconds from begin() to each sampled token
    n_prompt: int = 0
    n_prefill: int = 0                      # prompt tokens actually computed (not from the cache)
    n_generated: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0                   # first token -> end
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    memory: dict = field(default_factory=dict)   # rss_bytes, peak_rss_bytes (+ what the engine adds)
    profiler_overhead_s: float = 0.0        # estimated cost of the profiler's own calls (in the phases)
    enabled: bool = True

    @property
    def measured_s(self) -> float:
        """Seconds covered by measured phases (all but ``python``)."""
        return sum(v for k, v in self.phases.items() if k != "python")

    def fractions(self) -> dict:
        """Phase name -> fraction of the wall time."""
        w = self.wall_s or 1.0
        return {k: v / w for k, v in self.phases.items()}

    def ordered(self):
        """(name, seconds, fraction of wall) in PHASE_ORDER, unknown names before 'python'."""
        return [(k, v, v / (self.wall_s or 1.0)) for k, v in _ordered(self.phases)]

    def as_dict(self) -> dict:
        """Plain data (JSON-ready), stages included."""
        d = dict(self.__dict__)
        d["stages"] = {k: dict(v.__dict__) for k, v in self.stages.items()}
        d["token_times"] = list(self.token_times)
        return d

    def table(self) -> str:
        """A plain-text breakdown (what `%ryz stats` prints)."""
        lines = [f"wall {self.wall_s * 1e3:9.1f} ms   prompt {self.n_prompt} tok "
                 f"({self.n_prefill} computed)   generated {self.n_generated} tok"]
        if self.prefill_tok_s:
            lines[-1] += f"   prefill {self.prefill_tok_s:.1f} tok/s"
        if self.decode_tok_s:
            lines[-1] += f"   decode {self.decode_tok_s:.1f} tok/s"
        stage_names = [s for s in ("prefill", "decode") if s in self.stages]
        head = f"{'phase':<11}{'ms':>10}{'%':>7}{'calls':>8}" + "".join(f"{s + ' ms':>13}" for s in stage_names)
        lines.append(head)
        for name, sec, frac in self.ordered():
            row = f"{name:<11}{sec * 1e3:>10.2f}{frac * 100:>6.1f}%{self.counts.get(name, 0):>8}"
            for s in stage_names:
                row += f"{self.stages[s].phases.get(name, 0.0) * 1e3:>13.2f}"
            lines.append(row)
        mem = self.memory
        if mem:
            bits = [f"{k.replace('_bytes', '')} {_fmt_bytes(v)}" for k, v in mem.items()
                    if isinstance(v, (int, float))]
            lines.append("memory: " + ", ".join(bits))
        if self.profiler_overhead_s:
            lines.append(f"(profiler's own cost, included above: ~{self.profiler_overhead_s * 1e3:.2f} ms)")
        if not self.enabled:
            lines.append("(profiling was disabled: only wall time is known)")
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def _ordered(phases: dict):
    known = [(k, phases[k]) for k in PHASE_ORDER if k in phases and k != "python"]
    other = [(k, v) for k, v in phases.items() if k not in PHASE_ORDER]
    tail = [("python", phases["python"])] if "python" in phases else []
    return known + other + tail


def _fmt_bytes(n) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.0f} B"


def memory_info() -> dict:
    """Resident memory of this process now and at its peak (bytes), from /proc and getrusage."""
    out = {}
    try:
        with open("/proc/self/statm") as f:
            out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB
    except (OSError, ValueError):
        pass
    return out


class Profiler:
    """Named-phase counters for one generation at a time (see the module docstring)."""

    _call_cost_ns: float | None = None      # measured once per process by calibrate()

    def __init__(self, enabled: bool | None = None):
        if enabled is None:
            enabled = os.environ.get("RYZ_PROFILE", "1").strip().lower() not in ("0", "false", "no", "off")
        self._on = bool(enabled)
        self._phases: dict[str, _Phase] = {}
        self._stages: dict[str, dict] = {}
        self._stage_wall: dict[str, int] = {}
        self._stage_name = "setup"
        self._stage_t0 = _now()
        self._cur: dict = {}
        self._t0 = 0
        self.active = False
        self.token_ns: list[int] = []       # absolute perf_counter_ns of each token (this generation)
        self.last: Profile | None = None    # the last finished generation
        self.generations = 0
        self.listeners: list = []           # callables(profile) run by end(); errors are swallowed
        self.token_hooks: list = []         # callables() run by token(), between tokens (live charts)
        self._lock = threading.Lock()
        self._reset()

    # ------------------------------------------------------------------ switches
    @property
    def enabled(self) -> bool:
        return self._on

    @enabled.setter
    def enabled(self, value):
        self._on = bool(value)

    # ------------------------------------------------------------------ hot path
    def tic(self) -> int:
        """A start timestamp for toc() (0 when disabled)."""
        return _now() if self._on else 0

    def toc(self, name: str, t0: int) -> None:
        """Book the time since `t0` (from tic()) to phase `name`."""
        if not t0:
            return
        d = _now() - t0
        e = self._cur.get(name)
        if e is None:
            self._cur[name] = [d, 1]
        else:
            e[0] += d
            e[1] += 1

    def add(self, name: str, ns: int, count: int = 1) -> None:
        """Book `ns` nanoseconds measured elsewhere (e.g. inside C) to phase `name`."""
        if not self._on:
            return
        e = self._cur.get(name)
        if e is None:
            self._cur[name] = [int(ns), count]
        else:
            e[0] += int(ns)
            e[1] += count

    def phase(self, name: str):
        """A context manager that books its body's time to `name` (a shared no-op when disabled)."""
        if not self._on:
            return _NULL
        p = self._phases.get(name)
        if p is None:
            p = self._phases[name] = _Phase(self, name)
        return p

    def token(self, n: int = 1) -> None:
        """Mark `n` tokens sampled now (recorded even when phases are disabled: the chart needs it).
        Then runs the `token_hooks` (e.g. a live chart's poll), their time booked to "display"."""
        t = _now()
        if n == 1:
            self.token_ns.append(t)
        else:
            self.token_ns.extend([t] * n)
        if self.token_hooks:
            for fn in list(self.token_hooks):
                try:
                    fn()
                except Exception:              # a broken hook must not break generation
                    self.token_hooks.remove(fn)
            if self._on:
                self.toc("display", t)

    def stage(self, name: str) -> None:
        """Book the following phases to stage `name` ("prefill", "decode", ...)."""
        t = _now()
        self._stage_wall[self._stage_name] = self._stage_wall.get(self._stage_name, 0) + (t - self._stage_t0)
        self._stage_name = name
        self._stage_t0 = t
        acc = self._stages.get(name)
        if acc is None:
            acc = self._stages[name] = {}
        self._cur = acc

    # ------------------------------------------------------------------ one generation
    def _reset(self):
        self._stages = {"setup": {}}
        self._stage_wall = {}
        self._stage_name = "setup"
        self._cur = self._stages["setup"]
        self.token_ns = []

    def begin(self) -> None:
        """Start a generation: clear the counters and start the wall clock."""
        self._reset()
        self.active = True
        self._t0 = self._stage_t0 = _now()

    @property
    def t0_ns(self) -> int:
        return self._t0

    def snapshot(self, **info) -> Profile:
        """The counters so far as a Profile (during or after a generation)."""
        return self._build(_now(), info)

    def end(self, *, n_prompt=0, n_prefill=None, n_generated=None, memory=None) -> Profile:
        """Finish the generation; returns its Profile (also kept in `.last`)."""
        self.stage(self._stage_name)          # close the open stage's wall time
        t = self._stage_t0
        self.active = False
        info = dict(n_prompt=n_prompt, n_prefill=n_prompt if n_prefill is None else n_prefill,
                    n_generated=len(self.token_ns) if n_generated is None else n_generated,
                    memory=memory)
        prof = self._build(t, info)
        self.last = prof
        self.generations += 1
        for fn in list(self.listeners):
            try:
                fn(prof)
            except Exception:                 # a broken listener must not break generation
                pass
        return prof

    def _build(self, t_end: int, info: dict) -> Profile:
        wall_ns = max(t_end - self._t0, 1) if self._t0 else 1
        stage_wall = dict(self._stage_wall)
        if self.active:                       # a snapshot: add the open stage's time so far
            stage_wall[self._stage_name] = stage_wall.get(self._stage_name, 0) + (t_end - self._stage_t0)
        total: dict[str, int] = {}
        counts: dict[str, int] = {}
        stages = {}
        for sname, acc in list(self._stages.items()):
            ph = {}
            cn = {}
            for k, (ns, c) in list(acc.items()):
                ph[k] = ns
                cn[k] = c
                total[k] = total.get(k, 0) + ns
                counts[k] = counts.get(k, 0) + c
            sw = stage_wall.get(sname, 0)
            if sname == "setup" and not ph and sw < 1000:
                continue
            ph_s = {k: v / 1e9 for k, v in ph.items()}
            ph_s["python"] = max(sw - sum(ph.values()), 0) / 1e9
            stages[sname] = StageProfile(wall_s=sw / 1e9, phases=ph_s, counts=cn)
        phases = {k: v / 1e9 for k, v in total.items()}
        phases["python"] = max(wall_ns - sum(total.values()), 0) / 1e9
        n_calls = sum(counts.values())
        cost = (Profiler._call_cost_ns or 0.0) * n_calls / 1e9
        tok = [(x - self._t0) / 1e9 for x in self.token_ns] if self._t0 else []
        n_prompt = int(info.get("n_prompt") or 0)
        n_prefill = int(info.get("n_prefill") if info.get("n_prefill") is not None else n_prompt)
        n_gen = int(info.get("n_generated") if info.get("n_generated") is not None else len(tok))
        prefill_s = stages["prefill"].wall_s if "prefill" in stages else (tok[0] if tok else 0.0)
        decode_s = (wall_ns / 1e9 - tok[0]) if tok else 0.0
        mem = memory_info()
        mem.update(info.get("memory") or {})
        return Profile(
            wall_s=wall_ns / 1e9, phases=phases, counts=counts, stages=stages, token_times=tok,
            n_prompt=n_prompt, n_prefill=n_prefill, n_generated=n_gen,
            prefill_s=prefill_s, decode_s=decode_s,
            prefill_tok_s=n_prefill / prefill_s if prefill_s > 0 and n_prefill else 0.0,
            decode_tok_s=(len(tok) - 1) / (tok[-1] - tok[0]) if len(tok) > 1 and tok[-1] > tok[0] else 0.0,
            memory=mem, profiler_overhead_s=cost, enabled=self._on)

    # ------------------------------------------------------------------ cost
    @classmethod
    def calibrate(cls, n: int = 20000) -> float:
        """Measure the cost of one tic/toc pair (ns) on this machine; cached per process."""
        p = cls(enabled=True)
        p.begin()
        tic, toc = p.tic, p.toc
        best = None
        for _ in range(3):
            t0 = _now()
            for _ in range(n):
                toc("x", tic())
            d = (_now() - t0) / n
            best = d if best is None else min(best, d)
        cls._call_cost_ns = best
        return best


# the process-wide profiler the engine books to and the surfaces read
PROFILER = Profiler()


def get_profiler() -> Profiler:
    return PROFILER


class _TimedKernel:
    """A kernel function whose calls are booked to a profiler phase (~0.5 us per call)."""

    __slots__ = ("fn", "name", "prof")

    def __init__(self, fn, name, prof):
        self.fn, self.name, self.prof = fn, name, prof

    def __call__(self, *args):
        prof = self.prof
        if not prof._on:
            return self.fn(*args)
        t = _now()
        try:
            return self.fn(*args)
        finally:
            prof.add(self.name, _now() - t)


class InstrumentedKernels:
    """The native module seen through the profiler: the functions named in `phase_of` are booked
    to their phase, every other attribute is the module's own. An engine module writes
    ``K = InstrumentedKernels(_native, {...})`` once and its forward pass stays a plain list of
    kernel calls, with no timing code between them."""

    def __init__(self, module, phase_of: dict, prof: "Profiler | None" = None):
        self._module = module
        prof = prof or PROFILER
        for fn_name, phase in phase_of.items():
            setattr(self, fn_name, _TimedKernel(getattr(module, fn_name), phase, prof))

    def __getattr__(self, name):
        return getattr(self._module, name)
