"""Build ryzjupyter._native: one extension, one compilation unit per ISA.

Sources in ryzjupyter/_native are compiled with flags chosen by their suffix:
  *_avx2.c    -> -mavx2 -mfma -mf16c
  *_avx512.c  -> -mavx512f -mavx512bw -mavx512vl -mavx512vnni (+ avx2/fma)
  anything else -> baseline x86-64 (SSE2), so module code never executes an
                   instruction the CPU lacks; kernels are chosen at run time.
Never -march=native: the same build runs on every x86-64 CPU.
RYZ_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer; RYZ_COVERAGE=1 adds gcov
line counters (--coverage, at -O1: each object's .gcda lands beside its .o in build_temp when the
process exits; .ci/run reports the kernels' line coverage of the fuzz corpus with them).

The JupyterLab sidebar (labextension/, TypeScript) ships prebuilt in
share/jupyter/labextensions/ryzjupyter: building a wheel or installing from a checkout
runs tools/build_labextension.py first (npm ci from the committed lockfile + npm run
build:prod, only when ryzjupyter/labextension/ is missing or older than its sources);
the sdist carries the built sidebar and a wheel built from it uses that (no node).
RYZJUPYTER_SKIP_LABEXTENSION=1 installs without the sidebar (no node needed).

The wheel: `python -m build` (an sdist, then a wheel built from it) and
`auditwheel repair -w dist/wheelhouse dist/*.whl` (the manylinux tag; the extension
needs only libc, libm and pthreads). It holds every ISA level's kernels (the per-ISA
sources are all compiled; the CPU picks at import) and the prebuilt sidebar, and
installs with no compiler and no node (tools/check_wheel.py checks that).
"""
import glob
import os
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.join("ryzjupyter", "_native")

ISA_FLAGS = {
    "_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
    "_avx512.c": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni",
                  "-mavx2", "-mfma", "-mf16c"],
}
COMMON_FLAGS = ["-O3", "-std=c11", "-Wall", "-Wextra", "-fno-strict-aliasing",
                "-fvisibility=hidden", "-pthread", "-D_GNU_SOURCE"]
SANITIZE = os.environ.get("RYZ_SANITIZE") == "1"
if SANITIZE:
    COMMON_FLAGS += ["-O1", "-g", "-fsanitize=address,undefined",
                     "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
LINK_FLAGS = ["-pthread", "-lm"] + (["-fsanitize=address,undefined"] if SANITIZE else [])
if os.environ.get("RYZ_COVERAGE") == "1":
    COMMON_FLAGS += ([] if SANITIZE else ["-O1", "-g"]) + ["--coverage"]
    LINK_FLAGS += ["--coverage"]


def isa_flags(path):
    for suffix, flags in ISA_FLAGS.items():
        if path.endswith(suffix):
            return flags
    return []


class BuildPerISA(build_ext):
    """Compile each source with the flags of its ISA, then link them as one module."""

    def build_extension(self, ext):
        if sys.platform != "linux" or os.uname().machine not in ("x86_64", "AMD64"):
            raise RuntimeError("ryzjupyter._native builds on x86-64 Linux only")
        objects = []
        for src in ext.sources:
            objects += self.compiler.compile(
                [src], output_dir=self.build_temp, include_dirs=ext.include_dirs,
                extra_postargs=COMMON_FLAGS + isa_flags(src), depends=ext.depends)
        ext_path = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(ext_path), exist_ok=True)
        self.compiler.link_shared_object(
            objects, ext_path, libraries=self.get_libraries(ext),
            extra_postargs=LINK_FLAGS, export_symbols=self.get_export_symbols(ext),
            target_lang="c")


# ---- the JupyterLab sidebar: a prebuilt labextension installed as data files

LABEXT_BUILT = os.path.join("ryzjupyter", "labextension")      # output of `npm run build:prod`
LABEXT_DEST = "share/jupyter/labextensions/ryzjupyter"          # directory name = npm package name
INSTALLING = {"bdist_wheel", "editable_wheel", "install", "develop", "build", "build_py", "sdist"}


def labextension_data_files():
    if os.environ.get("RYZJUPYTER_SKIP_LABEXTENSION") == "1":
        return []
    # an sdist (PKG-INFO at its root) carries the built sidebar: use it as it is, never rebuild
    from_sdist = os.path.isfile(os.path.join(HERE, "PKG-INFO")) and \
        os.path.isfile(os.path.join(HERE, LABEXT_BUILT, "package.json"))
    if INSTALLING & set(sys.argv[1:]) and not from_sdist and os.path.isdir(os.path.join(HERE, "labextension", "src")):
        subprocess.run([sys.executable, os.path.join(HERE, "tools", "build_labextension.py")],
                       cwd=HERE, check=True)
    if not os.path.isfile(os.path.join(HERE, LABEXT_BUILT, "package.json")):
        if INSTALLING & set(sys.argv[1:]):
            raise SystemExit("the JupyterLab sidebar is not built and could not be built (it needs Node.js "
                             ">= 20.19 and npm): install them, or set RYZJUPYTER_SKIP_LABEXTENSION=1 to "
                             "install without the sidebar")
        return []                              # metadata-only commands (egg_info, build_ext ...)
    files = {LABEXT_DEST: [os.path.join("labextension", "install.json")]}
    for path in sorted(glob.glob(os.path.join(LABEXT_BUILT, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            rel = os.path.relpath(os.path.dirname(path), LABEXT_BUILT)
            files.setdefault(os.path.normpath(os.path.join(LABEXT_DEST, rel)), []).append(path)
    return sorted(files.items())


sources = sorted(glob.glob(os.path.join(NATIVE, "*.c")))
headers = sorted(glob.glob(os.path.join(NATIVE, "*.h")))

setup(
    ext_modules=[Extension("ryzjupyter._native", sources=sources, depends=headers,
                           include_dirs=[NATIVE])],
    cmdclass={"build_ext": BuildPerISA},
    data_files=labextension_data_files(),
)
