"""A model server started by a test, and what it costs: shared by the serving tests."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)
        pending.extend(children.get(current, []))
    return total


@dataclass
class Server:
    """A running model server (`mlflow models serve`, `python -m aavae.serving.serve`)."""

    url: str
    pid: int
    log: Path

    def post(self, inputs: object, params: dict | None = None) -> tuple[int, dict]:
        """POST {"inputs": ...} to /invocations: the status and the JSON answer or error."""
        payload = {"inputs": inputs, **({"params": params} if params else {})}
        request = urllib.request.Request(f"{self.url}/invocations", json.dumps(payload).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            try:
                return error.code, json.loads(body)
            except json.JSONDecodeError:  # e.g. the 504 of MLflow's request timeout, plain text
                return error.code, {"message": body}


def wait_until_serving(server: Server, process: subprocess.Popen, timeout: float = 180) -> None:
    """Return once ``server`` answers /ping; fail, showing its log, if it exits or never does."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the server exited:\n{server.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer on {server.url}/ping:\n{server.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
