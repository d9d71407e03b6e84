"""runner.api.transport: when no answer arrives, `send` raises the tree's errors, from the cause."""
import asyncio
import contextlib
import socket

import aiohttp
import pytest

from runner.api.transport import (
    UPLOAD_MIN_BYTES_S, FileBody, HttpRequest, aiohttp_sender, no_answer_error, only_tree_errors,
    open_session, request_timeout,
)
from runner.errors import APIConnectionError, APIUnreachableError, APITimeoutError
from runner.outcome import Action, classify


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def serving(path: str, handler):
    """An aiohttp server answering GET `path` with `handler`, on a free port (yielded)."""
    from aiohttp import web
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


async def _send_to(url: str, *, read_timeout: float = 5.0):
    async with open_session(max_connections=1, connect_timeout=1.0, read_timeout=read_timeout) as session:
        return await aiohttp_sender(session)(HttpRequest("POST", url, {"api-key": "k"}, b"{}"))


async def test_a_refused_connection_raises_api_connection_error_from_the_os_error():
    with pytest.raises(APIConnectionError) as info:
        await _send_to(f"http://127.0.0.1:{_free_port()}/v1/completions?api-key=SECRET123")
    assert type(info.value) is APIUnreachableError  # nothing listens: an endpoint fault
    assert isinstance(info.value.__cause__, aiohttp.ClientError)
    assert "SECRET123" not in str(info.value)
    assert classify(None, {}, None, exc=info.value) == classify(None, {}, None,
                                                                exc=no_answer_error(info.value.__cause__))


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
async def test_no_answer_errors_name_their_cause_and_any_send_raises_them_for_classify(
        raw, error, message):
    wrapped = no_answer_error(raw)
    assert type(wrapped) is error and str(wrapped) == message
    verdict = classify(None, {}, None, exc=wrapped)
    assert verdict.action is Action.RETRY and verdict.message == message

    async def scripted(request):  # a send that lets the raw error through
        raise raw

    with pytest.raises(error) as info:
        await only_tree_errors(scripted)(HttpRequest("GET", "http://x/v1/files", {}))
    assert info.value.__cause__ is raw and str(info.value) == message


async def test_a_body_asked_into_a_file_is_streamed_there_and_an_error_body_is_not(tmp_path):
    from aiohttp import web
    big = b"".join(b'{"custom_id": "j%d", "pad": "%s"}\n' % (i, b"x" * 900) for i in range(3000))

    async def content(request):
        if request.match_info["id"] == "gone":
            return web.json_response({"error": {"message": "No such File"}}, status=404)
        response = web.StreamResponse()
        await response.prepare(request)
        for at in range(0, len(big), 65536):  # arrives in pieces
            await response.write(big[at:at + 65536])
        return response

    async with serving("/files/{id}/content", content) as port:
        async with open_session(max_connections=1) as session:
            send = aiohttp_sender(session)
            path = tmp_path / "out.download"
            response = await send(HttpRequest("GET", f"http://127.0.0.1:{port}/files/f1/content",
                                              {}, save_to=str(path)))
            assert response.status == 200 and response.body == b""  # not held in memory
            assert path.read_bytes() == big
            gone = tmp_path / "gone.download"
            response = await send(HttpRequest("GET", f"http://127.0.0.1:{port}/files/gone/content",
                                              {}, save_to=str(gone)))
            assert response.status == 404 and b"No such File" in response.body
            assert not gone.exists()


def test_a_line_index_reads_lines_by_custom_id_from_disk(tmp_path):
    from runner.batch.lineindex import LineIndex
    (tmp_path / "a.jsonl").write_bytes(b'{"custom_id": "x", "n": 1}\nnot json\n[1]\n'
                                       b'{"custom_id": 7}\n{"custom_id": "y", "n": 2}\n')
    (tmp_path / "b.jsonl").write_bytes(b'{"custom_id": "x", "n": 3}\n')
    with LineIndex([tmp_path / "a.jsonl", tmp_path / "missing.jsonl", tmp_path / "b.jsonl"]) as index:
        assert len(index) == 2
        assert index.get("x") == {"custom_id": "x", "n": 3}  # the last line of an id counts
        assert index.get("y") == {"custom_id": "y", "n": 2}
        assert index.get("z") is None
    with LineIndex([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], digest=lambda cid: 5) as index:
        assert index.get("x")["n"] == 3 and index.get("y")["n"] == 2  # every digest collides
        assert index.get("z") is None and len(index) == 2


