"""Read torch files in a process whose address space may grow 1 GiB past its start, and say how
each read ended, one JSON line per file: ``{"error": null}`` or the error's type and message.

``python -m tests.helpers.bounded_read load_weights|read_checkpoint PATH...``: a file that makes
the reader allocate more than the limit ends in an allocation error, not in the machine's
memory; one that crashes the interpreter ends the process with a signal, which its caller sees.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

from aavae.common.weights import load_weights
from aavae.models import read_checkpoint

GROWTH_LIMIT = 1024**3
READERS = {"load_weights": load_weights, "read_checkpoint": read_checkpoint}


def read_bounded(reader: str, paths: list[Path], timeout: int = 300) -> list[dict]:
    """Run this module on ``paths``; the outcomes, after checking the process ended by itself."""
    result = subprocess.run([sys.executable, "-m", "tests.helpers.bounded_read", reader, *map(str, paths)],
                            capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, f"the reading process ended with {result.returncode}: {result.stderr[-3000:]}"
    outcomes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(outcomes) == len(paths), result.stdout + result.stderr[-3000:]
    return outcomes


def main() -> None:
    reader = READERS[sys.argv[1]]
    with open("/proc/self/status") as status:
        start = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (start + GROWTH_LIMIT, start + GROWTH_LIMIT))
    for path in sys.argv[2:]:
        try:
            reader(path)
            outcome = {"error": None, "message": ""}
        except Exception as error:  # noqa: BLE001 - the outcome is what is under test
            outcome = {"error": type(error).__name__, "message": str(error)}
        print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
