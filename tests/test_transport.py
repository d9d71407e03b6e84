"""runner.api.transport: when no answer arrives, `send` raises the tree's errors, from the cause."""
import asyncio
import socket

import aiohttp
import pytest

from runner.api.transport import HttpRequest, aiohttp_sender, no_answer_error, open_session
from runner.errors import APIConnectionError, APITimeoutError
from runner.outcome import classify


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _send_to(url: str, *, read_timeout: float = 5.0):
    async with open_session(max_connections=1, connect_timeout=1.0, read_timeout=read_timeout) as session:
        return await aiohttp_sender(session)(HttpRequest("POST", url, {"api-key": "k"}, b"{}"))


async def test_a_refused_connection_raises_api_connection_error_from_the_os_error():
    with pytest.raises(APIConnectionError) as info:
        await _send_to(f"http://127.0.0.1:{_free_port()}/v1/completions?api-key=SECRET123")
    assert type(info.value) is APIConnectionError
    assert isinstance(info.value.__cause__, aiohttp.ClientError)
    assert "SECRET123" not in str(info.value)
    assert classify(None, {}, None, exc=info.value) == classify(None, {}, None, exc=info.value.__cause__)


async def test_a_server_that_never_answers_raises_api_timeout_error():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(APITimeoutError) as info:
            await _send_to(f"http://127.0.0.1:{port}/v1/completions", read_timeout=0.2)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert classify(None, {}, None, exc=info.value).code == "timeout"


@pytest.mark.parametrize("raw, error, message", [
    (asyncio.TimeoutError(), APITimeoutError, "TimeoutError"),
    (aiohttp.ServerTimeoutError("read timed out"), APITimeoutError, "ServerTimeoutError: read timed out"),
    (aiohttp.ServerDisconnectedError(), APIConnectionError,
     "ServerDisconnectedError: Server disconnected"),
    (aiohttp.ClientPayloadError("body cut short"), APIConnectionError,
     "ClientPayloadError: body cut short"),
    (aiohttp.ClientResponseError(None, (), status=400, message="Invalid header token"),
     APIConnectionError, "malformed HTTP answer: Invalid header token"),
    (aiohttp.ClientConnectionError("Cannot connect to https://x/d?api-key=SECRET123&v=1"),
     APIConnectionError, "ClientConnectionError: Cannot connect to https://x/d?api-key=***&v=1"),
    (ConnectionResetError(104, "reset by peer"), APIConnectionError,
     "ConnectionResetError: [Errno 104] reset by peer"),
], ids=lambda e: type(e).__name__ if isinstance(e, BaseException) else None)
def test_no_answer_errors_name_their_cause_and_classify_alike(raw, error, message):
    wrapped = no_answer_error(raw)
    assert type(wrapped) is error and str(wrapped) == message
    assert classify(None, {}, None, exc=wrapped) == classify(None, {}, None, exc=raw)
    assert classify(None, {}, None, exc=raw).message == message
