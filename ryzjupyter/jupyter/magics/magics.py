"""`RyzMagics`: the `%%ryz` cell magic, the `%ryz` line commands and the `%config RyzMagics.*`
settings shared by everything in the kernel.

Flow of a `%%ryz` cell: parse the options (parsers.py) -> interpolate {names} -> pick the model
(registry.py, loading it with a progress bar if needed) -> open the engine's token stream -> show
the pieces in one throttled display (display.py) -> final display, stats footer, `_` / `-o NAME`,
chat history. Ctrl-C / the stop button: the partial reply is kept (output, `_`, chat history,
marked interrupted) and KeyboardInterrupt is re-raised so "Run All" stops.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display
from traitlets import Bool, Enum, Float, Int, TraitError, Unicode, validate

from . import parsers
from .display import LiveOutput, Reply, StatsFooter, TerminalStream, format_bytes, is_plain_terminal
from .parsers import FORMATS, full_help, interpolate, line_help, parse_cell_line, parse_line_command
from .registry import REGISTRY
from ryzjupyter.jupyter.units import format_duration, format_rate
from ryzjupyter.engine.profiling import PROFILER

MODEL_HINT = ("give a folder with config.json + model.safetensors + tokenizer.json, a Hugging Face id "
              "(e.g. microsoft/bitnet-b1.58-2B-4T, downloaded once with network access), or nothing for "
              "the bundled demo model")


def _checkpoint_error():
    try:
        from ryzjupyter.engine.checkpoint import CheckpointError
        return CheckpointError
    except ImportError:                 # engine not built in: nothing is a checkpoint error
        return ()


@magics_class
class RyzMagics(Magics):
    """%%ryz / %ryz. Settings: %config RyzMagics (list), %config RyzMagics.temperature = 0.7 (set)."""

    default_model = Unicode("", help="Model the first %%ryz loads when none is loaded: a folder, a hub id "
                                     "or a bundled model name. Empty: the bundled demo model.").tag(config=True)
    max_new_tokens = Int(128, help="Maximum tokens per reply (-n).").tag(config=True)
    temperature = Float(0.8, help="Sampling temperature; 0 = greedy (-t).").tag(config=True)
    top_k = Int(40, help="Keep the k most likely tokens; 0 = off (--top-k).").tag(config=True)
    top_p = Float(0.95, help="Nucleus sampling mass; 1 = off (--top-p).").tag(config=True)
    min_p = Float(0.05, help="Drop tokens below min_p x the top probability; 0 = off (--min-p).").tag(config=True)
    repetition_penalty = Float(1.0, help="> 1 discourages repeats; 1 = off.").tag(config=True)
    seed = Int(None, allow_none=True, help="Random seed; None = a fresh seed per reply (recorded in "
                                           "reply.settings).").tag(config=True)
    draft = Unicode("", help="Speculative decoding (lossless: the same output in fewer target passes): "
                             "'lookup', 'adjacency', 'auto', or a draft model with the same tokenizer "
                             "('demo-draft' for demo); empty = off (--draft).").tag(config=True)
    num_draft = Int(None, allow_none=True, help="Draft tokens per verify pass, 0..15; None = adaptive "
                                                "(--num-draft).").tag(config=True)
    system = Unicode(None, allow_none=True, help="Default system prompt (uses the chat template).").tag(config=True)
    chat = Bool(False, help="Multi-turn chat by default: keep the conversation across cells.").tag(config=True)
    format = Enum(FORMATS, default_value="markdown", help="Reply format: text, markdown or code.").tag(config=True)
    stream = Bool(True, help="Stream tokens into the cell (the env var RYZ_STREAM=0 turns it off).").tag(config=True)
    show_stats = Bool(True, help="Show a one-line stats footer (tokens, tok/s) after each reply.").tag(config=True)
    max_updates_per_s = Float(15.0, help="Streaming display updates per second, at most.").tag(config=True)
    live_chart = Bool(True, help="Show a live tokens/s chart while a reply streams (Jupyter only).").tag(config=True)
    recycle = Bool(False, help="Add every %%ryz prompt and reply to the memory bank (%ryz memory).").tag(config=True)
    recycle_k = Int(5, help="Units --recycle puts before the prompt (without a number).").tag(config=True)
    recycle_budget = Int(256, help="Tokens the recalled units may take (--recycle-budget).").tag(config=True)
    memory_path = Unicode("", help="Folder of the memory bank; '' = the user's data directory "
                                   "(ryzjupyter.memory.bank.default_path).").tag(config=True)
    memory_namespace = Unicode("default", help="The bank's namespace (one per user or notebook).").tag(config=True)
    memory_budget = Unicode("", help="Memory for loaded models, e.g. '6GiB' or a number of bytes; idle models "
                                     "are unloaded (least recently used first) to make room, and a model that "
                                     "cannot fit is refused. Empty: 80% of the RAM available.").tag(config=True)

    # -- trait checks (bad %config values fail with a clear message)
    @validate("max_new_tokens", "top_k")
    def _non_negative(self, proposal):
        if proposal.value < 0:
            raise TraitError(f"RyzMagics.{proposal.trait.name} must be >= 0, got {proposal.value}")
        return proposal.value

    @validate("temperature")
    def _check_temperature(self, proposal):
        if not proposal.value >= 0:
            raise TraitError(f"RyzMagics.temperature must be >= 0 (0 = greedy), got {proposal.value}")
        return proposal.value

    @validate("top_p")
    def _check_top_p(self, proposal):
        if not 0 < proposal.value <= 1:
            raise TraitError(f"RyzMagics.top_p must be in (0, 1], got {proposal.value}")
        return proposal.value

    @validate("min_p")
    def _check_min_p(self, proposal):
        if not 0 <= proposal.value <= 1:
            raise TraitError(f"RyzMagics.min_p must be in [0, 1], got {proposal.value}")
        return proposal.value

    @validate("repetition_penalty", "max_updates_per_s")
    def _positive(self, proposal):
        if not proposal.value > 0:
            raise TraitError(f"RyzMagics.{proposal.trait.name} must be > 0, got {proposal.value}")
        return proposal.value

    @validate("memory_budget")
    def _check_memory_budget(self, proposal):
        from ryzjupyter.manager import MANAGER
        try:
            MANAGER.set_memory_budget(str(proposal.value).strip() or None)
        except ValueError as e:
            raise TraitError(f"RyzMagics.memory_budget: {e}") from None
        return proposal.value

    @validate("num_draft")
    def _check_num_draft(self, proposal):
        if proposal.value is not None and not 0 <= proposal.value <= 15:
            raise TraitError(f"RyzMagics.num_draft must be in 0..15 or None (adaptive), got {proposal.value}")
        return proposal.value

    @validate("seed")
    def _check_seed(self, proposal):
        if proposal.value is not None and proposal.value < 0:
            raise TraitError(f"RyzMagics.seed must be >= 0 or None, got {proposal.value}")
        return proposal.value

    def __init__(self, shell=None, registry=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self.registry = registry if registry is not None else REGISTRY
        self.history: list[dict] = []          # chat turns (role/content[/interrupted])
        self.last_reply: Reply | None = None

    # ------------------------------------------------------------------ entry point
    @line_cell_magic
    def ryz(self, line, cell=None):
        __tracebackhide__ = True          # an interrupt's traceback shows the cell, not our frames
        try:
            if cell is None:
                return self._line(line)
            if line.split()[:1] == ["map"]:
                return self._cmd_map(parse_line_command(line), cell)
            return self._cell(line, cell)
        except KeyboardInterrupt:
            pass
        # An interrupt that landed anywhere below (a display in ipykernel, a lock in threading, the
        # tokenizer) leaves as a fresh KeyboardInterrupt raised here, outside the except (so with no
        # context): IPython's traceback display parses, and keeps for good, every source file in
        # the traceback it shows (stack_data/executing: one AST per file), and the kernel kept
        # growing by each new module an interrupt happened to land in (docs/robustness.md).
        _raise_interrupt()

    # ------------------------------------------------------------------ %%ryz
    def _cell(self, line, cell):
        __tracebackhide__ = True
        args = parse_cell_line(line)
        if args.help:
            print(full_help())
            return None
        prompt = interpolate(cell, self.shell.user_ns).strip()
        if not prompt:
            raise UsageError("the cell is empty: write the prompt below the %%ryz line")
        gen = self._generation_options(args)
        if args.recycle is not None:
            gen.update(recycle=self.bank(), recycle_k=args.recycle or self.recycle_k,
                       recycle_budget=args.recycle_budget or self.recycle_budget)
        fmt = args.format or self.format
        chat = self.chat if args.chat is None else args.chat
        system = args.system if args.system is not None else self.system
        stream = args.stream if args.stream is not None else (self.stream and os.environ.get("RYZ_STREAM", "1") != "0")
        name, model = self._model_for_cell(args.model)

        messages = None
        if chat or system:
            messages = list(self.history) if chat else []
            has_system = bool(messages) and messages[0]["role"] == "system"
            if system and has_system:
                messages[0] = {"role": "system", "content": system}     # a new system prompt replaces it
            elif system:
                messages.insert(0, {"role": "system", "content": system})
            elif has_system:
                system = messages[0]["content"]                         # the conversation keeps its own
            if chat:
                # the engine's string form of chat continues its session's history and keeps the
                # previous reply's own token ids, so the whole previous turn stays in the KV cache
                model.session.history[:] = messages
                ts = self._open(lambda: model.chat(prompt, stream=True, **gen), chat=True)
            else:
                ts = self._open(lambda: model.chat(messages + [{"role": "user", "content": prompt}],
                                                   stream=True, **gen), chat=True)
            # with --recycle the turn holds the recalled units before the prompt, as the model read it
            user_turn = getattr(ts, "user_message", None)
            messages.append({"role": "user", "content": user_turn if isinstance(user_turn, str) else prompt})
        else:
            ts = self._open(lambda: model.stream(prompt, **gen), chat=False)

        live = None
        if stream:
            live = TerminalStream() if is_plain_terminal(self.shell) else LiveOutput(self.max_updates_per_s)
        chart = self._chart(name, ts) if stream else None
        display_phase = PROFILER.phase("display")     # time spent showing output, in the profile
        interrupted = False
        generating = getattr(self.registry, "generating", None)
        # under the model manager's generation lock: the sidebar sees live tokens/s, can stop the
        # generation, and cannot unload or swap the model meanwhile
        with (generating(name) if generating else contextlib.nullcontext()) as running:
            try:
                for piece in (running.wrap(ts) if running is not None else ts):
                    with display_phase:
                        if chart is not None:
                            chart.poll()
                        if live is not None:
                            live.push(piece)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                if ts.result is None:           # stopped between pieces: finish and keep the text
                    ts.interrupt()
        result = ts.result
        interrupted = interrupted or result.finish_reason == "interrupted"
        if interrupted:
            result.finish_reason = "interrupted"
        session = getattr(ts, "session", None)
        reply = Reply.from_result(result, model=name, format=fmt, prompt=prompt,
                                  extra_settings={"model": name, "chat": bool(chat), "system": system,
                                                  "format": fmt},
                                  tokenizer=getattr(model, "tokenizer", None),
                                  max_context=getattr(session, "max_context", None))
        reply.profile = getattr(result, "profile", None)
        reply.recycled = list(getattr(result, "recycled", []))
        if chart is not None:
            chart.finish(result.stats, reply.profile, freeze=True)
        self._finish(reply, live, history=messages if chat else None, output=args.output)
        if self.recycle:
            self._remember(prompt, reply)
        if interrupted:
            _raise_interrupt()                  # "Run All" stops here
        return None

    # ------------------------------------------------------------------ memory
    def bank(self):
        """The memory bank (opened on first use with memory_path / memory_namespace)."""
        from ryzjupyter.memory.bank import BankError, RecycleBank

        want = (self.memory_path or None, self.memory_namespace)
        if getattr(self, "_bank", None) is not None and self._bank_key == want and not self._bank._closed:
            return self._bank
        if getattr(self, "_bank", None) is not None:
            self._bank.close()
        try:
            self._bank = RecycleBank(path=want[0], namespace=want[1])
        except (BankError, ConnectionError) as e:
            raise UsageError(str(e)) from None
        self._bank_key = want
        from ryzjupyter.jupyter import comm
        comm.watch_bank(self._bank)            # the sidebar's Memory section follows its changes
        return self._bank

    def _remember(self, prompt, reply):
        """RyzMagics.recycle: the prompt and the reply go into the bank (a failure is a warning)."""
        try:
            bank = self.bank()
            bank.add(prompt, source="prompt", meta={"model": str(reply.model)})
            if reply.text.strip():
                bank.add(reply.text, source="reply", meta={"model": str(reply.model)})
        except Exception as e:                        # never lose the reply over the memory
            print(f"ryzjupyter: not remembered ({e})")

    def _cmd_memory(self, cmd):
        action, words = cmd.options["action"], cmd.options["words"]
        bank = self.bank()
        if action == "list":
            rsus = bank.list()
            if not rsus:
                print(f"the bank ({bank.stats()['store']}, namespace {bank.namespace!r}) is empty")
            for h in rsus:
                print(f"{h.id}  {h.source:<6} uses {h.uses:<3} {h.text[:70]!r}")
            return None
        if action == "search":
            if not words:
                raise UsageError("%ryz memory search needs the text to search for" + parsers.LINE_USAGE_HINT)
            hits = bank.search(" ".join(words), k=cmd.options["k"], count_use=False)
            for h in hits:
                print(f"{h.score:.3f}  {h.id}  {h.source:<6} {h.text[:70]!r}")
            if not hits:
                print("no units in the bank")
            return hits
        if action == "forget":
            if not words:
                raise UsageError("%ryz memory forget needs the id(s) to forget (%ryz memory list shows them)")
            n = bank.forget(words)
            print(f"forgot {n} of {len(words)} unit(s)")
            return None
        if action == "clear":
            print(f"cleared {bank.clear()} unit(s) from namespace {bank.namespace!r}")
            return None
        s = bank.stats()
        print(f"{s['rsus']} units ({s['chars']:,} characters) in namespace {s['namespace']!r} of "
              f"{s['store']}; sources {s['sources'] or '-'}; uses {s['uses']}; model {s['model']}; "
              f"ttl {s['ttl'] or 'none'}; cap {s['max_items'] or 'none'}")
        return s

    def _chart(self, name, ts):
        """The live tokens/s chart (only in a Jupyter kernel, with live_chart on), else None."""
        if not self.live_chart or getattr(self.shell, "kernel", None) is None:
            return None
        try:
            from ryzjupyter.jupyter.widgets import live_chart
        except ImportError:                  # anywidget missing: stream text only
            return None
        rec = live_chart(str(name), profiler=PROFILER)
        rec.start(n_prefill=len(getattr(ts, "prompt_ids", ())))
        return rec

    def _generation_options(self, args) -> dict:
        def pick(key):
            v = getattr(args, key)
            return getattr(self, key) if v is None else v
        gen = {k: pick(k) for k in ("max_new_tokens",) + parsers.SAMPLING_KEYS}
        draft = pick("draft")
        if draft and draft.lower() not in ("off", "none"):
            gen["draft"] = draft
            gen["num_draft"] = pick("num_draft")
        if args.stop:
            gen["stop"] = list(args.stop)
        return gen

    def _open(self, make, chat):
        """Create the engine's stream; option and template problems become one-line UsageErrors."""
        try:
            ts = make()
        except ValueError as e:
            msg = str(e)
            if chat and "chat template" in msg:
                msg += "; use --no-chat (and no --system) for a plain completion"
            raise UsageError(msg) from None
        session = getattr(ts, "session", None)
        n_prompt = len(getattr(ts, "prompt_ids", ()))
        if session is not None and n_prompt > session.max_context:
            raise UsageError(f"the prompt has {n_prompt} tokens but the model's context holds "
                             f"{session.max_context}; shorten it" + (", or clear the chat history with "
                                                                     "%ryz reset" if chat else ""))
        return ts

    def _finish(self, reply, live, *, history, output):
        meta = {"ryzjupyter": {"model": reply.model, "finish_reason": reply.finish_reason,
                               "finish": reply.finish["label"]}}
        if live is not None:
            live.finish(reply, metadata=meta)
        else:
            display(reply, metadata=meta)
        if self.show_stats:
            display(StatsFooter(reply))
        if history is not None:                     # chat: the conversation so far + this answer
            turn = {"role": "assistant", "content": reply.text}
            if reply.interrupted:
                turn["interrupted"] = True
            self.history[:] = history + [turn]
        self.last_reply = reply
        self.shell.displayhook.update_user_ns(reply)
        if output:
            self.shell.user_ns[output] = reply
        if reply.format == "code" and not reply.interrupted:
            self.shell.set_next_input(reply.code(), replace=False)

    # ------------------------------------------------------------------ models
    def _model_for_cell(self, spec):
        if spec:
            found = self.registry.find(spec)
            if found is not None:
                return found, self.registry.get(found)
            return self._load(spec, make_current=False)
        current = self.registry.current()
        if current is not None:
            return self.registry.current_name, current
        return self._load(self.default_model or None)

    def _load(self, spec, name=None, make_current=True, **options):
        previous = self.registry.current_name
        in_kernel = getattr(self.shell, "kernel", None) is not None and not is_plain_terminal(self.shell)
        bar = _ProgressBar(f"loading {spec or 'the bundled demo model'}", terminal=not in_kernel)
        t0 = time.perf_counter()
        try:
            name, model = self._registry_load(spec, name, bar, **options)
        except BaseException:
            bar.close()
            raise
        if not make_current and previous is not None:
            self.registry.use(previous)
        _warm_traceback_formatter(self.shell)
        dt = time.perf_counter() - t0
        bar.close(f"loaded {name} in {dt:.2f} s: {self._memory_text(name, model)}")
        return name, model

    def _registry_load(self, spec, name, progress, **options):
        try:
            return self.registry.load(spec, name=name, progress=progress, **options)
        except _checkpoint_error() as e:
            msg = str(e)
            if spec is None:
                msg += ("; in a notebook: %ryz load FOLDER_OR_HUB_ID, or "
                        "%config RyzMagics.default_model = 'FOLDER_OR_HUB_ID'")
            elif "pass" not in msg and "download" not in msg:
                msg += f"; {MODEL_HINT}"
            raise UsageError(msg) from None
        except TypeError as e:
            if "load option" in str(e):
                raise UsageError(str(e)) from None
            raise

    def _memory_text(self, name, model):
        """The memory a loaded model is counted for, and what it is made of (one number everywhere:
        the load message, %ryz list and the sidebar)."""
        weights = int(getattr(model, "nbytes", 0) or 0)
        info = next((m for m in self.registry.list() if m.name == name), None)
        total = info.nbytes if info is not None else weights
        if total > weights > 0:
            # a recurrent model (Mamba, RWKV) reserves its state and snapshots, not a KV cache
            reserve = "state reserve" if callable(getattr(model, "state_bytes", None)) else "KV cache reserve"
            return (f"{format_bytes(total)} ({format_bytes(weights)} weights + "
                    f"{format_bytes(total - weights)} {reserve})")
        return f"{format_bytes(total or weights)}"

    # ------------------------------------------------------------------ %ryz
    def _line(self, line):
        cmd = parse_line_command(line)
        return getattr(self, f"_cmd_{cmd.command}")(cmd)

    def _cmd_help(self, cmd):
        if cmd.model:                               # %ryz load --help
            print(line_help(cmd.model))
        else:
            print(full_help())

    def _cmd_list(self, cmd):
        models = self.registry.list()
        if not models:
            print("no model loaded; %ryz load [MODEL] loads one (a %%ryz cell loads "
                  "RyzMagics.default_model or the bundled demo model)")
            return
        w = max([len("model")] + [len(m.name) for m in models])
        # memory: what the model is counted for against the budget (weights + KV cache reserve)
        print(f"  {'model':<{w}}  {'family':<8} {'memory':>10}  source")
        for m in models:
            mark = "*" if m.current else " "
            print(f"{mark} {m.name:<{w}}  {m.family:<8} {format_bytes(m.nbytes):>10}  {m.source}")
        print("(* = current; memory = weights + KV cache reserve (Mamba/RWKV: state reserve), counted against "
              "the memory budget)")

    def _cmd_load(self, cmd):
        opts = {}
        if cmd.options.get("max_context"):
            opts["max_context"] = cmd.options["max_context"]
        if cmd.options.get("kv_cache"):
            opts["kv_cache"] = cmd.options["kv_cache"]
        self._load(cmd.model, name=cmd.name, **opts)

    def _cmd_unload(self, cmd):
        try:
            name = self.registry.unload(cmd.model)
        except KeyError:
            raise UsageError(self._not_loaded(cmd.model)) from None
        print(f"unloaded {name}")

    def _cmd_use(self, cmd):
        try:
            name, _ = self.registry.use(cmd.model)
        except KeyError:
            name, _ = self._load(cmd.model)
        print(f"using {name}")

    def _not_loaded(self, spec):
        names = self.registry.names()
        return (f"no loaded model called {spec!r}; loaded: {', '.join(names)}" if names else
                f"no loaded model called {spec!r}; no model is loaded (%ryz load MODEL)")

    def _cmd_reset(self, cmd):
        n = sum(1 for m in self.history if m["role"] == "assistant")
        self.history.clear()
        model = self.registry.current()
        if model is not None and hasattr(model, "reset"):
            model.reset()
        print(f"chat history cleared ({n} turn{'s' if n != 1 else ''})")

    def _cmd_stats(self, cmd):
        r = self.last_reply
        if r is None:
            print("no reply yet: run a %%ryz cell first")
            return
        s = r.stats
        rows = [("model", r.model), ("stopped", r.finish["label"]),
                ("prompt tokens", f"{s.n_prompt} ({getattr(s, 'n_cached', 0)} from the cache)"),
                ("generated tokens", s.n_generated),
                ("time to first token", format_duration(s.ttft_s)),
                ("prefill", f"{format_rate(s.prefill_tok_s)} tok/s"),
                ("decode", f"{format_rate(s.decode_tok_s)} tok/s"),
                ("total", format_duration(getattr(s, 'total_s', 0.0)))]
        if getattr(s, "drafter", ""):
            rows += [("draft tokens accepted", f"{s.accepted} / {s.drafted} ({s.acceptance:.0%})"),
                     ("tokens per target pass", f"{s.tokens_per_pass:.2f} ({s.target_passes} passes)"),
                     ("time: draft / verify / sampling",
                      " / ".join(format_duration(v) for v in (s.draft_s, s.verify_s, s.sampling_s)))]
        model = self.registry.get(r.model) if r.model else None
        tokenizer = getattr(model, "tokenizer", None)
        for k, v in r.settings.items():
            if k == "model":                       # already the first row
                continue
            if k == "stop":
                v = _stop_text(v, tokenizer)
            elif v is None:
                v = "(none)"
            rows.append((k, v))
        w = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{w}}  {v}")
        profile = getattr(r, "profile", None)
        if profile is not None:
            from ryzjupyter.jupyter.widgets.profile_view import ProfileDisplay
            display(ProfileDisplay(profile, title=f"where the time went ({r.model})"))

    def _cmd_controls(self, cmd):
        from ryzjupyter.jupyter.widgets import controls_panel
        display(controls_panel(self))

    def _cmd_serve(self, cmd):
        """%ryz serve [--port N] / stop / status: the OpenAI-compatible server over the kernel's
        models (ryzjupyter.serve), on a background thread."""
        from ryzjupyter import serve
        o = cmd.options
        h = serve.current()
        if o["action"] == "stop":
            print(f"stopped the server at {h.url}" if serve.stop() else "no server is running")
            return
        if o["action"] == "status" or (h is not None and h.running):
            if h is None:
                print("no server is running; %ryz serve [--port N] starts one")
                return
            if o["action"] == "start":
                print(f"already serving at {h.url}; %ryz serve stop first to change its settings")
            st = h.status()
            ttft = f", time to first token p50 {st['ttft_p50_s'] * 1000:.0f} ms" if st["ttft_p50_s"] is not None else ""
            print(f"serving {', '.join(st['models']) or 'no model'} at {h.url} "
                  f"({'API key required' if st['auth'] else 'no key'}): {st['requests']} requests, "
                  f"{st['streams']} streams now, {st['completion_tokens']} tokens generated{ttft}")
            return
        if not self.registry.names():                  # nothing to serve yet: what a %%ryz cell would load
            self._load(self.default_model or None)
        try:
            h = serve.start(self.registry, host=o["host"], port=o["port"], api_key=o["api_key"],
                            auth=not o["no_auth"], max_batch=o["max_batch"])
        except (serve.ServeConfigError, ImportError) as e:
            raise UsageError(str(e)) from None
        print(f"serving {', '.join(self.registry.names())} at {h.url} (OpenAI API; the notebook keeps working)")
        if h.api_key and not o["api_key"]:      # a generated key (one given is not echoed into the notebook)
            print(f"API key: {h.api_key}")
        elif h.api_key:
            print("API key: the one given with --api-key")
        print(f'from openai import OpenAI; client = OpenAI(base_url="{h.url}", api_key=...)   '
              "# %ryz serve stop ends it")

    def _cmd_map(self, cmd, cell=None):
        """%ryz map VAR / %%ryz map VAR (template in the cell): generate_many on a Dask cluster (the
        process's default client, else a LocalCluster), the progress streamed into the cell."""
        o = cmd.options
        if cmd.command == "help":
            print(line_help("map"))
            return None
        if o["var"] not in self.shell.user_ns:
            raise UsageError(f"%ryz map: no variable named {o['var']!r} in the notebook; give the name of a list")
        try:
            items = list(self.shell.user_ns[o["var"]])
        except TypeError:
            raise UsageError(f"%ryz map: {o['var']} is not a list (or any iterable)") from None
        template = (cell or "").strip()
        prompts = []
        for i, item in enumerate(items):
            if template:
                ns = {**self.shell.user_ns, "item": item, **(item if isinstance(item, dict) else {})}
                prompts.append(interpolate(template, ns).strip())
            elif isinstance(item, str):
                prompts.append(item)
            else:
                raise UsageError(f"%ryz map: item {i} of {o['var']} is a {type(item).__name__}, not a prompt; "
                                 "write a template in the cell (%%ryz map VAR, with {item} in the prompt)")
        gen = {k: getattr(self, k) if o[k] is None else o[k] for k in ("max_new_tokens",) + parsers.SAMPLING_KEYS}
        if gen["seed"] is not None:
            gen["seed"] = [gen["seed"] + i for i in range(len(prompts))]
        if o["stop"]:
            gen["stop"] = list(o["stop"])
        model = self._map_model(cmd.model)
        out = [None] * len(prompts)
        if o["output"]:
            self.shell.user_ns[o["output"]] = out       # filled as results arrive
        from ryzjupyter import distributed as rd
        try:
            rd.generate_many(prompts, model=model, batch_size=o["batch_size"], out=out, **gen)
        except (ValueError, TypeError, rd.ModelLoadError) as e:
            raise UsageError(f"%ryz map: {e}") from None
        self.last_map = out
        if o["output"]:
            return None
        return out

    def _map_model(self, spec):
        """What the workers load: a loaded model's folder, or the spec as given (a folder, hub id, name)."""
        found = self.registry.find(spec) if spec else self.registry.current_name
        if found is not None:
            return getattr(self.registry.get(found), "path", None) or spec
        return spec or self.default_model or None

    def _cmd_bench(self, cmd):
        name, model = self._model_for_cell(None)
        from .bench import quick_bench
        res = quick_bench(model, cmd.options["prompt_tokens"], cmd.options["new_tokens"])
        print(f"{name}: prefill {res['n_prompt']} tokens at {res['prefill_tok_s']:.1f} tok/s, "
              f"decode {res['n_generated']} tokens at {res['decode_tok_s']:.1f} tok/s "
              f"(first token {format_duration(res['ttft_s'])})")
        self.last_bench = res


