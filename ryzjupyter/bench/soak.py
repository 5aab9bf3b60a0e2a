"""`python -m ryzjupyter.bench soak`: one real Jupyter kernel, many `%%ryz` cells.

The cells go to the two bundled models (demo and demo-draft) in a seeded random order, so most
cells hot-swap the current model; some are chat turns (short conversations on one model, then
`%ryz reset`), and some are interrupted (the kernel's interrupt, as the stop button sends it) at a
random moment: during parsing, the swap, the prefill, the decode or the display. After every
cell the bench checks, from outside the kernel:

- the reply: the kernel's last reply carries this cell's prompt and model (none lost, none mixed
  up), the cell's final display shows exactly its text, and it is complete (as many tokens as
  asked, or a stop/context reason) or marked interrupted (an interrupt that lands before the
  generation starts leaves no reply, and the previous one stays; one that lands in ipykernel's own
  request handling, outside the cell's code, makes ipykernel drop the execute_reply, which the
  record counts as `replies_dropped_by_kernel`);
- the chat: after each turn the history is the conversation so far (each turn's prompt and
  reply, in order), and a turn that follows its conversation's previous turn on the same model
  reuses that turn's KV cache rows (`stats.n_cached`);
- the kernel's resident memory (psutil), after every cell.

Memory is flat when the kernel's RSS at the end (the median of the last cells) exceeds its RSS
after the warm-up (the median of the cells that follow the first quarter) by at most
`--rss-bound-mib` (default 16 MiB). The command exits 1 on any lost, mixed or incomplete reply, a
broken chat history or KV reuse, or memory past the bound; `--json` writes the record.
`--trace-memory` adds where the growth went, from inside the kernel (docs/robustness.md).
"""

from __future__ import annotations

import json
import os
import queue
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field

MODELS = ("demo", "demo-draft")
COMPLETE = ("length", "stop", "stop_token", "stop_string", "context")


