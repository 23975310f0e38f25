"""`python -m aavae.serving.serve`: the encoder over HTTP, answering as `mlflow models serve` does, with bounded work.

A real server process of the registered model (the digits project of conftest) answers what
`mlflow models serve` answers, refuses a body over `--max-request-mb` with 413 before reading it,
and answers every other bad request with a 4xx in one short line. The app in-process (with a
model that counts its calls) shows the bounds on work: a request past `--max-in-flight-mb` gets
503 at once, and the work of a client that has gone stops (its parse is killed; it is not
encoded). `benchmarks/serve_load.py`, run here at a toy size, checks memory and answers under a
burst of requests at the size limit.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator

import numpy as np
import pytest

from aavae.serving import contract, serve
from aavae.serving.contract import InputLimits
from aavae.serving.serve import EncoderServer
from benchmarks.model_server import (
    CountingModel,
    Server,
    asgi_post,
    free_port,
    parse_forever,
    started,
    tree_rss,
)
from tests.helpers.project import PROJECT_ROOT

pytestmark = pytest.mark.slow  # real servers, and parsing processes

MODEL_URI = "models:/digits-aavae-encoder/1"


@pytest.fixture(scope="module")
def bounded_server(digits_project, tmp_path_factory) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{digits_project / 'mlflow.db'}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    command = [sys.executable, "-m", "aavae.serving.serve", "-m", MODEL_URI, "-p", str(port), "--max-request-mb", "1"]
    with started(command, port, tmp_path_factory.mktemp("bounded") / "serve.log", env, digits_project) as served:
        yield served


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


def test_a_chunked_body_over_the_limit_is_cut_off_with_413(bounded_server):
    """It got 500: the size error was wrapped in an ExceptionGroup by MLflow's middleware."""
    address = urllib.parse.urlsplit(bounded_server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    chunks = [b'{"inputs": [', *[b"0, " * 2**14] * 32]  # 1.5 MB, no declared length
    connection.request("POST", "/invocations", body=iter(chunks), encode_chunked=True,
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()

    assert response.status == 413
    assert "is more than 1.0 MB (cut off), over this server's limit" in json.loads(response.read())["message"]
    assert bounded_server.post(np.zeros((1, 16, 16, 3), np.uint8).tolist())[0] == 200, "still serving"


PIXELS = np.arange(2 * 16 * 16 * 3).reshape(2, 16, 16, 3) % 256
BAD_REQUESTS = {  # what each got before: 500, 500, a 3,088-character 400 quoting the pixels, 200, "floats"
    "JSON nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "nested deeper than this server's parser reads"),
    "an integer of 5,000 digits": (b'{"inputs": ' + b"7" * 5000 + b"}", "Exceeds the limit (4300 digits)"),
    "a bad params value": ({"inputs": PIXELS.tolist(), "params": {"return_mu": "yes"}},
                           "params return_mu is a JSON string: send true or false"),
    "an unknown params key": ({"inputs": PIXELS.tolist(), "params": {"retrun_mu": True}},
                              "params has 'retrun_mu', which this model does not take"),
    "an empty image": ({"inputs": [[]]}, "got a list with shape (1, 0): 2 axes"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_400_in_one_short_line_that_does_not_quote_it(bounded_server, case):
    body, problem = BAD_REQUESTS[case]
    status, error = bounded_server.post_body(body if isinstance(body, bytes) else json.dumps(body).encode())

    assert status == 400, error
    assert problem in error["message"] and len(error["message"]) < 400 and "\n" not in error["message"]
    assert "float" not in error["message"] and "[[" not in error["message"] and "0, 1, 2" not in error["message"]


SMALL_LIMITS = InputLimits(max_image_side=64, max_batch_size=8)
BODY = json.dumps({"inputs": np.zeros((1, 16, 16, 3), int).tolist()}).encode()  # 3 kB


def test_a_request_past_the_in_flight_bound_gets_503_at_once_and_a_parse_whose_client_left_is_killed(
        monkeypatch):
    monkeypatch.setattr(contract, "parse_in_child", parse_forever)  # the first parse never ends
    model = CountingModel()
    server = EncoderServer(model, SMALL_LIMITS, max_request_bytes=4096, max_in_flight_bytes=4096)
    app = server.app()

    async def scenario() -> None:
        leave = asyncio.Event()
        first = asyncio.create_task(asgi_post(app, BODY, leave=leave))
        while server.in_flight_bytes == 0:  # admitted: its body counts
            await asyncio.sleep(0)
        try:
            status, headers, refused = await asyncio.wait_for(asgi_post(app, BODY), 30)
        finally:
            leave.set()

        assert status == 503 and headers["retry-after"] == "1"
        assert refused["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert refused["message"] == (f"The server is busy with {len(BODY) / 2**20:.3g} MB of requests, its "
                                      "limit (--max-in-flight-mb 0.00391): try again in a moment.")
        # The first client has gone: its parse is killed, or this waits for parse_forever's minute.
        assert (await asyncio.wait_for(first, 30))[0] == 499
        assert server.in_flight_bytes == 0 and model.calls == 0

    asyncio.run(scenario())
    monkeypatch.undo()
    status, _, answer = asyncio.run(asgi_post(app, BODY))
    assert status == 200 and np.array(answer["predictions"]).shape == (1, 2) and model.calls == 1


class LockThatSaysWhenWaitedFor(asyncio.Lock):
    def __init__(self) -> None:
        super().__init__()
        self.waited_for = asyncio.Event()

    async def acquire(self) -> bool:
        if self.locked():
            self.waited_for.set()
        return await super().acquire()


def test_a_request_whose_client_left_while_it_waited_for_the_encoder_is_not_encoded():
    model = CountingModel(hold=True)  # the first request holds the encoder until released
    server = EncoderServer(model, SMALL_LIMITS, 2**20, 2**20)
    server.encoding = LockThatSaysWhenWaitedFor()
    app = server.app()

    async def scenario() -> tuple[int, int]:
        first = asyncio.create_task(asgi_post(app, BODY))
        await asyncio.to_thread(model.started.wait, 60)
        leave, left = asyncio.Event(), asyncio.Event()
        second = asyncio.create_task(asgi_post(app, BODY, leave=leave, left=left))
        await asyncio.wait_for(server.encoding.waited_for.wait(), 60)  # parsed, waiting its turn
        leave.set()
        await asyncio.wait_for(left.wait(), 60)  # the app has been told the second client left
        model.release.set()
        return (await asyncio.wait_for(first, 60))[0], (await asyncio.wait_for(second, 60))[0]

    assert asyncio.run(scenario()) == (200, 499)
    assert model.calls == 1, "only the request whose client stayed was encoded"


def test_another_content_type_or_an_in_flight_bound_below_the_request_limit_is_refused(capsys):
    app = EncoderServer(CountingModel(), SMALL_LIMITS, 4096, 4096).app()
    status, _, refused = asyncio.run(asgi_post(app, b"a,b\n1,2", content_type=b"text/csv"))
    assert status == 415 and refused["message"].startswith("The request's content type is 'text/csv': send application/json")

    with pytest.raises(SystemExit):
        serve.main(["-m", "models:/m/1", "--max-request-mb", "64", "--max-in-flight-mb", "32"])
    assert "--max-in-flight-mb must be at least --max-request-mb (64)" in capsys.readouterr().err


def test_the_load_benchmark_runs_and_keeps_its_promises(digits_project, tmp_path):
    """`benchmarks/serve_load.py` at a toy size: a burst of requests at the size limit. The
    caller's MLFLOW_TRACKING_URI names another store: the model is found in the one its record names."""
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "benchmarks/serve_load.py"), "--root", "data/test", "--requests", "4",
         "--max-request-mb", "1", "--deadline-s", "120"],
        cwd=digits_project, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), str(PROJECT_ROOT)]),
             "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'another.db'}"})

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("peak_rss_mb: ") and " bound_mb: " in last and " statuses: " in last
    assert "200x" in last
