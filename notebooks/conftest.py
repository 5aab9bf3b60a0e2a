"""`pytest --nbval notebooks/` settings, so the plain command compares the notebooks correctly.

- Streaming off (RYZ_STREAM=0): nbval keeps only a cell's first display and ignores display
  updates; with streaming off each reply is one display, identical to the streamed final output.
- The sanitiser for machine-dependent numbers (tok/s, seconds, memory sizes), unless one is given.
- The kernel runs in the test's own environment (the notebooks name the plain python3 kernel).
"""
import os
from pathlib import Path

os.environ["RYZ_STREAM"] = "0"              # the kernel nbval starts inherits the environment
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    opt = config.option
    if hasattr(opt, "nbval_sanitize_with") and not opt.nbval_sanitize_with:
        opt.nbval_sanitize_with = str(Path(__file__).with_name("nbval_sanitize.cfg"))
    if hasattr(opt, "nbval_current_env") and not getattr(opt, "nbval_kernel_name", None):
        opt.nbval_current_env = True
