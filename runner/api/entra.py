"""Microsoft Entra ID tokens for Azure OpenAI that refresh themselves, for runs that outlive one.

    TokenProvider   async () -> Token(value, expires_at)   the seam: a command
                    (`command_provider`, --azure-ad-token-command), a credential
                    (`identity_provider`, --azure-identity: DefaultAzureCredential), a test's fake
    TokenSource     the current token: fetched at the first call, again before it expires
    authorized(send, source, base_url) -> Send
                    every call to the endpoint carries the current token; a 401 is judged here

The policy (numbers below):

- A token whose expiry is known (`expires_at`: the JWT's `exp`, or the credential's `expires_on`)
  is fetched anew once it is within `REFRESH_BEFORE_S` of expiring (or within half its lifetime,
  if shorter): in the background, calls going on with the current token meanwhile; only within
  `EXPIRY_MARGIN_S` of expiring (a tenth of its lifetime, if shorter) do calls wait for the new
  one. A token whose expiry is unknown is used until the API refuses it.
- A 401 to a call whose token the API accepted before (it expired, or was revoked): a new token is
  fetched, once for every call that met the same one, and the call is sent again; the caller sees
  one answer, so no attempt is counted. A 401 to a token the API never accepted raises
  `TokenRejected` with the API's message: a fresh token refused (wrong tenant, audience, role)
  would be refused again, so the run stops (exit 2).
- A fetch that fails when no usable token is left raises `TokenUnavailable`, naming the command or
  the credential (the run stops, resumable: exit 3). A background fetch that fails is tried again
  after `RETRY_FETCH_S` while the current token lasts. Fetches are at least `MIN_REFETCH_S` apart
  (a command that keeps printing a token near its end is not run for every call).
- A command runs in a shell as an asyncio subprocess (the event loop never waits on it), with no
  standard input, in a process group of its own, killed whole after `COMMAND_TIMEOUT_S` or when
  the run stops; a credential is asked in a worker thread.
- The token is never logged, never in a message, a repr or an error (only the command's exit code
  and the last line of its stderr, masked); it is sent only in calls that carry `Authorization`
  (built by `runner.api.endpoint.Endpoint`) to the endpoint's own origin.

Time is epoch seconds (a JWT's `exp` is), from an injected `clock`.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from runner.api.transport import HttpRequest, HttpResponse, Send, origin
from runner.errors import TokenRejected, TokenUnavailable, describe, error_fields
from runner.redact import mask_secrets

__all__ = [
    "COGNITIVE_SCOPE", "REFRESH_BEFORE_S", "EXPIRY_MARGIN_S", "RETRY_FETCH_S", "MIN_REFETCH_S",
    "COMMAND_TIMEOUT_S", "Token", "TokenProvider", "Lease", "TokenSource", "jwt_expiry", "parse_token",
    "command_provider", "identity_provider", "authorized",
]

COGNITIVE_SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_BEFORE_S = 120.0  # under the 5 min before expiry at which Azure CLI and MSAL hand out a new one
EXPIRY_MARGIN_S = 30.0    # a call must reach the API before its token expires
RETRY_FETCH_S = 10.0      # a background fetch that failed is tried again after this
MIN_REFETCH_S = 5.0       # fetches at least this far apart, unless the token has expired
COMMAND_TIMEOUT_S = 60.0  # `az account get-access-token` takes a second or two; a login prompt forever
_STDERR_CHARS = 300       # of a failed command's last stderr line, quoted in the stop reason


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token and when it expires (epoch seconds; None: unknown, used until refused)."""

    value: str = field(repr=False)
    expires_at: float | None = None

    def __post_init__(self) -> None:
        if not self.value or any(c.isspace() for c in self.value):
            raise ValueError("a token is one word of text")
        if self.expires_at is not None and not math.isfinite(self.expires_at):
            raise ValueError("a token's expiry must be a finite time")


TokenProvider = Callable[[], Awaitable[Token]]


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim (epoch seconds) of a JWT; None for a token that is not one or has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None
    return float(exp)


