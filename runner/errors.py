"""The errors runner raises, one tree rooted in `RunnerError` (where a class lives outside this
module, its module is named)::

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
     ├── RequestTooLarge             (runner.pacing.limiter; also a ValueError) more tokens than the
     │                               whole TPM -> fails the job; a pack is sent in halves
     ├── DownloadFailed              (runner.files.images) an image `url` could not be downloaded
     │                               -> the job fails, transient (image_download_failed)
     ├── BadImageData                (runner.files.images) a `b64_json` that is not base64
     │                               -> the job fails, transient (bad_response)
     ├── RedisUnavailable            (runner.pacing.redis_state) Redis cannot be reached when the
     │                               run starts -> nothing is sent (exit 2)
     ├── StopRunError                the run cannot go on; it stops early, resumably (exit 3): the
     │    │                          API refused the key or the quota, a Files/Batches call had no
     │    │                          usable answer for its give-up time, or input or output failed
     │    ├── InputError             (runner.live.dispatch) the input cannot be read to its end
     │    ├── CheckpointError        (runner.files.checkpoint) the output cannot be locked, read,
     │    │    │                     repaired, written or synced; the batch journal likewise
     │    │    └── OutputRefused     (runner.files.guard) OUTPUT must not receive results: it is
     │    │                          INPUT, a job file, or compressed (exit 2)
     │    ├── RedisLost              (runner.pacing.redis_state) Redis lost mid-run for longer
     │    │                          than its timeout
     │    ├── ImagesUnwritable       (runner.files.images) the images folder cannot take files
     │    ├── EndpointUnusable       a Files/Batches call found the endpoint not working (a route
     │    │                          answering 404 for itself, nothing listening) before any
     │    │                          success: stops at once naming the URL and the likely fix
     │    ├── TokenUnavailable       (runner.api.entra) no Entra ID token could be had (exit 3)
     │    └── ConfigurationError     a setting is wrong: rerunning as it is cannot help (exit 2)
     │         ├── CrossOriginRedirect  the API redirected a call carrying the key to another
     │         │                        origin: not followed, nothing more is sent
     │         └── TokenRejected     a freshly fetched Entra ID token was refused (401)
     └── UnusableInput               the input is not something runner can run (not a job file,
          │                          compressed in a format not read, corrupt compressed data):
          │                          the run stops, and rerunning as it is will not help (exit 2)
          ├── ChangedJobsError       (runner.files.session) jobs changed since their results and
          │                          the run was not told what to do with them (--changed)
          └── UnreadableFormat       (runner.files.inputs; also an UnreadableInput) INPUT is
                                     compressed in a format not read, or its data is corrupt

Why a tree rather than none: the transport (`runner.api.transport`) raises `APIConnectionError`
or `APITimeoutError` (from the aiohttp or OS error) when no answer arrived, and every backend
sends through `only_tree_errors`, so every backend speaks one vocabulary and
`runner.outcome.classify(exc=...)` reads only the tree's errors (anything else it meets is a
bug: internal_error); the API's answers themselves are values (a status and a body), turned
into an `APIError` only by a caller that must raise one (`runner.outcome.api_error`: the batch
client). A `StopRunError` raised by `send` itself (a token that cannot be had, a redirect
refused) is classified as a stop of the run, a `ConfigurationError` as one that exits 2. Both
backends catch `StopRunError` to stop resumably without importing the modules that raise it;
anything else escaping them is a bug.

Outside the tree, on purpose:

- Values checked at the edge, `ValueError`s the command line turns into exit 2 (or, for a
  batch line, a failure of its job): `ConfigError` (runner.cli.config, the config file),
  `PriceTableError` (runner.report.prices), `CompressionError` (runner.files.compression,
  raised again as `UnreadableFormat`), `LineTooLarge` (runner.batch.plan: the job fails
  request_too_large).
- `UnreadableInput` (runner.files.inputs): INPUT cannot be opened or read (`runner estimate`
  and `runner status` exit 2; mid-run the live dispatcher raises `InputError` instead);
  `StatusError` (runner.report.status): `runner status` cannot read INPUT or OUTPUT (exit 2).
  `UnreadableOutput` (runner.files.outputs): `runner merge` cannot read an OUTPUT (exit 2,
  nothing written).
- The `jobs` package is pure and imports nothing of `runner`: `jobs.reader.NotAJobFile` stops
  the run as unusable input (exit 2), and the dispatcher converts `jobs.packing.MissingChoices`
  into a `BadResponseError` (its `NChoicesIgnored` into an `NChoicesIgnoredError`, its
  `ListNotTaken` into a `ListNotTakenError`); its `PartialAnswer` never becomes an error: the
  jobs answered are written and the others sent again. `jobs.spend.Unpriceable` (a job whose
  model the price table lacks, under --max-cost) becomes a `ConfigurationError` (exit 2).
  `jobs.prepare.TemplateProblem` (a template naming a column a row lacks) stops `runner
  prepare` before anything is written. `jobs.results.NotARecord` (a line of OUTPUT that is not
  a JSON object) is counted and skipped when OUTPUT is read: its job runs again.
- The dataset commands' own: `TableError` (runner.files.tables: a table that cannot be read or
  written) and `DatasetError` (runner.dataset: `export`'s inputs do not fit together) end
  `runner prepare` / `runner export` with exit 2; no run is going on.
- The simulator's `ApiError` and `ConnectionDropped` (runner.simulator.service) never leave the
  test double: they become its answers, or a connection it drops.
- `runner.batch.run._Stopped` is no error: a signal asked the batch loop to stop while it
  waited; it unwinds to the loop, which stops resumably.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from runner.redact import redact_url

__all__ = [
    "RunnerError", "APIError", "RateLimitError", "QuotaExceededError", "AuthenticationError",
    "BadRequestError", "ServerError", "APIConnectionError", "APITimeoutError",
    "APIUnreachableError", "BadResponseError", "NChoicesIgnoredError", "ListNotTakenError",
    "InvalidJSONError", "StopRunError", "EndpointUnusable", "ConfigurationError",
    "CrossOriginRedirect", "TokenUnavailable", "TokenRejected", "UnusableInput",
    "ChangedJobsError", "describe", "error_fields",
]


class RunnerError(Exception):
    """Base of every error runner raises."""


class APIError(RunnerError):
    """The API answered with a non-2xx status. `headers` are the response's, never the request's."""

    def __init__(self, message: str, *, status: int, body: Any = None,
                 request_id: str | None = None, headers: Mapping[str, str] | None = None,
                 code: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.request_id = request_id
        self.headers = dict(headers or {})
        self.code = code
        self.url = url  # the URL called, without its query (None when the raiser did not say)


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
    """No answer arrived: the connection was refused, reset, or the body was cut short. `url` is
    the URL called, without its query (None when the raiser did not say)."""

    def __init__(self, message: str = "", *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


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
    """The run cannot go on (the API refused the key or the quota, a call had no usable answer
    for its give-up time, the endpoint as configured does not work, its input or output failed):
    it stops early and resumably, with this error's message as the reason."""


