"""multipart/form-data bodies for the upload endpoints (image edits and variations): pure bytes.

Every body field becomes a form field (strings as they are, numbers and booleans as JSON text);
each upload field (`image`, `mask`; `jobs.endpoints.UPLOAD_FIELDS`) names a file by path (already
made absolute by the run) whose bytes go in a file part. A list of images (gpt-image-1 edits) is
sent as repeated `image[]` parts, as OpenAI's SDK does.
"""
from __future__ import annotations

import mimetypes
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from jobs.endpoints import UPLOAD_FIELDS


def _part(boundary: bytes, name: str, data: bytes, filename: str | None = None,
          content_type: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode()
    if content_type:
        head += b"\r\nContent-Type: " + content_type.encode()
    return head + b"\r\n\r\n" + data + b"\r\n"


def multipart_body(url: str, body: Mapping[str, Any], *,
                   boundary: bytes | None = None) -> tuple[str, bytes]:
    """(Content-Type header, body bytes) of the form for `body`; OSError when a file is unreadable."""
    boundary = boundary or b"runner-" + os.urandom(12).hex().encode()
    uploads = UPLOAD_FIELDS.get(url, ())
    parts: list[bytes] = []
    for name, value in body.items():
        if name in uploads:
            paths = value if isinstance(value, list) else [value]
            field = f"{name}[]" if isinstance(value, list) else name
            for p in paths:
                path = Path(p)
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                parts.append(_part(boundary, field, path.read_bytes(), path.name, kind))
        elif value is not None:
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            parts.append(_part(boundary, name, text.encode()))
    return (f"multipart/form-data; boundary={boundary.decode()}",
            b"".join(parts) + b"--" + boundary + b"--\r\n")
