"""serving.Server (the server as a context manager), the errors a newcomer meets first (a port in use, a
client with no server to talk to), and a graceful shutdown."""
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from localhost.ports import free_port
import serving
from serving.client import GrpcClient, RestClient, ServingClientError
from serving.process import ServerProcess

# its tests start servers: in one worker they run in turn (spread over two, their starts overlap)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_server")]


def test_a_server_in_a_with_block(half_plus_two_base):
    with serving.Server(half_plus_two_base) as server:
        assert server.models == ["half_plus_two"]
        by_rest = server.rest.predict("half_plus_two", np.array([[1.0], [4.0]], np.float32))
        by_grpc = server.grpc.predict("half_plus_two", [[1.0], [4.0]])
        assert by_rest["y"].tolist() == by_grpc["y"].tolist() == [[2.5], [4.0]]
        process = server.process.process
    assert process.poll() is not None  # stopped on exit


PORT_IN_USE = [  # (flag, the other port's flag, the one line expected)
    ("--rest_api_port", "--port=0", "Failed to start HTTP Server at 127.0.0.1:{port} (--rest_api_port={port}: "
                                    "Address already in use)"),
    ("--port", "--rest_api_port=0", "Failed to start server. Error: INVALID_ARGUMENT: Failed to BuildAndStart gRPC "
                                    "server at 127.0.0.1:{port} (--port={port}: cannot bind)"),
]


