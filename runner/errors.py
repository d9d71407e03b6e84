"""The errors runner raises, one tree; `runner.outcome.classify(exc=...)` understands every one::

    RunnerError
     ├── APIError (status, body, request_id, headers)     an answer with a non-2xx status
     │    ├── RateLimitError         429 rate_limit_exceeded          -> retry
     │    ├── QuotaExceededError     429 insufficient_quota           -> stops the run
     │    ├── AuthenticationError    401 / 403                        -> stops the run
     │    ├── BadRequestError        400 / 404 / 422 / other 4xx      -> fails the job, no retry
     │    └── ServerError            408 / 409 / 5xx                  -> retry
     ├── APIConnectionError          no answer arrived                -> retry
     │    └── APITimeoutError        ... because a timeout fired       -> retry
     └── BadResponseError            200 with truncated/malformed JSON or no choices -> retry
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "RunnerError", "APIError", "RateLimitError", "QuotaExceededError", "AuthenticationError",
    "BadRequestError", "ServerError", "APIConnectionError", "APITimeoutError", "BadResponseError",
]


class RunnerError(Exception):
    """Base of every error this package raises about a call to the API."""


class APIError(RunnerError):
    """The API answered with a non-2xx status. `headers` are the response's, never the request's."""

    def __init__(self, message: str, *, status: int, body: Any = None,
                 request_id: str | None = None, headers: Mapping[str, str] | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.request_id = request_id
        self.headers = dict(headers or {})
        self.code = code


class RateLimitError(APIError):
    """429 rate_limit_exceeded: too many requests or tokens per minute; retried after a wait."""


class QuotaExceededError(APIError):
    """429 insufficient_quota: the account is out of credit; the run stops."""


class AuthenticationError(APIError):
    """401 or 403: the key is wrong or lacks permission; the run stops."""


class BadRequestError(APIError):
    """400, 404, 422 or another 4xx: the job itself is wrong; it fails without a retry."""


class ServerError(APIError):
    """408, 409 or 5xx: the server could not answer this time; retried."""


class APIConnectionError(RunnerError):
    """No answer arrived: the connection was refused, reset, or the body was cut short."""


class APITimeoutError(APIConnectionError):
    """No answer arrived within the connect or read timeout."""


class BadResponseError(RunnerError):
    """A 2xx answer whose body is truncated or malformed JSON, or lacks `choices`/`data`."""
