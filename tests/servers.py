"""Real MLflow servers on loopback (`mlflow models serve`, `mlflow server`), started and stopped
for tests and benchmarks: `from tests.servers import scoring_server`. Not part of the package,
so no registered model ships it."""

from __future__ import annotations

import contextlib
import os
import shutil
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


def is_up(url: str, health: str = "/ping") -> bool:
    try:
        with urllib.request.urlopen(f"{url}{health}", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running(command: list[str], url: str, health: str, env: dict[str, str] | None, startup_seconds: float, cwd: Path | None = None) -> Iterator[str]:
    """Start `command` (in `cwd`), wait until `url + health` answers, yield `url`; stop it (and its workers) after."""
    environment = {**os.environ, **(env or {}), "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"}
    with tempfile.TemporaryFile("w+") as log:
        # Its own session, so stopping it stops the uvicorn workers it starts too.
        server = subprocess.Popen(command, cwd=cwd, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + startup_seconds
            while not is_up(url, health):
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


def scoring_server(model_uri: str, env: dict[str, str] | None = None, startup_seconds: float = 120, cwd: Path | None = None):
    """`mlflow models serve` of `model_uri` on 127.0.0.1 and a free port, started in `cwd` (a repository's
    root: its store's artifact paths are relative to it): a context yielding its URL."""
    port = free_port()
    command = [
        str(BIN_DIR / "mlflow"), "models", "serve", "-m", model_uri,
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
    ]
    return running(command, f"http://127.0.0.1:{port}", "/ping", env, startup_seconds, cwd)


def tracking_server(backend_store_uri: str, artifacts_destination: Path, startup_seconds: float = 120):
    """`mlflow server` on 127.0.0.1 and a free port, artifacts proxied to a directory: a context yielding its URL."""
    port = free_port()
    command = [
        str(BIN_DIR / "mlflow"), "server", "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", str(artifacts_destination), "--host", "127.0.0.1", "--port", str(port),
    ]
    return running(command, f"http://127.0.0.1:{port}", "/health", None, startup_seconds)


# The lean UI the README documents (`make ui`): one worker, and no job runner (it serves GenAI
# evaluations only); benchmarks/ui.py measures it against MLflow's defaults.
LEAN_UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
LEAN_UI_OPTIONS = ["--workers", "1"]


def ui_server(backend_store_uri: str, startup_seconds: float = 120, cwd: Path | None = None):
    """`mlflow ui` on a store, started lean in `cwd` (the store's repository), on 127.0.0.1 and a free port:
    a context yielding its URL."""
    port = free_port()
    command = [
        str(BIN_DIR / "mlflow"), "ui", "--backend-store-uri", backend_store_uri,
        "--host", "127.0.0.1", "--port", str(port), *LEAN_UI_OPTIONS,
    ]
    return running(command, f"http://127.0.0.1:{port}", "/health", LEAN_UI_ENV, startup_seconds, cwd)


def save_served_model(directory: Path, member_files: list[Path]) -> Path:
    """The served model of these member files, saved as registration logs it (models from code, the
    package files serving imports), without a store: its path, for `mlflow models serve -m PATH`."""
    import mlflow

    from pipeline import registry

    package = directory / "code" / registry.PACKAGE_DIR.name
    package.mkdir(parents=True)
    for name in registry.SERVED_FILES:
        shutil.copy2(registry.PACKAGE_DIR / name, package / name)
    mlflow.pyfunc.save_model(
        directory / "model", python_model=str(registry.PACKAGE_DIR / registry.SERVING_MODULE),
        artifacts={f"seed-{i}": str(path) for i, path in enumerate(member_files)}, code_paths=[str(package)],
        signature=registry.SIGNATURE,
    )
    return directory / "model"


REPO_DIR = Path(__file__).resolve().parent.parent
PROXY_CONF = REPO_DIR / "deploy/nginx.conf"  # the recipe docs/serving.md gives, as shipped


@contextlib.contextmanager
def nginx_proxy(upstream_url: str, startup_seconds: float = 30) -> Iterator[str]:
    """Debian's nginx running deploy/nginx.conf, its two ports set to a free one and `upstream_url`'s:
    a context yielding the proxy's URL. Its own prefix directory: no system file is touched."""
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin")
    if nginx is None:
        raise RuntimeError("nginx is not installed: apt-get install nginx (.ci/run does)")
    port, upstream = free_port(), upstream_url.removeprefix("http://")
    recipe = PROXY_CONF.read_text()
    assert "listen 8080;" in recipe and recipe.count("http://127.0.0.1:5001;") == 2, "the recipe's ports moved"
    with tempfile.TemporaryDirectory(prefix="nginx-") as prefix:
        root = Path(prefix)
        root.chmod(0o755)  # nginx's workers run as nobody under root: they must reach their temp paths
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (root / name).mkdir(mode=0o777)
            (root / name).chmod(0o777)
        (root / "server.conf").write_text(
            recipe.replace("listen 8080;", f"listen 127.0.0.1:{port};").replace("http://127.0.0.1:5001;", f"http://{upstream};")
        )
        (root / "nginx.conf").write_text(
            f"daemon off;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\nevents {{}}\nhttp {{\n"
            "    access_log off;\n"
            + "".join(f"    {name}_temp_path {root}/{name.removeprefix('client_')};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"    include {root}/server.conf;\n}}\n"
        )
        with running([nginx, "-p", str(root), "-c", str(root / "nginx.conf")], f"http://127.0.0.1:{port}", "/ping", None, startup_seconds) as url:
            yield url
