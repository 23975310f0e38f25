"""``python -m aavae.serving.serve -m models:/<name>/<version>``: the encoder over HTTP, with a bound on a request.

``mlflow models serve`` reads and parses a request's whole JSON before the model sees it, and
MLflow 3.17 has no limit on its size: one 4000 x 4000 image (251 MB of JSON) ran past the
server's 60 s timeout, answered 504, and grew the worker from 0.67 to 6.9 GB while the parse went
on (the parse holds about 25 times the JSON's size). The model's own limits
(``max_image_side``, ``max_batch_size``: :mod:`aavae.serving.mlflow_model`) refuse such a request only
after that parse.

This serves MLflow's very scoring app (the same routes, answers and refusals; the model loaded
as ``mlflow models serve --env-manager local`` loads it, ``MLFLOW_PYFUNC_INFERENCE_CONFIG``
included) behind one more check, made before a byte of the body is read: a request larger than
``--max-request-mb`` gets 413 with a message naming its size, the limit and what to do. A
request without a declared length is counted as it streams in and cut off at the limit.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

#: 64 MB of JSON: 512 images of 128 x 128 x 3 pixels written as integers fit; MLflow's parse of
#: it peaks near 1.6 GB.
DEFAULT_MAX_REQUEST_MB = 64.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLarge(Exception):
    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


class RequestSizeLimit:
    """ASGI middleware: refuse a request whose body exceeds ``max_bytes`` before reading it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared), declared=True)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(received)
            return message

        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except _TooLarge as too_large:
            if not started:
                await self._refuse(send, too_large.received, declared=False)

    async def _refuse(self, send: Send, size: int, declared: bool) -> None:
        limit_mb, size_mb = self.max_bytes / 2**20, size / 2**20
        what = f"{size_mb:,.1f} MB" if declared else f"more than {limit_mb:,.1f} MB (cut off)"
        body = json.dumps({
            "error_code": "REQUEST_TOO_LARGE",
            "message": (
                f"The request body is {what}, over this server's limit of {limit_mb:,.1f} MB "
                f"(--max-request-mb). Send fewer or smaller images per request: the model brings "
                f"every image to its training size, so downscale large ones before sending them."
            ),
        }).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def build_app(model_uri: str, max_request_mb: float = DEFAULT_MAX_REQUEST_MB) -> RequestSizeLimit:
    """MLflow's scoring app for ``model_uri`` behind :class:`RequestSizeLimit`."""
    from mlflow.pyfunc import scoring_server

    model = scoring_server.load_model_with_mlflow_config(model_uri)
    return RequestSizeLimit(scoring_server.init(model), int(max_request_mb * 2**20))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aavae.serving.serve", description=__doc__.splitlines()[0],
                                     add_help=False)
    parser.add_argument("-m", "--model-uri", required=True, help="e.g. models:/digits-aavae-encoder/1")
    parser.add_argument("-p", "--port", type=int, default=5001)
    parser.add_argument("-h", "--host", default="127.0.0.1")
    parser.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_MB,
                        help=f"refuse larger request bodies with 413 (default {DEFAULT_MAX_REQUEST_MB:g})")
    parser.add_argument("--help", action="help", help="show this help and exit")
    args = parser.parse_args(argv)
    if args.max_request_mb <= 0:
        parser.error("--max-request-mb must be positive")
    import uvicorn

    app = build_app(args.model_uri, args.max_request_mb)
    log.info("Serving %s on http://%s:%d (requests up to %.0f MB)", args.model_uri, args.host, args.port,
             args.max_request_mb)
    uvicorn.run(app, host=args.host, port=args.port, workers=1)


if __name__ == "__main__":
    main()
