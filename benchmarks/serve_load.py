"""Load test of `python -m aavae.serving.serve`: a burst of concurrent requests at the size limit.

Starts the server on 127.0.0.1 (a free port) for a registered encoder, sends ``--requests``
requests at once, each a body just under ``--max-request-mb`` of grey 256 x 256 images of zeros
(the JSON whose parse takes the most memory per byte: a list per pixel), samples the resident
memory of the server and all its processes every 50 ms, and checks what docs/serving.md promises:

* every request is answered 200, 413, 429 or 503, each within ``--deadline-s`` (default 120);
* at least one is answered 200 (the server is not only refusing);
* the peak resident memory stays under the idle server's (after one small request) plus
  ``RSS_PER_IN_FLIGHT_BYTE`` times ``--max-in-flight-mb`` plus ``PARSER_MB`` (a parsing process's
  own interpreter).

The model is the project's registered encoder (``<root>/06_models/registered_model.json``, with
``--root`` the environment's artifact root, ``data`` for base and ``data/<env>`` otherwise, under
the current folder: run it from the project root after ``kedro run --pipeline pretrain``; the
record names the MLflow store that holds the model), or ``--model-uri`` (in the store of
``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``). Its size does not matter: the requests'
parse does.

    python benchmarks/serve_load.py [--root data] [--requests 8] [--max-request-mb 64] [--max-in-flight-mb 64]

Output: one line per request (status, seconds), idle and peak memory, and as the last line exactly
``peak_rss_mb: <peak> bound_mb: <bound> slowest_s: <seconds> statuses: 200x1,503x7``. Exit 1 if a
promise is broken.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.model_server import free_port, started, tree_rss  # noqa: E402 - one owner

RSS_PER_IN_FLIGHT_BYTE = 40  # grey images of zeros parse at about 36 times their JSON's size
PARSER_MB = 100
ANSWERS = {200, 413, 429, 503}
SIDE = 256


def grey_zeros_body(max_bytes: int) -> tuple[bytes, int]:
    """The largest body of whole SIDE x SIDE grey images of zeros under ``max_bytes``, and its image count."""
    row = b"[" + b",".join([b"[0]"] * SIDE) + b"]"
    image = b"[" + b",".join([row] * SIDE) + b"]"
    count = max(1, (max_bytes - 64) // (len(image) + 1))
    return b'{"inputs": [' + b",".join([image] * count) + b"]}", count


def post(port: int, body: bytes, deadline: float) -> tuple[int | str, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=deadline)
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except OSError as error:  # a reset, a timeout: not an answer
        return type(error).__name__, time.perf_counter() - started
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data"),
                        help="the environment's artifact root: data (base) or data/<env>")
    parser.add_argument("--model-uri", help="default: <root>/06_models/registered_model.json's")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-request-mb", type=float, default=64.0)
    parser.add_argument("--max-in-flight-mb", type=float, default=None, help="default: --max-request-mb")
    parser.add_argument("--deadline-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    in_flight_mb = args.max_in_flight_mb or args.max_request_mb
    record = args.root / "06_models" / "registered_model.json"
    if args.model_uri is None and not record.is_file():
        sys.exit(f"No {record} here: run from the project root after `kedro run --pipeline pretrain`, "
                 "or pass --model-uri.")
    registered = {} if args.model_uri else json.loads(record.read_text())
    model_uri = args.model_uri or registered["model_uri"]
    # the store the record names (an MLFLOW_TRACKING_URI of the caller's may point elsewhere)
    tracking_uri = registered.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    body, images = grey_zeros_body(int(args.max_request_mb * 2**20))
    print(f"[serve_load] {model_uri}: {args.requests} requests of {len(body) / 2**20:.1f} MB "
          f"({images} grey {SIDE} x {SIDE} images of zeros), --max-request-mb {args.max_request_mb:g}, "
          f"--max-in-flight-mb {in_flight_mb:g}", flush=True)

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "aavae.serving.serve", "-m", model_uri, "-p", str(port),
               "--max-request-mb", str(args.max_request_mb), "--max-in-flight-mb", str(in_flight_mb)]
    with tempfile.NamedTemporaryFile("w", prefix="serve_load-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
    with started(command, port, log_path, env) as server:
        if server.post([[[[0, 0, 0]]]])[0] != 200:
            sys.exit(f"The server does not answer a one-pixel request:\n{server.log.read_text()[-3000:]}")
        idle = tree_rss(server.pid)
        peak, sampling = idle, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.wait(0.05):
                peak = max(peak, tree_rss(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(args.requests) as pool:
            answers = list(pool.map(lambda _: post(port, body, args.deadline_s), range(args.requests)))
        sampling.set()
        sampler.join()
        after = tree_rss(server.pid)

    for index, (status, seconds) in enumerate(answers):
        print(f"[serve_load] request {index}: {status} in {seconds:.1f} s")
    bound = idle + (RSS_PER_IN_FLIGHT_BYTE * in_flight_mb + PARSER_MB) * 2**20
    statuses = Counter(status for status, _ in answers)
    slowest = max(seconds for _, seconds in answers)
    print(f"[serve_load] resident memory: idle {idle / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB, "
          f"after {after / 2**20:.0f} MB; bound {bound / 2**20:.0f} MB")
    broken = [what for what, kept in [
        (f"answers other than {sorted(ANSWERS)}", set(statuses) <= ANSWERS),
        ("no request answered 200", statuses[200] > 0),
        (f"an answer slower than {args.deadline_s:g} s", slowest <= args.deadline_s),
        ("peak memory over the bound", peak <= bound),
    ] if not kept]
    for what in broken:
        print(f"[serve_load] BROKEN: {what} (the server's log: {server.log})")
    if not broken:
        server.log.unlink()
    counts = ",".join(f"{status}x{count}" for status, count in sorted(statuses.items(), key=str))
    print(f"peak_rss_mb: {peak / 2**20:.0f} bound_mb: {bound / 2**20:.0f} slowest_s: {slowest:.1f} statuses: {counts}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
