"""Run the fuzz harnesses, each in a process of its own, for a bounded time from the committed seed
corpus: `python -m tests.fuzz.run [NAME ...] [--seconds S] [--save]`.

Each harness starts from tests/fuzz/corpus/NAME/ (the seeds, and every input that ever crashed it:
the regression cases); inputs the fuzzer finds go to a temporary folder, never into the committed
corpus. A harness passes when its process ends cleanly at the time limit. Anything else is a
failure reported with its input (kept in $RYZ_FUZZ_FINDINGS, default /tmp/ryz-fuzz-findings/NAME/): an exception the surface does not allow (a Finding, a KeyError...),
a segfault or abort in native code (libFuzzer catches the signal and saves the input), an input that
runs past the per-input time limit, or a process that grows past the memory limit. --save copies the
failing inputs into the corpus as regression cases (fix the bug, then commit them).

RYZ_FUZZ_SECONDS sets the time per harness (default 10: every harness together stays under three
minutes of CI), RYZ_FUZZ_INPUT_TIMEOUT the per-input limit (default 10 s), RYZ_FUZZ_RSS_MB the
memory limit (default 2048)."""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
HARNESSES = ("safetensors", "checkpoint_config", "tokenizer_files", "chat_template", "magic_options",
             "comm_messages", "native_args")
DEFAULT_SECONDS = 10
ARTIFACT_KINDS = ("crash", "timeout", "oom", "leak")
FINDINGS = Path(os.environ.get("RYZ_FUZZ_FINDINGS", Path(tempfile.gettempdir()) / "ryz-fuzz-findings"))


@dataclass
class Result:
    name: str
    ok: bool
    returncode: int
    executions: int = 0
    findings: list = field(default_factory=list)     # (kind, path, input bytes)
    output: str = ""

    def report(self) -> str:
        if self.ok:
            return f"{self.name}: ok ({self.executions} inputs)"
        lines = [f"{self.name}: FAILED (exit status {self.returncode}"
                 f"{_signal_name(self.returncode)})"]
        for kind, path, data in self.findings:
            where = f"kept as {path}"
            lines.append(f"  {kind} input ({len(data)} bytes, {where}): {data[:400]!r}")
        if not self.findings:
            lines.append("  no input was saved: the process ended before libFuzzer could write it")
        lines.append("  --- the fuzzer's output, last lines ---")
        out = self.output.splitlines()
        start = next((i for i, s in enumerate(out) if "=== " in s or "ERROR: libFuzzer" in s), max(0, len(out) - 40))
        lines += ["  " + s for s in out[start:start + 30] if "WARNING: Failed to find function" not in s]
        return "\n".join(lines)


def _signal_name(rc):
    if rc < 0:
        try:
            return f", killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f", killed by signal {-rc}"
    return ""


def _executions(output: str) -> int:
    for line in reversed(output.splitlines()):
        if "stat::number_of_executed_units:" in line:
            return int(line.split(":")[-1])
    return 0


def run_harness(name: str, seconds: float | None = None, *, save=False, extra_seeds=()) -> Result:
    """Fuzz one harness for `seconds` from its corpus (and `extra_seeds`, more folders); returns
    the outcome with every failing input."""
    seconds = float(seconds if seconds is not None else os.environ.get("RYZ_FUZZ_SECONDS", DEFAULT_SECONDS))
    input_timeout = int(os.environ.get("RYZ_FUZZ_INPUT_TIMEOUT", 10))
    # libFuzzer reads the peak RSS from getrusage(), which Linux carries over fork and exec: a child
    # of a big process (pytest after many model loads) starts with its parent's peak. The limit is
    # counted on top of that.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    rss_mb = int(os.environ.get("RYZ_FUZZ_RSS_MB", 2048)) + inherited_mb
    seeds = CORPUS / name
    if not seeds.is_dir() or not any(seeds.iterdir()):
        raise FileNotFoundError(f"no seed corpus for harness {name!r}: add inputs to {seeds}")
    with tempfile.TemporaryDirectory(prefix=f"ryz-fuzz-{name}-") as tmp:
        found, artifacts = Path(tmp, "found"), Path(tmp, "artifacts")
        found.mkdir()
        artifacts.mkdir()
        cmd = [sys.executable, "-m", "tests.fuzz.driver", name,
               f"-max_total_time={max(1, int(seconds))}", f"-timeout={input_timeout}",
               f"-rss_limit_mb={rss_mb}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
               "-max_len=65536", str(found), str(seeds), *map(str, extra_seeds)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "HF_HUB_OFFLINE": "1", "RYZ_CACHE_DIR": str(Path(tmp, "converted"))}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, errors="replace", timeout=seconds + 120 + 2 * input_timeout)
            rc, output = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as e:
            rc = -signal.SIGKILL
            output = ((e.stdout or b"").decode("utf-8", "replace")
                      + "\n(the harness did not stop at its time limit: killed)")
        findings = []
        for path in sorted(artifacts.iterdir()):
            kind = path.name.split("-", 1)[0]
            if kind in ARTIFACT_KINDS:
                data = path.read_bytes()
                keep = seeds if save else FINDINGS / name
                keep.mkdir(parents=True, exist_ok=True)
                kept = keep / f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}"
                shutil.copyfile(path, kept)
                findings.append((kind, str(kept), data))
        ok = rc == 0 and not findings
        return Result(name, ok, rc, _executions(output), findings, output)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"harnesses (default: all of {', '.join(HARNESSES)})")
    p.add_argument("--seconds", type=float, default=None, help="time per harness (RYZ_FUZZ_SECONDS)")
    p.add_argument("--save", action="store_true", help="copy failing inputs into the corpus")
    a = p.parse_args(argv)
    unknown = [n for n in a.names if n not in HARNESSES and not (Path(__file__).parent / "harnesses" / f"{n}.py").is_file()]
    if unknown:
        p.error(f"unknown harness(es) {', '.join(unknown)}; known: {', '.join(HARNESSES)}")
    failed = 0
    for name in a.names or HARNESSES:
        r = run_harness(name, a.seconds, save=a.save)
        print(r.report(), flush=True)
        failed += not r.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