RyzMagics.ryz.__doc__ = ("%%ryz [options]  (prompt in the cell)  /  %ryz COMMAND\n\n" + full_help())


def _stop_text(stops, tokenizer):
    """reply.settings["stop"] (stop strings and stop token ids) as text: '###', </s> (token 2)."""
    from ryzjupyter.manager import token_text
    parts = []
    for x in stops or []:
        if isinstance(x, str):
            parts.append(repr(x))
        else:
            parts.append(f"{token_text(tokenizer, x)} (token {x})")
    return ", ".join(parts) or "(none)"


def _raise_interrupt():
    raise KeyboardInterrupt


def _warm_traceback_formatter(shell):
    """The first traceback IPython formats in a process costs ~0.1 s (pygments and stack_data set
    up, this file parsed). Pay it once while a model loads, so that the first press of the stop
    button is reported as fast as the later ones (the latency the tests measure)."""
    if getattr(shell, "_ryz_tb_warm", False) or not hasattr(shell, "InteractiveTB"):
        return
    shell._ryz_tb_warm = True
    try:
        _raise_interrupt()
    except KeyboardInterrupt:
        etype, value, tb = sys.exc_info()
        try:
            shell.InteractiveTB.structured_traceback(etype, value, tb)
        except Exception:               # noqa: BLE001 - a warm-up must never break a load
            pass