def add_parser(sub) -> None:
    p = sub.add_parser("soak", help="many %%ryz cells in one kernel: hot-swaps, interrupts, chat; memory and replies")
    p.add_argument("--cells", type=int, default=200, help="%%%%ryz cells (default 200)")
    p.add_argument("--tokens", type=int, default=200, help="tokens per plain cell (default 200; chat turns 30)")
    p.add_argument("--interrupt-share", type=float, default=0.2, help="share of cells interrupted (default 0.2)")
    p.add_argument("--chat-share", type=float, default=0.3, help="share of cells that are chat turns (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="the random order of models, chat turns and interrupts")
    p.add_argument("--rss-bound-mib", type=float, default=16.0,
                   help="largest allowed RSS growth after the warm-up, MiB (default 16)")
    p.add_argument("--trace-memory", action="store_true",
                   help="where the RSS growth after the warm-up goes, from inside the kernel: live objects by "
                        "type, the sources parsed for traceback display, linecache, glibc malloc statistics; "
                        "then the RSS after giving back free heap pages and after dropping those caches")
    p.add_argument("--json", default=None, help="write the record as JSON to this file")
    p.set_defaults(run=run)


@dataclass
class SoakResult:
    cells: int
    tokens: int
    seconds: float = 0.0
    complete: int = 0               # replies with every token asked for (or a stop / context reason)
    interrupted: int = 0            # replies marked interrupted
    interrupted_before_reply: int = 0   # interrupts that landed before the generation began (no reply)
    interrupts_sent: int = 0
    replies_dropped_by_kernel: int = 0  # interrupts ipykernel caught outside the cell's code: no execute_reply
    swaps: int = 0                  # cells whose model differs from the previous cell's
    chat_turns: int = 0
    kv_reuse_checked: int = 0       # chat turns that followed their conversation's turn on the same model
    failures: list = field(default_factory=list)    # every lost, mixed or incomplete reply, broken chat
    rss_mib: list = field(default_factory=list)     # the kernel's RSS after each cell
    rss_warm_mib: float = 0.0
    rss_final_mib: float = 0.0
    rss_growth_mib: float = 0.0
    rss_bound_mib: float = 16.0
    rss_slope_kib_per_cell: float = 0.0
    memory_trace: dict | None = None    # --trace-memory: the growth after the warm-up, by where it went

    @property
    def ok(self) -> bool:
        return not self.failures and self.rss_growth_mib <= self.rss_bound_mib


class _Kernel:
    """A real kernel (jupyter_client) with the ryzjupyter extension loaded."""

    def __init__(self, env=None):
        from jupyter_client.manager import start_new_kernel
        env = dict(os.environ if env is None else env)
        env.pop("RYZ_STREAM", None)
        env.setdefault("HF_HUB_OFFLINE", "1")
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env, startup_timeout=120,
                                            extra_arguments=["--InteractiveShellApp.extensions=ryzjupyter"])

    @property
    def pid(self):
        prov = getattr(self.km, "provisioner", None)
        proc = getattr(prov, "process", None) or getattr(self.km, "kernel", None)
        return proc.pid

    def execute(self, code, timeout=300.0, on_iopub=None, interrupted=None):
        """Run code; returns (reply content, this request's iopub messages).

        ipykernel sends no execute_reply when an interrupt lands in its own request handling, outside
        the cell's code (kernelbase.dispatch_shell logs "KeyboardInterrupt caught in kernel" and goes
        idle): when `interrupted()` says one was sent, a reply missing 3 s after the idle status is
        returned as {"status": "dropped", "ename": "KeyboardInterrupt"}."""
        msg_id = self.kc.execute(code)
        msgs = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the kernel did not finish {code[:60]!r} within {timeout} s") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msgs.append(msg)
            if on_iopub is not None:
                on_iopub(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        wait = 3.0 if interrupted is not None and interrupted() else timeout   # the reply precedes the idle
        deadline = time.monotonic() + wait
        while True:
            try:
                reply = self.kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                if wait < timeout:
                    return {"status": "dropped", "ename": "KeyboardInterrupt",
                            "evalue": "ipykernel sent no reply (the interrupt landed outside the cell's code)"}, msgs
                raise TimeoutError(f"no execute_reply for {code[:60]!r} within {timeout} s") from None
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"], msgs

    def value(self, expr, timeout=60.0):
        content, msgs = self.execute(f"import json as _j; print(_j.dumps({expr}))", timeout)
        if content["status"] != "ok":
            raise RuntimeError(f"{expr} failed in the kernel: {content.get('ename')}: {content.get('evalue')}")
        return json.loads("".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream"))

    def interrupt(self):
        self.km.interrupt_kernel()

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


_LAST = ("(lambda r: None if r is None else {'prompt': r.prompt, 'model': r.model, 'text': r.text, "
         "'finish_reason': r.finish_reason, 'n_generated': r.stats.n_generated, 'n_prompt': r.stats.n_prompt, "
         "'n_cached': r.stats.n_cached})(get_ipython()._ryz_magics.last_reply)")
_HISTORY = "[{k: v for k, v in m.items()} for m in get_ipython()._ryz_magics.history]"


def _final_plain(msgs):
    """The text/plain of the cell's last reply display (display_data or update_display_data)."""
    plain = None
    for m in msgs:
        if m["msg_type"] in ("display_data", "update_display_data") and "ryzjupyter" in m["content"].get("metadata", {}):
            plain = m["content"]["data"].get("text/plain")
    return plain


# --trace-memory: run in the kernel, cheap enough not to change the run (tracemalloc slows the
# kernel ~10x, which moves every interrupt). At the warm-up's end and at the end: the live objects
# by type (gc), the source files IPython's traceback display has parsed and keeps (executing.Source,
# for stack_data: one AST per file, never dropped), linecache's entries, IPython's input history and
# glibc's mallinfo2 (arena + hblkhd: what the heap took from the system; uordblks in use; fordblks
# free but kept). After the end the kernel gives memory back in two steps, the RSS measured after
# each from outside: malloc_trim(0) (free heap pages back to the system), then dropping the parsed
# traceback sources and linecache's cell entries (and gc, malloc_trim again).
_TRACE_PROBE = """
import collections as _co, ctypes as _c, gc as _gc, linecache as _lc
class _Mi(_c.Structure):
    _fields_ = [(n, _c.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                           "fsmblks", "uordblks", "fordblks", "keepcost")]
_ryz_libc = _c.CDLL(None)
_ryz_libc.mallinfo2.restype = _Mi
def _ryz_source_caches():
    try:
        import executing
    except ImportError:
        return []
    out, todo = [], [executing.Source]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        c = cls.__dict__.get("__source_cache_with_lines")
        if c is not None:
            out.append(c)
    return out
def _ryz_probe():
    _gc.collect()
    m = _ryz_libc.mallinfo2()
    sources = [k for c in _ryz_source_caches() for k in c]
    return {"types": _co.Counter(type(o).__qualname__ for o in _gc.get_objects()),
            "mallinfo": {n: getattr(m, n) for n, _ in _Mi._fields_},
            "sources": [(fn, len(lines), sum(map(len, lines))) for fn, lines in sources],
            "linecache": len(_lc.cache), "inputs": len(get_ipython().history_manager.input_hist_raw),
            "out": len(get_ipython().user_ns.get("Out", {}))}
def _ryz_release_caches():
    for c in _ryz_source_caches():
        c.clear()
    for k in [k for k in _lc.cache if not k.endswith(".py") or "ipykernel_" in k]:
        del _lc.cache[k]
    _gc.collect()
    _ryz_libc.malloc_trim(0)
_ryz_warm = _ryz_probe()
"""
_TRACE_END = """
_ryz_end = _ryz_probe()
def _ryz_short(fn):
    return fn.split("site-packages/")[-1].split("/lib/python3")[-1]
_ryz_src0 = {x[0] for x in _ryz_warm["sources"]}
_ryz_added = [x for x in _ryz_end["sources"] if x[0] not in _ryz_src0]
_ryz_trace = {"mallinfo_warm": _ryz_warm["mallinfo"], "mallinfo_end": _ryz_end["mallinfo"],
              "objects_growth": dict((_ryz_end["types"] - _ryz_warm["types"]).most_common(12)),
              "traceback_sources_warm": len(_ryz_warm["sources"]), "traceback_sources_end": len(_ryz_end["sources"]),
              "traceback_sources_added": [[_ryz_short(fn), n, chars] for fn, n, chars in _ryz_added],
              "linecache_warm": _ryz_warm["linecache"], "linecache_end": _ryz_end["linecache"],
              "inputs_warm": _ryz_warm["inputs"], "inputs_end": _ryz_end["inputs"],
              "out_warm": _ryz_warm["out"], "out_end": _ryz_end["out"]}
"""


def soak(cells=200, tokens=200, interrupt_share=0.2, chat_share=0.3, seed=0, rss_bound_mib=16.0,
         log=print, trace_memory=False) -> SoakResult:
    import psutil

    from ryzjupyter.jupyter.magics.display import INTERRUPTED_MARK

    rng = random.Random(seed)
    res = SoakResult(cells=cells, tokens=tokens, rss_bound_mib=rss_bound_mib)
    k = _Kernel()
    proc = psutil.Process(k.pid)
    started = time.perf_counter()
    try:
        content, _ = k.execute("%ryz load demo\n%ryz load demo-draft\n%config RyzMagics.live_chart = False\n"
                               "%config RyzMagics.show_stats = False")
        if content["status"] != "ok":
            raise RuntimeError(f"loading the demo models failed: {content.get('evalue')}")
        previous_model, conversation, last_on, took = None, None, {}, {}
        for i in range(cells):
            if trace_memory and i == cells // 4:                 # the warm-up's end (see _rss_summary)
                content, _ = k.execute(_TRACE_PROBE)
                if content["status"] != "ok":
                    raise RuntimeError(f"--trace-memory: {content.get('ename')}: {content.get('evalue')}")
            chat = rng.random() < chat_share
            if chat and conversation is not None and (len(conversation["turns"]) >= 3):
                k.execute("%ryz reset")                          # a conversation fits the 256-token context
                conversation = None
            if chat and conversation is None:
                conversation = {"model": rng.choice(MODELS), "turns": []}
            model = conversation["model"] if chat else rng.choice(MODELS)
            n = 30 if chat else tokens
            prompt = f"Cell {i}: {rng.choice(['And God said', 'def main():', 'The king', 'In the beginning'])}"
            code = (f"%%ryz -m {model} -n {n} {'--chat' if chat else '--no-chat'} -t 0.8 --seed {i} --stream\n"
                    f"{prompt}")
            # the interrupt lands at a random fraction of how long such a cell took so far (the
            # same model and kind, uninterrupted), so it falls inside the cell on a fast machine too
            fraction = rng.uniform(0.0, 1.0) if rng.random() < interrupt_share else None
            # (a kind not timed yet takes the recent cells of any kind: on a fast machine a cell
            # lasts tens of ms, and a fixed first guess would land most early interrupts after it)
            recent = took.get((model, chat)) or took.get("any")
            typical = statistics.median(recent[-5:]) if recent else 0.6
            interrupt_at = None if fraction is None else fraction * 0.9 * typical
            res.swaps += previous_model is not None and model != previous_model
            previous_model = model
            cached_before = None
            if chat and conversation["turns"] and last_on.get(model) is conversation["turns"][-1]:
                cached_before = k.value(f"len(__import__('ryzjupyter.manager').manager.MANAGER.get({model!r})"
                                        ".session.cache.tokens)")
            fired = [False]
            state = {"input": False, "idle": False, "due": False}
            lock = threading.Lock()

            def fire_if_running(state=state, fired=fired, lock=lock):
                # interrupt only while this cell runs (after its execute_input, before its idle): the
                # stop button's case
                with lock:
                    if state["due"] and state["input"] and not state["idle"] and not fired[0]:
                        fired[0] = True
                        k.interrupt()

            def due(state=state):
                state["due"] = True
                fire_if_running()

            def on_iopub(msg, state=state):
                with lock:
                    if msg["msg_type"] == "execute_input":
                        state["input"] = True
                    elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                        state["idle"] = True
                fire_if_running()

            timer = threading.Timer(interrupt_at, due) if interrupt_at is not None else None
            if timer is not None:
                timer.start()
            t_cell = time.perf_counter()
            content, msgs = k.execute(code, on_iopub=on_iopub, interrupted=lambda: fired[0])
            res.replies_dropped_by_kernel += content["status"] == "dropped"
            t_cell = time.perf_counter() - t_cell
            if timer is not None:
                timer.cancel()
                res.interrupts_sent += fired[0]
            last = k.value(_LAST)
            res.rss_mib.append(proc.memory_info().rss / 2**20)
            if log and (i + 1) % 20 == 0:
                log(f"  {i + 1}/{cells} cells, kernel RSS {res.rss_mib[-1]:.1f} MiB, "
                    f"{len(res.failures)} failure(s)")
            if not chat:
                last_on[model] = None                            # a plain cell replaces the session's cache
            plain = _final_plain(msgs)
            ename = content.get("ename")
            what = f"cell {i} ({model}, {'chat' if chat else 'plain'}, interrupt at "
            what += f"{interrupt_at:.2f} s)" if interrupt_at is not None else "none)"
            if last is None or last["prompt"] != prompt:
                if fired[0] and ename == "KeyboardInterrupt" and plain is None:
                    res.interrupted_before_reply += 1            # stopped before the generation began
                    last_on[model] = None
                    if chat:
                        conversation = _check_history(k, conversation, res, what)
                    continue
                res.failures.append(f"{what}: lost reply (status {content['status']} {ename or ''}; the "
                                    f"kernel's last reply is for {None if last is None else last['prompt']!r})")
                continue
            if last["model"] != model:
                res.failures.append(f"{what}: the reply came from {last['model']!r}")
            interrupted = last["finish_reason"] == "interrupted"
            if not interrupted and not fired[0]:
                took.setdefault((model, chat), []).append(t_cell)
                took.setdefault("any", []).append(t_cell)
            want_plain = last["text"] + (f"\n\n{INTERRUPTED_MARK}" if interrupted else "")
            if plain != want_plain:
                res.failures.append(f"{what}: the cell shows {plain!r:.80} but the reply is {want_plain!r:.80}")
            if interrupted:
                res.interrupted += 1
                if not fired[0]:
                    res.failures.append(f"{what}: marked interrupted without an interrupt")
            elif last["finish_reason"] in COMPLETE and (last["n_generated"] == n or last["finish_reason"] != "length"):
                res.complete += 1
                if content["status"] != "ok" and ename != "KeyboardInterrupt":
                    res.failures.append(f"{what}: the cell failed ({ename}: {content.get('evalue')})")
            else:
                res.failures.append(f"{what}: incomplete reply ({last['finish_reason']}, {last['n_generated']} of "
                                    f"{n} tokens)")
            if chat:
                res.chat_turns += 1
                prev = last_on.get(model)
                # a turn interrupted before its first token may have stopped in its prefill, which
                # leaves the cache as it was (a pass that does not finish writes no rows)
                # (and this turn's own count is only known once its prefill has finished)
                if conversation["turns"] and prev is not None and prev is conversation["turns"][-1] \
                        and not (prev["interrupted"] and prev["n_generated"] == 0) \
                        and not (interrupted and last["n_generated"] == 0):
                    res.kv_reuse_checked += 1
                    need = (prev["n_prompt"] + prev["n_generated"]) // 2
                    if last["n_cached"] < need:
                        res.failures.append(f"{what}: the turn reused {last['n_cached']} cached tokens of the "
                                            f"{cached_before} in the cache; the previous turn "
                                            f"({'interrupted, ' if prev['interrupted'] else ''}{prev['n_prompt']} "
                                            f"prompt + {prev['n_generated']} generated tokens) left "
                                            f"{prev['n_prompt'] + prev['n_generated']}")
                turn = {"prompt": prompt, "text": last["text"], "n_prompt": last["n_prompt"],
                        "n_generated": last["n_generated"], "interrupted": interrupted}
                conversation["turns"].append(turn)
                last_on[model] = turn
                conversation = _check_history(k, conversation, res, what)
        res.seconds = time.perf_counter() - started
        if trace_memory:
            rss_end = proc.memory_info().rss / 2**20
            content, _ = k.execute(_TRACE_END)
            if content["status"] != "ok":
                raise RuntimeError(f"--trace-memory: {content.get('ename')}: {content.get('evalue')}")
            t = res.memory_trace = k.value("_ryz_trace")
            t["rss_end_mib"] = rss_end
            k.execute("_gc.collect(); _ryz_libc.malloc_trim(0)")
            t["rss_after_trim_mib"] = proc.memory_info().rss / 2**20
            k.execute("_ryz_release_caches()")
            t["rss_after_dropping_traceback_caches_mib"] = proc.memory_info().rss / 2**20
    finally:
        k.close()
    _rss_summary(res)
    return res


def _check_history(k, conversation, res, what):
    history = k.value(_HISTORY)
    want = []
    for t in conversation["turns"]:
        want += [("user", t["prompt"]), ("assistant", t["text"])]
    got = [(m.get("role"), m.get("content")) for m in history]
    if got != want:
        res.failures.append(f"{what}: the chat history has {len(got)} messages, the conversation {len(want)} "
                            f"(first difference at {next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))})")
    return conversation


def _rss_summary(res: SoakResult):
    s = res.rss_mib
    if len(s) < 8:
        return
    warm = len(s) // 4
    window = max(3, min(10, len(s) // 8))
    res.rss_warm_mib = statistics.median(s[warm:warm + window])
    res.rss_final_mib = statistics.median(s[-window:])
    res.rss_growth_mib = res.rss_final_mib - res.rss_warm_mib
    xs = list(range(warm, len(s)))
    if len(xs) >= 2:
        res.rss_slope_kib_per_cell = statistics.linear_regression(xs, s[warm:]).slope * 1024


def run(args) -> int:
    print(f"soak: {args.cells} %%ryz cells of {args.tokens} tokens across {', '.join(MODELS)} in one kernel "
          f"(interrupts {args.interrupt_share:.0%}, chat turns {args.chat_share:.0%}, seed {args.seed})", flush=True)
    res = soak(args.cells, args.tokens, args.interrupt_share, args.chat_share, args.seed, args.rss_bound_mib,
               log=lambda s: print(s, flush=True), trace_memory=getattr(args, "trace_memory", False))
    print(f"{res.cells} cells in {res.seconds:.0f} s: {res.complete} complete, {res.interrupted} interrupted, "
          f"{res.interrupted_before_reply} interrupted before their reply began ({res.interrupts_sent} interrupts "
          f"sent, {res.replies_dropped_by_kernel} execute_reply dropped by ipykernel), {res.swaps} hot-swaps, {res.chat_turns} chat turns ({res.kv_reuse_checked} checked for KV reuse)")
    print(f"kernel RSS: {res.rss_warm_mib:.1f} MiB after the warm-up, {res.rss_final_mib:.1f} MiB at the end: "
          f"{res.rss_growth_mib:+.2f} MiB (bound {res.rss_bound_mib:g} MiB; slope "
          f"{res.rss_slope_kib_per_cell:+.1f} KiB/cell)")
    if res.memory_trace:
        _print_trace(res.memory_trace)
    for f in res.failures:
        print("FAIL", f)
    if args.json:
        from ryzjupyter.bench.probes import machine
        record = {"bench": "soak", "machine": machine(getattr(args, "argv", None)), **asdict(res), "ok": res.ok}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    print("soak: ok" if res.ok else "soak: FAILED")
    return 0 if res.ok else 1


def _print_trace(t):
    mib = 2**20
    m0, m1 = t["mallinfo_warm"], t["mallinfo_end"]
    print(f"glibc malloc, after the warm-up -> at the end: from the system {(m0['arena'] + m0['hblkhd']) / mib:.1f} -> "
          f"{(m1['arena'] + m1['hblkhd']) / mib:.1f} MiB (of it mmapped {m0['hblkhd'] / mib:.1f} -> "
          f"{m1['hblkhd'] / mib:.1f}), in use {m0['uordblks'] / mib:.1f} -> {m1['uordblks'] / mib:.1f}, free but "
          f"kept {m0['fordblks'] / mib:.1f} -> {m1['fordblks'] / mib:.1f}")
    print("live objects gained (gc, by type): " + ", ".join(f"{k} +{v}" for k, v in t["objects_growth"].items()))
    added = t["traceback_sources_added"]
    print(f"source files parsed for traceback display (executing.Source, kept for good): "
          f"{t['traceback_sources_warm']} -> {t['traceback_sources_end']}; added: "
          + ", ".join(f"{fn} ({n} lines)" for fn, n, _ in added[:12]) + (" ..." if len(added) > 12 else ""))
    print(f"linecache entries {t['linecache_warm']} -> {t['linecache_end']}, IPython inputs {t['inputs_warm']} -> "
          f"{t['inputs_end']}, IPython's output cache (Out) {t['out_warm']} -> {t['out_end']} entries")
    print(f"kernel RSS at the end {t['rss_end_mib']:.1f} MiB; after malloc_trim {t['rss_after_trim_mib']:.1f}; after "
          f"dropping the parsed traceback sources and cell lines too {t['rss_after_dropping_traceback_caches_mib']:.1f}")
