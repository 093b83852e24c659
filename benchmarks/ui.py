"""How the MLflow UI starts on this machine: MLflow's defaults against the lean command the README
gives (`make ui`: one uvicorn worker, no job runner), taking turns on one store.

Per start: seconds until the UI's page and its first data call (the experiments' list) answer,
then, once the server has settled, its processes and their memory (PSS, summed: shared pages
counted once).

    python -m benchmarks.ui [--store sqlite:///mlflow.db] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from benchmarks.training import cpu_model
from tests.servers import BIN_DIR, LEAN_UI_ENV, LEAN_UI_OPTIONS, free_port
SETTLE_SECONDS = 10


def session_processes(session_id: int) -> list[int]:
    """The processes of a session (the server and every worker or runner it started)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == session_id:  # field 6 of stat: the session id
            pids.append(int(stat.parent.name))
    return pids


def pss_megabytes(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def answers(url: str, data: bytes | None = None) -> bool:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200 and len(response.read()) > 0
    except OSError:
        return False


def one_start(store: str, lean: bool) -> dict[str, float]:
    port = free_port()
    command = [str(BIN_DIR / "mlflow"), "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)]
    environment = {**os.environ, **(LEAN_UI_ENV if lean else {})}
    url, search = f"http://127.0.0.1:{port}", json.dumps({"max_results": 25}).encode()
    started = time.perf_counter()
    # A session of its own: its id is the server's pid, and every worker it starts shares it.
    server = subprocess.Popen(command + (LEAN_UI_OPTIONS if lean else []), env=environment, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not (answers(f"{url}/") and answers(f"{url}/ajax-api/2.0/mlflow/experiments/search", search)):
            if server.poll() is not None or time.perf_counter() - started > 180:
                raise RuntimeError(f"`{' '.join(command)}` did not come up")
            time.sleep(0.2)
        first_page = time.perf_counter() - started
        time.sleep(SETTLE_SECONDS)
        pids = session_processes(server.pid)
        return {"first_page_s": first_page, "processes": len(pids), "pss_mb": pss_megabytes(pids)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; store {args.store}; {args.rounds} rounds, taking turns; settled {SETTLE_SECONDS} s before counting")
    results: dict[str, list[dict[str, float]]] = {"default": [], "lean": []}
    for _ in range(args.rounds):
        for name in results:
            results[name].append(one_start(args.store, lean=name == "lean"))
    print(f"{'command':<60} {'first page s':>13} {'processes':>10} {'PSS MB':>8}")
    lean = " ".join([*(f"{name}={value}" for name, value in LEAN_UI_ENV.items()), "mlflow ui", *LEAN_UI_OPTIONS])
    labels = {"default": "mlflow ui", "lean": lean}
    for name, runs in results.items():
        first = statistics.median(r["first_page_s"] for r in runs)
        processes = max(r["processes"] for r in runs)
        memory = statistics.median(r["pss_mb"] for r in runs)
        print(f"{labels[name]:<60} {first:>13.1f} {processes:>10} {memory:>8.0f}")


if __name__ == "__main__":
    main()
