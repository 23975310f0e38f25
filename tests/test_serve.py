"""`python -m aavae.serving.serve`: MLflow's scoring app for the encoder, with a bound on a request's size.

A real server process of the registered model (the digits project of conftest) answers what
`mlflow models serve` answers, and refuses a body over `--max-request-mb` with 413 before
reading it: the server's memory does not grow with the request (MLflow's own parse of a JSON
body takes about 25 times its size).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from aavae.serving.serve import RequestSizeLimit
from tests.helpers.serving import Server, free_port, tree_rss, wait_until_serving

MODEL_URI = "models:/digits-aavae-encoder/1"


@pytest.fixture(scope="module")
def bounded_server(digits_project, tmp_path_factory) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{digits_project / 'mlflow.db'}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    log_path = tmp_path_factory.mktemp("bounded") / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "aavae.serving.serve", "-m", MODEL_URI, "-p", str(port), "--max-request-mb", "1"],
            cwd=digits_project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    served = Server(f"http://127.0.0.1:{port}", process.pid, log_path)
    try:
        wait_until_serving(served, process)
        yield served
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_it_answers_as_mlflow_models_serve_does(bounded_server, digits_project):
    from aavae.data.imageset import load_imageset

    images = np.asarray(load_imageset(digits_project / "data/test/03_primary/images_test").images[:4])
    with np.load(digits_project / "data/test/04_feature/features_test.npz") as archive:
        expected = archive["features"][:4]

    status, answer = bounded_server.post(images.tolist())
    refused_status, refused = bounded_server.post((images / 255).tolist())

    assert status == 200
    np.testing.assert_allclose(np.array(answer["predictions"]), expected, rtol=1e-4, atol=1e-5)
    assert refused_status == 400 and "floats" in refused["message"], "the model's own refusals pass through"


def _post_expecting_continue(url: str, body: bytes) -> tuple[int, bytes]:
    """POST as curl does a large body: headers with ``Expect: 100-continue``, then the body only
    if the server asks for it. A server that refuses on the headers answers without reading a
    byte (sending the body anyway races the server's close: a reset, or a broken pipe)."""
    address = urllib.parse.urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=60) as connection:
        connection.sendall((f"POST {address.path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
                            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                            "Expect: 100-continue\r\n\r\n").encode())
        response = http.client.HTTPResponse(connection)
        response.begin()
        if response.status == 100:
            raise AssertionError("the server asked for the body of an oversize request")
        return response.status, response.read()


def test_a_body_over_the_limit_is_refused_unread_and_costs_no_memory(bounded_server):
    body = json.dumps({"inputs": np.zeros((1, 400, 400, 3), np.uint8).tolist()}).encode()  # ~1.9 MB
    before = tree_rss(bounded_server.pid)
    status, answer = _post_expecting_continue(f"{bounded_server.url}/invocations", body)
    after = tree_rss(bounded_server.pid)

    assert status == 413
    message = json.loads(answer)["message"]
    assert f"{len(body) / 2**20:,.1f} MB, over this server's limit of 1.0 MB (--max-request-mb)" in message
    assert after - before < 16 * 2**20, f"RSS grew {(after - before) / 2**20:.0f} MB"
    assert bounded_server.post(np.zeros((1, 16, 16, 3), np.uint8).tolist())[0] == 200, "still serving"


def _call(chunks: list[bytes], headers: list) -> tuple[list[dict], bool]:
    """Drive the middleware (limit: 100 bytes) as a server would: the messages it sent, and
    whether the app behind it finished."""
    sent, finished = [], []

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        finished.append(True)

    messages = [{"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
                for index, chunk in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(RequestSizeLimit(app, 100)({"type": "http", "headers": headers}, receive, send))
    return sent, bool(finished)


def test_a_streamed_body_without_a_length_is_cut_off_at_the_limit():
    sent, finished = _call([b"x" * 60, b"x" * 60], headers=[])
    assert not finished and sent[0]["status"] == 413
    assert b"more than 0.0 MB (cut off)" in sent[1]["body"]
    sent, finished = _call([b"x" * 40, b"x" * 40], headers=[(b"content-length", b"80")])
    assert finished and sent[0]["status"] == 200, "under the limit: the app answers"
    sent, finished = _call([b"x" * 200], headers=[(b"content-length", b"200")])
    assert not finished and sent[0]["status"] == 413, "a declared length over the limit: refused unread"
