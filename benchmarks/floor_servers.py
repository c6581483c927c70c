"""The Python stacks' own cost per request: servers that read a predict request the way ours does and answer a fixed
response, with no model, no JSON work and no batching. What they reach is a ceiling no handler on these stacks can
pass; serving_bench.py measures them beside ours.

    python benchmarks/floor_servers.py rest PORT    # aiohttp's low-level server, as serving/rest.py uses it
    python benchmarks/floor_servers.py grpc PORT    # grpc's thread pool server, PredictionService/Predict, as
                                                    # serving/grpc_service.py (grpc.aio until 2026-12-06: 0.32 ms a
                                                    # call on one core against 0.15)
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serving.__main__ import GRPC_MIN_THREADS  # noqa: E402

REST_ANSWER = b'{\n    "predictions": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]\n    ]\n}'


async def rest(port: int) -> None:
    from aiohttp import web

    async def answer(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=REST_ANSWER, content_type="application/json")

    server = web.Server(answer)
    await (await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)).serve_forever()


def grpc(port: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in (1, 10)])
    answer = predict_pb2.PredictResponse()
    answer.outputs["scores"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape,
                                                             float_val=np.linspace(0.1, 1, 10).tolist()))

    class Predictor(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            return answer

    server = grpc.server(ThreadPoolExecutor(GRPC_MIN_THREADS))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Predictor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "rest":
        asyncio.run(rest(port))
    else:
        grpc(port)
