"""One loaded SavedModel version: its SignatureDefs, the feature schema it ships, and running a signature on numpy
inputs.

Loaded the way TF Serving loads it: the MetaGraphDef tagged `serve` into a TF session, run by
feeding and fetching the tensor names the SignatureDef lists. So any SavedModel TF Serving
serves (TF1 graphs, TF2 functions, Keras) runs here with the same semantics, and one session
per version takes TF Serving's intra/inter-op thread settings. A prepared callable per
signature (or set of signatures run together, as a MultiInference runs its tasks) keeps Python's
per-call work small; TF releases the GIL while it runs.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
# What tf.compat.v1.saved_model.loader.load runs, without its decorator: that endpoint is marked deprecated (in
# favour of tf.saved_model.load, which gives TF2 objects, not a session) and said so in every server's log
from tensorflow.python.saved_model.loader_impl import SavedModelLoader

from serving import errors
from serving.feature_schema import FeatureSchema

SignatureDef = meta_graph_pb2.SignatureDef
Tensors = dict[str, np.ndarray]
QUICK_CALL_S = 0.002  # a call at most this long is quick: alone in the server, it may run on the event loop (core.py)


@dataclass(frozen=True)
class TensorSpec:
    """dtype and shape of one signature input or output; -1 marks an unknown dimension."""

    dtype: tf.dtypes.DType
    shape: tuple[int, ...] | None  # None: unknown rank
    fed_rank: int | None = None  # the rank a fed tensor must have: a placeholder's (None: any, as TF Serving feeds)

    @classmethod
    def from_info(cls, info: meta_graph_pb2.TensorInfo, graph: tf.Graph) -> TensorSpec:
        """The spec of a signature's tensor in `graph`. Where that tensor is a placeholder of known rank, a tensor
        of another rank is refused (signatures.py), as TF's own Session.run refuses it: TF Serving feeds it to the
        ops, and TF's oneDNN Conv2D (on by default on x86) aborts the process on a lower rank."""
        dims = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
        placeholder = info.name and graph.get_tensor_by_name(info.name).op.type == "Placeholder"
        return cls(tf.dtypes.as_dtype(info.dtype), dims, len(dims) if placeholder and dims is not None else None)

    def accepts(self, value: np.ndarray) -> bool:
        """Whether `value` can be fed here as it is (strings as bytes or str objects)."""
        fed = self._numpy_dtype
        if fed is None:
            return value.dtype == object or value.dtype.kind in "SU"
        return value.dtype == fed

    @functools.cached_property
    def _numpy_dtype(self) -> np.dtype | None:
        """The numpy dtype fed here, None for strings: found once (comparing tf.DTypes took 0.8 us an input, now
        0.08)."""
        return None if self.dtype == tf.string else np.dtype(self.dtype.as_numpy_dtype)


def session_config(intra_op_threads: int, inter_op_threads: int, session_parallelism: int = 0) -> config_pb2.ConfigProto:
    """TF Serving's --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism, or, when neither is set,
    --tensorflow_session_parallelism for both; all three at once is an error (server.cc). With none set, one thread
    per op and one op per core, not TF's choice (a thread per core for each): measured 1.7x its throughput for
    concurrent unbatched requests and the same at batch 1 and batch 64 (benchmarks/results/threads.md)."""
    if intra_op_threads > 0 and inter_op_threads > 0 and session_parallelism > 0:
        raise ValueError("Either configure server_options.tensorflow_session_parallelism or "
                         "(server_options.tensorflow_intra_op_parallelism, server_options.tensorflow_inter_op_parallelism) "
                         "separately. You cannot configure all.")
    if intra_op_threads <= 0 and inter_op_threads <= 0:
        if session_parallelism > 0:
            intra_op_threads = inter_op_threads = session_parallelism
        else:
            intra_op_threads, inter_op_threads = 1, len(os.sched_getaffinity(0))
    return config_pb2.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                                  inter_op_parallelism_threads=inter_op_threads)


