"""Where requests go and how they authenticate: OpenAI (or any compatible server) and Azure OpenAI.

OpenAI: `{base_url}/chat/completions` with `Authorization: Bearer KEY`; the job's `url`
(`/v1/chat/completions`) is taken relative to the base URL, which ends in `/v1`.
Azure OpenAI: `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=V` with an
`api-key` header (or a Microsoft Entra ID bearer token: a fixed one in `api_key`, or one that
refreshes itself from `tokens`, put into each call by the `send` that `authorize` wraps); the
job's `model` names the deployment unless `deployments` maps it to another name.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import orjson

from jobs import codes
from jobs.endpoints import RESPONSES, spec_of
from jobs.packing import Request
from runner.api.multipart import multipart_body
from runner.api.transport import HttpRequest, Send

if TYPE_CHECKING:
    from runner.api.entra import TokenSource

DEFAULT_BASE_URL = "https://api.openai.com/v1"
USER_AGENT = "runner/0.1"


def check_api_version(azure: bool, api_version: str | None) -> None:
    """ValueError (a message for the user) when an Azure endpoint has no api-version: Azure
    refuses every request without one. The one place this rule lives (the CLI asks it early)."""
    if azure and not api_version:
        raise ValueError("Azure OpenAI needs an api-version: pass --api-version or set "
                         "OPENAI_API_VERSION (e.g. 2024-10-21)")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An API endpoint and its credentials; `api_key` is never shown in reprs or logs."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str = field(default="", repr=False)
    azure: bool = False
    api_version: str | None = None
    bearer: bool = False  # Azure with a Microsoft Entra ID token instead of an api-key
    deployments: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tokens: TokenSource | None = field(default=None, repr=False, compare=False)
    """Entra ID tokens that refresh themselves (`runner.api.entra`), instead of `api_key`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        check_api_version(self.azure, self.api_version)

    def deployment(self, model: str) -> str:
        return self.deployments.get(model, model)

    def url_for(self, path: str, model: str) -> str:
        """The full URL for a job `url` such as `/v1/chat/completions`."""
        tail = path.removeprefix("/v1")
        if self.azure and path == RESPONSES:  # Azure's v1 surface; the body's model names the
            return f"{self.base_url}/openai/v1/responses"  # deployment (see `build`)
        if self.azure:
            return (f"{self.base_url}/openai/deployments/{quote(self.deployment(model), safe='')}"
                    f"{tail}?api-version={quote(self.api_version or '', safe='')}")
        return self.base_url + tail

    def budget_key(self, model: str) -> tuple[str, str]:
        """Rate limits are per (endpoint, model or deployment): the key of one budget."""
        return (self.base_url, self.deployment(model) if self.azure else model)

    def headers(self) -> dict[str, str]:
        """The headers of every call, with the credential (with `tokens`, the token current now:
        the `send` that `authorize` wraps puts in the one current when the call leaves)."""
        if self.tokens is not None:
            auth = {"Authorization": f"Bearer {self.tokens.current}"}
        elif self.azure and not self.bearer:
            auth = {"api-key": self.api_key}
        else:
            auth = {"Authorization": f"Bearer {self.api_key}"}
        return {**auth, "Content-Type": "application/json", "User-Agent": USER_AGENT}

    def authorize(self, send: Send) -> Send:
        """`send` for this endpoint's calls: with `tokens`, each call gets the current Entra ID
        token and a 401 is judged (`runner.api.entra.authorized`); otherwise `send` itself."""
        if self.tokens is None:
            return send
        from runner.api.entra import authorized  # noqa: PLC0415 (only Entra runs need it)

        return authorized(send, self.tokens, self.base_url)

    def build(self, request: Request) -> HttpRequest:
        """The HTTP request for an API call; the body is the request's body, unchanged (as JSON),
        or for uploads (image edits and variations) a multipart form whose file fields are read
        from the paths the body names (`runner.api.multipart`)."""
        url = self.url_for(request.url, request.model)
        if spec_of(request.url).multipart:
            content_type, body = multipart_body(request.url, request.body)
            return HttpRequest("POST", url, {**self.headers(), "Content-Type": content_type}, body)
        body = request.body
        if self.azure and request.url == RESPONSES and self.deployment(request.model) != body.get("model"):
            body = {**body, "model": self.deployment(request.model)}  # no deployment in the URL
        return HttpRequest("POST", url, self.headers(), orjson.dumps(body))


def setup_hint(endpoint: Endpoint, job_url: str, model: str, code: str) -> str:
    """One line for a run stopped because the endpoint as configured does not work (`code`: the
    verdict's): the URL it called (no secrets: keys never go in URLs) and the likely fix."""
    return _hint(endpoint, endpoint.url_for(job_url, model), code, serves=job_url,
                 deployment=endpoint.deployment(model))


def batch_setup_hint(endpoint: Endpoint, url: str | None, code: str) -> str:
    """`setup_hint` for a Files or Batches API call (the batch backend, `runner cancel`, `status
    --refresh`): `url` is the URL it called (None: the Files API's)."""
    if url is None:
        url = (f"{endpoint.base_url}/openai/files" if endpoint.azure
               else f"{endpoint.base_url}/files")
    return _hint(endpoint, url, code, serves="the Files and Batches API", deployment=None)


def _hint(endpoint: Endpoint, url: str, code: str, *, serves: str, deployment: str | None) -> str:
    url = url.split("?")[0]
    base = endpoint.base_url
    path = urlsplit(base).path.rstrip("/")
    if code in (codes.INVALID_API_KEY, codes.PERMISSION_DENIED):
        what = "Entra ID token" if endpoint.bearer and endpoint.azure else "key"
        return (f"{url} refused the {what} ({'401' if code == codes.INVALID_API_KEY else '403'}): "
                f"check the {what} and that {'--azure-endpoint' if endpoint.azure else '--base-url'}"
                f" {base} is the service it belongs to")
    if code == codes.CONNECTION_ERROR:
        where = urlsplit(base).netloc or base
        return (f"cannot reach {url}: is the server running at {where}, and is --base-url"
                f"{' / --azure-endpoint' if endpoint.azure else ''} right?")
    if endpoint.azure:
        if path:  # e.g. https://x.openai.azure.com/openai/
            fixed = base[: len(base) - len(urlsplit(base).path)]
            return (f"{url} answered 404: --azure-endpoint is the resource's address alone; "
                    f"did you mean {fixed}?")
        if code == "DeploymentNotFound" and deployment is not None:
            return (f"{url} answered 404: Azure has no deployment {deployment!r} here (map "
                    "models to deployments with --deployment MODEL=NAME)")
        return f"{url} answered 404: check --azure-endpoint and --api-version"
    if not path.endswith("/v1") and "/v1/" not in path + "/":
        return f"{url} answered 404 for the route itself: did you mean --base-url {base}/v1?"
    return (f"{url} answered 404 for the route itself: this server does not serve {serves} "
            f"(check --base-url {base})")
