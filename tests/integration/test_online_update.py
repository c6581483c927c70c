"""Online update end to end: train → serve → new data arrives → continue training from the served
model → the running server picks the new version up, without a failed request."""
import json
import threading

import numpy as np
import pytest
import requests
from sklearn.datasets import load_digits

from serving.process import ServerProcess
from tests.pipeline_cli import run_pipeline

pytestmark = pytest.mark.slow


def accuracy(server: ServerProcess, x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    response = requests.post(f"{server.url}/v1/models/digits:predict",
                             data=json.dumps({"instances": x.tolist()}), timeout=30).json()
    predicted = np.array([p["class_id"] for p in response["predictions"]])
    return float((predicted == y).mean()), requests.get(f"{server.url}/v1/models/digits", timeout=10).text


def test_update_from_the_served_model_on_new_data(tmp_path):
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    np.savez(tmp_path / "old.npz", x=x[:900], y=y[:900])
    np.savez(tmp_path / "new.npz", x=16 - x[900:1597], y=y[900:1597])  # the ink is inverted from now on
    x_new, y_new = 16 - x[1597:], y[1597:]  # held out from both runs
    common = ("data.input_shape=[8, 8, 1]", "compress.variants=[]", "serve.smoke=false", "evaluate.min_accuracy=0",
              "train.epochs=10", "train.verbose=0", f"push.repository={tmp_path / 'repo'}", "push.model_name=digits")

    first = run_pipeline(tmp_path, f"data.source={tmp_path / 'old.npz'}", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    server = ServerProcess("--model_name=digits", f"--model_base_path={tmp_path / 'repo' / 'digits'}", "--port=0",
                           "--file_system_poll_wait_seconds=1", log_dir=tmp_path)
    try:
        server.wait_available("digits", 1)
        before, _ = accuracy(server, x_new, y_new)
        failures, stop = [], threading.Event()

        def keep_predicting():
            with requests.Session() as session:
                while not stop.is_set():
                    answer = session.post(f"{server.url}/v1/models/digits:predict",
                                          data=json.dumps({"instances": x_new[:1].tolist()}), timeout=30)
                    if answer.status_code != 200:
                        failures.append(answer.text)

        load = threading.Thread(target=keep_predicting)
        load.start()
        update = run_pipeline(tmp_path, f"data.source={tmp_path / 'new.npz'}", "train.init_from=latest", *common)
        assert update.returncode == 0, update.stderr[-3000:]
        assert "train: warm start from" in update.stdout
        server.wait_available("digits", 2)
        stop.set()
        load.join()
        after, status = accuracy(server, x_new, y_new)
    finally:
        server.stop()
    assert failures == []
    assert [s["version"] for s in json.loads(status)["model_version_status"]][0] == "2"
    assert after > before + 0.2, (before, after)
