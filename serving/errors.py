"""One exception tree for the server; each class knows its HTTP status and gRPC code.

The mapping is TF Serving's (model_servers/http_server.cc ToHTTPStatusCode), so front ends
never re-decide it: `as_serving_error` turns whatever a request raised into one of these, then
REST answers `http_status` with {"error": message} and gRPC aborts with `code`.
"""
from __future__ import annotations

import logging

import grpc

log = logging.getLogger("serving")


class ServingError(Exception):
    http_status = 500
    code = grpc.StatusCode.INTERNAL

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def status_string(self) -> str:
        """absl::Status::ToString(), which TF Serving embeds in messages that wrap another error."""
        return f"{self.code.name}: {self.message}"


class InvalidArgument(ServingError):
    http_status = 400
    code = grpc.StatusCode.INVALID_ARGUMENT


class CodecError(InvalidArgument):
    """A request TF Serving's JSON codec refuses; the message is TF Serving's own wording."""


class FailedPrecondition(ServingError):
    http_status = 400
    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(ServingError):
    http_status = 404
    code = grpc.StatusCode.NOT_FOUND


class Unauthenticated(ServingError):
    http_status = 401
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServingError):
    http_status = 403
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServingError):
    http_status = 429
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PayloadTooLarge(ResourceExhausted):
    """A REST body over --rest_api_max_body_bytes: HTTP says 413 for that, not 429 (come back later)."""

    http_status = 413


class DeadlineExceeded(ServingError):
    http_status = 504
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class RequestTimeout(DeadlineExceeded):
    """A client that does not finish sending its body in time: HTTP's 408, the connection is closed."""

    http_status = 408


class Cancelled(ServingError):
    """The client went away before its request was read: nobody gets the answer (nginx's 499), counted as such."""

    http_status = 499
    code = grpc.StatusCode.CANCELLED


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
    Cancelled, InvalidArgument, FailedPrecondition, NotFound, Unauthenticated, ResourceExhausted, DeadlineExceeded,
    Unavailable, Unimplemented, Internal, Unknown)}


def from_code(code: int, message: str) -> ServingError:
    """The error for a canonical status code number (TF's error codes are the same numbers)."""
    return _BY_CODE.get(code, Internal)(message)


def as_serving_error(error: Exception, where: str) -> ServingError:
    """What an exception raised while answering a request means for the client: a ServingError as it
    is; anything else is a bug here, logged with its traceback (`where` names the request) and answered
    INTERNAL with no detail (exception text can hold paths and data the client should not see)."""
    if isinstance(error, ServingError):
        return error
    log.error("%s failed", where, exc_info=error)
    return Internal(f"Internal error ({type(error).__name__}); the server's log has the details")
