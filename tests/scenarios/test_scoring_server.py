"""A real `mlflow models serve` process, a registered model, raw test images over HTTP: every answer
checked against the members' mean computed here by plain Keras. (The model in-process:
tests/unit/test_serving.py.)"""

import http.client
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from benchmarks.load import load_test
from pipeline.data import MAX_SERVED_BATCH as MAX_BATCH, SERVED_INPUT
from pipeline.model import build_network
from pipeline.paths import replicate_model_path
from pipeline.train import train
from tests.helpers import assert_answers_are_the_ensembles, ensemble_probabilities, small_workspace
from tests.servers import BIN_DIR, is_up, nginx_proxy, save_served_model, scoring_server

VARIANT = "mlp-256-64"
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_params, canonical_npz):
    """One variant's seed ensemble trained as the quick pipeline trains it, registered, and served;
    beside it, the ensemble's reference: a function of raw pixels computed from the member files."""
    root = tmp_path_factory.mktemp("serving")
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for name, value in store.items():
            patch.setenv(name, value)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        params = small_workspace(root, default_params, canonical_npz, subset=3000, max_epochs=2, seeds=SEEDS)
        train(params, VARIANT)
        members = [root / replicate_model_path(VARIANT, seed) for seed in SEEDS]
        with scoring_server(f"models:/mnist-mlp@{VARIANT}", env=store) as url:
            yield url, lambda pixels: ensemble_probabilities(members, pixels)


