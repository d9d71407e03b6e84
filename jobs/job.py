"""What a job is: one line of an OpenAI Batch API input file, validated.

A job file holds one JSON object a line::

    {"custom_id": "any string", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

`body` is sent to the API exactly as written; `custom_id` never enters it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.endpoints import (  # noqa: F401  (the urls are re-exported: jobs.job.CHAT etc.)
    CHAT, COMPLETIONS, EMBEDDINGS, ENDPOINTS, IMAGES_EDITS, IMAGES_GENERATIONS, IMAGES_VARIATIONS,
    MODERATIONS, RESPONSES, model_of,
)
METHODS = ("POST",)


@dataclass(frozen=True, slots=True, eq=False)
class Job:
    """One valid input line. `line` is its 1-based line number in the input file."""

    custom_id: str
    url: str
    body: dict[str, Any]
    line: int
    # `jobs.results.fingerprint` of the line as read (set by the intake; a body rewritten for
    # sending, such as uploads made absolute, keeps the fingerprint of what the file says)
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.url not in ENDPOINTS:
            raise ValueError(f"unsupported url {self.url!r}")
        if not isinstance(self.body, dict):
            raise ValueError("body must be a JSON object")

    @property
    def model(self) -> str:
        """The body's `model` (validated as a non-empty string when read), or the model the API
        assumes for an endpoint where it is optional (moderations, images)."""
        return model_of(self.url, self.body)