class _ProgressBar:
    """Load progress fed by the loader's progress(done, total) callback, shown from the first call
    (an instant load shows nothing). In a notebook: one display line updated in place that becomes
    the "loaded ..." message at the end (so a saved notebook keeps no stale bar); in a terminal: a
    tqdm bar, then the message printed."""

    def __init__(self, desc, terminal=True):
        self.desc = desc
        self.terminal = terminal
        self.bar = None
        self.handle = None
        self.closed = False

    def __call__(self, done, total):
        if self.terminal:
            if self.bar is None:
                try:
                    from tqdm import tqdm
                except ImportError:          # tqdm is optional: no bar
                    self.bar = False
                    return
                self.bar = tqdm(total=total, desc=self.desc, unit="layer", leave=False)
            if self.bar:
                self.bar.n = done
                self.bar.refresh()
            return
        text = f"{self.desc}: {done}/{total} layers" if total else f"{self.desc}\u2026"
        bundle = {"text/plain": text}
        if self.handle is None:
            self.handle = display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)

    def close(self, message=None):
        if self.closed:
            return
        self.closed = True
        if self.bar:
            self.bar.close()
        if self.handle is not None:
            # the progress line becomes the final message (or nothing visible, after an error)
            self.handle.update({"text/plain": message or ""}, raw=True)
        elif message:
            print(message)
