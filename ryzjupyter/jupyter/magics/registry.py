"""The kernel's loaded models, as the magics see them.

One registry per kernel process, shared by the magics, the widgets and the sidebar: the model
manager (ryzjupyter/manager.py: memory budget, LRU unloading, hot-swap, generation lock, load
progress). The magics use its small interface only: load / add / unload / use / get / find /
current / current_name / list.
"""
from ryzjupyter.manager import MANAGER as REGISTRY

__all__ = ["REGISTRY"]
