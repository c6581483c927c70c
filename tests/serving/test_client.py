"""The clients without a server: what importing them costs, and their tensors against TensorFlow's own."""
import subprocess
import sys

import numpy as np
import pytest

from serving import messages


def test_importing_the_clients_does_not_import_tensorflow():
    """TF Serving's messages are generated into the tensorflow package, whose import takes seconds; the clients read
    them without it (serving/messages.py)."""
    code = "import sys, serving.client; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize("array", [
    np.arange(6, dtype=np.float32).reshape(2, 3), np.array([[1.5]], np.float64), np.array([-3, 7], np.int64),
    np.array([200], np.uint8), np.array([[True, False]]), np.array([1.5, -2.0], np.float16),
    np.array([1 + 2j], np.complex64), np.array([[b"a", b"\xff"]], dtype=object), np.zeros((0, 4), np.float32),
])
def test_tensors_are_tensorflows(array):
    tf = pytest.importorskip("tensorflow")
    proto = messages.tensor_proto(array)
    theirs = tf.make_ndarray(tf.make_tensor_proto(array))
    np.testing.assert_array_equal(tf.make_ndarray(type(tf.make_tensor_proto(0)).FromString(proto.SerializeToString())),
                                  theirs)
    for typed in (tf.make_tensor_proto(array), _typed(tf, array)):  # tensor_content, and the fields servers answer in
        mine = messages.to_numpy(messages.TensorProto.FromString(typed.SerializeToString()))
        assert mine.dtype == theirs.dtype
        np.testing.assert_array_equal(mine, theirs)


def _typed(tf, array):
    """The TensorProto with values in their typed field, as TF Serving writes outputs (AsProtoField)."""
    proto = tf.make_tensor_proto(array)
    if proto.tensor_content:
        from serving.grpc_service import typed_tensor_proto
        proto = typed_tensor_proto(array)
    return proto


def test_a_short_typed_field_repeats_its_last_value_as_tensorflow_does():
    proto = messages.TensorProto(dtype=1, float_val=[1.0, 2.0])
    proto.tensor_shape.dim.add(size=4)
    assert messages.to_numpy(proto).tolist() == [1.0, 2.0, 2.0, 2.0]


def test_what_the_client_cannot_convert_is_named():
    with pytest.raises(ValueError, match="cannot send a tensor of dtype datetime64"):
        messages.tensor_proto(np.array(["2020-01-01"], "datetime64[D]"))
    with pytest.raises(ValueError, match="cannot read a tensor of DataType 14"):  # bfloat16
        messages.to_numpy(messages.TensorProto(dtype=14))
