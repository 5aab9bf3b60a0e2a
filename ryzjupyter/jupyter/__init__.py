"""The Jupyter surface: thin clients of the engine and the model manager.

magics/    ``%%ryz`` and ``%ryz`` (option parsing, streaming display, the model registry)
widgets/   sampling controls, the live tokens/s chart, the profile view
comm.py    the kernel side of the JupyterLab sidebar (``labextension/``)
"""
