"""`python -m ryzjupyter.selfcheck` (named in the README) runs and reports the selected ISA."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_selfcheck_runs_and_reports():
    r = subprocess.run([sys.executable, "-m", "ryzjupyter.selfcheck"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-2000:]
    start = r.stdout.index("{")
    info = json.loads(r.stdout[start:r.stdout.index("\n}", start) + 2])
    assert info["isa"] in info["supported_isas"]
    assert f"quantize_rows_i8 [{info['isa']}] matches numpy: True" in r.stdout
    assert "ternary GEMV" in r.stdout or "GEMV" in r.stdout
