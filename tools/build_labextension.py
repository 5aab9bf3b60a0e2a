"""Build the JupyterLab extension (labextension/ -> ryzjupyter/labextension/) when it is missing or
older than its sources.

    python tools/build_labextension.py            # build if needed (npm ci from the lockfile + build:prod)
    python tools/build_labextension.py --force    # always rebuild
    python tools/build_labextension.py --check    # exit 1 if the build is missing or stale

setup.py calls this before computing its data_files, so `pip install .` from a checkout ships the
prebuilt extension in share/jupyter/labextensions/ryzjupyter. Node >= 20.19 and npm are needed
only to build; a checkout without node uses an existing build (with a warning if it looks stale).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "labextension"
OUT = ROOT / "ryzjupyter" / "labextension"
INPUTS = ["package.json", "package-lock.json", "tsconfig.json", "install.json", "src", "style", "schema"]


def _newest(paths) -> float:
    t = 0.0
    for p in paths:
        if p.is_dir():
            t = max([t] + [f.stat().st_mtime for f in p.rglob("*") if f.is_file()])
        elif p.exists():
            t = max(t, p.stat().st_mtime)
    return t


def is_built() -> bool:
    return (OUT / "package.json").is_file() and (OUT / "static" / "style.js").is_file()


def is_stale() -> bool:
    if not is_built():
        return True
    return _newest(SRC / p for p in INPUTS) > _newest([OUT / "package.json", OUT / "static"])


def _run(cmd):
    print("+", " ".join(cmd), f"(in {SRC})", flush=True)
    subprocess.run(cmd, cwd=SRC, check=True)


def build(force=False) -> bool:
    """Build if needed; returns True if the built extension is present afterwards."""
    if not force and not is_stale():
        return True
    npm = shutil.which("npm")
    if npm is None:
        if is_built():
            print("warning: npm not found; using the existing build of the labextension, which is older "
                  "than its sources", file=sys.stderr)
            return True
        return False
    lock = SRC / "package-lock.json"
    modules = SRC / "node_modules"
    if not modules.is_dir() or modules.stat().st_mtime < lock.stat().st_mtime:
        _run([npm, "ci", "--no-audit", "--no-fund"])
    _run([npm, "run", "build:prod"])
    if not is_built():
        raise SystemExit("the labextension build ran but ryzjupyter/labextension/static/style.js is missing")
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--check", action="store_true", help="only check: exit 1 if missing or stale")
    a = ap.parse_args(argv)
    if a.check:
        stale = is_stale()
        print("labextension:", "missing" if not is_built() else "stale" if stale else "up to date")
        return 1 if stale else 0
    if not build(force=a.force):
        print("error: the labextension is not built and npm is not available; install Node.js >= 20.19 "
              "and npm, or set RYZJUPYTER_SKIP_LABEXTENSION=1 to install without the sidebar", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
