"""Mistakes and accidents: bad params via DVC, interrupted downloads and training, secrets."""

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from pipeline.download import describe, without_credentials

from conftest import REPO_ROOT, copy_of_repository, dvc, run_in, user_env

def outputs_in(directory: Path) -> list[str]:
    """What a stage left in an output directory (DVC's own .gitignore aside)."""
    return sorted(p.name for p in directory.glob("*") if p.name != ".gitignore") if directory.exists() else []


def edit_params(repo: Path, edit) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize(
    "setting, says",
    [
        ("data.subset=-5", "data.subset: Input should be greater than or equal to 0 (got -5)"),
        ("train.max_epochs=abc", "train.max_epochs: Input should be a valid integer (got 'abc')"),
    ],
)
def test_dvc_exp_run_with_a_bad_value_stops_before_any_work_naming_the_key(tmp_path, setting, says):
    repo = copy_of_repository(tmp_path)
    result = subprocess.run(
        ["dvc", "exp", "run", "-S", setting], cwd=repo, env=user_env(), capture_output=True, text=True
    )
    assert result.returncode != 0
    assert says in result.stdout + result.stderr
    assert "train@" not in result.stdout
    assert not (repo / "data/raw/mnist.npz").exists()


class SlowFile(http.server.BaseHTTPRequestHandler):
    """Promises 11 MB and trickles them out: a download that is interrupted midway."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(11_000_000))
        self.end_headers()
        for _ in range(1000):
            self.wfile.write(b"\0" * 1000)
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_download_leaves_nothing_and_the_rerun_completes(tmp_path, canonical_npz, stop):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowFile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    repo = copy_of_repository(tmp_path)
    edit_params(repo, lambda p: p["download"].update(url=f"http://127.0.0.1:{server.server_port}/mnist.npz"))
    temporary = Path(os.environ.get("TMPDIR", "/tmp"))
    before = set(temporary.glob("mnist-download-*"))

    # A shell's background job (`make test &`) ignores SIGINT, and Python keeps an ignored SIGINT
    # ignored: give the stage the terminal's default, as a user's Ctrl-C would find it.
    stage = subprocess.Popen([sys.executable, "-m", "pipeline.download"], cwd=repo, env=user_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(3)  # mid-transfer
    stage.send_signal(stop)
    _, stderr = stage.communicate(timeout=30)
    server.shutdown()
    assert stage.returncode != 0 and "KeyboardInterrupt" in stderr
    assert outputs_in(repo / "data/raw") == [], "nothing half-written"
    assert set(temporary.glob("mnist-download-*")) == before, "its temporary directory is gone too"

    edit_params(repo, lambda p: p["download"].update(sources=["file"], file=str(canonical_npz)))
    assert "Running stage 'download'" in dvc("repro", "download", cwd=repo)
    assert (repo / "data/raw/mnist.npz").is_file()


def small_two_variant_repo(tmp_path: Path) -> Path:
    """A copy with two variants on 2,000 images and two seeds: one quick, one long enough to interrupt."""
    repo = copy_of_repository(tmp_path)

    def shrink(params):
        params["data"]["subset"], params["train"]["seeds"] = 2000, [0, 1]
        keep = {"mlp-256-64": {**params["variants"]["mlp-256-64"], "epochs": 1}}
        keep["mlp-256-256-he-dropout"] = {**params["variants"]["mlp-256-256-he-dropout"], "batch_size": 32, "epochs": 20}
        params["variants"] = keep

    edit_params(repo, shrink)
    dvc("repro", "preprocess", cwd=repo)
    return repo


def wait_for_epochs(repo: Path, run_name: str, epochs: int, timeout: float = 120) -> str:
    """Wait until the RUNNING run `run_name` (a replicate's) has logged `epochs` epochs; return its id."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            runs = client.search_runs(
                [client.get_experiment_by_name("mnist-mlp").experiment_id],
                filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'",
            )
        except Exception:  # the store or the experiment is not there yet
            continue
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= epochs:
            return runs[0].info.run_id
    raise AssertionError(f"{run_name} did not reach epoch {epochs}")


def test_interrupted_training_is_killed_cleanly_and_the_next_repro_completes(tmp_path):
    repo = small_two_variant_repo(tmp_path)
    variant = "mlp-256-256-he-dropout"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")

    # SIGTERM (what `kill` and schedulers send) to the stage mid-training.
    stage = subprocess.Popen([sys.executable, "-m", "pipeline.train", variant], cwd=repo, env=user_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_id = wait_for_epochs(repo, f"{variant} seed 0", 3)
    stage.send_signal(signal.SIGTERM)
    assert stage.wait(timeout=60) != 0
    replicate = client.get_run(run_id)
    assert replicate.info.status == "KILLED"
    assert client.get_run(replicate.data.tags["mlflow.parentRunId"]).info.status == "KILLED"  # the variant's run too
    assert outputs_in(repo / "models") == [], "no half-written model"

    # SIGKILL to `dvc repro` and its stage together: nothing can clean up after that ...
    repro = subprocess.Popen(["dvc", "repro", f"train@{variant}"], cwd=repo, env=user_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed_id = wait_for_epochs(repo, f"{variant} seed 0", 3)
    os.killpg(repro.pid, signal.SIGKILL)
    repro.wait()
    assert client.get_run(killed_id).info.status == "RUNNING"  # as MLflow left it; see README

    # ... and still the next `dvc repro` completes, evaluate included.
    output = dvc("repro", cwd=repo)
    assert f"Running stage 'train@{variant}'" in output and "Running stage 'evaluate'" in output
    table = pd.read_csv(repo / "reports/comparison.csv")
    assert sorted(table["variant"]) == ["mlp-256-256-he-dropout", "mlp-256-64"]
    champion = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert champion.tags["variant"] == table["variant"][0]


def test_a_mirror_url_with_credentials_is_never_printed_or_recorded(default_params):
    url = "https://reader:s3cret@mirror.example:8443/datasets/mnist.npz"
    assert without_credentials(url) == "https://mirror.example:8443/datasets/mnist.npz"
    params = default_params.download.model_copy(update={"url": url})
    assert "s3cret" not in describe("url", params)
    assert without_credentials(default_params.download.url) == default_params.download.url


SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)(password|secret|token)\s*[:=]\s*['\"][^'\"]{6,}['\"]",
    r"[a-z+]+://[^/\s:@'\"]+:[^/\s@'\"]+@",  # user:password@ in a URL
]


def test_no_credentials_are_committed():
    tracked = run_in(REPO_ROOT, "git", "ls-files").split()
    offenders = []
    for name in tracked:
        path = REPO_ROOT / name
        if name.startswith("tests/") or not path.is_file() or path.stat().st_size > 1_000_000:
            continue  # the tests hold fake credentials on purpose
        text = path.read_text(errors="ignore")
        offenders += [f"{name}: {p}" for p in SECRET_PATTERNS if re.search(p, text)]
    assert offenders == []
