"""Keeping secrets out of everything runner writes: messages, logs, summaries and result lines.

Two complementary guards:

- `redact` / `redact_bytes` replace the secrets we *know* (the API key in use) wherever they appear,
  with `REDACTED`. Every log message and summary passes `redact`; every result line passes
  `redact_bytes` (a server may echo the key back in an error body).
- `mask_secrets` masks what *looks like* a secret in text from outside (an error message or an
  exception): OpenAI-style keys (`sk-...`, `sk-proj-...`, a masked `sk-abc***xyz`) become `sk-***`,
  JSON Web Tokens (a Microsoft Entra ID token: `eyJ....eyJ....sig`) become `eyJ***`, and secret
  query parameters in URLs (`?api-key=...`, `&sig=...`) become `api-key=***`.

Strings shorter than `MIN_SECRET_LEN` are never treated as secrets (they would redact ordinary
words).
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit
from collections.abc import Iterable

__all__ = ["REDACTED", "MIN_SECRET_LEN", "redact", "redact_bytes", "redact_url", "mask_secrets"]

REDACTED = "[REDACTED]"
MIN_SECRET_LEN = 8

# An API key as OpenAI-style services print it ("sk-...", "sk-proj-...", masked "sk-abc***xyz").
_API_KEY = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*.]{3,}")
# A JSON Web Token (header.payload.signature, base64url; both JSON parts start `{"` = `eyJ`).
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# A secret in a URL's query string ("?api-key=...", "&sig=...") as a connection error may print it.
_SECRET_PARAM = re.compile(r"\b(api[-_]?key|key|token|sig|code|password|passwd|pwd|secret)"
                           r"=[^&\s'\"]+", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (of at least MIN_SECRET_LEN characters) replaced by REDACTED."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LEN and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    """`redact` for UTF-8 bytes (a result line about to be written)."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LEN:
            encoded = secret.encode()
            if encoded in data:
                data = data.replace(encoded, REDACTED.encode())
    return data


def mask_secrets(text: str) -> str:
    """`text` with anything shaped like an API key, or a secret URL parameter, masked."""
    text = _API_KEY.sub("sk-***", text)
    text = _JWT.sub("eyJ***", text)
    return _SECRET_PARAM.sub(r"\1=***", text)


def redact_url(url: str) -> str:
    """`url` with the password of its user info (``redis://user:secret@host``) and any secret
    query parameter (``?password=...``) masked as ``***``; a URL that does not parse is masked
    whole past its scheme."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("://", 1)[0] + "://***"
    if password:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if parts.query:
        parts = parts._replace(query=_SECRET_PARAM.sub(r"\1=***", parts.query))
    return urlunsplit(parts)
