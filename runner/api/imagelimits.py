"""Images per minute (IPM), as the limiter sees it: an image lane's headers with images in the
place of tokens.

An image lane (image endpoints of one model) is paced by its own `RateLimiter` whose second
bucket counts images instead of tokens (`jobs.endpoints.IMAGES`), so the limiter itself needs no
new kind of bucket. This pure function turns what the server says about images into the token
names the limiter reads: `x-ratelimit-{limit,remaining,reset}-images` become `...-tokens` (any
tokens headers an image model also sends, gpt-image-1's TPM, are dropped: the lane does not pace
tokens), and a 429 body saying "images per minute ... Limit: 15/1min" (OpenAI's wording) gives
`x-ratelimit-limit-tokens: 15` when no header names the limit.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import orjson

_LIMIT_IN_MESSAGE = re.compile(r"images per min[^.]*?\.?\s*Limit:?\s*(\d+)\s*(?:/\s*1\s*min)?",
                               re.IGNORECASE)


def image_limit_from_message(body: bytes | str | None) -> int | None:
    """N from an error message "... images per minute ... Limit: N/1min ...", else None."""
    if not body:
        return None
    try:
        parsed = orjson.loads(body)
        message = parsed.get("error", {}).get("message") if isinstance(parsed, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        message = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if not isinstance(message, str):
        return None
    match = _LIMIT_IN_MESSAGE.search(message)
    return int(match.group(1)) if match else None


def as_token_headers(headers: Mapping[str, str], body: bytes | str | None = None) -> dict[str, str]:
    """`headers` (lower-case names) with images in the place of tokens (see the module docstring)."""
    out = {k: v for k, v in headers.items() if not k.endswith("-tokens")}
    for key, value in headers.items():
        if key.startswith("x-ratelimit-") and key.endswith("-images"):
            out[key.removesuffix("-images") + "-tokens"] = value
    if "x-ratelimit-limit-tokens" not in out:
        limit = image_limit_from_message(body)
        if limit is not None and limit > 0:
            out["x-ratelimit-limit-tokens"] = str(limit)
    return out
