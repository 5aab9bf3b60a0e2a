"""The dependency rule (.importlinter) holds, and the contracts catch a wrong import.

`lint-imports` runs on the package as it is (every contract kept), then on a copy of the
package in which one engine module imports a surface, one a feature, and the engine imports
IPython: each must break its contract.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("importlinter", reason="import-linter is in the test extras")
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()"], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_tree_keeps_every_contract():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("engine/sampling.py", "import ryzjupyter.jupyter.magics", "Layers"),
    ("engine/kv_cache.py", "from ryzjupyter.manager import MANAGER", "Layers"),
    ("decoding/generation.py", "from ryzjupyter.families import loading", "Layers"),
    ("families/bitnet.py", "import IPython", "Engine runs outside any kernel"),
    ("decoding/generation.py", "import ryzjupyter.bench.model", "Tools"),
    ("engine/profiling.py", "from ryzjupyter.engine import ternary", "cycles"),
    ("serve/app.py", "import ryzjupyter.jupyter.magics", "Layers"),
    ("serve/backend.py", "import ipykernel", "Engine runs outside any kernel"),
    ("decoding/batching.py", "from ryzjupyter.serve import protocol", "Layers"),
    ("distributed.py", "import ryzjupyter.jupyter.magics", "Layers"),
    ("distributed.py", "from ryzjupyter.serve import app", "Layers"),
    ("serve/backend.py", "import ryzjupyter.distributed", "Layers"),
    ("manager.py", "import ryzjupyter.distributed", "Layers"),
    ("distributed.py", "from ryzjupyter.bench import ppl", "Tools"),
])
def test_a_planted_wrong_import_breaks_its_contract(tmp_path, module, line, contract):
    shutil.copytree(ROOT / "ryzjupyter", tmp_path / "ryzjupyter",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "labextension", "models", "_native"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    (tmp_path / "ryzjupyter" / "models").mkdir()
    (tmp_path / "ryzjupyter" / "models" / "__init__.py").write_text("")
    target = tmp_path / "ryzjupyter" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    r = _lint(tmp_path)
    assert r.returncode != 0, r.stdout
    broken = [ln for ln in r.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), r.stdout


def _layer_modules():
    pkg = ROOT / "ryzjupyter"
    for sub in ("engine", "decoding", "families", "jupyter", "serve"):
        for f in sorted((pkg / sub).rglob("*.py")):
            if f.name != "__init__.py":
                yield f.relative_to(pkg)
    yield Path("manager.py")
    yield Path("distributed.py")


def test_architecture_map_and_the_tree_agree():
    """docs/architecture.md's map names every module of the layers, and every module or folder
    its map names exists."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    tree = doc.split("```", 2)[1]
    missing = [str(m) for m in _layer_modules() if m.name not in tree]
    assert not missing, f"docs/architecture.md's map does not name: {missing}"
    import re
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", tree))
    existing = {f.name for f in (ROOT / "ryzjupyter").rglob("*.py")}
    assert named <= existing, f"the map names modules that do not exist: {sorted(named - existing)}"
    for folder in re.findall(r"\b([a-z_]+)/ ", tree):
        assert any(p.is_dir() for p in (ROOT / "ryzjupyter").rglob(folder)), folder
