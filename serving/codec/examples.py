"""Classify and regress requests: JSON -> serialized tf.Examples (FillClassifyRegressRequestFromJson).

`example_from_json` is the one dict -> tf.Example conversion in the project: the gRPC client uses
it too, so a request means the same over both protocols.
"""
from __future__ import annotations

from typing import Any

from serving import messages
from serving.codec.document import signature_name
from serving.codec.rapidjson import debug_string, json_type
from serving.codec.request import decode_b64_object, is_b64, utf8
from serving.errors import CodecError


def parse_examples_request(document: dict) -> tuple[list[bytes], str]:
    """(serialized tf.Examples, signature name) of a classify or regress request.

    Follows FillClassifyRegressRequestFromJson. The optional "context" is merged into every
    example the way TF Serving feeds ExampleListWithContext to the model: its serialized bytes
    are prepended, so an example's own feature wins over a context feature of the same name.
    """
    name = signature_name(document)
    context = b""
    if "context" in document:
        context = example_from_json(document["context"]).SerializeToString(deterministic=True)
    if "examples" not in document:
        raise CodecError(
            f"JSON Value: {debug_string(document)} When method is classify, key 'examples' is expected "
            "and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise CodecError(f"JSON Value: {debug_string(document)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise CodecError(f"JSON Value: {debug_string(document)} 'examples' value is an empty array")
    serialized = [context + example_from_json(e).SerializeToString(deterministic=True) for e in examples]
    return serialized, name


def example_from_json(value: Any) -> messages.Example:
    """MakeExampleFromJsonObject: each key is a feature, its value one element or a list of them. A tf.Example of
    serving.messages' classes (no TensorFlow import); convert to TensorFlow's through its bytes."""
    if not isinstance(value, dict):
        raise CodecError(f"Example must be JSON object but got JSON {json_type(value)}")
    example = messages.Example()
    for name, content in value.items():
        kind, values = _feature_values(name, content if isinstance(content, list) else [content])
        try:
            feature = example.features.feature[name]  # an empty list still adds an (empty) feature
        except UnicodeEncodeError:  # the body's invalid UTF-8, passed through by the parser: a proto key cannot hold it
            raise CodecError(f"Feature name {debug_string(name)} is not valid UTF-8") from None
        if kind is not None:
            getattr(feature, f"{kind}_list").value.extend(values)
    return example


def _feature_values(name: str, items: list) -> tuple[str | None, list]:
    """The feature kind ("bytes", "float", "int64") and values; AddValueToFeature's rules, but for one: a list of
    numbers holding a float is a float_list, whole numbers among them included (`[46.1, 2007]`). TF Serving refuses
    it ("expecting type: float"), although its predict accepts such a list for a float tensor."""
    if any(isinstance(item, float) for item in items) and all(_is_number(item) for item in items):
        return "float", [float(item) for item in items]
    kind: str | None = None
    values: list = []
    for item in items:
        if item is None or isinstance(item, list) or (isinstance(item, dict) and not is_b64(item)):
            raise CodecError(f"Feature: {name} has element with unexpected JSON type: {json_type(item)}")
        if isinstance(item, (str, dict)):
            item_kind = "bytes"
        elif isinstance(item, float):
            item_kind = "float"
        else:
            item_kind = "int64"  # integers, and booleans as 1/0
        if kind is not None and item_kind != kind:
            raise CodecError(f"Unexpected element type in feature: {name} expecting type: {kind}")
        kind = item_kind
        if isinstance(item, dict):
            values.append(decode_b64_object(item))
        elif isinstance(item, str):
            values.append(utf8(item))
        elif isinstance(item, int) and item > 2**63 - 1:
            raise CodecError(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        else:
            values.append(int(item) if isinstance(item, bool) else item)
    return kind, values


def _is_number(item: Any) -> bool:
    return isinstance(item, (int, float)) and not isinstance(item, bool)