class EndpointUnusable(StopRunError):
    """The endpoint as configured does not work (a route that answers 404 for itself, nothing
    listening at the address) and nothing had succeeded there yet: the run stops at once,
    resumable (exit 3), its message naming the URL called and the likely fix, before any job
    fails for it (`runner.api.endpoint.batch_setup_hint`; the live dispatcher stops the same way
    through `runner.outcome.decide`)."""

    code = "endpoint_unusable"


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


_ERROR_CODE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")  # an error body's `code`, if any


def error_fields(body: bytes | str | Mapping | None) -> tuple[str | None, str | None, str | None]:
    """(code, type, message) from an error body in any of the shapes servers send.

    OpenAI/Azure: {"error": {"message", "type", "code"}}; vLLM-style: {"message", "type", "code"};
    {"error": "text"}; or non-JSON text (a proxy's HTML page). Numeric codes (Azure's "429") are
    dropped: they repeat the status.
    """
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            parsed = json.loads(body)
        except ValueError:
            return None, None, body or None
        if not isinstance(parsed, Mapping):
            return None, None, body or None
        body = parsed
    if not isinstance(body, Mapping):
        return None, None, None
    error = body.get("error", body)
    if isinstance(error, str):
        return None, None, error
    if not isinstance(error, Mapping):
        return None, None, None
    code, kind, message = error.get("code"), error.get("type"), error.get("message")
    code = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None
    kind = kind if isinstance(kind, str) and kind else None
    message = message if isinstance(message, str) and message else None
    return code, kind, message
