"""ryzjupyter: fast, exact LLM inference on the CPU inside a Jupyter kernel.

Public names are resolved lazily, so `%load_ext ryzjupyter` stays cheap and the
C extension is imported only when something uses it.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "load": ("ryzjupyter.loading", "load"),
    "Tokenizer": ("ryzjupyter.tokenizer", "Tokenizer"),
    "native_info": ("ryzjupyter.native", "native_info"),
}

__all__ = sorted(_LAZY) + ["__version__", "load_ipython_extension", "unload_ipython_extension"]


def __getattr__(name):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'ryzjupyter' has no attribute {name!r}") from None
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def load_ipython_extension(ipython):
    """`%load_ext ryzjupyter`: register the %ryz / %%ryz magics and the sidebar's comm target."""
    from ryzjupyter.magics import load_ipython_extension as _load

    _load(ipython)
    from ryzjupyter.comm import register

    register()


def _jupyter_labextension_paths():
    """The prebuilt JupyterLab sidebar (`jupyter labextension develop --overwrite .` links it)."""
    return [{"src": "labextension", "dest": "ryzjupyter"}]


def unload_ipython_extension(ipython):
    from ryzjupyter.magics import unload_ipython_extension as _unload

    _unload(ipython)
