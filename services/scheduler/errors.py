"""The scheduler's domain errors. Each also derives from the shared error of its gRPC status
(services/common/errors.py), so the one server interceptor maps it without knowing it."""

from __future__ import annotations

from services.common.errors import (
    DeadlineExceededError as _DeadlineExceeded,
)
from services.common.errors import (
    HopscopeError,
    InvalidArgumentError,
    ResourceExhaustedError,
)


class SchedulerError(HopscopeError):
    """Base of every error the scheduler core raises or reports."""


class InvalidRequestError(SchedulerError, InvalidArgumentError):
    """The request can never be served as given (empty prompt, too long, duplicate id...)."""


class QueueFullError(SchedulerError, ResourceExhaustedError):
    """The waiting queue is at its bound; retry later or raise max_queue_len."""


class DeadlineExceededError(SchedulerError, _DeadlineExceeded):
    """The request's deadline passed before it finished; it was aborted."""