def test_a_port_in_use_is_one_line_before_any_model_loads(half_plus_two_base):
    """TF Serving's words (server.cc, main.cc), then ours; the ports are taken before the models load. Both servers
    start at once (each is mostly TF's import)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        servers = [subprocess.Popen([sys.executable, "-m", "serving", f"{flag}={port}", other, "--host=127.0.0.1",
                                     f"--model_base_path={half_plus_two_base}"], stderr=subprocess.PIPE, text=True)
                   for flag, other, _ in PORT_IN_USE]
        errors = [server.communicate(timeout=120)[1] for server in servers]
    for server, stderr, (_, _, message) in zip(servers, errors, PORT_IN_USE):
        assert server.returncode == 1, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(message.format(port=port)) and last.endswith("stop it, or choose another port.")
        assert "Traceback" not in stderr and "Loaded" not in stderr


def test_a_client_without_a_server_says_how_to_start_one():
    port = free_port()
    for client in (RestClient(f"http://127.0.0.1:{port}", timeout_s=5), GrpcClient(f"127.0.0.1:{port}", timeout_s=5)):
        with client, pytest.raises(ServingClientError) as info:
            client.status("digits")
        assert info.value.status == "UNAVAILABLE" and "make serve" in info.value.message


def batching_server(tmp_path, model_base, timeout_micros: int, *flags: str) -> tuple[ServerProcess, int]:
    """half_plus_two served with batches of up to 1,000 rows that wait `timeout_micros` to fill, and its gRPC port."""
    (tmp_path / "batching.config").write_text(
        f"max_batch_size {{ value: 1000 }} batch_timeout_micros {{ value: {timeout_micros} }}")
    grpc_port = free_port()
    server = ServerProcess(f"--model_base_path={model_base}", "--model_name=half_plus_two", f"--port={grpc_port}",
                           "--enable_batching", f"--batching_parameters_file={tmp_path / 'batching.config'}", *flags,
                           log_dir=tmp_path)
    server.wait_available("half_plus_two")
    return server, grpc_port


def bare_predict(channel: grpc.Channel):
    """Predict on `channel` as grpc's own callable (futures; codes and details as the server sent them), and a
    request of one row for it."""
    predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                  request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                  response_deserializer=predict_pb2.PredictResponse.FromString)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    return predict, request


def test_sigterm_drains_requests_received_refuses_later_ones_and_exits_in_time(tmp_path, half_plus_two_base):
    """Requests held in the batcher (a 1 s batch timeout) when SIGTERM arrives are all answered, and so are 200
    gRPC calls sent just before it (they were CANCELLED once; with a thread each, as here, all wait in one batch; with
    fewer, those waiting for a thread are answered too, in later batches, within the drain); status (what a readiness
    probe asks) answers 503 meanwhile; new connections are refused, and calls made later on a connection already
    open get UNAVAILABLE (they got CANCELLED). A REST body that never arrives holds its request in flight past the
    2 s drain: the server exits 0 within the drain and a second."""
    server, grpc_port = batching_server(tmp_path, half_plus_two_base, 1_000_000, "--drain_timeout_s=2",
                                        "--grpc_max_threads=256")
    readiness = requests.Session()  # a probe's keep-alive connection, open before the signal
    assert readiness.get(f"{server.url}/v1/models/half_plus_two", timeout=10).status_code == 200
    answers = []

    def rest(value: float) -> None:
        with requests.Session() as session:  # a connection of its own, accepted before the signal
            answers.append(session.post(f"{server.url}/v1/models/half_plus_two:predict",
                                        json={"instances": [[value]]}, timeout=30).json())

    def grpc_call() -> None:
        with GrpcClient(f"127.0.0.1:{grpc_port}") as client:
            answers.append({"predictions": client.predict("half_plus_two", [[2.0]])["y"].tolist()})

    threads = [threading.Thread(target=rest, args=(float(i),)) for i in range(10)] + \
        [threading.Thread(target=grpc_call) for _ in range(4)]
    for thread in threads:
        thread.start()
    stalled = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)  # its body never comes
    stalled.sendall(b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    predict, request = bare_predict(channel)
    predict(request, timeout=30)  # connected
    time.sleep(0.4)  # every request is waiting for its batch to fill
    burst = [predict.future(request, timeout=30) for _ in range(200)]
    server.process.terminate()
    signalled = time.monotonic()
    time.sleep(0.1)
    probe = readiness.get(f"{server.url}/v1/models/half_plus_two", timeout=10)
    assert probe.status_code == 503 and probe.json() == {"error": "Server is shutting down"}
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/v1/models/half_plus_two", timeout=5)  # a new connection: not accepted
    time.sleep(0.4)  # past the settling: what arrives now arrived after the signal
    with pytest.raises(grpc.RpcError) as late:
        predict(request, timeout=10)
    assert (late.value.code(), late.value.details()) == (grpc.StatusCode.UNAVAILABLE,
                                                         "Server is shutting down; retry with another server")
    assert [f.result().outputs["y"].float_val[0] for f in burst] == [2.5] * 200
    for thread in threads:
        thread.join(timeout=30)
    assert server.process.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 2 + 1
    expected = sorted([[[0.5 * i + 2.0]] for i in range(10)] + [[[3.0]]] * 4)
    assert sorted(a["predictions"] for a in answers) == expected  # all 14, none lost
    stalled.close()
    channel.close()


def test_sigterm_answers_grpc_calls_that_were_waiting_for_a_thread_and_refuses_later_ones(tmp_path, half_plus_two_base):
    """Two threads for gRPC calls, six calls in flight when SIGTERM comes: four wait for a thread, and are answered
    in later batches within the drain; a call that arrives after the refusals began waits for a thread too, and
    gets UNAVAILABLE from it."""
    server, grpc_port = batching_server(tmp_path, half_plus_two_base, 300_000, "--drain_timeout_s=10",
                                        "--grpc_max_threads=2")
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        predict, request = bare_predict(channel)
        predict(request, timeout=30)  # connected
        calls = [predict.future(request, timeout=30) for _ in range(6)]
        time.sleep(0.1)  # two in the batch queue, four waiting for a thread
        server.process.terminate()
        time.sleep(0.5)  # past the settling
        late = predict.future(request, timeout=30)
        assert [call.result().outputs["y"].float_val[0] for call in calls] == [2.5] * 6
        with pytest.raises(grpc.RpcError) as refused:
            late.result()
    assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.UNAVAILABLE,
                                                               "Server is shutting down; retry with another server")
    assert server.process.wait(timeout=30) == 0
    assert "still in flight" not in server.log.read_text()


def test_grpc_calls_past_the_in_flight_bound_are_refused_at_once_not_queued_for_a_thread(tmp_path, half_plus_two_base):
    """--max_requests_in_flight=3 with one thread for gRPC calls: of five calls held by a 1 s batch timeout, one
    runs, two wait for the thread, and two are refused at once by gRPC's core."""
    server, grpc_port = batching_server(tmp_path, half_plus_two_base, 1_000_000, "--max_requests_in_flight=3",
                                        "--grpc_max_threads=1")
    try:
        with GrpcClient(f"127.0.0.1:{grpc_port}", timeout_s=30) as client:
            client.status("half_plus_two")  # connected
            started = time.monotonic()
            with ThreadPoolExecutor(5) as pool:
                calls = [pool.submit(client.predict, "half_plus_two", [[1.0]]) for _ in range(5)]
                time.sleep(0.5)  # before the first batch's timeout
                refused = [call for call in calls if call.done()]
                assert [(call.exception().status, call.exception().message) for call in refused] == \
                    [("RESOURCE_EXHAUSTED", "Concurrent RPC limit exceeded!")] * 2
                assert [call.result()["y"].tolist() for call in calls if call not in refused] == [[[2.5]]] * 3
            assert time.monotonic() - started > 2  # the three ran one after another, each in a batch of its own
    finally:
        server.stop()


