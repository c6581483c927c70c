"""pipeline/configs/images.yaml and custom_model.yaml as shipped: each meets the figure it states, pushes a model
named after itself, and the served model takes what a client has (image files; rows) and answers exactly
as the training pipeline computes."""
import io

import numpy as np
import pytest
import tf_keras as keras
from PIL import Image

from pipeline.artifacts import raw_inputs, read_schema, read_split
from serving.client import GrpcClient, RestClient
from tests.integration.example_configs import assert_meets_its_stated_figure, example_fixture

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_example_images")]  # module fixture: once, on one worker
images = example_fixture("images")
custom = example_fixture("custom_model")


def published_model(run) -> keras.Model:
    """The model the run published (custom_model's builder imported first: the model holds its layers)."""
    import models

    models.import_model_code(run.name == "custom_model" and "examples.custom_model:build" or "cnn")
    return run.published_model()


def test_images_meets_its_stated_accuracy(images):
    assert_meets_its_stated_figure(images)
    assert "ingest: decoding and resizing 600 images of 4 classes to [32, 32]x3" in \
        (images.run_dir / "ingest" / "log.txt").read_text()


def test_served_predictions_on_image_files_equal_the_training_pipelines(images):
    dataset, schema = images.run_dir / "validate" / "dataset", read_schema(images.run_dir / "validate" / "schema")
    files = raw_inputs(dataset, schema, 16)["x"]
    expected = published_model(images).predict(read_split(dataset, "test").x[:16], verbose=0)  # pixels ingest made
    server, grpc_port = images.serve()
    try:
        with RestClient(server.url) as rest, GrpcClient(f"127.0.0.1:{grpc_port}") as grpc_client:
            for client in (rest, grpc_client):
                served = client.predict("images", files)["probabilities"]
                np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
            bigger = io.BytesIO()  # a client's own file: JPEG, twice the size; the model resizes it
            Image.open(io.BytesIO(files[0])).resize((64, 64)).save(bigger, "JPEG", quality=95)
            answer = rest.predict("images", np.array([bigger.getvalue()], dtype=object))
            assert answer["class_id"][0] == expected[0].argmax()
            (top, _), *_ = sorted(rest.classify("images", [{"x": files[0]}], signature_name="classify")[0], key=lambda c: -c[1])
            assert top == schema["classes"][expected[0].argmax()]
            explained = rest.predict("images", files[:2], signature_name="explain")  # shares of the decoded pixels
            assert explained["attributions"].shape == (2, 32, 32, 3)
            np.testing.assert_allclose(explained["score"], expected[:2].max(axis=1), rtol=1e-4)
    finally:
        server.stop()


def test_custom_model_trains_a_subclassed_model_with_the_users_step(custom):
    assert_meets_its_stated_figure(custom)
    log = (custom.run_dir / "train" / "log.txt").read_text()
    assert "train: small_conv_net" in log and "loop custom with step examples.custom_model:train_step" in log
    history = (custom.run_dir / "train" / "history.json").read_text()
    assert '"val_accuracy"' in history and (custom.run_dir / "train" / "logs" / "validation").is_dir()


def test_the_subclassed_model_serves_predict_and_classify_like_the_trained_one(custom):
    test = read_split(custom.run_dir / "validate" / "dataset", "test")
    expected = published_model(custom).predict(test.x[:8], verbose=0)
    server, grpc_port = custom.serve()
    try:
        with RestClient(server.url) as rest, GrpcClient(f"127.0.0.1:{grpc_port}") as grpc_client:
            for client in (rest, grpc_client):
                np.testing.assert_allclose(client.predict("custom_model", test.x[:8])["probabilities"], expected,
                                           rtol=1e-5, atol=1e-6)
            scores = rest.classify("custom_model", [{"x": test.x[0].tolist()}], signature_name="classify")[0]
            assert max(scores, key=lambda c: c[1])[0] == str(expected[0].argmax())
    finally:
        server.stop()
