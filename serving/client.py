"""Clients for a TF Serving-compatible server (ours or tensorflow_model_server): one interface, two protocols.

`RestClient` speaks the REST API, `GrpcClient` gRPC; both have the same methods and return the same
things for the same call:

    predict(model, inputs)   -> {output name: numpy array}, dtypes as the signature declares them
    classify(model, examples) -> per example, [(label, score), ...]
    regress(model, examples)  -> per example, a float
    status(model)             -> [{"version": int, "state": str, "error_code": str, "error_message": str}], newest first
    metadata(model)           -> {"model": str, "version": int, "signatures": {key: {"method", "inputs", "outputs"}}}

`inputs` is {input name: array-like} (columns), a list of rows {input name: value} (TF Serving's row
format, `[{"x": [0.2, 1.5], "city": "rome"}, ...]`: turned into columns), or one array-like for a signature
with one input; values are cast to the signature's dtypes first (so float64 numpy arrays work over gRPC
too). Examples are
dicts of feature values, converted to tf.Example by the server's own rules (serving.codec) on both
protocols. A model's signatures are read once per client and spec (pushes that change them are
refused by default, see pipeline/stages/push.py). Every failure the server reports raises
`ServingClientError` with its status (HTTP status, or gRPC code name) and message.

Both take the same security options: `token` (sent as `Authorization: Bearer`, the server's
--auth_token_file), `ca_cert` (a PEM file: use TLS and trust this CA; REST also via an https:// URL) and
`client_cert` ((cert file, key file): mutual TLS).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
import requests
from google.protobuf import json_format

import repository
from serving import messages
from serving.codec import example_from_json
from serving.protos import MAX_MESSAGE_BYTES

DEFAULT_SIGNATURE = "serving_default"
START_ONE = ("Start one first: `make serve`, `python -m serving --rest_api_port=8501 --port=8500 --model_name=NAME "
             "--model_base_path=PATH`, or serving.Server(...) from Python.")
GRPC_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
PREDICTION = "/tensorflow.serving.PredictionService/"
MODEL_SERVICE = "/tensorflow.serving.ModelService/"


class ServingClientError(Exception):
    """The server answered with an error; `status` is the HTTP status (or gRPC code name)."""

    def __init__(self, status: int | str, message: str):
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


class ServingClient:
    """What both clients do alike; a subclass sends the requests in its protocol (the `_send_*` methods)."""

    def __init__(self):
        self._signatures: dict[tuple, dict] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # each protocol's client closes its connection

    def predict(self, model: str, inputs: Any, *, signature_name: str | None = None, version: int | None = None,
                label: str | None = None, output_filter: list[str] = ()) -> dict[str, np.ndarray]:
        spec = _spec(model, version, label)
        signature = self._signature(spec, signature_name or DEFAULT_SIGNATURE)
        if isinstance(inputs, list | tuple) and inputs and all(isinstance(row, dict) for row in inputs):
            inputs = _columns(inputs)
        if not isinstance(inputs, dict):
            if len(signature["inputs"]) != 1:
                raise ValueError(f"signature {signature_name or DEFAULT_SIGNATURE!r} of {model!r} takes inputs "
                                 f"{sorted(signature['inputs'])}: pass a dict of them")
            inputs = {next(iter(signature["inputs"])): inputs}
        arrays = {name: _as_array(value, signature["inputs"].get(name)) for name, value in inputs.items()}
        outputs = self._send_predict(spec, signature_name, arrays, list(output_filter), signature)
        return {name: _as_array(value, signature["outputs"].get(name)) for name, value in outputs.items()}

    def classify(self, model: str, examples: list[dict], *, context: dict | None = None,
                 signature_name: str | None = None, version: int | None = None,
                 label: str | None = None) -> list[list[tuple[str, float]]]:
        results = self._send_examples("classify", _spec(model, version, label), signature_name,
                                      [_as_json(e) for e in examples], None if context is None else _as_json(context))
        return [[(str(label), _float32(score)) for label, score in classes] for classes in results]

    def regress(self, model: str, examples: list[dict], *, context: dict | None = None,
                signature_name: str | None = None, version: int | None = None, label: str | None = None) -> list[float]:
        results = self._send_examples("regress", _spec(model, version, label), signature_name,
                                      [_as_json(e) for e in examples], None if context is None else _as_json(context))
        return [_float32(value) for value in results]

    def status(self, model: str, version: int | None = None, label: str | None = None) -> list[dict]:
        return self._send_status(_spec(model, version, label))

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        name, served_version, signature_defs = self._send_metadata(_spec(model, version, label))
        return {"model": name, "version": served_version,
                "signatures": repository.describe_signature_defs(signature_defs)}

    def _signature(self, spec: tuple, name: str) -> dict:
        """The signature's inputs and outputs, read once per spec; an unknown name gets empty ones, so the
        request goes out as given and the server answers with its own error."""
        if spec not in self._signatures:
            self._signatures[spec] = self.metadata(*spec)["signatures"]
        return self._signatures[spec].get(name, {"inputs": {}, "outputs": {}})


def _columns(rows: list[dict]) -> dict[str, list]:
    """Rows of named inputs as one column per input; every row must name the same inputs, each with the shape the
    first row gives it (TF Serving's row format)."""
    first = rows[0]
    for i, row in enumerate(rows[1:], start=1):
        if row.keys() != first.keys():
            raise ValueError(f"row {i} has inputs {sorted(row)}, row 0 has {sorted(first)}: every row must name the "
                             f"same inputs (or pass columns, {{name: [value per row]}})")
        for key in first:
            if np.shape(row[key]) != np.shape(first[key]):
                raise ValueError(f"row {i}, input {key!r}: shape {list(np.shape(row[key]))}, row 0 has "
                                 f"{list(np.shape(first[key]))}: an input must have the same shape in every row")
    return {key: [row[key] for row in rows] for key in first}


def _spec(model: str, version: int | None, label: str | None) -> tuple:
    if version is not None and label is not None:
        raise ValueError("pass `version` or `label`, not both")
    return model, None if version is None else int(version), label


def _float32(value: float) -> float:
    """A score or value as the float32 the model computed (REST's shortest decimal text and gRPC's float
    field give the same number then)."""
    return float(np.float32(value))


def _as_array(value: Any, tensor: dict | None) -> np.ndarray:
    """`value` as a numpy array of the signature tensor's dtype (strings as bytes objects)."""
    if tensor is None:
        return np.asarray(value)
    if tensor["dtype"] == "string":
        array = np.asarray(value, dtype=object)
        return np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(array) \
            if array.size else array
    try:
        dtype = np.dtype(tensor["dtype"])
    except TypeError:  # a dtype numpy has no name for (bfloat16, qint8, ...): sent as given
        return np.asarray(value)
    return np.asarray(value, dtype=dtype)


def _as_json(value: Any) -> Any:
    """Values as TF Serving's REST JSON carries them: numpy as lists, bytes as {"b64": ...} unless they are
    UTF-8 text. The gRPC client builds its tf.Examples from the same JSON, by the server's rules."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return _as_json(value.tolist())
    if isinstance(value, list | tuple):
        return [_as_json(v) for v in value]
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    return value


class RestClient(ServingClient):
    def __init__(self, base_url: str = "http://127.0.0.1:8501", timeout_s: float = 30.0, *, token: str | None = None,
                 ca_cert: str | Path | None = None, client_cert: tuple[str | Path, str | Path] | None = None):
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        if token is not None:
            self._session.headers["Authorization"] = f"Bearer {token}"
        # Passed with each request: a Session's own `verify` loses to $REQUESTS_CA_BUNDLE (requests #3829).
        self._tls = {"verify": str(ca_cert) if ca_cert is not None else True,
                     "cert": tuple(str(p) for p in client_cert) if client_cert is not None else None}

    def close(self) -> None:
        self._session.close()

    def _send_predict(self, spec, signature_name, arrays, output_filter, signature) -> dict:
        body: dict[str, Any] = {"inputs": {name: _as_json(array) for name, array in arrays.items()}}
        if signature_name:
            body["signature_name"] = signature_name
        outputs = self._call("POST", _path(spec) + ":predict", body)["outputs"]
        if not isinstance(outputs, dict):  # one output: TF Serving leaves its name out
            outputs = {next(iter(signature["outputs"])): outputs}
        outputs = {name: _from_json(value) for name, value in outputs.items()}
        return {name: outputs[name] for name in output_filter} if output_filter else outputs

    def _send_examples(self, api, spec, signature_name, examples, context):
        body: dict[str, Any] = {"examples": examples}
        if context is not None:
            body["context"] = context
        if signature_name:
            body["signature_name"] = signature_name
        return self._call("POST", _path(spec) + f":{api}", body)["results"]

    def _send_status(self, spec) -> list[dict]:
        return [{"version": int(s["version"]), "state": s["state"], "error_code": s["status"]["error_code"],
                 "error_message": s["status"].get("error_message", "")}
                for s in self._call("GET", _path(spec))["model_version_status"]]

    def _send_metadata(self, spec):
        answer = self._call("GET", _path(spec) + "/metadata")
        signature_def_map = json_format.ParseDict(answer["metadata"]["signature_def"], messages.SignatureDefMap())
        signatures = signature_def_map.signature_def
        return answer["model_spec"]["name"], int(answer["model_spec"]["version"]), signatures

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body, allow_nan=True).encode()
        try:
            response = self._session.request(method, self.base_url + path, data=data, timeout=self.timeout_s,
                                             headers={"Content-Type": "application/json"} if data else None,
                                             **self._tls)
        except requests.exceptions.SSLError as e:
            raise ServingClientError("UNAVAILABLE", f"TLS with {self.base_url} failed: {e}") from None
        except requests.ConnectionError:
            raise ServingClientError("UNAVAILABLE", f"no server answers at {self.base_url}. {START_ONE}") from None
        try:
            answer = response.json()
        except ValueError:
            raise ServingClientError(response.status_code, response.text.strip()[:500]) from None
        if response.status_code != 200:
            message = answer.get("error", response.text) if isinstance(answer, dict) else response.text
            raise ServingClientError(response.status_code, message)
        return answer


def _path(spec: tuple) -> str:
    model, version, label = spec
    path = f"/v1/models/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{version}"
    elif label is not None:
        path += f"/labels/{quote(label, safe='')}"
    return path


def _from_json(value: Any) -> Any:
    """A REST output value with {"b64": ...} objects decoded to bytes."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class GrpcClient(ServingClient):
    """TF Serving's PredictionService and ModelService, with the REST client's methods and results."""

    def __init__(self, target: str = "127.0.0.1:8500", timeout_s: float = 30.0, *, token: str | None = None,
                 ca_cert: str | Path | None = None, client_cert: tuple[str | Path, str | Path] | None = None):
        super().__init__()
        self._target = target
        self._metadata = [("authorization", f"Bearer {token}")] if token is not None else None
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        if ca_cert is None and client_cert is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            key_pair = [Path(p).read_bytes() for p in client_cert] if client_cert else [None, None]
            credentials = grpc.ssl_channel_credentials(Path(ca_cert).read_bytes() if ca_cert else None,
                                                       private_key=key_pair[1], certificate_chain=key_pair[0])
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self._channel.close()

    def _send_predict(self, spec, signature_name, arrays, output_filter, signature) -> dict:
        request = messages.PredictRequest(output_filter=output_filter)
        _fill_spec(request.model_spec, spec, signature_name)
        for name, array in arrays.items():
            request.inputs[name].CopyFrom(messages.tensor_proto(array))
        response = self._call(PREDICTION + "Predict", request, messages.PredictResponse)
        return {name: messages.to_numpy(proto) for name, proto in response.outputs.items()}

    def _send_examples(self, api, spec, signature_name, examples, context):
        request = messages.RegressionRequest() if api == "regress" else messages.ClassificationRequest()
        _fill_spec(request.model_spec, spec, signature_name)
        if context is None:
            request.input.example_list.examples.extend(example_from_json(e) for e in examples)
        else:
            request.input.example_list_with_context.examples.extend(example_from_json(e) for e in examples)
            request.input.example_list_with_context.context.CopyFrom(example_from_json(context))
        if api == "regress":
            return [r.value for r in self._call(PREDICTION + "Regress", request, messages.RegressionResponse)
                    .result.regressions]
        result = self._call(PREDICTION + "Classify", request, messages.ClassificationResponse).result
        return [[(c.label, c.score) for c in entry.classes] for entry in result.classifications]

    def _send_status(self, spec) -> list[dict]:
        request = messages.GetModelStatusRequest()
        _fill_spec(request.model_spec, spec, None)
        response = self._call(MODEL_SERVICE + "GetModelStatus", request, messages.GetModelStatusResponse)
        return [{"version": s.version, "state": messages.VERSION_STATES.get(s.state, str(s.state)),
                 "error_code": GRPC_CODE_NAMES.get(s.status.error_code, str(s.status.error_code)),
                 "error_message": s.status.error_message}
                for s in response.model_version_status]

    def _send_metadata(self, spec):
        request = messages.GetModelMetadataRequest(metadata_field=["signature_def"])
        _fill_spec(request.model_spec, spec, None)
        response = self._call(PREDICTION + "GetModelMetadata", request, messages.GetModelMetadataResponse)
        signatures = messages.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return response.model_spec.name, response.model_spec.version.value, signatures.signature_def

    def reload_config(self, config) -> None:
        """ModelService/HandleReloadConfigRequest: the server serves `config` (a ModelServerConfig, of TF
        Serving's classes or these) from now on. gRPC only: TF Serving's REST API has no way to change the config."""
        request = messages.ReloadConfigRequest()
        request.config.ParseFromString(config.SerializeToString())
        self._call(MODEL_SERVICE + "HandleReloadConfigRequest", request, messages.ReloadConfigResponse)

    def _call(self, method: str, request, response_class):
        call = self._channel.unary_unary(method, request_serializer=type(request).SerializeToString,
                                         response_deserializer=response_class.FromString)
        try:
            return call(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as e:
            hint = f" (no server answers at {self._target}? {START_ONE})" if e.code() == grpc.StatusCode.UNAVAILABLE else ""
            raise ServingClientError(e.code().name, e.details() + hint) from None


def _fill_spec(model_spec, spec: tuple, signature_name: str | None) -> None:
    model, version, label = spec
    model_spec.name = model
    if version is not None:
        model_spec.version.value = version
    elif label is not None:
        model_spec.version_label = label
    if signature_name:
        model_spec.signature_name = signature_name