def post(url, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_raw_test_images_get_the_mean_of_the_members_probabilities(served, canonical_arrays):
    url, reference = served
    images = canonical_arrays["x_test"][:1000].reshape(1000, 784)
    status, answer = post(url, {"inputs": images.tolist()})  # JSON ints 0-255, as a client sends them
    assert status == 200
    assert_answers_are_the_ensembles(*answers(answer["predictions"]), reference(images))


def test_dataframe_split_and_float_pixels_are_accepted(served, canonical_arrays):
    url, reference = served
    images = canonical_arrays["x_test"][:20].reshape(20, 784)
    split = {"dataframe_split": {"columns": [f"pixel_{i}" for i in range(784)], "data": images.astype(float).tolist()}}
    status, by_split = post(url, split)
    assert status == 200
    assert_answers_are_the_ensembles(*answers(by_split["predictions"]), reference(images))


def test_signature_metadata_and_input_example_describe_raw_pixel_rows(served):
    url, _ = served
    uri = f"models:/mnist-mlp@{VARIANT}"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs is None  # MLflow would refuse uint8 arrays and integer CSV before the model sees them
    assert info.signature.outputs.input_names() == ["digit", "probabilities"]
    assert info.metadata["input"] == SERVED_INPUT

    model_dir = Path(mlflow.artifacts.download_artifacts(uri))
    example = json.loads((model_dir / "serving_input_example.json").read_text())
    pixels = np.array(example["inputs"])
    assert pixels.shape == (1, 784) and pixels.dtype == np.int64 and pixels.max() > 1  # JSON ints 0-255
    status, answer = post(url, example)
    assert status == 200 and len(answer["predictions"]) == 1


def as_csv(rows: np.ndarray) -> bytes:
    return pd.DataFrame(rows).to_csv(index=False).encode()


def answers(predictions) -> tuple[list[int], list]:
    return [p["digit"] for p in predictions], [p["probabilities"] for p in predictions]


def test_every_form_users_send_over_http_gets_the_same_answer(served, canonical_arrays, tmp_path):
    """JSON ints and floats, CSV with integer or float cells over HTTP and through `mlflow models predict`."""
    url, reference = served
    rows = canonical_arrays["x_test"][:20].reshape(20, 784)
    expected = reference(rows)
    for name, body, content_type in [
        ("JSON ints", json.dumps({"inputs": rows.tolist()}).encode(), "application/json"),
        ("JSON floats", json.dumps({"inputs": rows.astype(float).tolist()}).encode(), "application/json"),
        ("JSON instances", json.dumps({"instances": rows.tolist()}).encode(), "application/json"),
        ("CSV ints", as_csv(rows), "text/csv"),
        ("CSV floats", as_csv(rows.astype(float)), "text/csv"),
    ]:
        status, answer = post(url, body, content_type)
        assert status == 200, (name, answer)
        assert_answers_are_the_ensembles(*answers(answer["predictions"]), expected)
    for name, cells in [("ints", rows), ("floats", rows.astype(float))]:
        (tmp_path / "rows.csv").write_bytes(as_csv(cells))
        result = subprocess.run(
            [str(BIN_DIR / "mlflow"), "models", "predict", "-m", f"models:/mnist-mlp@{VARIANT}", "-i", str(tmp_path / "rows.csv"),
             "-t", "csv", "--env-manager", "local", "-o", str(tmp_path / "out.json")],
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert_answers_are_the_ensembles(*answers(json.loads((tmp_path / "out.json").read_text())["predictions"]), expected)


SCALED = "look like features already scaled to [0, 1] (every value at most 1, some fractional): send raw pixel intensities 0-255"


@pytest.mark.parametrize("form", ["JSON", "CSV"])
def test_features_already_scaled_and_booleans_are_refused_saying_to_send_raw_pixels(served, canonical_arrays, form):
    url, _ = served
    features = canonical_arrays["x_test"][:3].reshape(3, 784) / 255  # what the preprocess stage writes
    booleans = canonical_arrays["x_test"][:3].reshape(3, 784) > 127
    for data, says in [(features, f"3 of 3 rows (row 0, 1, 2) {SCALED}"), (booleans, "found booleans: send raw pixel intensities 0-255")]:
        body = json.dumps({"inputs": data.tolist()}).encode() if form == "JSON" else as_csv(data)
        status, answer = post(url, body, "application/json" if form == "JSON" else "text/csv")
        assert status == 400 and says in answer["message"] and "stack_trace" not in answer


ROW = [0] * 784


@pytest.mark.parametrize(
    "body, content_type, says",
    [
        ({"inputs": [ROW[:700]]}, "application/json", "expected images of 784 pixels (28x28), got shape (1, 700)"),
        ({"inputs": [ROW, ROW[:10]]}, "application/json", "inhomogeneous"),
        ({"inputs": [["a"] * 784]}, "application/json", "pixel intensities must be numbers, got <U1"),
        ({"inputs": [[None] * 784]}, "application/json", "pixel intensities must be numbers: found null"),
        ({"inputs": [[0] * 783 + [256]]}, "application/json", "must lie in 0-255: found 0 to 256"),
        ({"inputs": [[-1] * 784]}, "application/json", "must lie in 0-255"),
        ({"inputs": []}, "application/json", "expected images of 784 pixels (28x28), got shape (0,)"),
        ({"pixels": [ROW]}, "application/json", "must be a JSON dictionary with exactly one of the input fields"),
        (b"{not json", "application/json", "valid JSON"),
        ({"inputs": [ROW] * (MAX_BATCH + 1)}, "application/json", f"a request carries 1 to {MAX_BATCH} images"),
        (b"0,1\n5,\"6\n", "text/csv", "Failed to parse input as a Pandas DataFrame"),
        (b"0,1,2\n5,6,7\n", "text/csv", "expected images of 784 pixels (28x28), got shape (1, 3)"),
        (pd.DataFrame([ROW] * 5).to_csv(index=False, header=False).encode(), "text/csv", "Add a header line"),
    ],
    ids=["short row", "ragged", "non-numeric", "null", "above 255", "negative", "empty batch",
         "wrong key", "invalid JSON", "batch too large", "invalid CSV", "short CSV row", "CSV without a header"],
)
def test_a_bad_request_gets_a_4xx_that_says_what_is_wrong_and_no_stack_trace(served, body, content_type, says):
    url, _ = served
    status, answer = post(url, body, content_type)
    assert 400 <= status < 500
    assert says in answer["message"]
    assert "stack_trace" not in answer and "Traceback" not in json.dumps(answer)


def test_nan_in_a_json_number_is_refused(served):
    url, _ = served
    status, answer = post(url, b'{"inputs": [[' + b"NaN, " * 783 + b"0]]}")
    assert status == 400 and "must be numbers" in answer["message"]


def test_the_server_keeps_serving_after_bad_requests(served, canonical_arrays):
    url, _ = served
    for body in ({"inputs": [["x"]]}, b"[", {"inputs": [[1e9] * 784]}):
        post(url, body)
    assert is_up(url)
    status, answer = post(url, {"inputs": canonical_arrays["x_test"][:1].reshape(1, 784).tolist()})
    assert status == 200 and len(answer["predictions"]) == 1


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port` (Linux /proc/net/tcp, little-endian hex)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            addresses.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return addresses


def test_the_server_listens_on_loopback_only(served):
    url, _ = served
    assert listening_addresses(int(url.rsplit(":", 1)[1])) == {"127.0.0.1"}


def test_a_small_load_mixing_good_and_malformed_requests(served, canonical_arrays):
    url, reference = served
    images = canonical_arrays["x_test"][:500].reshape(500, 784)
    expected = reference(images).argmax(axis=1)
    result = load_test(url, images, expected, requests=400, concurrency=8, seconds=120)
    assert result["counts"] == {"correct": 300, "refused": 100}  # no 5xx, drops or wrong answers


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST exactly these headers (urllib would add a Content-Type of its own)."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    try:
        connection.request("POST", "/invocations", body=body, headers={"Content-Length": str(len(body)), **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


DEEP_JSON = b'{"inputs": ' + b"[" * 1000 + b"0" + b"]" * 1000 + b"}"
LARGEST_REQUEST = {"inputs": [[255.0] * 784] * MAX_BATCH}  # 22.5 MB of JSON: what deploy/nginx.conf must admit


def test_what_mlflows_own_scoring_server_does_with_hostile_payloads(served):
    """Pinned, so that an MLflow upgrade that changes any of it shows up here (docs/reliability.md)."""
    url, _ = served
    good = json.dumps({"inputs": [ROW]}).encode()
    # No Content-Type: MLflow 3.17 fails on it (content_type.split on None), 500 without a message.
    assert raw_post(url, good, {}) == (500, b"Internal Server Error")
    status, body = raw_post(url, good, {"Content-Type": "text/plain"})
    assert status == 415 and b"only supports the following content types" in body
    # JSON about a thousand levels deep: Python's parser gives up (RecursionError), 500.
    assert raw_post(url, DEEP_JSON, {"Content-Type": "application/json"}) == (500, b"Internal Server Error")
    # No limit on the body: 20 MB of one row is read and parsed whole before the shape is refused.
    status, body = raw_post(url, b'{"inputs": [[' + b"0," * 10_000_000 + b"0]]}", {"Content-Type": "application/json"})
    assert status == 400 and b"expected images of 784 pixels (28x28), got shape (1, 10000001)" in body
    assert is_up(url)  # and it serves on


def test_the_nginx_recipe_refuses_oversized_bodies_and_wrong_types_and_passes_good_requests(served, canonical_arrays):
    url, reference = served
    with nginx_proxy(url) as proxy:
        images = canonical_arrays["x_test"][:50].reshape(50, 784)
        status, answer = post(proxy, {"inputs": images.tolist()})
        assert status == 200
        expected = reference(images)
        assert_answers_are_the_ensembles(*answers(answer["predictions"]), expected)
        status, answer = post(proxy, LARGEST_REQUEST, content_type="application/json; charset=utf-8")
        assert status == 200 and len(answer["predictions"]) == MAX_BATCH

        status, body = raw_post(proxy, as_csv(images), {"Content-Type": "text/csv"})
        assert status == 200 and [p["digit"] for p in json.loads(body)["predictions"]] == expected.argmax(axis=1).tolist()

        good = json.dumps({"inputs": [ROW]}).encode()
        for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/jsonx"}, {"Content-Type": "text/csvx"}):
            status, body = raw_post(proxy, good, headers)
            assert (status, json.loads(body)["error_code"]) == (415, "UNSUPPORTED_MEDIA_TYPE"), headers
        status, body = raw_post(proxy, b"[" * (25 * 2**20), {"Content-Type": "application/json"})
        assert (status, json.loads(body)["error_code"]) == (413, "REQUEST_TOO_LARGE")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{proxy}/invocations", timeout=30)  # GET
        assert refused.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as unknown:
            urllib.request.urlopen(f"{proxy}/admin", timeout=30)
        assert unknown.value.code == 404
        # What the proxy cannot judge passes through as MLflow answers it.
        assert raw_post(proxy, DEEP_JSON, {"Content-Type": "application/json"})[0] == 500
        assert is_up(proxy)


def test_a_model_that_computes_nan_answers_500_never_nan(tmp_path, default_params):
    """A served model whose weights went non-finite (registration refuses one: this one is saved
    directly) answers with an error that says so, never a 200 carrying NaN."""
    network = build_network(default_params.variants[VARIANT], 0)
    weights = network.get_weights()
    weights[-1][:] = np.nan  # the output layer's bias
    network.set_weights(weights)
    member = tmp_path / "seed-0.keras"
    network.save(member)
    save_served_model(tmp_path, [member])
    with scoring_server(str(tmp_path / "model")) as url:
        status, body = raw_post(url, json.dumps({"inputs": [ROW]}).encode(), {"Content-Type": "application/json"})
    assert status == 500
    answer = json.loads(body, parse_constant=lambda constant: pytest.fail(f"bare {constant} in the answer"))
    assert "non-finite probabilities for 1 of 1 images" in answer["message"]
