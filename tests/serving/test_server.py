"""serving.Server (the server as a context manager) and the errors a newcomer meets first: a port in use,
a client with no server to talk to."""
import socket
import subprocess
import sys

import numpy as np
import pytest

import serving
from serving.client import GrpcClient, RestClient, ServingClientError
from serving.local import free_port

pytestmark = pytest.mark.slow


def test_a_server_in_a_with_block(half_plus_two_base):
    with serving.Server(half_plus_two_base) as server:
        assert server.models == ["half_plus_two"]
        by_rest = server.rest.predict("half_plus_two", np.array([[1.0], [4.0]], np.float32))
        by_grpc = server.grpc.predict("half_plus_two", [[1.0], [4.0]])
        assert by_rest["y"].tolist() == by_grpc["y"].tolist() == [[2.5], [4.0]]
        process = server.process.process
    assert process.poll() is not None  # stopped on exit


def test_a_port_in_use_is_one_line(half_plus_two_base):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "serving", f"--rest_api_port={port}", "--port=0",
                                 "--host=127.0.0.1", f"--model_base_path={half_plus_two_base}"],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"--rest_api_port={port}: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "choose another port" in result.stderr and "Traceback" not in result.stderr


def test_a_client_without_a_server_says_how_to_start_one():
    port = free_port()
    for client in (RestClient(f"http://127.0.0.1:{port}", timeout_s=5), GrpcClient(f"127.0.0.1:{port}", timeout_s=5)):
        with client, pytest.raises(ServingClientError) as info:
            client.status("digits")
        assert info.value.status == "UNAVAILABLE" and "make serve" in info.value.message
