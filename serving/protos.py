"""TF Serving's protocol pieces the tensorflow-serving-api wheel does not give: two config messages,
and the gRPC message size limit.

The wheel has apis/ and config/model_server_config, but not monitoring_config.proto, ssl_config.proto
nor servables/tensorflow/session_bundle_config.proto (BatchingParameters). They are rebuilt here with
TF Serving's package, names, field numbers and types, so the same text files parse the same way,
in a private descriptor pool so they clash with nothing.
"""
from __future__ import annotations

import re

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving raises gRPC's send/receive limits (4 MiB by default) to this
_FIELD = descriptor_pb2.FieldDescriptorProto


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    batching = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving", syntax="proto3", dependency=[wrappers.name])
    message = batching.message_type.add(name="BatchingParameters")
    for name, number, wrapper in [
        ("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"), ("enable_large_batch_splitting", 8, "BoolValue"),
        ("max_execution_batch_size", 9, "Int64Value"),
    ]:
        message.field.add(name=name, number=number, label=_FIELD.LABEL_OPTIONAL,
                          type=_FIELD.TYPE_MESSAGE, type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6, label=_FIELD.LABEL_REPEATED, type=_FIELD.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=_FIELD.LABEL_OPTIONAL, type=_FIELD.TYPE_BOOL)
    pool.Add(batching)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3")
    prometheus = monitoring.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=_FIELD.LABEL_OPTIONAL, type=_FIELD.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=_FIELD.LABEL_OPTIONAL, type=_FIELD.TYPE_STRING)
    config = monitoring.message_type.add(name="MonitoringConfig")
    config.field.add(name="prometheus_config", number=1, label=_FIELD.LABEL_OPTIONAL, type=_FIELD.TYPE_MESSAGE,
                     type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(monitoring)

    ssl = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/ssl_config.proto", package="tensorflow.serving", syntax="proto3")
    message = ssl.message_type.add(name="SSLConfig")
    for name, number, kind in [("server_key", 1, _FIELD.TYPE_STRING), ("server_cert", 2, _FIELD.TYPE_STRING),
                               ("custom_ca", 3, _FIELD.TYPE_STRING), ("client_verify", 4, _FIELD.TYPE_BOOL)]:
        message.field.add(name=name, number=number, label=_FIELD.LABEL_OPTIONAL, type=kind)
    pool.Add(ssl)
    return pool


_POOL = _build_pool()
BatchingParameters = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
MonitoringConfig = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
SSLConfig = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


def parse_text(text: str, message_class, source: str):
    """Parse a text-format proto; the error names the file, the line and TF Serving's message type."""
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        where = f" (line {e.GetLine()}, column {e.GetColumn()})" if e.GetLine() else ""
        reason = re.sub(r"^\d+:\d+ : ", "", str(e))  # the position, said above in words
        raise ValueError(f"{source}: not a valid {message_class.DESCRIPTOR.full_name} text proto{where}: "
                         f"{reason}") from None
    return message
