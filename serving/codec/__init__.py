"""TF Serving's REST JSON <-> numpy tensors, byte for byte as tensorflow_serving/util/json_tensor.cc.

Requests: `decode_json` parses a body the way TF Serving's rapidjson is set up (NaN/Infinity
accepted, bytes after the document ignored, invalid UTF-8 passed through; `decode_predict_json`
first tries simdjson for a plain numeric tensor, with the same results), then
`parse_predict_request` / `parse_examples_request` turn the document into tensors or tf.Examples
with TF Serving's checks and error messages. Responses: the `format_*` functions write what TF
Serving's rapidjson PrettyWriter writes, including its float formatting (6 significant digits when
they round-trip, else 9 for float32 / 17 for float64, "1.0" for whole numbers, bare NaN/Infinity).
Every bad input raises a ServingError whose message is TF Serving's (`CodecError`, INVALID_ARGUMENT,
for almost all; UNIMPLEMENTED for a dtype TF Serving's JSON does not convert).

Modules: document (parsing, rapidjson's parse messages), deep (bodies nested past the recursive
parsers, parsed iteratively), numeric (simdjson for plain numeric tensors), request (predict),
examples (classify/regress, dict -> tf.Example), response, floats, dtypes, rapidjson (its writer
and debug quoting).
"""
from serving.codec.deep import parse_cost
from serving.codec.document import Document, decode_json, signature_name
from serving.codec.examples import example_from_json, parse_examples_request
from serving.codec.numeric import decode_predict_json
from serving.codec.request import COLUMNAR_FORMAT, ROW_FORMAT, parse_predict_request
from serving.codec.response import (format_classify_response, format_error_response, format_predict_response,
                                    format_regress_response)
from serving.errors import CodecError

__all__ = ["COLUMNAR_FORMAT", "ROW_FORMAT", "CodecError", "Document", "decode_json", "decode_predict_json",
           "example_from_json", "format_classify_response", "format_error_response", "format_predict_response", "format_regress_response",
           "parse_cost", "parse_examples_request", "parse_predict_request", "signature_name"]
