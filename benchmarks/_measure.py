"""Run a command as a child process and measure it: wall time and the child's own peak RSS; read what it wrote."""

import csv
import os
import subprocess
import sys
import time
from pathlib import Path


def machine() -> str:
    from petal.training.precision import cpu_flags

    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    features = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    return f"{os.cpu_count()} cores, {cpu}, {'+'.join(features) or 'no AVX2'}, Python {sys.version.split()[0]}"


def run_measured(command: list[str], log_path: Path) -> dict:
    """Run `command` with output to `log_path`; return exit code, wall seconds and peak RSS in MB."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    return {"returncode": os.waitstatus_to_exitcode(status), "wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def read_history(path: Path) -> list[dict]:
    """A run folder's history.csv as a list of rows of floats; [] when the run wrote none."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
