"""``python -m aavae.serving.serve -m models:/<name>/<version>``: the encoder over HTTP, with bounded work.

It answers MLflow's JSON scoring protocol and loads the model as ``mlflow models serve`` does
(``MLFLOW_PYFUNC_INFERENCE_CONFIG`` included), but bounds what requests cost, which MLflow 3.17
does not (three 60 MB requests took its server from 0.8 to 5.4 GB for minutes). Each body is
parsed in a child process, because Python's JSON parser holds the GIL for the whole parse and
makes a list per pixel (up to 36 times the body's size): the server answers others meanwhile,
the memory goes back to the system when the child ends, and the child is killed when its client
goes away. docs/serving.md lists every answer. Starlette is imported only where it is used: the
parsing processes run this module again and stay small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any

from aavae.serving import contract
from aavae.serving.contract import InputLimits, RequestError, ScoringRequest

log = logging.getLogger(__name__)

#: 64 MB of JSON: 512 images of 128 x 128 x 3 pixels written as integers fit.
DEFAULT_MAX_REQUEST_MB = 64.0
SECONDS_BEFORE_RETRY = 1


class ClientGone(Exception):
    """The client closed its connection: its work is dropped and nothing is answered."""


class EncoderServer:
    """``/invocations`` for a loaded encoder model (anything with MLflow's ``predict(images,
    params=...)``): admission, a bounded read, the parse in a child process, one encoding at a time."""

    def __init__(self, model: Any, limits: InputLimits, max_request_bytes: int, max_in_flight_bytes: int) -> None:
        self.model, self.limits = model, limits
        self.max_request_bytes, self.max_in_flight_bytes = max_request_bytes, max_in_flight_bytes
        self.in_flight_bytes = 0  # changed only on the event loop: no lock
        self.encoding = asyncio.Lock()
        self.processes = start_parsing_processes()

    def app(self) -> Any:
        """The Starlette app of MLflow's routes."""
        from mlflow.version import VERSION
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        async def ping(request: Any) -> Response:
            return Response("\n", media_type="application/json")

        async def version(request: Any) -> Response:
            return Response(VERSION, media_type="application/json")

        return Starlette(routes=[Route("/invocations", self.invocations, methods=["POST"]),
                                 Route("/ping", ping), Route("/health", ping), Route("/version", version)])

    async def invocations(self, request: Any) -> Any:
        from starlette.requests import ClientDisconnect
        from starlette.responses import Response

        mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if mime != "application/json":
            return _refusal(RequestError(f"The request's content type is {mime[:40] or 'missing'!r}: send "
                                         f"application/json, {contract.EXAMPLE}.", 415))
        declared = request.headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else None
        if size is not None and size > self.max_request_bytes:
            return _refusal(self._too_large(size))
        weight = self.max_request_bytes if size is None else size
        admitted = self.in_flight_bytes + weight <= self.max_in_flight_bytes
        self.in_flight_bytes += weight if admitted else 0
        try:
            received, body = await self._read(request, keep=admitted)
            if received > self.max_request_bytes:
                return _refusal(self._too_large(received, cut_off=True))
            if not admitted:
                return _refusal(RequestError(
                    f"The server is busy with {self.in_flight_bytes / 2**20:.3g} MB of requests, its limit "
                    f"(--max-in-flight-mb {self.max_in_flight_bytes / 2**20:.3g}): try again in a moment.",
                    503, "TEMPORARILY_UNAVAILABLE"), {"Retry-After": str(SECONDS_BEFORE_RETRY)})
            predictions = await self._answer(request, body)
        except RequestError as error:
            return _refusal(error)
        except (ClientGone, ClientDisconnect):
            log.info("A client left before its answer: its request was dropped")
            return Response(status_code=499)  # nobody reads it
        finally:
            self.in_flight_bytes -= weight if admitted else 0
        if isinstance(predictions, dict):
            predictions = {key: value.tolist() for key, value in predictions.items()}
        else:
            predictions = predictions.tolist()
        return Response(json.dumps({"predictions": predictions}), media_type="application/json")

    async def _read(self, request: Any, keep: bool) -> tuple[int, bytes]:
        """The body's size and, if ``keep`` and within the limit, the body. Past the limit it is
        read and dropped up to twice the limit (so the client hears the refusal), then left unread."""
        chunks, received = [], 0
        async for chunk in request.stream():
            received += len(chunk)
            if keep and received <= self.max_request_bytes:
                chunks.append(chunk)
            if received > 2 * self.max_request_bytes:
                break
        return received, b"".join(chunks)

    async def _answer(self, request: Any, body: bytes) -> Any:
        """The model's predictions for a request, unless its client leaves first."""
        gone = asyncio.Event()
        watcher = asyncio.create_task(_set_on_disconnect(request, gone))
        try:
            parsed = await self._parse(body, gone)
            async with self.encoding:
                if gone.is_set():
                    raise ClientGone
                params = {contract.RETURN_MU: True} if parsed.return_mu else None
                return await asyncio.to_thread(self.model.predict, parsed.images, params=params)
        finally:
            watcher.cancel()

    async def _parse(self, body: bytes, gone: asyncio.Event) -> ScoringRequest:
        """The request parsed in a child process, which is killed if the client goes."""
        ours, theirs = self.processes.Pipe()
        child = self.processes.Process(target=contract.parse_in_child, args=(theirs, self.limits), daemon=True)
        child.start()
        theirs.close()
        killer = asyncio.create_task(_call_when_set(gone, child.kill))
        try:
            result = await asyncio.to_thread(_exchange, ours, body)
        except (EOFError, OSError):  # the child ended without an answer
            if gone.is_set():
                raise ClientGone from None
            raise RuntimeError(f"The process parsing a request ended with exit code {child.exitcode}") from None
        finally:
            killer.cancel()
            ours.close()
            await asyncio.to_thread(child.join)
        if isinstance(result, RequestError):
            raise result
        return result

    def _too_large(self, size: int, cut_off: bool = False) -> RequestError:
        limit_mb = self.max_request_bytes / 2**20
        what = f"more than {limit_mb:,.1f} MB (cut off)" if cut_off else f"{size / 2**20:,.1f} MB"
        return RequestError(
            f"The request body is {what}, over this server's limit of {limit_mb:,.1f} MB "
            "(--max-request-mb). Send fewer or smaller images per request: the model brings every "
            "image to its training size, so downscale large ones before sending them.",
            413, "REQUEST_TOO_LARGE")


