"""`%ryz controls`: sampling controls bound live, both ways, to the `RyzMagics` settings, and a
Generate area (prompt box, button, output) usable without writing a magic.

    from ryzjupyter.jupyter.widgets import controls_panel
    panel = controls_panel(magics)        # magics: the RyzMagics instance (any HasTraits with
                                          # those trait names works)

Moving a slider sets the trait (the next %%ryz uses it, visible in reply.settings);
`%config RyzMagics.temperature = 0.3` moves the slider. A value outside a slider's range widens
the slider instead of being clamped (a clamp would write the clamped value back to the setting).
A value the setting refuses (its validator raises) is shown in the panel's status line and the
control snaps back; nothing raises inside the widget machinery.
"""

from __future__ import annotations

import threading

import ipywidgets as W
import traitlets

from ryzjupyter.models import bundled_names

# trait name -> (label, widget factory, (to_widget, to_trait) converters or None)
_LAYOUT = W.Layout(width="auto")
_STYLE = {"description_width": "150px"}


def _float_slider(lo, hi, step, fmt=".2f"):
    return lambda v: W.FloatSlider(value=v, min=min(lo, v), max=max(hi, v), step=step, readout_format=fmt,
                                   continuous_update=False, style=_STYLE, layout=W.Layout(width="420px"))


def _int_slider(lo, hi, step=1):
    return lambda v: W.IntSlider(value=v, min=min(lo, v), max=max(hi, v), step=step, continuous_update=False,
                                 style=_STYLE, layout=W.Layout(width="420px"))


def _none_to_text(v):
    return "" if v is None else str(v)


def _text_to_seed(s):
    s = (s or "").strip()
    if s == "" or s.lower() == "none":
        return None
    try:
        return int(s)
    except ValueError:
        raise ValueError(f"seed must be a whole number >= 0 or empty (a fresh seed per reply), got {s!r}") from None


def _text_to_int_or_none(s, what, lo, hi):
    s = (s or "").strip()
    if s == "" or s.lower() in ("none", "adaptive"):
        return None
    try:
        v = int(s)
    except ValueError:
        v = None
    if v is None or not lo <= v <= hi:
        raise ValueError(f"{what} must be a whole number in {lo}..{hi} or empty (adaptive), got {s!r}")
    return v


def _draft_options():
    """The draft selector's choices: the draft-free drafters, then the bundled draft models."""
    return ["off", "lookup", "adjacency", "auto"] + [n for n in bundled_names() if "draft" in n]


def _text_to_system(s):
    return s if s and s.strip() else None


CONTROLS = [
    # name, label, factory, converters
    ("max_new_tokens", "max new tokens", _int_slider(1, 1024), None),
    ("temperature", "temperature", _float_slider(0.0, 2.0, 0.05), None),
    ("top_k", "top-k (0 = off)", _int_slider(0, 200), None),
    ("top_p", "top-p", _float_slider(0.05, 1.0, 0.01), None),
    ("min_p", "min-p", _float_slider(0.0, 1.0, 0.01), None),
    ("repetition_penalty", "repetition penalty", _float_slider(1.0, 2.0, 0.01), None),
    ("seed", "seed",
     lambda v: W.Text(value=_none_to_text(v), placeholder="random", continuous_update=False, style=_STYLE,
                      layout=W.Layout(width="300px")),
     (_none_to_text, _text_to_seed)),
    ("system", "system prompt",
     lambda v: W.Textarea(value=_none_to_text(v), placeholder="(none)", continuous_update=False, style=_STYLE,
                          layout=W.Layout(width="420px", height="56px")),
     (_none_to_text, _text_to_system)),
    ("stream", "stream tokens", lambda v: W.Checkbox(value=bool(v), indent=False), None),
    ("chat", "chat (keep history)", lambda v: W.Checkbox(value=bool(v), indent=False), None),
    ("show_stats", "stats footer", lambda v: W.Checkbox(value=bool(v), indent=False), None),
    # features that other parts add to RyzMagics later; shown only when the trait exists
    ("draft", "speculative decoding",
     lambda v: W.Combobox(value=v or "", options=_draft_options(), placeholder="off", ensure_option=False,
                          continuous_update=False, style=_STYLE, layout=W.Layout(width="420px")),
     (lambda v: v or "", lambda s: "" if (s or "").strip().lower() in ("", "off", "none") else s.strip())),
    ("num_draft", "draft tokens per pass",
     lambda v: W.Text(value=_none_to_text(v), placeholder="adaptive", continuous_update=False, style=_STYLE,
                      layout=W.Layout(width="300px")),
     (_none_to_text, lambda s: _text_to_int_or_none(s, "draft tokens per pass", 0, 15))),
    ("recycling", "token recycling", lambda v: W.Checkbox(value=bool(v), indent=False), None),
    ("live_chart", "live tokens/s chart", lambda v: W.Checkbox(value=bool(v), indent=False), None),
    ("show_profile", "profile after reply", lambda v: W.Checkbox(value=bool(v), indent=False), None),
]