@pytest.mark.slow  # over a second of real time
async def test_a_download_slower_than_the_total_timeout_completes_while_bytes_keep_coming(tmp_path):
    from aiohttp import web
    body = b"x" * 1000

    async def slow(request):  # 2 s in all, a piece every 0.2 s: never idle for a read timeout
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(10):
            await response.write(body)
            await asyncio.sleep(0.2)
        return response

    async with serving("/f", slow) as port:  # total = connect + read = 1.0 s: a plain request
        async with open_session(max_connections=1, connect_timeout=0.5, read_timeout=0.5) as session:
            send = aiohttp_sender(session)
            path = tmp_path / "f.download"
            response = await send(HttpRequest("GET", f"http://127.0.0.1:{port}/f", {},
                                              save_to=str(path)))
            assert response.status == 200 and path.read_bytes() == body * 10
            with pytest.raises(APITimeoutError):  # ... may not outlast it
                await send(HttpRequest("GET", f"http://127.0.0.1:{port}/f", {}))


async def test_a_file_body_is_streamed_from_its_file_with_its_length_said_first(tmp_path):
    from aiohttp import web
    from runner.api.transport import STREAM_CHUNK, FileBody
    data = bytes(range(256)) * (3 * STREAM_CHUNK // 256 + 7)  # several pieces and a bit
    (tmp_path / "chunk.jsonl").write_bytes(data + b"not sent: past the size given")
    body = FileBody(b"HEAD\r\n", str(tmp_path / "chunk.jsonl"), len(data), b"\r\nTAIL")
    seen = {}

    async def upload(request):
        seen["length"] = request.headers.get("Content-Length")
        seen["chunked"] = request.headers.get("Transfer-Encoding")
        seen["body"] = await request.read()
        return web.json_response({"id": "file-1"})

    app = web.Application(client_max_size=len(data) + 1024)
    app.router.add_post("/files", upload)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with open_session(max_connections=1) as session:
            response = await aiohttp_sender(session)(
                HttpRequest("POST", f"http://127.0.0.1:{port}/files", {"api-key": "k"}, body))
    finally:
        await runner.cleanup()
    assert response.status == 200
    assert seen["body"] == b"HEAD\r\n" + data + b"\r\nTAIL" == body.read()
    assert seen["length"] == str(body.length) and seen["chunked"] is None


async def test_a_file_body_whose_file_is_shorter_than_said_is_never_sent_short(tmp_path):
    from runner.api.transport import FileBody
    (tmp_path / "chunk.jsonl").write_bytes(b"12345")
    body = FileBody(b"H", str(tmp_path / "chunk.jsonl"), 9, b"T")
    with pytest.raises(OSError):
        body.read()
    with pytest.raises(OSError):
        async for _ in body.chunks():
            pass


def test_an_upload_streamed_from_a_file_may_take_its_size_at_the_slowest_rate_downloads_no_total():
    # a 200 MB batch file over a slow uplink: the session's total (130 s) alone would cut every
    # attempt short, and the batch could never be sent
    session = aiohttp.ClientTimeout(total=130, connect=10, sock_read=120)
    upload = HttpRequest("POST", "https://api.test/v1/files", {},
                         FileBody(b"head", "/nowhere", 200_000_000, b"tail"))
    timeout = request_timeout(session, upload)
    assert timeout.total == 130 + (200_000_008) / UPLOAD_MIN_BYTES_S  # over 33 minutes
    assert (timeout.connect, timeout.sock_read) == (10, 120)
    download = HttpRequest("GET", "https://api.test/v1/files/f/content", {}, save_to="/tmp/x")
    assert request_timeout(session, download).total is None
    call = HttpRequest("POST", "https://api.test/v1/chat/completions", {}, b"{}")
    assert request_timeout(session, call) is session


def test_a_session_sender_opens_its_session_with_the_first_request_and_none_after_close(loop):
    from runner.api.transport import HttpRequest, SessionSender
    sender = SessionSender(max_connections=2)
    assert sender._session is None  # a run that sends nothing opens nothing
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]  # bound, not listening: the connection is refused
        with pytest.raises(APIConnectionError):
            loop.run_until_complete(only_tree_errors(sender)(
                HttpRequest("GET", f"http://127.0.0.1:{port}/v1/models", {})))
    assert sender._session is not None and not sender._session.closed
    session = sender._session
    loop.run_until_complete(sender.close())
    assert session.closed
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_until_complete(sender(HttpRequest("GET", f"http://127.0.0.1:{port}/", {})))
