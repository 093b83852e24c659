"""Load test: many concurrent requests, good and malformed mixed, against a real `mlflow models serve`.

    python -m benchmarks.load                          # 10,000 requests at concurrency 16
    python -m benchmarks.load --requests 2000 --concurrency 8 --url http://127.0.0.1:5000

Loopback only, bounded in count (--requests) and time (--seconds). One request in four is
malformed (wrong length, text, NaN, out of range, bad JSON, wrong key). Reports latency
percentiles, answers by status, 5xx, dropped connections, and good answers that disagree
with the model's own prediction.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np

from tests.servers import scoring_server

LOOPBACK = {"127.0.0.1", "localhost", "::1"}

MALFORMED = [
    json.dumps({"inputs": [[0] * 700]}),
    json.dumps({"inputs": [["dark"] * 784]}),
    '{"inputs": [[' + "NaN, " * 783 + "0]]}",
    json.dumps({"inputs": [[300] * 784]}),
    '{"inputs": [[0, 0',
    json.dumps({"pixels": [[0] * 784]}),
]


def load_test(url: str, images: np.ndarray, expected: np.ndarray, requests: int, concurrency: int, seconds: float) -> dict:
    """Send `requests` requests from `concurrency` threads; every 4th is malformed."""
    address = urlsplit(url)
    if address.hostname not in LOOPBACK:
        raise SystemExit(f"load tests go to this machine only, not {address.hostname}")
    local = threading.local()
    deadline = time.monotonic() + seconds

    def connection() -> http.client.HTTPConnection:
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        return local.connection

    def one(i: int) -> tuple[str, float, int | None]:
        if time.monotonic() > deadline:
            return "skipped", 0.0, None
        malformed = i % 4 == 3
        body = MALFORMED[i % len(MALFORMED)] if malformed else json.dumps({"inputs": [images[i % len(images)].tolist()]})
        started = time.perf_counter()
        try:
            connection().request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = connection().getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            local.__dict__.pop("connection", None)  # reconnect next time
            return "dropped", time.perf_counter() - started, None
        latency = time.perf_counter() - started
        if response.status >= 500:
            return "5xx", latency, response.status
        if malformed:
            return ("refused" if 400 <= response.status < 500 else "malformed accepted"), latency, response.status
        if response.status != 200:
            return "good refused", latency, response.status
        digit = json.loads(payload)["predictions"][0]["digit"]
        return ("correct" if digit == expected[i % len(images)] else "wrong answer"), latency, response.status

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    counts: dict[str, int] = {}
    for outcome, _, _ in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    latencies = np.array([latency for outcome, latency, _ in outcomes if outcome != "skipped"]) * 1000
    return {
        "counts": counts,
        "wall_seconds": wall,
        "requests_per_second": len(latencies) / wall,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p90_ms": float(np.percentile(latencies, 90)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "max_ms": float(latencies.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/mnist-mlp@champion")
    parser.add_argument("--url", help="a running server on this machine, instead of starting one")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=600, help="stop sending after this long")
    args = parser.parse_args()

    import mlflow

    from pipeline.paths import RAW_NPZ

    with np.load(RAW_NPZ) as raw:
        images = raw["x_test"].reshape(-1, 784)
    # What every good answer must be: the same model's prediction, made here.
    model = mlflow.pyfunc.load_model(args.model)
    chunks = np.array_split(images.astype(np.float64), 5)  # within the model's batch limit
    expected = np.concatenate([model.predict(chunk)["digit"].to_numpy() for chunk in chunks])
    with contextlib.nullcontext(args.url) if args.url else scoring_server(args.model) as url:
        result = load_test(url, images, expected, args.requests, args.concurrency, args.seconds)
    print(f"{args.requests} requests, concurrency {args.concurrency}, {result['wall_seconds']:.1f} s, "
          f"{result['requests_per_second']:.0f} requests/s")
    print("outcomes: " + ", ".join(f"{name} {count}" for name, count in sorted(result["counts"].items())))
    print(f"latency ms: p50 {result['p50_ms']:.1f}  p90 {result['p90_ms']:.1f}  "
          f"p99 {result['p99_ms']:.1f}  max {result['max_ms']:.1f}")


if __name__ == "__main__":
    main()