class TwoWayLink:
    """Keep `source.<name>` and `widget.value` equal, both ways (traitlets observers with a guard).

    Differences from traitlets.link: converters on both sides; a value outside a slider's range
    widens the slider (no clamping written back); a value the source refuses is reported through
    `on_error` and the widget is put back."""

    def __init__(self, source, name, widget, to_widget=None, to_source=None, on_error=None):
        self.source, self.name, self.widget = source, name, widget
        self.to_widget = to_widget or (lambda v: v)
        self.to_source = to_source or (lambda v: v)
        self.on_error = on_error
        self._busy = False
        source.observe(self._source_changed, names=name)
        widget.observe(self._widget_changed, names="value")
        self._source_changed(None)

    def _set_widget(self, v):
        w = self.widget
        if isinstance(w, (W.FloatSlider, W.IntSlider)) and v is not None:
            if v > w.max:
                w.max = v
            if v < w.min:
                w.min = v
        w.value = v

    def _source_changed(self, change):
        if self._busy:
            return
        self._busy = True
        try:
            self._set_widget(self.to_widget(getattr(self.source, self.name)))
        finally:
            self._busy = False

    def _widget_changed(self, change):
        if self._busy:
            return
        self._busy = True
        try:
            try:
                setattr(self.source, self.name, self.to_source(change["new"]))
            except (traitlets.TraitError, ValueError, TypeError) as e:
                if self.on_error is not None:
                    self.on_error(self.name, e)
                self._set_widget(self.to_widget(getattr(self.source, self.name)))   # snap back
            else:
                if self.on_error is not None:
                    self.on_error(self.name, None)
        finally:
            self._busy = False

    def unlink(self):
        self.source.unobserve(self._source_changed, names=self.name)
        self.widget.unobserve(self._widget_changed, names="value")


_GENERATE_LOCK = threading.Lock()