def parse_token(output: bytes | str) -> Token:
    """The token a command printed: one word (`az ... --query accessToken -o tsv`), or the JSON of
    `az account get-access-token` (`accessToken`, `expires_on`). Its expiry: `expires_on` when
    the JSON has it, else the JWT's `exp`. ValueError (never quoting the output) otherwise."""
    text = output.decode("utf-8", errors="replace") if isinstance(output, bytes) else output
    text = text.strip()
    if not text:
        raise ValueError("it printed nothing")
    expires_at = None
    if text.startswith("{"):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("it printed JSON that does not parse") from None
        value = next((data[k] for k in ("accessToken", "access_token", "token")
                      if isinstance(data.get(k), str)), None) if isinstance(data, dict) else None
        if not value:
            raise ValueError("its JSON has no accessToken")
        raw = data.get("expires_on")
        try:
            expires_at = float(raw) if raw is not None and not isinstance(raw, bool) else None
        except ValueError:
            expires_at = None
    else:
        lines = text.splitlines()
        value = lines[0].strip()
        if len(lines) > 1 or any(c.isspace() for c in value):
            raise ValueError("it printed more than one word: print the token alone "
                             "(az: --query accessToken -o tsv)")
    if expires_at is None or not math.isfinite(expires_at):
        expires_at = jwt_expiry(value)
    return Token(value, expires_at)


