"""Domain errors shared by every service. Handlers raise these; one server interceptor
(services/common/server.py) maps them to gRPC status codes. No grpc import here."""

from __future__ import annotations


class HopscopeError(Exception):
    """Base class; `status` is the name of the grpc.StatusCode it maps to, `param` the request
    field at fault when there is one (the OpenAI error envelope's `param`)."""

    status = "INTERNAL"
    param: str | None = None


class InvalidArgumentError(HopscopeError):
    status = "INVALID_ARGUMENT"

    def __init__(self, message: str = "", param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ResourceExhaustedError(HopscopeError):
    status = "RESOURCE_EXHAUSTED"


class DeadlineExceededError(HopscopeError):
    status = "DEADLINE_EXCEEDED"


class AlreadyExistsError(HopscopeError):
    status = "ALREADY_EXISTS"


class UnavailableError(HopscopeError):
    status = "UNAVAILABLE"


class CancelledError(HopscopeError):
    status = "CANCELLED"


_BY_STATUS = {
    cls.status: cls
    for cls in (
        InvalidArgumentError,
        ResourceExhaustedError,
        DeadlineExceededError,
        AlreadyExistsError,
        UnavailableError,
        CancelledError,
    )
}


def error_for_status(status: str, message: str) -> HopscopeError:
    """Rebuild the domain error a downstream service reported by status name."""
    cls = _BY_STATUS.get(status, HopscopeError)
    return cls(message)
