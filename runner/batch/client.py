"""The hosted Batch API's Files and Batches calls, over the same `send` function as live requests.

    upload(name, content) -> file id     POST {base}/files (multipart, purpose=batch; a file streamed)
    create(file_id, url, metadata)       POST {base}/batches
    get(batch_id), cancel(batch_id)      GET {base}/batches/{id}, POST .../cancel
    batches(after) -> one page           GET {base}/batches?limit=100&after=ID
    files() -> batch input files         GET {base}/files?purpose=batch
    file(file_id)                        GET {base}/files/{id}   (Azure: wait for "processed")
    content(file_id) -> bytes            GET {base}/files/{id}/content
    content_to(file_id, path)            the same, streamed into a file (output files)
    delete_file(file_id)                 DELETE {base}/files/{id}

OpenAI: `{base_url}/files`, `Authorization: Bearer KEY`, the batch `endpoint` as the job's url
(`/v1/chat/completions`). Azure OpenAI: `{endpoint}/openai/files?api-version=V`, an `api-key`
header (or Entra ID bearer, refreshed as it expires: `Endpoint.authorize`), and the batch `endpoint` without the `/v1` prefix (`/chat/completions`),
as Azure's global batch takes it (checked against api-version 2024-10-21).

Every call returns the answer's JSON (bytes for `content`) or raises an error of the project's
tree (`runner.errors`), so `classify(exc=...)` reads it like any outcome: `APIError` for a non-2xx
answer (`runner.outcome.api_error`), `BadResponseError` for a 2xx that is not a JSON object,
`APIConnectionError` / `APITimeoutError` / `APIUnreachableError` when no answer came (what
aiohttp or the OS raised, from a `send` that lets it through, is converted as the transport
converts it: `runner.api.transport.only_tree_errors`), and `StopRunError` for a file of ours
that cannot be written.
"""
from __future__ import annotations

import os
from typing import Any
from pathlib import Path
from urllib.parse import quote, urlencode

import orjson

from runner.api.endpoint import USER_AGENT, Endpoint
from runner.api.transport import (
    FileBody, HttpRequest, HttpResponse, Send, body_to_file, only_tree_errors,
)
from runner.errors import BadResponseError
from runner.outcome import api_error

LIST_PAGE = 100  # batches per page when listing (the API's maximum)


def batch_url(job_url: str, endpoint: Endpoint) -> str:
    """The url a batch line (and the batch's `endpoint`) names for a job url: as written for
    OpenAI, without `/v1` for Azure."""
    return job_url.removeprefix("/v1") if endpoint.azure else job_url


class BatchClient:
    """The Files and Batches API of one endpoint; see the module docstring."""

    def __init__(self, send: Send, endpoint: Endpoint, *,
                 boundary: str | None = None) -> None:
        self._send = endpoint.authorize(only_tree_errors(send))  # Entra ID tokens that refresh themselves
        self.endpoint = endpoint
        self._boundary = boundary or "runner-" + os.urandom(12).hex()

    def _url(self, path: str, query: dict[str, str] | None = None) -> str:
        ep = self.endpoint
        query = dict(query or {})
        if ep.azure:
            query["api-version"] = ep.api_version or ""
            base = f"{ep.base_url}/openai{path}"
        else:
            base = ep.base_url + path
        return base + ("?" + urlencode(query) if query else "")

    def _headers(self, content_type: str | None = "application/json") -> dict[str, str]:
        headers = self.endpoint.headers()
        headers["User-Agent"] = USER_AGENT
        if content_type is None:
            headers.pop("Content-Type", None)
        else:
            headers["Content-Type"] = content_type
        return headers

    async def _call(self, method: str, path: str, *, body: bytes | FileBody = b"",
                    query: dict[str, str] | None = None,
                    content_type: str | None = "application/json",
                    save_to: str | None = None) -> HttpResponse:
        request = HttpRequest(method, self._url(path, query), self._headers(content_type), body,
                              save_to)
        response = await self._send(request)
        if not 200 <= response.status < 300:
            raise api_error(response.status, response.headers, response.body,
                            request_id=response.headers.get("x-request-id"),
                            url=request.url.split("?")[0])
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._call(method, path, **kwargs)
        try:
            value = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise BadResponseError(f"{method} {path}: the answer is not JSON") from None
        if not isinstance(value, dict):
            raise BadResponseError(f"{method} {path}: the answer is not a JSON object")
        return value

    async def upload(self, name: str, content: bytes | Path) -> dict[str, Any]:
        """Upload a batch input file (its bytes, or the file at a path: then streamed from it,
        never read whole); its file object (`id`). OSError when the path cannot be read."""
        b = self._boundary.encode()
        safe = name.replace('"', "_").encode()
        head = (b"--" + b + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                + b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="' + safe
                + b'"\r\nContent-Type: application/jsonl\r\n\r\n')
        tail = b"\r\n--" + b + b"--\r\n"
        body = (head + content + tail if isinstance(content, bytes)
                else FileBody(head, str(content), os.path.getsize(content), tail))
        return await self._json("POST", "/files", body=body,
                                content_type=f"multipart/form-data; boundary={self._boundary}")

    async def create(self, file_id: str, job_url: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Create a batch over an uploaded file; the batch object."""
        body = {"input_file_id": file_id, "endpoint": batch_url(job_url, self.endpoint),
                "completion_window": "24h", "metadata": metadata}
        return await self._json("POST", "/batches", body=orjson.dumps(body))

    async def get(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{quote(batch_id, safe='')}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/batches/{quote(batch_id, safe='')}/cancel")

    async def batches(self, after: str | None = None) -> dict[str, Any]:
        """One page of batches, newest first (`data`, `has_more`, `last_id`)."""
        query = {"limit": str(LIST_PAGE)}
        if after:
            query["after"] = after
        return await self._json("GET", "/batches", query=query)

    async def file(self, file_id: str) -> dict[str, Any]:
        """A file object (`status`: Azure processes uploads before a batch may use them)."""
        return await self._json("GET", f"/files/{quote(file_id, safe='')}")

    async def files(self) -> dict[str, Any]:
        """Uploaded batch input files (`data`: file objects with `filename` and `bytes`)."""
        return await self._json("GET", "/files", query={"purpose": "batch"})

    async def content(self, file_id: str) -> bytes:
        response = await self._call("GET", f"/files/{quote(file_id, safe='')}/content")
        return response.body

    async def content_to(self, file_id: str, path: Path) -> None:
        """A file's content into `path`, streamed (an output file may be larger than memory)."""
        response = await self._call("GET", f"/files/{quote(file_id, safe='')}/content",
                                    save_to=str(path))
        await body_to_file(response, str(path))

    async def delete_file(self, file_id: str) -> None:
        await self._call("DELETE", f"/files/{quote(file_id, safe='')}")
