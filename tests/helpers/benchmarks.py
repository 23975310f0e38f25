"""Run a benchmark script as a user would, for the smoke tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.project import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "benchmarks" / "pretrain_throughput.py"


def run_benchmark(*flags: str, script: Path = SCRIPT, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    return subprocess.run(
        [sys.executable, str(script), *flags],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