class ControlsPanel(W.VBox):
    """The panel `%ryz controls` shows. Attributes: `controls` (trait name -> widget), `links`,
    `model` (the model dropdown), `prompt`, `generate_button`, `output`, `status`."""

    def __init__(self, magics, registry=None, runner=None, **kw):
        self.magics = magics
        self.registry = registry if registry is not None else getattr(magics, "registry", None)
        self.controls: dict[str, W.Widget] = {}
        self.links: dict[str, TwoWayLink] = {}
        self.status = W.HTML(value="", layout=W.Layout(min_height="1.2em"))
        self.status.add_class("ryz-controls-status")
        self._errors: dict[str, str] = {}
        rows = []

        # model dropdown: loaded models (the registry) + bundled ones + the default_model setting
        self.model = W.Dropdown(description="model", style=_STYLE, layout=W.Layout(width="420px"))
        self.model.add_class("ryz-controls-model")
        self.refresh_button = W.Button(icon="refresh", tooltip="refresh the model list",
                                       layout=W.Layout(width="36px"))
        self.refresh_button.on_click(lambda _b: self.refresh_models())
        self._model_busy = False
        self.refresh_models()
        self.model.observe(self._model_changed, names="value")
        rows.append(W.HBox([self.model, self.refresh_button]))
        if isinstance(magics, traitlets.HasTraits) and magics.has_trait("default_model"):
            magics.observe(lambda _c: self.refresh_models(), names="default_model")
        # after every generation (a %%ryz cell may have loaded or switched models) re-read the list
        from ryzjupyter.engine.profiling import PROFILER
        self._profiler = PROFILER
        self._listener = lambda _profile: self.refresh_models(quiet=True)
        PROFILER.listeners.append(self._listener)

        for name, label, make, conv in CONTROLS:
            if not (isinstance(magics, traitlets.HasTraits) and magics.has_trait(name)):
                continue
            to_w, to_s = conv if conv else (None, None)
            value = getattr(magics, name)
            w = make(to_w(value) if to_w else value)
            w.description = label
            w.add_class(f"ryz-control-{name.replace('_', '-')}")
            self.controls[name] = w
            self.links[name] = TwoWayLink(magics, name, w, to_w, to_s, on_error=self._report)
            rows.append(w)

        # generate area
        self.prompt = W.Textarea(placeholder="Write a prompt, then press Generate",
                                 layout=W.Layout(width="560px", height="64px"))
        self.prompt.add_class("ryz-controls-prompt")
        self.generate_button = W.Button(description="Generate", button_style="primary", icon="play")
        self.generate_button.add_class("ryz-controls-generate")
        self.generate_button.on_click(lambda _b: self.generate())
        # hidden until the first generation: no empty bordered box under Generate
        self.output = W.Output(layout=W.Layout(border="1px solid var(--jp-border-color2, #ddd)",
                                               min_height="2em", padding="4px", display="none"))
        self.output.add_class("ryz-controls-output")
        self.finish = W.HTML(value="", layout=W.Layout(display="none"))    # why the last reply stopped
        self.finish.add_class("ryz-controls-finish")
        self.runner = runner if runner is not None else self._default_runner
        self.generations = 0
        self.chart = None                   # the panel's own live chart, created on first use
        self.chart_box = W.VBox([])
        self.chart_box.add_class("ryz-controls-chart")

        title = W.HTML("<b>ryzjupyter</b> &mdash; sampling settings (shared with <code>%%ryz</code> "
                       "and <code>%config RyzMagics</code>)")
        gen_title = W.HTML("<b>Generate</b> with these settings")
        settings_box = W.VBox(rows)
        gen_box = W.VBox([gen_title, self.prompt, W.HBox([self.generate_button, self.finish]), self.chart_box,
                          self.output])
        super().__init__([title, settings_box, self.status, gen_box], **kw)
        self.add_class("ryz-controls")

    # ------------------------------------------------------------------ errors
    def _report(self, name, err):
        if err is None:
            self._errors.pop(name, None)
        else:
            self._errors[name] = str(err)
        self.status.value = "".join(
            f'<div style="color:var(--jp-error-color1,#c00)">{_esc(m)}</div>' for m in self._errors.values())

    # ------------------------------------------------------------------ models
    def _model_options(self):
        opts, seen = [], set()
        reg = self.registry
        if reg is not None:
            for n in reg.names():
                if n not in seen:
                    opts.append((f"{n} (loaded)", n))
                    seen.add(n)
        for n in bundled_names():
            if n not in seen:
                opts.append((f"{n} (bundled)", n))
                seen.add(n)
        dm = getattr(self.magics, "default_model", "")
        if dm and dm not in seen:
            opts.append((f"{dm} (default_model)", dm))
            seen.add(dm)
        if not opts:
            opts.append(("demo (bundled, loads on first use)", ""))
        return opts

    def _current_model(self):
        reg = self.registry
        cur = reg.current_name if reg is not None else None
        return cur or getattr(self.magics, "default_model", "") or ""

    def refresh_models(self, quiet=False):
        """Re-read the loaded and bundled models (also run after each generation)."""
        self._model_busy = True
        try:
            opts = self._model_options()
            cur = self._current_model()
            values = [v for _, v in opts]
            value = cur if cur in values else values[0]
            if quiet and tuple(opts) == tuple(self.model.options) and self.model.value == value:
                return
            self.model.options = opts
            self.model.value = value
        except Exception:                     # never raise into a generation's listener call
            if not quiet:
                raise
        finally:
            self._model_busy = False

    def _model_changed(self, change):
        if self._model_busy or change["new"] is None:
            return
        name = change["new"]
        reg = self.registry
        try:
            if reg is not None and reg.find(name) is not None:
                reg.use(name)                             # the next %%ryz uses it
            elif hasattr(self.magics, "default_model"):
                # not loaded: the next %%ryz (or Generate) loads it
                self.magics.default_model = name
                if reg is not None and reg.current_name is not None:
                    self._load(name)
        except Exception as e:                            # shown, never raised into the widget manager
            self._report("model", e)
        else:
            self._report("model", None)

    def _load(self, name):
        self.status.value = f"loading {_esc(name)}&hellip;"
        n, _ = self.registry.load(name)
        self.status.value = ""
        self.refresh_models()

    # ------------------------------------------------------------------ generate
    def _default_runner(self, prompt):
        shell = getattr(self.magics, "shell", None)
        if shell is None:
            raise RuntimeError("no IPython shell: controls_panel needs the RyzMagics of a running kernel "
                               "(or pass runner=)")
        # --no-stream: an Output widget drops display updates, so the reply is shown once, complete;
        # the panel's own chart shows the progress
        return shell.run_cell_magic("ryz", "--no-stream", prompt)

    def _recorder(self):
        """A recorder on the panel's chart, following the engine's token timestamps, or None."""
        if not getattr(self.magics, "live_chart", True):
            return None
        try:
            from ryzjupyter.engine.profiling import PROFILER
            from .chart import ThroughputChart, ThroughputRecorder
            if self.chart is None:
                self.chart = ThroughputChart(height=140)
                self.chart_box.children = (self.chart,)
            rec = ThroughputRecorder(self.chart, profiler=PROFILER, title=str(self._current_model() or ""))
        except ImportError:
            return None
        return rec.start().attach()

    def generate(self, prompt=None):
        """Run one generation with the current settings; output goes to the panel's output area."""
        text = self.prompt.value if prompt is None else prompt
        if not text.strip():
            self._report("generate", "write a prompt first")
            return None
        if not _GENERATE_LOCK.acquire(blocking=False):
            self._report("generate", "a generation from this panel is already running")
            return None
        self._report("generate", None)
        self.generate_button.disabled = True
        rec = None
        try:
            self.output.clear_output()
            self.output.layout.display = None
            self.finish.value = "generating&hellip;"
            self.finish.layout.display = None
            rec = self._recorder()
            before = getattr(self.magics, "last_reply", None)
            with self.output:
                try:
                    result = self.runner(text)
                except KeyboardInterrupt:
                    result = None
                    print("[interrupted]")
                except Exception as e:       # one line in the output, not a traceback wall
                    result = None
                    self._report("generate", f"{type(e).__name__}: {e}")
            if rec is not None:
                rec.detach()
                last = getattr(self.magics, "last_reply", None)
                if last is before:          # no new reply (an error): what the recorder saw
                    last = None
                rec.finish(getattr(last, "stats", None), getattr(last, "profile", None))
            self._show_finish(before)
            self.generations += 1
            return result
        finally:
            if rec is not None:
                rec.detach()
            self.generate_button.disabled = False
            _GENERATE_LOCK.release()
            try:
                self.refresh_models()
            except Exception:
                pass

    def _show_finish(self, before):
        """Next to the Generate button: how many tokens the reply has and why it stopped."""
        last = getattr(self.magics, "last_reply", None)
        finish = getattr(last, "finish", None)
        if last is None or last is before or not finish:
            self.finish.value = ""
            return
        n = getattr(getattr(last, "stats", None), "n_generated", len(getattr(last, "tokens", ())))
        self.finish.value = (f'<span class="ryz-finish" data-reason="{_esc(finish["reason"])}">'
                             f'{n} token{"s" if n != 1 else ""} &middot; stopped: {_esc(finish["label"])}</span>')

    # ------------------------------------------------------------------
    def close(self):
        for link in self.links.values():
            link.unlink()
        if self._listener in self._profiler.listeners:
            self._profiler.listeners.remove(self._listener)
        super().close()


def _esc(s) -> str:
    import html
    return html.escape(str(s))


def controls_panel(magics, registry=None, runner=None) -> ControlsPanel:
    """The controls panel bound to `magics` (RyzMagics or any HasTraits with those trait names)."""
    return ControlsPanel(magics, registry=registry, runner=runner)