class Servable:
    """A SavedModel version loaded for serving; safe to run from many threads at once."""

    def __init__(self, name: str, version: int, path: Path, config: config_pb2.ConfigProto | None = None):
        self.name = name
        self.version = version
        self.path = Path(path)
        self._session = tf.compat.v1.Session(graph=tf.Graph(), config=config)
        meta_graph = SavedModelLoader(str(self.path)).load(self._session, ["serve"])
        self.signature_defs: dict[str, SignatureDef] = dict(meta_graph.signature_def)
        self.inputs = {k: {n: TensorSpec.from_info(i, self._session.graph) for n, i in s.inputs.items()}
                       for k, s in self.signature_defs.items()}
        # each signature's input names in the order DirectSession numbers its feeds: by tensor name
        self.feed_order = {k: [n for _, n in sorted((i.name, n) for n, i in s.inputs.items())]
                           for k, s in self.signature_defs.items()}
        self._outputs = {k: [(alias, s.outputs[alias].name) for alias in sorted(s.outputs)]
                         for k, s in self.signature_defs.items()}
        self._runners = {(k,): SignatureRunner(self, (k,)) for k in self.signature_defs}
        self.schema = FeatureSchema.read(self.path)  # what its served values are counted against (None: nothing)
        self._callables: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[object, list[str], list[str]]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, version={self.version})"

    def runner(self, *signatures: str) -> SignatureRunner:
        """A stable callable per signature, or set of signatures run together: the batcher only merges requests
        for the same one."""
        found = self._runners.get(signatures)
        if found is None:
            with self._lock:
                found = self._runners.setdefault(signatures, SignatureRunner(self, signatures))
        return found

    def run(self, signature: str, inputs: Tensors) -> Tensors:
        """Run `signature` (its every output) on inputs keyed by the signature's input names, with the dtypes it
        takes (serving.signatures checks a request's)."""
        return self.outputs(signature, self.run_together((signature,), inputs))

    def run_together(self, signatures: tuple[str, ...], inputs: Tensors) -> Tensors:
        """Run several signatures in one session call, as TF Serving's MultiInference runs its tasks: each input
        fed to the tensor every signature names for it, the union of their outputs fetched once, keyed by tensor
        name (`outputs` gives one signature's)."""
        names = tuple(sorted(inputs))
        run, feeds, fetches = self._callable(signatures, names)
        try:
            values = run(*(inputs[n] for n in feeds))
        except tf.errors.OpError as e:
            raise errors.from_code(e.error_code, e.message) from None  # TF Serving passes the session's error on
        except UnicodeDecodeError as e:  # an op's error quoting input bytes that are not UTF-8 (ParseExample's does)
            # cannot become a Python message and loses its code: the bytes are the request's, so the client's mistake
            raise errors.InvalidArgument(e.object.decode("utf-8", "replace").split("\n\t [[")[0]) from None
        return dict(zip(fetches, values))

    def outputs(self, signature: str, fetched: Tensors) -> Tensors:
        """`signature`'s outputs, by its names for them, from what a run fetched (by tensor name)."""
        return {alias: fetched[name] for alias, name in self._outputs[signature]}

    def _callable(self, signatures: tuple[str, ...], names: tuple[str, ...]):
        """(callable, the input name fed to each of its feeds, the tensor name of each of its fetches)."""
        key = (signatures, names)
        found = self._callables.get(key)
        if found is None:
            defs = [self.signature_defs[s] for s in signatures]
            feeds = dict(sorted({(d.inputs[n].name, n) for d in defs for n in names}))  # tensor name -> input name
            fetches = sorted({name for s in signatures for _, name in self._outputs[s]})
            options = config_pb2.CallableOptions(feed=list(feeds), fetch=fetches)
            with self._lock:
                found = self._callables.setdefault(
                    key, (self._session._make_callable_from_options(options), list(feeds.values()), fetches))
        return found


@dataclass(eq=False)
class SignatureRunner:
    """`servable.run_together(signatures, inputs)` as one object: what the batcher groups requests by. It times its
    calls: `quick_rows` is the most rows a call ran in under QUICK_CALL_S, lowered when a call that size ran slower
    (a busier host), so the server knows which requests are quick before running them."""

    servable: Servable
    signatures: tuple[str, ...]
    quick_rows: int = field(default=0, init=False)

    def __call__(self, inputs: Tensors) -> Tensors:
        started = time.perf_counter()
        outputs = self.servable.run_together(self.signatures, inputs)
        rows = batch_rows(inputs)
        if time.perf_counter() - started <= QUICK_CALL_S:
            self.quick_rows = max(self.quick_rows, rows)
        elif rows <= self.quick_rows:
            self.quick_rows = rows - 1
        return outputs

    def is_quick(self, inputs: Tensors) -> bool:
        """Whether a call of this many rows took under QUICK_CALL_S the last time one this size or larger ran."""
        return batch_rows(inputs) <= self.quick_rows


def batch_rows(inputs: Tensors) -> int:
    """The rows of a call: its inputs' largest first dimension (1 for scalars only)."""
    return max((len(value) for value in inputs.values() if value.ndim), default=1)
