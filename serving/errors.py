"""One exception tree for the server; each class knows its HTTP status and gRPC code.

The mapping is TF Serving's (model_servers/http_server.cc ToHTTPStatusCode), so front ends
never re-decide it: REST answers `http_status` with {"error": message}, gRPC aborts with `code`.
"""
from __future__ import annotations

import grpc


class ServingError(Exception):
    http_status = 500
    code = grpc.StatusCode.INTERNAL

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgument(ServingError):
    http_status = 400
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(ServingError):
    http_status = 400
    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(ServingError):
    http_status = 404
    code = grpc.StatusCode.NOT_FOUND


class Unauthenticated(ServingError):
    http_status = 401
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ServingError):
    http_status = 429
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    http_status = 504
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ServingError):
    http_status = 503
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(ServingError):
    http_status = 501
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(ServingError):
    http_status = 500
    code = grpc.StatusCode.INTERNAL


class Unknown(ServingError):
    http_status = 500
    code = grpc.StatusCode.UNKNOWN


_BY_CODE = {cls.code.value[0]: cls for cls in (
    InvalidArgument, FailedPrecondition, NotFound, Unauthenticated, ResourceExhausted, DeadlineExceeded,
    Unavailable, Unimplemented, Internal, Unknown)}


def from_code(code: int, message: str) -> ServingError:
    """The error for a canonical status code number (TF's error codes are the same numbers)."""
    return _BY_CODE.get(code, Internal)(message)
