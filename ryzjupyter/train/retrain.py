"""Retrain both demo models at context 1024 with the in-context copy mix, in one command (hours of CPU: the model
card's "Retraining" section gives the expected time, from throughput_runs.json):

    apt-get install bible-kjv python3.11-doc jargon-text dict-devil
    python -m ryzjupyter.train.retrain --work /tmp/kjv --out-dir /tmp/retrained [--parallel] [--dry-run]

Runs, in order: the corpus with the copy sources (corpus.py), the tokenizer (tok.py, deterministic), `demo` and
`demo-draft` (train.py with PLAN's settings, one thread each; --parallel runs the two at once on two cores), then
the model card (card.py) in both new folders. It writes only under --out-dir and --work; copying the new folders
over ryzjupyter/models/ is a separate, deliberate step.

    python -m ryzjupyter.train.retrain --work /tmp/kjv --measure 20

measures instead the training throughput (CPU seconds per step, train.py's own record over N fixed steps of each
model with evaluation off) and writes it to throughput_runs.json, which the card uses for the expected time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
THROUGHPUT = os.path.join(HERE, "throughput_runs.json")
SOURCES = ["pydoc", "jargon", "devil"]
# Shared by both models: context 1024, 4 rows of 1025 tokens a step (the 4096 tokens a step of the 16 x 257 rows of
# the context-256 models), 30 % copy rows from the four sources, the sources' held-out documents excluded.
COMMON = ["--ctx", "1024", "--batch", "4", "--lr", "0.003", "--copy-frac", "0.3", "--eval-windows", "12",
          "--seed", "1234", "--threads", "1"]
PLAN = {
    "demo": ["--hidden", "256", "--layers", "4", "--heads", "4", "--kv-heads", "2", "--steps", "3000"],
    "demo-draft": ["--hidden", "128", "--layers", "3", "--heads", "2", "--kv-heads", "1", "--steps", "3000"],
}


def train_args(name: str, work: str, out: str | None) -> list[str]:
    args = ["--corpus", f"{work}/kjv-train.txt", "--valid", f"{work}/kjv-valid.txt",
            "--tokenizer", f"{work}/tokenizer.json"]
    if out:
        args += ["--out", out, "--log", f"{out}.log.jsonl"]
    return args + COMMON + ["--copy-sources", "kjv"] + [f"{work}/copy-{s}-train.txt" for s in SOURCES] + \
        ["--copy-exclude", f"{work}/copy-valid.txt"] + PLAN[name]


def commands(work: str, out_dir: str) -> dict[str, list[str]]:
    py = [sys.executable, "-m"]
    cmds = {"corpus": py + ["ryzjupyter.train.corpus", "--out-dir", work, "--sources", ",".join(SOURCES)],
            "tokenizer": py + ["ryzjupyter.train.tok", "--corpus", f"{work}/kjv-train.txt", "--vocab", "4096",
                               "--out", f"{work}/tokenizer.json"]}
    for name in PLAN:
        cmds[name] = py + ["ryzjupyter.train.train"] + train_args(name, work, f"{out_dir}/{name}")
    cmds["card"] = py + ["ryzjupyter.train.card", "--main", f"{out_dir}/demo", "--draft", f"{out_dir}/demo-draft"]
    return cmds


def shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote("python" if i == 0 and c == sys.executable else c) for i, c in enumerate(cmd))


def steps(name: str) -> int:
    return int(PLAN[name][PLAN[name].index("--steps") + 1])


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def measure(work: str, n_steps: int, tmp: str) -> list[dict]:
    """Run each model's training for n_steps fixed steps (evaluation off) and keep train.py's own timing."""
    rows = []
    for name in PLAN:
        out = os.path.join(tmp, name)
        args = [a for a in train_args(name, work, out)]
        i = args.index("--steps")
        args[i + 1] = str(n_steps)
        load0 = os.getloadavg()
        subprocess.run([sys.executable, "-m", "ryzjupyter.train.train"] + args + ["--eval-every", "0"], check=True)
        r = json.load(open(os.path.join(out, "validation_ppl.json")))
        cpu_s = r["train_cpu_minutes"] * 60
        rows.append({"model": name, "steps": r["steps"], "train_cpu_s": cpu_s, "cpu_s_per_step": cpu_s / r["steps"],
                     "train_wall_s": r["train_wall_minutes"] * 60, "tokens_per_cpu_s": r["tokens_seen"] / cpu_s,
                     "params": r["params"]["total"], "ctx": r["n_ctx"], "batch": r["args"]["batch"],
                     "copy_frac": r["args"]["copy_frac"], "threads": r["threads"], "cpu": cpu_model(),
                     "date": time.strftime("%Y-%m-%d", time.gmtime()),
                     "load_average_before_after": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
                     "command": f"python -m ryzjupyter.train.retrain --work {work} --measure {n_steps}"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/kjv", help="corpus and tokenizer folder (default /tmp/kjv)")
    ap.add_argument("--out-dir", default="/tmp/retrained", help="the new model folders go here")
    ap.add_argument("--parallel", action="store_true", help="train the two models at once (two cores)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--measure", type=int, default=0, metavar="STEPS",
                    help="only measure CPU seconds per step over STEPS steps and write throughput_runs.json")
    a = ap.parse_args(argv)
    shipped = os.path.realpath(os.path.join(HERE, "..", "models"))
    if os.path.realpath(a.out_dir).startswith(shipped):
        raise SystemExit(f"--out-dir {a.out_dir} is the shipped models' folder: train elsewhere, then copy")
    cmds = commands(a.work, a.out_dir)
    if a.dry_run:
        for c in cmds.values():
            print(shell(c))
        return 0
    os.makedirs(a.work, exist_ok=True)
    if not os.path.isfile(os.path.join(a.work, "copy-valid.txt")):
        subprocess.run(cmds["corpus"], check=True)
    if not os.path.isfile(os.path.join(a.work, "tokenizer.json")):
        subprocess.run(cmds["tokenizer"], check=True)
    if a.measure:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            rows = measure(a.work, a.measure, tmp)
        with open(THROUGHPUT, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
        print("wrote", THROUGHPUT)
        return 0
    os.makedirs(a.out_dir, exist_ok=True)
    if a.parallel:
        procs = [subprocess.Popen(cmds[name]) for name in PLAN]
        if any(p.wait() for p in procs):
            raise SystemExit("a training run failed")
    else:
        for name in PLAN:
            subprocess.run(cmds[name], check=True)
    subprocess.run(cmds["card"], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
