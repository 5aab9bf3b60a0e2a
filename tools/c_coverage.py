"""Line coverage of the native kernels (ryzjupyter/_native/*.c) from a RYZ_COVERAGE=1 build:
`python tools/c_coverage.py OBJDIR [--reset] [--min PERCENT]`.

OBJDIR is the build folder whose objects carry gcov's counters (`python setup.py build_ext
--inplace -t OBJDIR` with RYZ_COVERAGE=1): every process that imported the module adds its
counts to the .gcda files there when it exits. This runs `gcov` on each source and prints its
lines executed and the total; --reset then deletes the counts, so the next run starts at zero.
--min fails (exit status 1) when the total is below PERCENT."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "ryzjupyter" / "_native"
SUMMARY = re.compile(r"File '([^']+)'\nLines executed:([\d.]+)% of (\d+)")


def coverage(objdir: Path) -> dict[str, tuple[int, int]]:
    """{source name: (lines executed, lines)} for each kernel source gcov has counts for."""
    out = {}
    objects = sorted(objdir.resolve().rglob("*.gcno"))
    if not objects:
        raise SystemExit(f"no .gcno files under {objdir}: build with RYZ_COVERAGE=1 and -t {objdir}")
    with tempfile.TemporaryDirectory() as tmp:           # gcov writes nothing with -n, but runs in a scratch dir
        for gcno in objects:
            src = NATIVE / (gcno.stem + ".c")
            if not src.is_file():
                continue
            r = subprocess.run(["gcov", "-n", "-o", str(gcno.parent), str(src)], cwd=tmp,
                               capture_output=True, text=True)
            for name, pct, n in SUMMARY.findall(r.stdout):
                if name.replace("\\", "/").endswith(f"ryzjupyter/_native/{src.name}"):   # relative to where it compiled
                    n = int(n)
                    out[src.name] = (round(float(pct) * n / 100), n)
            out.setdefault(src.name, (0, 0))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python tools/c_coverage.py", description=__doc__.split("\n\n")[0])
    p.add_argument("objdir", type=Path)
    p.add_argument("--reset", action="store_true", help="delete the counts (.gcda) after the report")
    p.add_argument("--min", type=float, default=None, help="fail below this total percentage")
    a = p.parse_args(argv)
    cov = coverage(a.objdir)
    done = sum(e for e, _ in cov.values())
    total = sum(n for _, n in cov.values())
    for name, (e, n) in sorted(cov.items()):
        print(f"  {name:24s} {e:6d} / {n:6d}  {100 * e / n if n else 0:5.1f} %")
    pct = 100 * done / total if total else 0.0
    print(f"kernel sources: {done} of {total} lines executed ({pct:.1f} %), {len(cov)} files")
    if a.reset:
        for f in a.objdir.rglob("*.gcda"):
            f.unlink()
    return 1 if a.min is not None and pct < a.min else 0


if __name__ == "__main__":
    sys.exit(main())
