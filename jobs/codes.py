"""Error codes: every `error.code` runner writes into a result line, and which of them are worth
retrying in a later run.

A failed job's line carries one of the codes below, or a code the API itself put in its error body
(`model_not_found`, `content_policy_violation`, ...), or `http_<status>` for a refusal that named
none (`http_status_code`). The resume rule (`jobs.results.is_transient`) reads `TRANSIENT_CODES`
and `PERMANENT_CODES` first; a code in neither is judged by the line's final status.
"""
from __future__ import annotations

# The run could not get a usable answer; the job itself was fine.
RATE_LIMITED = "rate_limit_exceeded"  # 429 that outlasted --max-attempts
QUOTA = "insufficient_quota"  # 429: the account is out of credit (stops the run)
INVALID_API_KEY = "invalid_api_key"  # 401 (stops the run)
PERMISSION_DENIED = "permission_denied"  # 403 (stops the run)
SERVER_ERROR = "server_error"  # 409, 5xx
TIMEOUT = "timeout"  # 408, or no answer within the timeout
CONNECTION_ERROR = "connection_error"  # no answer: refused, reset, cut short, malformed HTTP
BAD_RESPONSE = "bad_response"  # a 2xx whose body is not JSON or lacks some job's choices
LIST_NOT_TAKEN = "list_not_taken"  # a 2xx to a list of prompts answering only the first
INTERNAL_ERROR = "internal_error"  # a bug on our side, not the job's fault
IMAGE_DOWNLOAD_FAILED = "image_download_failed"  # an image `url` could not be fetched in time
IMAGE_SAVE_FAILED = "image_save_failed"  # an image could not be written to --images-dir
# A 2xx whose answer is not the JSON the job asked for (response_format json_object/json_schema):
# not valid JSON, or not fitting the schema (`jobs.structured`). Transient, like bad_response:
# answers are sampled, so another attempt (and another run) may well get valid JSON; a job that
# can never get it (max_tokens too small for the object) fails again, with finish_reason length.
INVALID_JSON = "invalid_json"

# The job itself is wrong: another run would get the same answer.
INVALID_REQUEST = "invalid_request"  # 400 naming no code
NOT_FOUND = "not_found"  # 404 naming no code
UNPROCESSABLE = "unprocessable"  # 422 naming no code
REQUEST_TOO_LARGE = "request_too_large"  # 413, or more tokens than the whole TPM
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # the prompt is over the model's context window
CONTENT_FILTER = "content_filter"  # Azure's content filter refused the prompt
DUPLICATE = "duplicate_custom_id"  # a repeated input line: a note, never a job's result
N_NOT_SUPPORTED = "n_not_supported"  # the server answers one choice where `n` asks for more

# Neither: judged by the line's final status.
UNEXPECTED_STATUS = "unexpected_status"  # a 1xx or 3xx answer

# API codes that one prompt of a packed request can cause: bisecting the pack finds the guilty job.
CONTENT_POLICY_VIOLATION = "content_policy_violation"
INVALID_PROMPT = "invalid_prompt"
STRING_ABOVE_MAX_LENGTH = "string_above_max_length"

TRANSIENT_CODES = frozenset({
    RATE_LIMITED, SERVER_ERROR, TIMEOUT, CONNECTION_ERROR, BAD_RESPONSE, LIST_NOT_TAKEN,
    QUOTA, INVALID_API_KEY, PERMISSION_DENIED, INTERNAL_ERROR, IMAGE_DOWNLOAD_FAILED,
    IMAGE_SAVE_FAILED, INVALID_JSON,
})
PERMANENT_CODES = frozenset({
    INVALID_REQUEST, NOT_FOUND, CONTEXT_LENGTH_EXCEEDED, UNPROCESSABLE, REQUEST_TOO_LARGE,
    CONTENT_FILTER, DUPLICATE, N_NOT_SUPPORTED,
})
PROMPT_FAULT_CODES = frozenset({
    CONTEXT_LENGTH_EXCEEDED, CONTENT_FILTER, CONTENT_POLICY_VIOLATION, INVALID_PROMPT,
    STRING_ABOVE_MAX_LENGTH,
})


def http_status_code(status: int) -> str:
    """The code of a refusal whose body named none: `http_<status>`."""
    return f"http_{status}"
