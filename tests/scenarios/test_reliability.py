"""Mistakes and accidents: bad params via DVC, interrupted downloads and training, secrets."""

import http.server
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.helpers import (
    assert_answers_are_the_ensembles, clone, dvc, edit_params, ensemble_probabilities, outputs_in, stage_lines,
    stages_run, user_env, wait_until,
)
from tests.servers import free_port, tracking_server


@pytest.mark.parametrize(
    "setting, says",
    [
        ("data.subset=-5", "data.subset: Input should be greater than or equal to 0 (got -5)"),
        ("train.max_epochs=abc", "train.max_epochs: Input should be a valid integer (got 'abc')"),
    ],
)
def test_dvc_exp_run_with_a_bad_value_stops_before_any_work_naming_the_key(fresh_repo, tmp_path, setting, says):
    repo = clone(fresh_repo, tmp_path / "repo")
    result = subprocess.run(
        ["dvc", "exp", "run", "-S", setting], cwd=repo, env=user_env(), capture_output=True, text=True
    )
    assert result.returncode != 0
    assert says in result.stdout + result.stderr
    assert "train@" not in result.stdout
    assert not (repo / "data/raw/mnist.npz").exists()


class SlowFile(http.server.BaseHTTPRequestHandler):
    """Promises 11 MB and trickles them out: a download that is interrupted midway."""

    transferring = threading.Event()  # set once 20 kB have gone out: the stage is mid-download

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(11_000_000))
        self.end_headers()
        for chunk in range(1000):
            self.wfile.write(b"\0" * 1000)
            self.wfile.flush()
            if chunk == 20:
                SlowFile.transferring.set()
            time.sleep(0.05)  # the server's pace, not a wait of the test's

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_download_leaves_nothing_and_the_rerun_completes(fresh_repo, tmp_path, canonical_npz, stop):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowFile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    repo = clone(fresh_repo, tmp_path / "repo")
    edit_params(repo, lambda p: p["download"].update(sources=["url"], url=f"http://127.0.0.1:{server.server_port}/mnist.npz"))
    temporary = tmp_path / "tmp"  # the stage's own: other tests' downloads may run alongside
    temporary.mkdir()

    SlowFile.transferring.clear()
    # A shell's background job (`make test &`) ignores SIGINT, and Python keeps an ignored SIGINT
    # ignored: give the stage the terminal's default, as a user's Ctrl-C would find it.
    stage = subprocess.Popen([sys.executable, "-m", "pipeline.download"], cwd=repo, env=user_env(TMPDIR=str(temporary)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Mid-transfer, whatever the machine's load: a signal during the stage's imports would find
    # Python's defaults, not the stage's handlers.
    assert SlowFile.transferring.wait(timeout=120), "the stage never started its download"
    stage.send_signal(stop)
    _, stderr = stage.communicate(timeout=30)
    server.shutdown()
    assert stage.returncode == 128 + stop and "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith("download: stopped by "), stderr
    assert outputs_in(repo / "data/raw") == [], "nothing half-written"
    assert list(temporary.iterdir()) == [], "its temporary directory is gone too"

    edit_params(repo, lambda p: p["download"].update(sources=["file"], file=str(canonical_npz)))
    assert "Running stage 'download'" in dvc("repro", "download", cwd=repo)
    assert (repo / "data/raw/mnist.npz").is_file()


def with_a_long_variant(params):
    """A third variant, long enough to interrupt: 20 epochs of batch 32."""
    params["variants"]["mlp-256-256-he-dropout"] = {**params["variants"]["mlp-256-64"], "batch_size": 32, "epochs": 20}


def wait_for_epochs(repo: Path, run_name: str, epochs: int, timeout: float = 300) -> str:
    """Wait until the RUNNING run `run_name` (a replicate's) has logged `epochs` epochs; return its id."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")

    def logged() -> str | None:
        try:
            runs = client.search_runs(
                [client.get_experiment_by_name("mnist-mlp").experiment_id],
                filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'",
            )
        except Exception:  # the store or the experiment is not there yet
            return None
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= epochs:
            return runs[0].info.run_id
        return None

    return wait_until(logged, timeout, f"{run_name} to log epoch {epochs}", poll=0.2)


def test_interrupted_training_is_killed_cleanly_and_the_next_repro_completes(small_trained, tmp_path):
    repo = clone(small_trained, tmp_path / "repo")
    edit_params(repo, with_a_long_variant)
    variant = "mlp-256-256-he-dropout"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")

    # SIGTERM (what `kill` and schedulers send) to the stage after its first epoch.
    stage = subprocess.Popen([sys.executable, "-m", "pipeline.train", variant], cwd=repo, env=user_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_id = wait_for_epochs(repo, f"{variant} seed 0", 1)
    stage.send_signal(signal.SIGTERM)
    _, stderr = stage.communicate(timeout=180)  # generous: a loaded machine once took over 60 s
    assert stage.returncode == 143 and "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "train: stopped by signal 15 (SIGTERM): nothing was half-written; `dvc repro` runs it again"
    replicate = client.get_run(run_id)
    assert replicate.info.status == "KILLED"
    assert client.get_run(replicate.data.tags["mlflow.parentRunId"]).info.status == "KILLED"  # the variant's run too
    assert outputs_in(repo / "models" / variant) == [], "no half-written model"

    # SIGKILL to `dvc repro` and its stage together: nothing can clean up after that ...
    repro = subprocess.Popen(["dvc", "repro", f"train@{variant}"], cwd=repo, env=user_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    killed_id = wait_for_epochs(repo, f"{variant} seed 0", 1)
    killed = client.get_run(killed_id)
    assert killed.data.tags["pid"] != str(os.getpid()) and killed.data.tags["host"]  # where it runs
    os.killpg(repro.pid, signal.SIGKILL)
    repro.wait()
    assert client.get_run(killed_id).info.status == "RUNNING"  # as the killed process left it

    # ... and still the next `dvc repro` completes, evaluate included, and ends what was left RUNNING.
    output = dvc("repro", cwd=repo)
    assert stages_run(output) == [f"train@{variant}", "evaluate", "register"]  # validate ran before the kill
    assert f"run '{variant} seed 0' was left RUNNING by a process that is gone: ended it as KILLED" in output
    for run_id in (killed_id, killed.data.tags["mlflow.parentRunId"]):
        ended = client.get_run(run_id)
        assert ended.info.status == "KILLED"
        assert f"its process {killed.data.tags['pid']} was gone" in ended.data.tags["mlflow.note.content"]
    assert not client.search_runs([killed.info.experiment_id], "attributes.status = 'RUNNING'")
    table = pd.read_csv(repo / "reports/comparison.csv")
    assert sorted(table["variant"]) == ["mlp-256-256-he-dropout", "mlp-256-64", "mlp-256-64-bn"]
    champion = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert champion.tags["variant"] == table["variant"][0]


class SilentServer:
    """A port that accepts connections and never answers: a tracking server hung or firewalled."""

    def __enter__(self):
        import socket
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        return self.socket.getsockname()[1]

    def __exit__(self, *exc):
        self.socket.close()


def test_an_unreachable_tracking_server_stops_the_stage_at_once_naming_it_never_its_password(small_preprocessed, tmp_path):
    repo = clone(small_preprocessed, tmp_path / "repo")
    with SilentServer() as silent_port:
        # Nothing listens there. Picked after the silent server has its port: the system could hand
        # a port just released by free_port to the silent server.
        closed_port = wait_until(lambda: (port := free_port()) != silent_port and port, 10, "a free port")
        for port, says in [(closed_port, "nothing listens there (connection refused)"), (silent_port, "no answer within 10 s")]:
            env = user_env(MLFLOW_TRACKING_URI=f"http://reader:PASSWORD@127.0.0.1:{port}")
            for command in (["pipeline.train", "mlp-256-64"], ["pipeline.evaluate"]):
                # The measure: 255 s of MLflow's retries before; within 30 s now, or this times out.
                result = subprocess.run([sys.executable, "-m", *command], cwd=repo, env=env, capture_output=True, text=True, timeout=30)
                stage = command[0].split(".")[1]
                assert result.returncode == 1
                assert stage_lines(result.stderr) == [
                    f"{stage}: MLFLOW_TRACKING_URI: cannot use the MLflow tracking server at 127.0.0.1:{port}: {says}; "
                    + ("start the server or fix the address" if port == closed_port else "check that the server is up and reachable from here")
                ]
                assert "PASSWORD" not in result.stdout + result.stderr and "reader" not in result.stderr
    assert outputs_in(repo / "models") == [] and not (repo / "mlflow.db").exists(), "nothing trained, nothing written"


def test_a_failure_inside_mlflow_against_a_server_with_credentials_never_prints_them(small_preprocessed, tmp_path):
    """A real tracking server whose artifact store cannot take files: MLflow's own exception names the
    request's URL, and the stage's output must still not show the password."""
    repo = clone(small_preprocessed, tmp_path / "repo")
    (tmp_path / "not-a-directory").write_text("")
    with tracking_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "not-a-directory" / "artifacts") as url:
        port = url.rsplit(":", 1)[1]
        # One retry, not MLflow's seven with back-off (minutes): the failure, not its patience, is tested.
        env = user_env(MLFLOW_TRACKING_URI=url.replace("http://", "http://reader:PASSWORD@"), MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
        result = subprocess.run([sys.executable, "-m", "pipeline.train", "mlp-256-64"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        client = mlflow.MlflowClient(tracking_uri=url)
        runs = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    assert result.returncode != 0
    assert f"127.0.0.1:{port}/api/2.0/mlflow-artifacts/artifacts/" in result.stderr  # MLflow's message, URL and all
    assert "PASSWORD" not in result.stdout + result.stderr and "reader:" not in result.stdout + result.stderr
    assert {run.info.status for run in runs} == {"FAILED"}, "no run left RUNNING"


def test_a_lost_store_heals_on_the_next_plain_repro_without_retraining_and_serves_the_champion(small_trained, tmp_path, canonical_arrays, monkeypatch):
    repo = clone(small_trained, tmp_path / "repo")
    champion = json.loads((repo / "reports/metrics.json").read_text())["champion"]

    (repo / "mlflow.db").unlink()
    shutil.rmtree(repo / "mlruns")
    healed = dvc("repro", cwd=repo)
    assert stages_run(healed) == ["register"], "nothing retrained, nothing re-evaluated"
    (again,) = re.findall(r"registered again from models/: (.*)", healed)
    assert sorted(again.split(", ")) == ["mlp-256-64", "mlp-256-64-bn"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    assert client.get_model_version_by_alias("mnist-mlp", "champion").tags["variant"] == champion
    # Served from the healed store, from the repository root as docs/serving.md says (in-process:
    # what is tested is the store, not the scoring server).
    monkeypatch.chdir(repo)  # its artifact locations are relative to the root; the store's path absolute (one engine per URI in-process)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo}/mlflow.db")
    images = canonical_arrays["x_test"][:20].reshape(20, 784)
    answer = mlflow.pyfunc.load_model("models:/mnist-mlp@champion").predict(images)
    expected = ensemble_probabilities([repo / f"models/{champion}/seed-{seed}.keras" for seed in (0, 1)], images)
    assert_answers_are_the_ensembles(answer["digit"], answer["probabilities"].tolist(), expected)

    # Nothing lost: the next repro only checks.
    again = dvc("repro", cwd=repo)
    assert stages_run(again) == ["register"] and "nothing was missing" in again
    assert len(client.search_model_versions("name = 'mnist-mlp'")) == 2

    # A model file missing, then truncated: one line naming the file and the way back.
    model = repo / "models/mlp-256-64/seed-1.keras"
    intact = model.read_bytes()
    # Missing first, then truncated: the advised `dvc checkout --force` must bring back a damaged file.
    for damage, says in [(model.unlink, "missing"),
                         (lambda: model.write_bytes(intact[: len(intact) // 2]), "is not a readable Keras model")]:
        damage()
        result = subprocess.run([sys.executable, "-m", "pipeline.evaluate"], cwd=repo, env=user_env(), capture_output=True, text=True)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        (line,) = stage_lines(result.stderr)
        assert line.startswith("evaluate: ") and "models/mlp-256-64/seed-1.keras" in line and says in line
        assert "`dvc checkout " in line and "`dvc repro -f -s train@mlp-256-64`" in line
    dvc("checkout", "--force", "train@mlp-256-64", cwd=repo)  # as the line advises
    assert model.read_bytes() == intact


@pytest.mark.parametrize(
    "mount, says",
    [
        ("mount -t tmpfs -o size=64k tmpfs models", "the disk is full"),
        ("mount --bind models models && mount -o remount,bind,ro models", "the file system is read-only"),
    ],
    ids=["full disk", "read-only"],
)
def test_a_full_disk_or_a_read_only_output_is_one_line_and_nothing_is_half_written(small_preprocessed, tmp_path, mount, says):
    """Real file systems in a private mount namespace (unshare): a 64 kB tmpfs, a read-only bind mount."""
    repo = clone(small_preprocessed, tmp_path / "repo")
    (repo / "models").mkdir(exist_ok=True)
    script = f"{mount} && {shlex.quote(sys.executable)} -m pipeline.train mlp-256-64; echo exit=$?; find models -type f ! -name .gitignore"
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            cwd=repo, env=user_env(), capture_output=True, text=True, timeout=300)
    assert "exit=1\n" in result.stdout and result.stdout.endswith("exit=1\n"), "the stage failed, and left no file, whole or partial"
    assert "Traceback" not in result.stderr
    assert stage_lines(result.stderr)[-1] == (
        f"train: cannot write models/mlp-256-64/seed-0.keras: {says}. Nothing was half-written (outputs are replaced "
        "whole or not at all); make room or fix the permissions, then rerun `dvc repro`."
    )
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    assert runs and {run.info.status for run in runs} == {"FAILED"}
