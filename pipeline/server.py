"""A real `mlflow models serve` process on loopback, started and stopped for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

BIN_DIR = Path(sys.executable).parent  # this environment's mlflow and uvicorn


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def scoring_server(model_uri: str, env: dict[str, str] | None = None, startup_seconds: float = 120) -> Iterator[str]:
    """Serve `model_uri` on 127.0.0.1 and a free port; yield its base URL once /ping answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(BIN_DIR / "mlflow"), "models", "serve", "-m", model_uri,
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    environment = {**os.environ, **(env or {}), "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"}
    with tempfile.TemporaryFile("w+") as log:
        # Its own session, so stopping it stops the uvicorn workers it starts too.
        server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + startup_seconds
            while not is_up(url):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"`{' '.join(command)}` did not come up:\n{log.read()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
