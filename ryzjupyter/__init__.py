"""ryzjupyter: fast, exact LLM inference on the CPU inside a Jupyter kernel.

Public names are resolved lazily, so `%load_ext ryzjupyter` stays cheap and the
C extension is imported only when something uses it. This facade sits above every layer
(docs/architecture.md) and names its modules as strings: the engine imports
``ryzjupyter._native`` through this package and must not see the surfaces from here.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "load": ("ryzjupyter.families.loading", "load"),
    "Tokenizer": ("ryzjupyter.engine.tokenizer", "Tokenizer"),
    "native_info": ("ryzjupyter.engine.native", "native_info"),
    "embed": ("ryzjupyter.memory.embedding", "embed"),
    "RecycleBank": ("ryzjupyter.memory.bank", "RecycleBank"),
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
    import_module("ryzjupyter.jupyter.magics").load_ipython_extension(ipython)
    comm = import_module("ryzjupyter.jupyter.comm")
    comm.register()
    comm.magics_loaded()          # an open sidebar's Memory section can now reach the bank


def _jupyter_labextension_paths():
    """The prebuilt JupyterLab sidebar (`jupyter labextension develop --overwrite .` links it)."""
    return [{"src": "labextension", "dest": "ryzjupyter"}]


def unload_ipython_extension(ipython):
    import_module("ryzjupyter.jupyter.magics").unload_ipython_extension(ipython)
