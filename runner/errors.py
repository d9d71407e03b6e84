"""The errors runner raises, one tree rooted in `RunnerError`::

    RunnerError
     ├── APIError (status, body, request_id, headers)     an answer with a non-2xx status
     │    ├── RateLimitError         429 rate_limit_exceeded          -> retry
     │    ├── QuotaExceededError     429 insufficient_quota           -> stops the run
     │    ├── AuthenticationError    401 / 403                        -> stops the run
     │    ├── BadRequestError        400 / 404 / 422 / other 4xx      -> fails the job, no retry
     │    └── ServerError            408 / 409 / 5xx                  -> retry
     ├── APIConnectionError          no answer arrived                -> retry
     │    ├── APITimeoutError        ... because a timeout fired       -> retry
     │    └── APIUnreachableError    ... no connection could be made (refused, no such host, TLS)
     │                               -> retry; before any success, or once a request's attempts
     │                                  are used up, it stops the run (nothing listens there)
     ├── BadResponseError            200 with truncated/malformed JSON or no choices -> retry
     │    ├── ListNotTakenError      ... only the first prompt of a list answered -> retry (a
     │    │                          lane where it happens twice before any pack worked: jobs alone)
     │    ├── NChoicesIgnoredError   ... one choice per prompt where n asked for more
     │    │                            -> retried once to confirm, then n_not_supported (permanent)
     │    └── InvalidJSONError       ... not the JSON the job's response_format asked for
     │                                 -> retry (counted), then invalid_json
     ├── RequestTooLarge             (runner.pacing.limiter) more tokens than the whole TPM
     │                                                 -> fails the job; a pack is sent in halves
     ├── StopRunError                the run cannot go on; it stops early, resumably
     │    ├── InputError             (runner.live.dispatch) the input cannot be read to its end
     │    ├── CheckpointError        (runner.files.checkpoint) the output cannot be locked, read,
     │    │                          repaired, written or synced
     │    ├── TokenUnavailable       (runner.api.entra) no Entra ID token could be had (exit 3)
     │    └── ConfigurationError     a setting is wrong: rerunning as it is cannot help (exit 2)
     │         ├── CrossOriginRedirect  the API redirected a call carrying the key to another
     │         │                        origin: not followed, nothing more is sent
     │         └── TokenRejected     a freshly fetched Entra ID token was refused (401)
     └── UnusableInput               the input is not something runner can run (not a job file,
          │                          compressed in a format not read, corrupt compressed data):
          │                          the run stops, and rerunning as it is will not help (exit 2)
          └── ChangedJobsError       (runner.files.session) jobs changed since their results and
                                     the run was not told what to do with them (--changed)

Why a tree rather than none: the transport (`runner.api.transport`) raises `APIConnectionError`
or `APITimeoutError` (from the aiohttp or OS error) when no answer arrived, so every backend speaks
one vocabulary and `runner.outcome.classify(exc=...)` understands every error of the first three
branches; the API's answers themselves are values (a status and a body), turned into an `APIError`
only by a caller that must raise one (`runner.outcome.api_error`). A `StopRunError` raised by `send` itself (a token that cannot be had, a
redirect refused) is classified as a stop of the run, a `ConfigurationError` as one that exits 2.
The dispatcher catches
`StopRunError` to stop resumably without importing the modules that raise it; anything else
escaping it is a bug.

`jobs.packing.MissingChoices` is not in the tree: the `jobs` package is pure and imports nothing
of `runner`. The dispatcher converts it into a `BadResponseError` (its `NChoicesIgnored` into an
`NChoicesIgnoredError`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from runner.redact import redact_url

__all__ = [
    "RunnerError", "APIError", "RateLimitError", "QuotaExceededError", "AuthenticationError",
    "BadRequestError", "ServerError", "APIConnectionError", "APITimeoutError",
    "APIUnreachableError", "BadResponseError", "NChoicesIgnoredError", "ListNotTakenError",
    "InvalidJSONError", "StopRunError",
    "ConfigurationError", "CrossOriginRedirect", "TokenUnavailable", "TokenRejected",
    "UnusableInput", "ChangedJobsError", "describe",
]


class RunnerError(Exception):
    """Base of every error runner raises."""


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


class APIUnreachableError(APIConnectionError):
    """No connection could be made: refused, the host name does not resolve, TLS failed."""


class BadResponseError(RunnerError):
    """A 2xx answer whose body is truncated or malformed JSON, or lacks `choices`/`data`."""


class ListNotTakenError(BadResponseError):
    """A 2xx answer to a list of prompts holding exactly the first prompt's choices."""


class NChoicesIgnoredError(BadResponseError):
    """A 2xx answer with one choice per prompt where `n` asked for more: the server ignores `n`."""


class InvalidJSONError(BadResponseError):
    """A 2xx answer to a job asking for JSON (`response_format` json_object or json_schema) that
    is not valid JSON or does not fit the schema (`jobs.structured`); the message says why."""


class StopRunError(RunnerError):
    """The run cannot go on for a reason outside the API (its input or output failed): it stops
    early and resumably, with this error's message as the reason."""


class TokenUnavailable(StopRunError):
    """No Microsoft Entra ID token could be had (the token command failed, the credential found no
    identity): the run stops, resumable (exit 3); the message names the command or credential."""

    code = "token_unavailable"


class ConfigurationError(StopRunError):
    """A setting is wrong, so nothing more can succeed and rerunning as it is would only fail
    again: the run stops at once (what was done is kept, a rerun after the fix resumes) and exits 2.
    `code` names the kind of stop (never written into a result line)."""

    code = "misconfigured"


class CrossOriginRedirect(ConfigurationError):
    """The API answered a call that carries the key or a token with a redirect to another origin
    (scheme, host, port): not followed, since the credential would go with it. An API that
    redirects is almost always a wrong base URL."""

    code = "cross_origin_redirect"

    def __init__(self, url: str, location: str, status: int) -> None:
        self.url, self.location, self.status = url, location, status
        super().__init__(
            f"{redact_url(url)} answered {status}, a redirect to {redact_url(location)}: another "
            f"origin, so it was not followed and nothing more is sent (the key goes to "
            f"{origin_text(url)} only); an API that redirects usually means a wrong "
            f"--base-url or --azure-endpoint")


class TokenRejected(ConfigurationError):
    """A Microsoft Entra ID token fetched moments before was refused (401): a new one would be
    too (wrong tenant, audience or resource). The message is the API's."""

    code = "token_rejected"


def origin_text(url: str) -> str:
    """`scheme://host[:port]` of `url`, for messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "?"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


class UnusableInput(RunnerError):
    """The input is not something runner can run: not a job file, compressed in a format it does
    not read, or corrupt compressed data. The run stops (what was done is kept) and exits 2."""


class ChangedJobsError(UnusableInput):
    """Jobs of INPUT changed since OUTPUT got their results, and the run was not told whether to
    send them again or keep the old results (`--changed`): it refuses before sending anything."""


def describe(exc: BaseException) -> str:
    """`"TypeName: message"`, or just the type's name when the message is empty or cannot be
    rendered (a broken `__str__` must not hide the failure itself)."""
    try:
        detail = str(exc)
    except Exception:
        detail = ""
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
