"""The kernel's loaded models: name -> model, and which one is current.

A deliberately small interface (load / add / unload / use / get / current / list), so a later full
model manager (memory budget, LRU, hot-swap) can replace it without touching the magics.
Thread-safe: comm handlers of a sidebar may call it from a subshell thread while a cell runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ModelInfo:
    name: str
    source: str        # what it was loaded from (folder, hub id, "bundled")
    nbytes: int        # weight memory
    current: bool
    family: str


class ModelRegistry:
    def __init__(self):
        self._lock = threading.RLock()
        self._models: dict[str, object] = {}
        self._sources: dict[str, str] = {}
        self._current: str | None = None

    # -- queries
    def names(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def get(self, name):
        with self._lock:
            return self._models.get(name)

    @property
    def current_name(self) -> str | None:
        return self._current

    def current(self):
        with self._lock:
            return self._models.get(self._current) if self._current else None

    def find(self, spec: str):
        """The loaded model called `spec`, or loaded from `spec` (a folder or hub id), or None."""
        with self._lock:
            if spec in self._models:
                return spec
            for name, src in self._sources.items():
                if src == spec or _same_path(src, spec):
                    return name
            return None

    def list(self) -> list[ModelInfo]:
        with self._lock:
            return [ModelInfo(name, self._sources[name], _nbytes(m), name == self._current,
                              getattr(m, "family", type(m).__name__))
                    for name, m in self._models.items()]

    # -- changes
    def add(self, name: str, model, source: str = "", make_current: bool = True):
        with self._lock:
            if name in self._models and self._models[name] is not model:
                raise ValueError(f"a model named {name!r} is already loaded; unload it first or pick "
                                 f"another name")
            self._models[name] = model
            self._sources[name] = source or name
            if make_current or self._current is None:
                self._current = name
        return model

    def load(self, spec: str | None = None, *, name: str | None = None, progress=None, **options):
        """Load `spec` (folder, hub id, bundled model name; None = the bundled demo model) unless a
        model from the same place is already loaded; make it current; return (name, model)."""
        with self._lock:
            if spec is not None:
                found = self.find(spec)
                if found is not None and (name is None or name == found):
                    self._current = found
                    return found, self._models[found]
        from ryzjupyter.loading import load
        if progress is not None:
            options["progress"] = progress
        if name is None and spec is not None:
            name = Path(spec).name if Path(spec).is_dir() else spec
        if name is not None:
            options["name"] = name
        model = load(spec, **options)
        name = name or getattr(model, "name", None) or "demo"
        self.add(name, model, source=spec or "bundled")
        return name, model

    def use(self, spec: str):
        with self._lock:
            found = self.find(spec)
            if found is None:
                raise KeyError(spec)
            self._current = found
            return found, self._models[found]

    def unload(self, spec: str) -> str:
        with self._lock:
            found = self.find(spec)
            if found is None:
                raise KeyError(spec)
            model = self._models.pop(found)
            self._sources.pop(found, None)
            if self._current == found:
                self._current = next(iter(self._models), None)
        close = getattr(model, "close", None)
        if callable(close):
            close()
        return found

    def clear(self):
        for name in self.names():
            self.unload(name)


def _nbytes(model) -> int:
    n = getattr(model, "nbytes", 0)
    try:
        return int(n)
    except (TypeError, ValueError):
        return 0


def _same_path(a: str, b: str) -> bool:
    try:
        pa, pb = Path(a), Path(b)
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except OSError:
        return False


# one registry per kernel process, shared by the magics, the widgets and the sidebar: the model
# manager (memory budget, LRU, hot-swap, generation lock) offers this same interface
from ryzjupyter.manager import MANAGER as REGISTRY  # noqa: E402
