"""Latency and throughput of a real `mlflow models serve` answering raw MNIST test images.

    python -m benchmarks.serving                          # serves models:/mnist-mlp@champion itself
    python -m benchmarks.serving --url http://127.0.0.1:5000   # or measures a running server
    python -m benchmarks.serving --members 1,5            # the champion's first k seeds, k = 1 and 5, side by side

Loopback only; bounded: --single sequential one-image requests, then --batches requests of
--batch-size images. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from pipeline.paths import RAW_NPZ, SERVED_JSON, replicate_model_path
from tests.servers import save_served_model, scoring_server


def post(connection: http.client.HTTPConnection, images: np.ndarray) -> dict:
    body = json.dumps({"inputs": images.reshape(len(images), 784).tolist()})
    connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {answer}")
    return answer


def measure(url: str, images: np.ndarray, labels: np.ndarray, single: int, batch_size: int, batches: int) -> None:
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)  # kept alive
    for i in range(20):  # warm-up: first requests build TensorFlow's graph
        post(connection, images[i : i + 1])

    latencies, correct = [], 0
    for i in range(single):
        started = time.perf_counter()
        answer = post(connection, images[i % len(images)][None])
        latencies.append(time.perf_counter() - started)
        correct += answer["predictions"][0]["digit"] == labels[i % len(images)]
    ms = np.array(latencies) * 1000
    print(f"single image, {single} sequential requests:")
    print(f"  p50 {np.percentile(ms, 50):.1f} ms   p99 {np.percentile(ms, 99):.1f} ms   "
          f"mean {statistics.fmean(ms):.1f} ms   ({single / sum(latencies):.0f} requests/s)")
    print(f"  accuracy {correct / single:.4f}")

    started, correct = time.perf_counter(), 0
    for b in range(batches):
        start = (b * batch_size) % (len(images) - batch_size)
        answer = post(connection, images[start : start + batch_size])
        correct += sum(p["digit"] == y for p, y in zip(answer["predictions"], labels[start : start + batch_size]))
    seconds = time.perf_counter() - started
    total = batches * batch_size
    print(f"batches of {batch_size}, {batches} sequential requests:")
    print(f"  {total / seconds:.0f} images/s   {seconds / batches * 1000:.0f} ms per request   "
          f"accuracy {correct / total:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/mnist-mlp@champion", help="model URI to serve")
    parser.add_argument("--url", help="measure this running server instead of starting one")
    parser.add_argument("--single", type=int, default=500, help="one-image requests")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--members", help="k1,k2,...: serve the champion's ensemble of its first k seeds (models/), each in turn")
    args = parser.parse_args()

    with np.load(RAW_NPZ) as raw:
        images, labels = raw["x_test"], raw["y_test"]
    if args.members:
        served = json.loads(SERVED_JSON.read_text())
        champion, seeds = served["champion"], served["ensembles"][served["champion"]]
        for k in map(int, args.members.split(",")):
            with tempfile.TemporaryDirectory(prefix="members-") as scratch:
                model = save_served_model(Path(scratch), [replicate_model_path(champion, seed) for seed in seeds[:k]])
                with scoring_server(str(model)) as url:
                    print(f"measuring {champion}, the ensemble of its first {k} seed{'s' * (k > 1)} ({seeds[:k]})")
                    measure(url, images, labels, args.single, args.batch_size, args.batches)
        return
    with contextlib.nullcontext(args.url) if args.url else scoring_server(args.model) as url:
        print(f"measuring {url} ({args.url and 'a running server' or args.model})")
        measure(url, images, labels, args.single, args.batch_size, args.batches)


if __name__ == "__main__":
    main()