def _refusal(error: RequestError, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import Response

    body = json.dumps({"error_code": error.code, "message": str(error)})
    return Response(body, error.status, headers, media_type="application/json")


def _exchange(connection: Connection, body: bytes) -> ScoringRequest | RequestError:
    connection.send_bytes(body)
    return connection.recv()


async def _set_on_disconnect(request: Any, gone: asyncio.Event) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _call_when_set(event: asyncio.Event, action: Any) -> None:
    await event.wait()
    action()


def start_parsing_processes() -> multiprocessing.context.ForkServerContext:
    """The fork server the parsing processes start from, with this module imported; started before
    a model is loaded, which puts the model's own copy of the package (maybe without
    :mod:`.contract`) first on ``sys.path``."""
    processes = multiprocessing.get_context("forkserver")
    processes.set_forkserver_preload([__spec__.name])
    forkserver.ensure_running()
    return processes


def build_app(model_uri: str, max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
              max_in_flight_mb: float | None = None) -> Any:
    """The app serving ``model_uri``, an encoder this project logged, within these bounds."""
    from mlflow.pyfunc import scoring_server

    start_parsing_processes()
    model = scoring_server.load_model_with_mlflow_config(model_uri)
    limits = getattr(model.unwrap_python_model(), "limits", None)
    if not isinstance(limits, InputLimits):
        raise SystemExit(f"{model_uri} is not an encoder model of this project (it has no input "
                         "limits): serve it with `mlflow models serve`.")
    max_request = int(max_request_mb * 2**20)
    max_in_flight = int(max_in_flight_mb * 2**20) if max_in_flight_mb else max_request
    return EncoderServer(model, limits, max_request, max_in_flight).app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aavae.serving.serve", description=__doc__.splitlines()[0],
                                     add_help=False)
    parser.add_argument("-m", "--model-uri", required=True, help="e.g. models:/digits-aavae-encoder/1")
    parser.add_argument("-p", "--port", type=int, default=5001)
    parser.add_argument("-h", "--host", default="127.0.0.1")
    parser.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_MB,
                        help=f"refuse larger request bodies with 413 (default {DEFAULT_MAX_REQUEST_MB:g})")
    parser.add_argument("--max-in-flight-mb", type=float, default=None,
                        help="answer 503 to a request that would take the bodies being read, parsed or "
                             "encoded past this (default: --max-request-mb, one request at the limit)")
    parser.add_argument("--help", action="help", help="show this help and exit")
    args = parser.parse_args(argv)
    if args.max_request_mb <= 0:
        parser.error("--max-request-mb must be positive")
    if args.max_in_flight_mb is not None and args.max_in_flight_mb < args.max_request_mb:
        parser.error(f"--max-in-flight-mb must be at least --max-request-mb ({args.max_request_mb:g}), "
                     "or a request at the size limit is never admitted")
    import uvicorn

    app = build_app(args.model_uri, args.max_request_mb, args.max_in_flight_mb)
    log.info("Serving %s on http://%s:%d (requests up to %g MB)", args.model_uri, args.host, args.port,
             args.max_request_mb)
    uvicorn.run(app, host=args.host, port=args.port, workers=1)


if __name__ == "__main__":
    main()
