"""The REST API against a real server on 127.0.0.1, with TF Serving's own cases as data.

Cases come from TF Serving's http_rest_api_handler_test.cc (half_plus_two, versions 123/124,
label "stable" -> 123) plus the bad inputs every client eventually sends. Adding a case is
adding a row.
"""
from __future__ import annotations

import gzip
import json
import threading

import numpy as np
import pytest
import requests
import tensorflow as tf
from metric_lines import series_value

from serving.client import RestClient, ServingClientError

pytestmark = pytest.mark.xdist_group("reference_server")
HPT = "/v1/models/half_plus_two"


@pytest.fixture
def server(reference_server):
    """The server this module shares with test_grpc_api.py (conftest.py)."""
    return reference_server


def call(server, method: str, path: str, body: str | bytes | None = None) -> requests.Response:
    return requests.request(method, server.url + path, data=body, timeout=30)


# (method, path, body, HTTP status, expected JSON body) -- http_rest_api_handler_test.cc, Predict/Regress/Classify
GOLDEN = [
    ("POST", f"{HPT}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}', 200, {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    ("POST", f"{HPT}/versions/123:predict", '{"instances": [1.0, 2.0]}', 200, {"predictions": [2.5, 3.0]}),
    ("POST", f"{HPT}/labels/stable:predict", '{"instances": [1.0, 2.0]}', 200, {"predictions": [2.5, 3.0]}),
    ("POST", f"{HPT}/versions/123:predict", '{"signature_name": "serving_default", "instances": [3.0, 4.0]}', 200,
     {"predictions": [3.5, 4.0]}),
    ("POST", f"{HPT}/versions/123:predict", '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}', 200,
     {"outputs": [3.5, 4.0]}),
    ("POST", f"{HPT}:regress", '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }', 200,
     {"results": [42]}),
    ("POST", f"{HPT}/labels/stable:regress", '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }',
     200, {"results": [42]}),
    ("POST", f"{HPT}:classify", '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }', 200,
     {"results": [[["", 12]]]}),
    ("POST", f"{HPT}/labels/stable:classify", '{"signature_name": "classify_x_to_y", "examples": [ { "x": 10.0 } ] }',
     200, {"results": [[["", 7]]]}),
    ("POST", f"{HPT}:regress",
     '{"signature_name": "regress_x_to_y2", "context": {"x": 4.0}, "examples": [{}, {"x": 2.0}]}', 200,
     {"results": [5.0, 4.0]}),
]


@pytest.mark.parametrize("method, path, body, status, expected", GOLDEN)
def test_tf_serving_golden_cases(server, method, path, body, status, expected):
    response = call(server, method, path, body)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == expected


# (method, path, body, HTTP status, a substring of the error) -- UnsupportedApiCalls, *Errors, and bad input
ERRORS = [
    ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
    ("POST", "/v1/foo", None, 400, "Malformed request: POST /v1/foo"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v1/models/debug/model_name", None, 400, "Malformed request"),
    ("POST", "/v1/models", None, 400, "Malformed request"),
    ("GET", "/v1/models/foo:predict", None, 400, "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", None, 400, "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", None, 400, "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", None, 400, "Malformed request"),
    ("POST", "/v1/models/foo/metadata", None, 400, "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", None, 400, "Malformed request"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", None, 400, "Malformed request"),
    ("POST", "/v1/models/foo/versions/some_label:regress", None, 400, "Malformed request"),
    ("PUT", f"{HPT}:predict", "{}", 400, "Malformed request: PUT"),
    ("POST", f"{HPT}:PREDICT", '{"instances": [1.0]}', 400, "Malformed request: POST /v1/models/half_plus_two:PREDICT"),
    ("POST", "/v1/models/foo:predict", '{ "instances": [1] }', 404, "Servable not found for request: Latest(foo)"),
    ("POST", "/v1/models/foo/versions/50:predict", '{ "instances": [1] }', 404, "Specific(foo, 50)"),
    ("POST", f"{HPT}99:predict", '{ "instances": [1] }', 404, "Latest(half_plus_two99)"),
    ("POST", f"{HPT}/versions/50:predict", '{"instances": [1.0]}', 404, "Specific(half_plus_two, 50)"),
    ("POST", f"{HPT}:predict", "", 400, "JSON Parse error: The document is empty"),
    ("POST", f"{HPT}:predict", "instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    ("POST", "/v1/models/foo:predict", "instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    ("POST", f"{HPT}:predict", '{ "instances": ["x", "y"] }', 400, "not of expected type: float"),
    ("POST", f"{HPT}/labels/nonexistent:predict", '{ "instances": [1.0] }', 400,
     "Unrecognized servable version label: nonexistent"),
    ("POST", f"{HPT}:predict", '{ "signature_name": 100 }', 400, "'signature_name' key must be a string value."),
    ("POST", f"{HPT}:predict", '{"signature_name": "nope", "instances": [1.0]}', 400,
     'Serving signature name: "nope" not found in signature def'),
    ("POST", f"{HPT}:predict", '{"instances": [[1.0, 2.0], [3.0]]}', 400, ""),
    ("POST", f"{HPT}:predict", '{"instances": [[[1.0]], 2.0]}', 400, ""),
    ("POST", f"{HPT}:predict", '{"instances": []}', 400, ""),
    ("POST", f"{HPT}:predict", '{"instances": [{"x": [1.0]}, {"y": [2.0]}]}', 400, ""),
    ("POST", f"{HPT}:predict", '{"instances": [1.0], "inputs": [1.0]}', 400, ""),
    ("POST", f"{HPT}:predict", '{"foo": [1.0]}', 400, ""),
    ("POST", f"{HPT}:predict", '[1.0, 2.0]', 400, ""),
    ("POST", f"{HPT}:predict", b'{"instances": ["\xff\xfe"]}', 400, ""),
    ("POST", f"{HPT}:regress", '{"signature_name": "regress_x_to_y", "examples": []}', 400, ""),
    ("POST", f"{HPT}:regress", '{"signature_name": "regress_x_to_y", "examples": [{"x": "a"}]}', 400, ""),
    ("POST", f"{HPT}:regress", '{"signature_name": "nope", "examples": [{"x": 1.0}]}', 400,
     "No signature was found with the name: nope"),
    ("POST", f"{HPT}:classify", '{"examples": [{"x": 1.0}]}', 400, "No classification inputs found in SignatureDef"),
    # classifier.cc / regressor.cc check the number of outputs before the input's name
    ("POST", f"{HPT}:classify", '{"signature_name": "classify_x_to_y_y2_y3", "examples": [{"x": 1.0}]}', 400,
     "Expected one or two output Tensors, found 3"),
    ("POST", f"{HPT}:regress", '{"signature_name": "regress_x_to_y_and_y2", "examples": [{"x": 1.0}]}', 400,
     "Expected one output Tensor."),
    ("POST", f"{HPT}:regress", '{"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]}', 400,
     "No regression outputs found in SignatureDef: inputs {"),
    # a signature whose input is not the serialized examples: the session's words (FunctionCallFrame::SetArgs)
    ("POST", f"{HPT}:regress", '{"signature_name": "regress_x2_to_y3", "examples": [{"x": 1.0}]}', 400,
     "Expects arg[0] to be float but string is provided"),
    # routes match net_http's uri_path(), the path with its query string (evhttp_request.cc)
    ("POST", f"{HPT}:predict?x=1", '{"instances": [1.0]}', 400, "Malformed request: POST /v1/models/half_plus_two:predict?x=1"),
    ("GET", f"{HPT}/metadata?x=1", None, 400, "Malformed request: GET /v1/models/half_plus_two/metadata?x=1"),
    ("GET", f"{HPT}?x=1", None, 404, "Could not find any versions of model half_plus_two?x=1"),
    ("POST", "/v1/models/digits:predict", '{"instances": [[1.0, 2.0]]}', 400,
     "Incompatible shapes: [1,2] vs. [1,64]\n\t [[{{function_node "),  # the session's error, as TF Serving passes it on
    # a placeholder fed a tensor of another rank: refused, where TF's oneDNN Conv2D would abort the server on it
    ("POST", "/v1/models/conv:predict", '{"instances": [[1.0]]}', 400,
     "input 'x' has shape [1,1], which cannot be fed to the signature's [-1,8,8,3]: it needs 4 dimensions, not 2"),
    ("POST", "/v1/models/conv:predict", '{"inputs": [[[[[1.0, 2.0, 3.0]]]]]}', 400,
     "input 'x' has shape [1,1,1,1,3], which cannot be fed to the signature's [-1,8,8,3]: it needs 4 dimensions, "
     "not 5"),
    ("POST", f"{HPT}:predict", '{"instances": ' + "[" * 70 + "1.0" + "]" * 70 + "}", 400,
     "JSON Value nests lists 70 levels deep; a tensor here has at most 64 dimensions"),  # was numpy's 500
    ("POST", f"{HPT}:predict", '{"instances": [' + "9" * 5000 + "]}", 400,
     "JSON Parse error: Number too big to be stored in double."),  # was Python's int-conversion limit as a 500
    ("GET", "/v1/models/foo", None, 404, "Could not find any versions of model foo"),
    ("GET", f"{HPT}/versions/7", None, 404, "Could not find version 7 of model half_plus_two"),
    ("GET", f"{HPT}/versions/7/metadata", None, 404, "Specific(half_plus_two, 7)"),
]


@pytest.mark.parametrize("method, path, body, status, message", ERRORS)
def test_errors_have_tf_servings_status_and_an_error_body(server, method, path, body, status, message):
    response = call(server, method, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error
    assert error, "the error must say what went wrong"


@pytest.mark.parametrize("path", ["/v1/models/foo/versions/18446744073709551615:regress",
                                  f"{HPT}/versions/99999999999999999999:predict", f"{HPT}/versions/9223372036854775808"])
def test_a_version_beyond_int64_is_a_400_with_no_body(server, path):
    """absl::SimpleAtoi fails in ParseModelInfo, whose error ProcessRequest returns before MakeJsonFromStatus: the
    400 has TF Serving's JSON content type and no body (UnsupportedApiCalls checks only the status)."""
    response = call(server, "POST" if ":" in path else "GET", path, '{"instances": [1.0]}')
    assert (response.status_code, response.headers["Content-Type"], response.content) == (400, "application/json", b"")
    largest = call(server, "GET", f"{HPT}/versions/9223372036854775807")  # fits: looked up, and not found
    assert (largest.status_code, largest.json()) == (
        404, {"error": "Could not find version 9223372036854775807 of model half_plus_two"})


def test_deep_nesting_is_parsed_as_tf_servings_iterative_rapidjson_parses_it(server):
    """json_tensor_test.cc DeeplyNested*: a deep value under a key the request ignores is no error, one as the
    signature name is the error any non-string name gets; a deep tensor is refused as more dimensions than a tensor
    has. 400,000 levels, where TF Serving's test has 500,000: this server's body limit is 1 MB."""
    nested = "[" * 400_000 + "]" * 400_000
    ignored = call(server, "POST", f"{HPT}:predict", '{"instances": [1.0], "nested": ' + nested + "}")
    assert (ignored.status_code, ignored.json()) == (200, {"predictions": [2.5]})
    examples = call(server, "POST", f"{HPT}:regress",
                    '{"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}], "nested": ' + nested + "}")
    assert (examples.status_code, examples.json()) == (200, {"results": [2.5]})
    signature = call(server, "POST", f"{HPT}:predict", '{"signature_name": ' + nested + ', "instances": [1.0]}')
    assert signature.status_code == 400
    assert signature.json()["error"] == ('JSON Value: {\n    "signature_name": ' + "[" * 232 + " not formatted "
                                         "correctly. 'signature_name' key must be a string value.")
    tensor = call(server, "POST", f"{HPT}:predict", '{"instances": ' + nested.replace("[]", "[1.0]") + "}")
    assert (tensor.status_code, tensor.json()) == (400, {"error": "Failed to process element: 0 of 'instances' list. "
                                                         "Error: INVALID_ARGUMENT: Lists nested 399999 deep exceed the "
                                                         "254 dimensions a tensor can have"})
    malformed = call(server, "POST", f"{HPT}:predict", '{"instances": [1.0], "nested": ' + nested[:-1] + "}")
    assert (malformed.status_code, malformed.json()) == (
        400, {"error": "JSON Parse error: Missing a comma or ']' after an array element. at offset: 800030"})


@pytest.mark.parametrize("origin, status", [("http://example.com", 200), ("https://a", 200), (None, 400), ("a.com", 400)])
def test_a_cors_preflight_is_answered_with_no_body(server, origin, status):
    """http_server.cc answers OPTIONS itself (an Origin with http(s):// or FAILED_PRECONDITION), with no body and
    no type of its own: libevent's default."""
    headers = {"Origin": origin} if origin else {}
    response = requests.options(f"{server.url}{HPT}:predict", headers=headers, timeout=10)
    assert (response.status_code, response.content) == (status, b"")
    assert response.headers["Content-Type"] == "text/html; charset=ISO-8859-1"
    assert "Access-Control-Allow-Origin" not in response.headers  # --rest_api_enable_cors_support is off


def test_metrics_with_a_query_string_is_refused_as_tf_serving_does(server):
    """http_server.cc ProcessPrometheusRequest compares the path with its query string to the metrics path."""
    response = call(server, "GET", "/monitoring/prometheus/metrics?x=1")
    assert (response.status_code, response.headers["Content-Type"], response.text) == (
        400, "text/plain", "Unexpected path: /monitoring/prometheus/metrics?x=1. Should be /monitoring/prometheus/metrics")


def test_outside_v1_is_libevents_404_page(server):
    for path in ("/index", "/statuspage", "/v2/models/x"):
        response = call(server, "GET", path)
        assert response.status_code == 404
        assert "<TITLE>404 Not Found</TITLE>" in response.text


def test_oversize_body_is_refused_and_the_server_keeps_serving(server):
    body = '{"instances": [' + ", ".join(["1.0"] * 300_000) + "]}"
    response = call(server, "POST", f"{HPT}:predict", body)
    assert response.status_code == 413
    assert "larger than the limit of 1000000 bytes" in response.json()["error"]
    assert call(server, "POST", f"{HPT}:predict", '{"instances": [1.0]}').json() == {"predictions": [2.5]}


def test_compressed_bodies_are_limited_once_decompressed_and_bad_ones_are_client_errors(server):
    def post(body: bytes, encoding: str) -> requests.Response:
        return requests.post(f"{server.url}{HPT}:predict", data=body, headers={"Content-Encoding": encoding},
                             timeout=30)

    assert post(gzip.compress(b'{"instances": [1.0]}'), "gzip").json() == {"predictions": [2.5]}
    bomb = gzip.compress(b'{"instances": [' + b"1.0, " * 2_000_000 + b"1.0]}")  # 10 MB in about 10 KB
    assert len(bomb) < 50_000
    answer = post(bomb, "gzip")
    assert answer.status_code == 413, answer.text
    assert "larger than the limit of 1000000 bytes (--rest_api_max_body_bytes) once decompressed" in answer.json()["error"]
    answer = post(b'{"instances": [1.0]}', "gzip")  # says gzip, is not
    assert answer.status_code == 400 and "cannot be read as Content-Encoding gzip" in answer.json()["error"]
    assert call(server, "POST", f"{HPT}:predict", '{"instances": [1.0]}').json() == {"predictions": [2.5]}


def test_error_body_is_formatted_like_rapidjson_pretty_writer(server):
    response = call(server, "GET", "/v1/models")
    assert response.text == '{\n    "error": "Missing model name in request."\n}'


def test_status_lists_versions_newest_first(server):
    states = call(server, "GET", HPT).json()["model_version_status"]
    assert [s["version"] for s in states] == ["124", "123"]
    assert states[0] == {"version": "124", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


def test_metadata_has_tf_servings_shape(server):
    metadata = call(server, "GET", f"{HPT}/versions/123/metadata").json()
    assert metadata["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"regress_x_to_y", "regress_x_to_y2", "regress_x2_to_y3", "classify_x_to_y",
                               "serving_default",  # TF Serving's five, then half_plus_two.py's malformed three
                               "regress_x_to_y_and_y2", "classify_x_to_y_y2_y3", "regress_x_to_misnamed_output"}
    x = signatures["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and x["name"] == "x:0"
    assert x["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "1", "name": ""}]
    assert signatures["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"


def test_concurrent_digits_requests_are_batched_and_exact(server, digits):
    model = tf.saved_model.load(str(digits.base / "1"))
    expected = model.signatures["serving_default"](x=tf.constant(digits.x_test[:64]))["probabilities"].numpy()
    results = [None] * 64

    def predict(i):
        body = json.dumps({"instances": digits.x_test[i : i + 1].tolist()})
        results[i] = requests.post(f"{server.url}/v1/models/digits:predict", data=body, timeout=30)

    threads = [threading.Thread(target=predict, args=(i,)) for i in range(64)]
    before = _digits_batches(server)  # the server is shared: count this test's batches only
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200][:2]
    probabilities = np.array([r.json()["predictions"][0]["probabilities"] for r in results])
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    batches, rows = (after - earlier for after, earlier in zip(_digits_batches(server), before))
    assert rows == 64 and batches < rows, "concurrent requests must be coalesced into fewer model calls"


def _digits_batches(server) -> tuple[float, float]:
    """(batches, rows) the server has run for digits version 1 so far."""
    metrics = call(server, "GET", "/monitoring/prometheus/metrics").text
    series = 'serving_batch_size_{}{{model="digits",version="1"}}'
    return series_value(metrics, series.format("count")), series_value(metrics, series.format("sum"))


def test_metrics_count_requests_by_model_version_api_and_status(server):
    call(server, "POST", f"{HPT}/versions/123:predict", '{"instances": [1.0]}')
    call(server, "POST", "/v1/models/nope:predict", '{"instances": [1.0]}')
    metrics = call(server, "GET", "/monitoring/prometheus/metrics").text
    ok = 'serving_requests_total{api="predict",entrypoint="REST",model="half_plus_two",status="OK",version="123"}'
    assert series_value(metrics, ok) >= 1
    unknown = 'serving_requests_total{api="predict",entrypoint="REST",model="(unknown)",status="NOT_FOUND",version=""}'
    assert series_value(metrics, unknown) >= 1 and 'model="nope"' not in metrics  # names clients make up: one series
    assert 'serving_model_version_state{model="half_plus_two",state="AVAILABLE",version="124"} 1.0' in metrics
    assert "serving_model_load_seconds_count" in metrics


def test_rest_client_round_trips_and_raises_typed_errors(server, digits):
    with RestClient(server.url) as client:
        y = client.predict("half_plus_two", [1.0, 2.0])["y"]
        assert y.dtype == np.float32 and y.tolist() == [2.5, 3.0]
        assert client.predict("half_plus_two", {"x": [3.0]}, version=123)["y"].tolist() == [3.5]
        assert client.regress("half_plus_two", [{"x": 80.0}], signature_name="regress_x_to_y", label="stable") == [42.0]
        assert client.classify("half_plus_two", [{"x": 20.0}], signature_name="classify_x_to_y") == [[("", 12.0)]]
        assert client.status("half_plus_two", version=123)[0]["state"] == "AVAILABLE"
        assert "serving_default" in client.metadata("digits")["signatures"]
        row = digits.x_test[0].tolist()
        classified = client.classify("digits", [{"x": row}], signature_name="classify")
        assert [label for label, _ in classified[0]] == [str(i) for i in range(10)]
        with pytest.raises(ServingClientError) as info:
            client.predict("nope", [1.0])
        assert info.value.status == 404 and "Servable not found" in info.value.message


def test_any_exception_becomes_a_serving_error_once(caplog):
    from serving.errors import Internal, NotFound, as_serving_error

    not_found = NotFound("no such model")
    assert as_serving_error(not_found, "REST GET /v1/models/x") is not_found
    with caplog.at_level("ERROR", logger="serving"):
        try:
            1 / 0
        except ZeroDivisionError as e:
            bug = as_serving_error(e, "REST POST /v1/models/x:predict")
    assert isinstance(bug, Internal) and (bug.http_status, bug.code.name) == (500, "INTERNAL")
    assert bug.message == "Internal error (ZeroDivisionError); the server's log has the details"
    assert "REST POST /v1/models/x:predict failed" in caplog.text and "Traceback" in caplog.text


def test_classify_and_regress_take_whole_numbers_among_floats(server):
    """A float feature may hold whole numbers beside floats (`2007` among `46.1, ...`), as a predict body may; TF
    Serving refuses such a list ("expecting type: float"). A list of whole numbers alone stays an int64_list."""
    import tabular_model

    rows = [([46.1, 13.2, 211.0, 4500.0, 2007], "rome"), ([1, 2, 3, 4, 5.5], "oslo")]
    examples = [{"x": x, "city": city} for x, city in rows]
    scores = [tabular_model.score(x, city) for x, city in rows]
    regressed = call(server, "POST", "/v1/models/tabular:regress",
                     json.dumps({"signature_name": "regress", "examples": examples}))
    assert regressed.status_code == 200, regressed.text
    assert regressed.json()["results"] == pytest.approx(scores, rel=1e-6)
    classified = call(server, "POST", "/v1/models/tabular:classify",
                      json.dumps({"signature_name": "classify", "examples": examples}))
    assert classified.status_code == 200, classified.text
    high = [1 / (1 + np.exp(-s)) for s in scores]
    assert [[label for label, _ in r] for r in classified.json()["results"]] == [["low", "high"]] * 2
    assert [r[1][1] for r in classified.json()["results"]] == pytest.approx(high, rel=1e-5)
    whole = call(server, "POST", "/v1/models/tabular:regress",
                 json.dumps({"signature_name": "regress", "examples": [{"x": [1, 2, 3, 4, 5], "city": "rome"}]}))
    assert whole.status_code == 400 and "Data types don't match" in whole.json()["error"], whole.text


def test_loading_models_logs_no_deprecation(server):
    """The reference server loaded TF1 and TF2 SavedModels and answered every API: its log says nothing of
    deprecated APIs (TF's loader used to warn on each start)."""
    assert "deprecat" not in server.log.read_text().lower()
