"""A model server started by a benchmark or a test, and what it costs: shared by
benchmarks/serve_load.py and the serving tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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
        return self.post_body(json.dumps(payload).encode())

    def post_body(self, body: bytes) -> tuple[int, dict]:
        """POST these bytes as JSON to /invocations: the status and the JSON answer or error."""
        request = urllib.request.Request(f"{self.url}/invocations", body, {"Content-Type": "application/json"})
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


# -- the app in-process: an ASGI client, a model that waits, a parse that never ends -------------

async def asgi_post(app, body: bytes, leave: asyncio.Event | None = None, left: asyncio.Event | None = None,
                    content_type: bytes = b"application/json") -> tuple[int, dict[str, str], dict]:
    """POST ``body`` to ``app``'s /invocations as a server would: the status, headers and JSON
    answer. The client stays until ``leave`` is set (never, without it), then disconnects;
    ``left`` is set when the app has been told so."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await (leave or asyncio.Event()).wait()
        if left is not None:
            left.set()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/invocations", "raw_path": b"/invocations", "root_path": "",
             "query_string": b"", "server": ("127.0.0.1", 5001), "client": ("127.0.0.1", 50000),
             "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]}
    await app(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    answer = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    headers = {key.decode(): value.decode() for key, value in start["headers"]}
    return start["status"], headers, json.loads(answer) if answer else {}


class CountingModel:
    """Stands in for the loaded model: counts its calls; with ``hold``, each call waits for
    ``release`` after setting ``started``."""

    def __init__(self, hold: bool = False) -> None:
        self.calls, self.hold = 0, hold
        self.started, self.release = threading.Event(), threading.Event()

    def predict(self, images: np.ndarray, params: dict | None = None) -> np.ndarray:
        self.calls += 1
        self.started.set()
        if self.hold and not self.release.wait(timeout=120):
            raise TimeoutError("the test never released the model")
        return np.zeros((len(images), 2), np.float32)


def parse_forever(connection, limits) -> None:
    """A parsing process that takes the body and does not answer: a slow parse, to the server.
    It gives up after a minute, so that a test whose server never kills it fails, not hangs."""
    connection.recv_bytes()
    threading.Event().wait(60)


@contextmanager
def started(command: list[str], port: int, log_path: Path, env: dict[str, str],
            cwd: Path | None = None) -> Iterator[Server]:
    """Run a server command in a process group of its own (what it execs stops with it), its
    output in ``log_path``; yield it once it answers /ping; stop the whole group on leaving."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process.pid, log_path)
    try:
        wait_until_serving(server, process)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
