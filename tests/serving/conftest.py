"""The server tests import their helpers (half_plus_two, digits_model, repo_files) by module name. The fixtures:

- `half_plus_two_base` (tests/conftest.py): TF Serving's test model, built directly.
- `digits`: a digits classifier built directly (digits_model.py), with the pipeline's signatures for digits. It
  stands in, for these tests, for tests/conftest.py's model trained by a pipeline run.
- `tabular`: a model of several named inputs (a float row `x` and a string `city`) with classify and regress
  signatures on tf.Examples, shipping the pipeline's schema.json (tabular_model.py).
- `convolution`: a small Conv2D model whose input is a rank-4 placeholder (conv_model.py): a tensor of lower rank
  would abort the server (TF's oneDNN Conv2D).
- `reference_server`: one server for test_rest_api.py and test_grpc_api.py, started once; both modules are in
  xdist group "reference_server", so `-n ... --dist loadgroup` runs them in one worker.

Other modules start servers of their own, per module or per test (serving.process.ServerProcess). Each module
that starts servers is an xdist group of its own: a module-scoped server starts once, and tests that each start
one run in turn in one worker (spread over both workers their starts overlap, measured slower on two cores).
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # half_plus_two, digits_model, repo_files

from localhost.ports import free_port  # noqa: E402
from repo_files import copy_version, write_config  # noqa: E402
from serving.process import ServerProcess  # noqa: E402

# test_grpc_api.py sends a 6 MB message, 1.5 million rows of half_plus_two: a batch must hold them
REFERENCE_BATCHING = ("max_batch_size { value: 2000000 } batch_timeout_micros { value: 5000 } "
                      "num_batch_threads { value: 2 }")


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """digits_model.Digits: version 1 of a digits classifier, and held-out rows with their labels."""
    import digits_model

    return digits_model.build(tmp_path_factory.mktemp("digits") / "digits")


@pytest.fixture(scope="session")
def tabular(tmp_path_factory):
    """tabular_model.py's model as version 1 of its base path (returned)."""
    import tabular_model

    return tabular_model.build(tmp_path_factory.mktemp("tabular") / "tabular")


@pytest.fixture(scope="session")
def convolution(tmp_path_factory):
    """conv_model.py's model as version 1 of its base path (returned)."""
    import conv_model

    return conv_model.build(tmp_path_factory.mktemp("conv") / "conv")


@pytest.fixture(scope="session")
def reference_server(tmp_path_factory, half_plus_two_base, digits, tabular, convolution):
    """The server test_rest_api.py and test_grpc_api.py query (neither changes what it serves), with what both
    need: half_plus_two 123 and 124 (every version served, label "stable" -> 123), digits, tabular and conv; REST and
    gRPC (`target`); batching; Prometheus metrics at TF Serving's path; REST bodies up to 1 MB."""
    work = tmp_path_factory.mktemp("reference")
    copy_version(half_plus_two_base, 123, work / "hpt" / "123")
    copy_version(half_plus_two_base, 123, work / "hpt" / "124")
    labels = 'model_version_policy { all {} } version_labels { key: "stable" value: 123 }'
    config = write_config(work / "models.config",
                          [("half_plus_two", work / "hpt", labels), ("digits", digits.base, ""),
                           ("tabular", tabular, ""), ("conv", convolution, "")])
    (work / "monitoring.config").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    (work / "batching.config").write_text(REFERENCE_BATCHING)
    grpc_port = free_port()
    process = ServerProcess(
        f"--model_config_file={config}", f"--port={grpc_port}", "--enable_batching",
        f"--batching_parameters_file={work / 'batching.config'}",
        f"--monitoring_config_file={work / 'monitoring.config'}", "--rest_api_max_body_bytes=1000000",
        "--allow_version_labels_for_unavailable_models", log_dir=work)
    process.target = f"127.0.0.1:{grpc_port}"
    process.wait_available("half_plus_two", 124)
    process.wait_available("digits")
    process.wait_available("tabular")
    process.wait_available("conv")
    yield process
    assert process.stop() == 0, process.log_tail()