def test_a_body_that_never_arrives_gets_408_and_a_request_past_the_deadline_504(tmp_path, half_plus_two_base):
    """Content-Length promises 100 bytes, 10 come: the connection is not held for ever (--rest_api_timeout_in_ms);
    a request that waits 2 s for its batch to fill is answered at that deadline too."""
    (tmp_path / "batching.config").write_text("max_batch_size { value: 2 } batch_timeout_micros { value: 2000000 }")
    server = ServerProcess(f"--model_base_path={half_plus_two_base}", "--model_name=half_plus_two", "--port=0",
                           "--rest_api_timeout_in_ms=700", "--enable_batching",
                           f"--batching_parameters_file={tmp_path / 'batching.config'}", log_dir=tmp_path)
    try:
        server.wait_available("half_plus_two")
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as connection:
            connection.sendall(b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: 100\r\n\r\n" + b'{"instances')
            started = time.monotonic()
            answer = b""
            while chunk := connection.recv(4096):  # until the server closes the connection
                answer += chunk
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408") and b"Request body not received within 700 ms" in answer
        assert 0.5 < waited < 5
        started = time.monotonic()
        late = requests.post(f"{server.url}/v1/models/half_plus_two:predict", json={"instances": [[1.0]]}, timeout=10)
        assert late.status_code == 504 and 0.5 < time.monotonic() - started < 1.5
        assert late.json() == {"error": "Deadline exceeded: the request took longer than 700 ms (--rest_api_timeout_in_ms)"}
        assert requests.get(f"{server.url}/v1/models/half_plus_two", timeout=10).ok
    finally:
        server.stop()


def test_the_descriptor_limit_is_raised_to_hold_the_connection_caps(caplog):
    """EMFILE from a flood of connections took down both ports: the soft limit goes up to the hard one, and caps
    that even that cannot hold are said at start."""
    import resource

    from serving.server import DESCRIPTOR_RESERVE, fit_descriptor_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        with caplog.at_level("WARNING", logger="serving"):
            fit_descriptor_limit([10, 10])
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard and caplog.text == ""
            fit_descriptor_limit([hard, 0])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert f"Open files limit {hard}: the connection caps" in caplog.text
    assert f"{hard} and 0; 0 is none) and {DESCRIPTOR_RESERVE} descriptors" in caplog.text
