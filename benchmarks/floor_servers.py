"""The Python stacks' own cost per request: servers that read a predict request the way ours does and answer a fixed
response, with no model, no JSON work and no batching. What they reach is a ceiling no handler on these stacks can
pass; serving_bench.py measures them beside ours.

    python benchmarks/floor_servers.py rest PORT    # aiohttp's low-level server, as serving/rest.py uses it
    python benchmarks/floor_servers.py grpc PORT    # grpc.aio, PredictionService/Predict, as serving/grpc_service.py
"""
from __future__ import annotations

import asyncio
import sys

REST_ANSWER = b'{\n    "predictions": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]\n    ]\n}'


async def rest(port: int) -> None:
    from aiohttp import web

    async def answer(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=REST_ANSWER, content_type="application/json")

    server = web.Server(answer)
    await (await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)).serve_forever()


async def grpc(port: int) -> None:
    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in (1, 10)])
    answer = predict_pb2.PredictResponse()
    answer.outputs["scores"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape,
                                                             float_val=np.linspace(0.1, 1, 10).tolist()))

    class Predictor(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request, context):
            return answer

    server = grpc.aio.server()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Predictor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    asyncio.run({"rest": rest, "grpc": grpc}[kind](port))
