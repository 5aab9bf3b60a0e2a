"""IPython magics: `%load_ext ryzjupyter`, then `%%ryz [options]` and `%ryz COMMAND`.

Importing this package imports neither the engine nor the C extension; they load on the first
cell that needs a model.
"""

from .display import Reply
from .magics import RyzMagics
from .registry import REGISTRY

__all__ = ["RyzMagics", "Reply", "REGISTRY", "get_magics", "load_ipython_extension",
           "unload_ipython_extension"]


def get_magics(shell=None):
    """The kernel's RyzMagics (its settings are shared by the magics, widgets and sidebar), or None
    when the extension is not loaded."""
    if shell is None:
        from IPython import get_ipython
        shell = get_ipython()
    return getattr(shell, "_ryz_magics", None) if shell is not None else None


def load_ipython_extension(ipython):
    """Register the magics once per shell; settings come from the shell's config (c.RyzMagics.*)."""
    if getattr(ipython, "_ryz_magics", None) is None:
        magics = RyzMagics(shell=ipython)
        ipython.register_magics(magics)
        ipython._ryz_magics = magics
        # %config RyzMagics lists and changes the settings only if the shell knows the configurable
        if magics not in ipython.configurables:
            ipython.configurables.append(magics)


def unload_ipython_extension(ipython):
    magics = getattr(ipython, "_ryz_magics", None)
    if magics is None:
        return
    ipython.magics_manager.registry.pop("RyzMagics", None)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("ryz", None)
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)
    ipython._ryz_magics = None