def command_provider(command: str, *, timeout_s: float = COMMAND_TIMEOUT_S) -> TokenProvider:
    """A provider running `command` in a shell (an asyncio subprocess, no standard input) and
    reading the token it prints (`parse_token`); `TokenUnavailable` naming it when it fails."""
    shown = f"--azure-ad-token-command {mask_secrets(command)!r}"

    async def fetch() -> Token:
        try:
            proc = await asyncio.create_subprocess_shell(  # its own group: killed whole
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True)
        except OSError as exc:
            raise TokenUnavailable(f"{shown} could not start: {describe(exc)}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except BaseException as exc:  # a timeout, or the run cancelling the fetch
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the shell and what it started
            await asyncio.shield(proc.wait())
            if isinstance(exc, TimeoutError):
                raise TokenUnavailable(f"{shown} did not finish within {timeout_s:g} s") from None
            raise
        if proc.returncode != 0:
            last = next((line.strip() for line in reversed(err.decode(errors="replace").splitlines())
                         if line.strip()), "")
            said = f": {mask_secrets(last)[:_STDERR_CHARS]}" if last else ""
            raise TokenUnavailable(f"{shown} failed (exit {proc.returncode}){said}")
        try:
            return parse_token(out)
        except ValueError as exc:
            raise TokenUnavailable(f"{shown} gave no token: {exc}") from None

    return fetch


def identity_provider(credential: Any = None, *, scope: str = COGNITIVE_SCOPE) -> TokenProvider:
    """A provider asking `credential` (anything with azure-identity's `get_token(scope)` returning
    `.token` and `.expires_on`; default `DefaultAzureCredential()`, imported here: ImportError
    when the `azure-identity` extra is not installed) in a worker thread."""
    if credential is None:
        from azure.identity import DefaultAzureCredential  # noqa: PLC0415 (an optional extra)

        credential = DefaultAzureCredential()

    async def fetch() -> Token:
        try:
            access = await asyncio.to_thread(credential.get_token, scope)
            return Token(access.token, float(access.expires_on))
        except Exception as exc:  # azure-identity's errors: ClientAuthenticationError and kin
            first = (describe(exc).splitlines() or [""])[0]
            raise TokenUnavailable(f"--azure-identity ({type(credential).__name__}) gave no token "
                                   f"for {scope}: {mask_secrets(first)[:_STDERR_CHARS]}") from None

    return fetch


@dataclass(frozen=True, slots=True)
class Lease:
    """A token as the source handed it out: `serial` tells the fetches apart."""

    serial: int
    token: Token
    fetched_at: float

    @property
    def refresh_at(self) -> float | None:
        """When to fetch the next one in the background (None: not before a 401)."""
        expires = self.token.expires_at
        if expires is None:
            return None
        return expires - min(REFRESH_BEFORE_S, max(0.0, expires - self.fetched_at) / 2)

    @property
    def stale_at(self) -> float | None:
        """From when calls wait for a new token rather than send this one."""
        expires = self.token.expires_at
        if expires is None:
            return None
        return expires - min(EXPIRY_MARGIN_S, max(0.0, expires - self.fetched_at) / 10)


class TokenSource:
    """The current token of a run, from `provider`; see the module docstring for the policy.
    `what` names the provider in messages. `fetches` counts the provider's calls."""

    def __init__(self, provider: TokenProvider, *, what: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._provider = provider
        self.what = what
        self._clock = clock
        self._lease: Lease | None = None
        self._accepted: set[int] = set()  # serials the API has accepted
        self._fetching: asyncio.Task[Lease] | None = None
        self._next_fetch = -math.inf  # no fetch before this (MIN_REFETCH_S, RETRY_FETCH_S)
        self.fetches = 0

    @property
    def current(self) -> str:
        """The current token's text ("" before the first fetch): for building a request."""
        return self._lease.token.value if self._lease is not None else ""

    async def lease(self) -> Lease:
        """The token to send now: the current one, fetched first when there is none or it is
        (nearly) expired; a background fetch starts when it is due. `TokenUnavailable` when none
        can be had."""
        now = self._clock()
        lease = self._lease
        if lease is None or (lease.token.expires_at is not None and now >= lease.token.expires_at):
            return await self._fetch()
        if lease.refresh_at is not None and now >= lease.refresh_at and now >= self._next_fetch:
            if lease.stale_at is not None and now >= lease.stale_at:
                return await self._fetch()
            self._start()
        return lease

    def accepted(self, lease: Lease) -> None:
        """The API answered a call carrying `lease` with something other than 401."""
        self._accepted.add(lease.serial)

    def was_accepted(self, lease: Lease) -> bool:
        return lease.serial in self._accepted

    async def renew(self, stale: Lease) -> Lease:
        """After a 401 to `stale`, once accepted: a new token, fetched once for every call that
        met the same one (a call that meets a newer one gets that)."""
        if self._lease is not None and self._lease.serial != stale.serial:
            return self._lease
        return await self._fetch()

    def _start(self) -> asyncio.Task[Lease]:
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.get_running_loop().create_task(self._fetch_once())
            self._fetching.add_done_callback(_retrieve)
        return self._fetching

    async def _fetch(self) -> Lease:
        return await asyncio.shield(self._start())

    async def _fetch_once(self) -> Lease:
        started = self._clock()
        self.fetches += 1
        try:
            token = await self._provider()
        except TokenUnavailable:
            self._next_fetch = started + RETRY_FETCH_S
            raise
        except Exception as exc:  # a provider of our own never raises anything else
            self._next_fetch = started + RETRY_FETCH_S
            raise TokenUnavailable(f"{self.what} gave no token: {mask_secrets(describe(exc))}") from None
        now = self._clock()
        if token.expires_at is not None and token.expires_at <= now:
            self._next_fetch = started + RETRY_FETCH_S
            raise TokenUnavailable(f"{self.what} gave a token that expired "
                                   f"{now - token.expires_at:,.0f} s ago")
        self._next_fetch = now + MIN_REFETCH_S
        serial = self._lease.serial + 1 if self._lease is not None else 1
        self._lease = Lease(serial, token, now)
        return self._lease


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A background fetch's failure is reported by the next fetch that waits, not by asyncio."""
    if not task.cancelled():
        task.exception()


AUTHORIZATION = "authorization"


def _with_token(request: HttpRequest, lease: Lease) -> HttpRequest:
    headers = {k: v for k, v in request.headers.items() if k.lower() != AUTHORIZATION}
    headers["Authorization"] = f"Bearer {lease.token.value}"
    return dataclasses.replace(request, headers=headers)


def authorized(send: Send, source: TokenSource, base_url: str) -> Send:
    """`send` giving every call to `base_url`'s origin that carries `Authorization` (the calls
    `Endpoint` builds) the source's current token, and judging 401s by the module docstring's
    policy. Other calls (an image download from a signed URL) pass through unchanged."""
    home = origin(base_url)

    async def send_authorized(request: HttpRequest) -> HttpResponse:
        if origin(request.url) != home or not any(k.lower() == AUTHORIZATION for k in request.headers):
            return await send(request)
        lease = await source.lease()
        response = await send(_with_token(request, lease))
        if response.status == 401 and source.was_accepted(lease):  # expired or revoked since
            lease = await source.renew(lease)
            response = await send(_with_token(request, lease))
        if response.status != 401:
            source.accepted(lease)
            return response
        said = mask_secrets(" ".join((error_fields(response.body)[2] or "HTTP 401").split()))
        raise TokenRejected(f"the API refused a Microsoft Entra ID token just fetched from "
                            f"{source.what} (401): {said}")

    return send_authorized
