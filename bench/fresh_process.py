"""One benchmark run in a process of its own, so that its wall time and peak RSS are that run's alone."""

from __future__ import annotations

import json
import subprocess
import sys


def run_one(module: str, *args: str) -> dict:
    """`python -m MODULE --one ARGS…` in a fresh process: the JSON dict it prints last, or the
    tail of its stderr under "error" when it fails."""
    run = subprocess.run([sys.executable, "-W", "ignore", "-m", module, "--one", *args], capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    return json.loads(lines[-1]) if run.returncode == 0 and lines else {"error": run.stderr[-1500:]}
