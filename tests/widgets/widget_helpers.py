"""Helpers for the headless widget tests: widgets construct without a kernel (ipywidgets uses a dummy comm);
frontend edits are simulated with the raw `update` message a browser sends."""
import pytest
import traitlets
from traitlets import Bool, Enum, Float, HasTraits, Int, TraitError, Unicode, validate


def frontend_update(widget, **state):
    """What the browser sends when the user moves a control."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}},
                        "buffers": []})


class FakeMagics(HasTraits):
    """The RyzMagics settings (same names, types and checks) without IPython."""
    default_model = Unicode("")
    max_new_tokens = Int(128)
    temperature = Float(0.8)
    top_k = Int(40)
    top_p = Float(0.95)
    min_p = Float(0.05)
    repetition_penalty = Float(1.0)
    seed = Int(None, allow_none=True)
    system = Unicode(None, allow_none=True)
    chat = Bool(False)
    format = Enum(("text", "markdown", "code"), default_value="markdown")
    stream = Bool(True)
    show_stats = Bool(True)
    max_updates_per_s = Float(15.0)
    draft = Unicode("")
    num_draft = Int(None, allow_none=True)

    @validate("temperature")
    def _t(self, p):
        if not p.value >= 0:
            raise TraitError(f"RyzMagics.temperature must be >= 0 (0 = greedy), got {p.value}")
        return p.value

    @validate("seed")
    def _s(self, p):
        if p.value is not None and p.value < 0:
            raise TraitError(f"RyzMagics.seed must be >= 0 or None, got {p.value}")
        return p.value


class FakeRegistry:
    def __init__(self, names=()):
        self._names = list(names)
        self.current_name = self._names[0] if self._names else None
        self.loaded = []

    def names(self):
        return list(self._names)

    def find(self, spec):
        return spec if spec in self._names else None

    def use(self, spec):
        self.current_name = spec
        return spec, object()

    def load(self, spec, **kw):
        self._names.append(spec)
        self.loaded.append(spec)
        self.current_name = spec
        return spec, object()


