"""Keys never leave their origin: a call carrying the key (OpenAI's `Authorization: Bearer`, Azure's
`api-key`) is never sent to another origin. A redirect there is not followed: the run stops with
exit 2 and one line naming both URLs. Same-origin redirects are followed. Checked on the `send`
seam with scripted answers, then end to end with real servers: origin A forwards to the simulator
(and starts redirecting after some successes), origin B is another port that would answer too."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from runner.api.endpoint import Endpoint
from runner.api.transport import (
    CREDENTIAL_HEADERS, MAX_REDIRECTS, HttpRequest, HttpResponse, follow_redirects, origin,
)
from runner.batch.run import BatchRunConfig, run_batch
from runner.errors import CrossOriginRedirect
from runner.exit_codes import EXIT_OK, EXIT_USAGE
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.outcome import Action, classify
from runner.simulator.batches import BatchConfig
from runner.simulator.server import SimConfig, Simulator
from tests.fronts import Front, in_thread, serving
from tests.test_e2e import ROOT, assert_exactly_once, read_results, write_jobs

KEY = "sk-redirect-secret-0123456789abcdef"
API_VERSION = "2024-10-21"
STYLES = ["openai", "azure"]


# -- the rule, on the send seam ----------------------------------------------------------------------

class Scripted:
    """A `send` answering each call from a list of answers; records the requests."""

    def __init__(self, *answers: HttpResponse) -> None:
        self.answers = list(answers)
        self.requests: list[HttpRequest] = []

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        return self.answers.pop(0) if self.answers else HttpResponse(200, {}, b"{}")


def moved(status: int, location: str) -> HttpResponse:
    return HttpResponse(status, {"location": location}, b"")


KEYED = {"api-key": KEY}


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"api-key": KEY},
                                     {"Ocp-Apim-Subscription-Key": KEY}], ids=lambda h: next(iter(h)))
@pytest.mark.parametrize("url, location", [
    ("https://a.example/v1/x", "https://b.example/v1/x"),           # another host
    ("https://a.example/v1/x", "http://a.example/v1/x"),            # a downgrade to http
    ("https://a.example/v1/x", "https://a.example:8443/v1/x"),      # another port
    ("https://a.example/v1/x", "//b.example/v1/x"),                 # scheme-relative
    ("https://a.example/v1/x", "https://a.example.evil.test/v1/x"),  # a look-alike host
    ("http://127.0.0.1:9/v1/x", "http://127.0.0.1:10/v1/x"),        # two loopback ports
])
async def test_a_redirect_to_another_origin_is_not_followed_for_a_call_carrying_a_credential(
        headers, url, location):
    send = Scripted(moved(307, location))
    with pytest.raises(CrossOriginRedirect) as info:
        await follow_redirects(send)(HttpRequest("POST", url, headers, b"{}"))
    assert len(send.requests) == 1  # nothing went to the other origin
    message = str(info.value)
    assert "\n" not in message and url in message and "redirect to" in message
    assert KEY not in message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_every_redirect_status_to_another_origin_stops_a_keyed_call(status):
    send = Scripted(moved(status, "https://b.example/v1/x"))
    with pytest.raises(CrossOriginRedirect):
        await follow_redirects(send)(HttpRequest("GET", "https://a.example/v1/x", KEYED))
    assert len(send.requests) == 1


@pytest.mark.parametrize("status", [307, 308])
async def test_a_same_origin_redirect_is_followed_with_method_body_and_headers(status):
    send = Scripted(moved(status, "/v1/chat/completions"))
    answer = await follow_redirects(send)(
        HttpRequest("POST", "https://a.example:443/v2/chat/completions", KEYED, b'{"a": 1}'))
    assert answer.status == 200
    second = send.requests[1]
    assert second.url == "https://a.example:443/v1/chat/completions"
    assert (second.method, second.body, second.headers) == ("POST", b'{"a": 1}', KEYED)


async def test_a_post_moved_by_301_302_or_303_within_the_origin_is_the_answer_it_is():
    send = Scripted(moved(302, "/elsewhere"))
    answer = await follow_redirects(send)(HttpRequest("POST", "https://a.example/v1/x", KEYED, b"{}"))
    assert answer.status == 302 and len(send.requests) == 1
    assert classify(answer.status, answer.headers, answer.body).code == "unexpected_status"


async def test_a_get_moved_within_the_origin_is_followed_and_a_loop_ends_after_max_redirects():
    send = Scripted(*[moved(302, f"/v1/files/{i}") for i in range(MAX_REDIRECTS + 3)])
    answer = await follow_redirects(send)(HttpRequest("GET", "https://a.example/v1/files/x", KEYED))
    assert answer.status == 302 and len(send.requests) == MAX_REDIRECTS + 1


async def test_a_call_without_credentials_follows_redirects_anywhere():
    """An image download from a signed URL carries no key: a CDN's redirect is fine."""
    send = Scripted(moved(302, "https://cdn.example/img.png?sig=abc"))
    answer = await follow_redirects(send)(HttpRequest("GET", "https://files.example/img", {}))
    assert answer.status == 200 and send.requests[1].url == "https://cdn.example/img.png?sig=abc"
    assert send.requests[1].headers == {}


def test_origins_compare_scheme_host_and_port_with_default_ports_filled_in():
    assert origin("https://A.example/x") == origin("https://a.example:443/y?z=1")
    assert origin("http://a.example/x") == origin("http://a.example:80/")
    assert origin("https://a.example/x") != origin("http://a.example/x")
    assert origin("http://a.example:99999/x") != origin("http://a.example/x")  # unparsable port


def test_credential_headers_include_both_header_styles():
    assert {"authorization", "api-key"} <= CREDENTIAL_HEADERS


def test_a_refused_redirect_stops_the_run_as_a_setting_to_fix():
    verdict = classify(None, {}, None, exc=CrossOriginRedirect(
        "https://a.example/v1/x", "https://b.example/v1/x", 307))
    assert verdict.action is Action.STOP_RUN and verdict.misconfigured
    assert verdict.code == "cross_origin_redirect"
    assert "https://a.example/v1/x" in verdict.message and "https://b.example/v1/x" in verdict.message


# -- end to end: real servers on two loopback origins --------------------------------------------

def endpoint(style: str, origin_url: str) -> Endpoint:
    if style == "azure":
        return Endpoint(base_url=origin_url, api_key=KEY, azure=True, api_version=API_VERSION)
    return Endpoint(base_url=origin_url + "/v1", api_key=KEY)


def assert_key_stayed_home(a: Front, b: Front, style: str) -> None:
    assert b.calls == [], f"the other origin was sent {b.calls}"
    keyed = [h for h in a.headers_seen()
             if h.get("api-key" if style == "azure" else "Authorization")
             == (KEY if style == "azure" else f"Bearer {KEY}")]
    assert a.calls and len(keyed) == len(a.calls)  # the test means something: A had the key


def after(successes: int):
    return lambda n, method, path: n >= successes


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("successes", [0, 5])
async def test_live_a_redirect_to_another_origin_stops_the_run_with_exit_2_and_sends_nothing_more(
        tmp_path, style, successes):
    write_jobs(tmp_path / "in.jsonl", 20, kinds=("chat",))
    messages: list[str] = []
    async with Simulator(SimConfig()) as sim:
        b = Front(sim.azure_endpoint)
        async with serving(b) as b_url:
            a = Front(sim.azure_endpoint, redirect=after(successes), to=b_url)
            async with serving(a) as a_url:
                stats = await run(
                    RunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                              endpoint=endpoint(style, a_url), pack=False,
                              dispatch=DispatchConfig(concurrency=1)),
                    progress=False, handle_signals=False, log=messages.append)
    assert stats.exit_code() == EXIT_USAGE
    assert_key_stayed_home(a, b, style)
    assert len(a.redirected) == 1 and len(a.calls) == successes + 1  # nothing sent after it
    reason = stats.stop_reason
    assert "\n" not in reason and a_url in reason and b_url in reason, reason
    assert any(a_url in m and b_url in m for m in messages)
    done = read_results(tmp_path / "out.jsonl") if successes else []
    assert len(done) == successes and all(r["error"] is None for r in done)  # kept, resumable
    assert not any(KEY in m for m in messages)


@pytest.mark.parametrize("style", STYLES)
async def test_live_an_image_edit_upload_redirected_elsewhere_is_not_sent_there(tmp_path, style):
    png = tmp_path / "in.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    line = {"custom_id": "edit", "method": "POST", "url": "/v1/images/edits",
            "body": {"model": "gpt-image-1", "prompt": "a hat", "image": "in.png"}}
    (tmp_path / "in.jsonl").write_bytes(orjson.dumps(line) + b"\n")
    async with Simulator(SimConfig()) as sim:
        b = Front(sim.azure_endpoint)
        async with serving(b) as b_url:
            a = Front(sim.azure_endpoint, redirect=after(0), to=b_url)
            async with serving(a) as a_url:
                stats = await run(
                    RunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                              endpoint=endpoint(style, a_url)),
                    progress=False, handle_signals=False, log=lambda m: None)
    assert stats.exit_code() == EXIT_USAGE
    assert_key_stayed_home(a, b, style)
    assert a.calls[0][1].split("?")[0].endswith("/images/edits")


@pytest.mark.parametrize("style", STYLES)
async def test_live_a_same_origin_redirect_is_followed_and_the_run_succeeds(tmp_path, style):
    jobs = write_jobs(tmp_path / "in.jsonl", 6, kinds=("chat",))
    async with Simulator(SimConfig()) as sim:
        b = Front(sim.azure_endpoint)  # another origin, which must see nothing
        async with serving(b):
            a = Front(sim.azure_endpoint)
            async with serving(a) as a_url:
                # every first call of a job is moved to the same path at A itself, once
                seen: set[str] = set()

                def once(n, method, path):
                    if path in seen:
                        return False
                    seen.add(path)
                    return True

                a.redirect, a.to = once, a_url
                stats = await run(
                    RunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                              endpoint=endpoint(style, a_url), pack=False),
                    progress=False, handle_signals=False, log=lambda m: None)
    assert stats.exit_code() == EXIT_OK
    assert a.redirected and b.calls == []
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


# -- --via batch: every Files/Batches call -----------------------------------------------------------

CALLS = {  # which call of a batch run is the first redirected: (method, path test)
    "upload": lambda m, p: m == "POST" and p.endswith("/files"),
    "create": lambda m, p: m == "POST" and p.endswith("/batches"),
    "poll": lambda m, p: m == "GET" and "/batches/" in p,
    "download": lambda m, p: m == "GET" and p.endswith("/content"),
}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("call", list(CALLS))
def test_batch_a_redirect_of_any_files_or_batches_call_stops_with_exit_2(loop, tmp_path, style, call):
    write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    messages: list[str] = []
    started = {"on": False}

    def rule(n, method, path):
        started["on"] = started["on"] or CALLS[call](method, path)
        return started["on"]

    async def main():
        sim = Simulator(SimConfig(), clock=loop.time,
                        batch=BatchConfig(lines_per_s=5, validate_s=2, finalize_s=1))
        await sim.start()
        try:
            b = Front(sim.azure_endpoint)
            async with serving(b) as b_url:
                a = Front(sim.azure_endpoint, redirect=rule, to=b_url)
                async with serving(a) as a_url:
                    config = BatchRunConfig(input=str(tmp_path / "in.jsonl"),
                                            output=tmp_path / "out.jsonl",
                                            endpoint=endpoint(style, a_url), poll_every=1.0)
                    stats = await run_batch(config, progress=False, handle_signals=False,
                                            log=messages.append)
            return stats, a, b, a_url, b_url
        finally:
            await sim.stop()

    stats, a, b, a_url, b_url = loop.run_until_complete(main())
    assert stats.exit_code() == EXIT_USAGE
    assert_key_stayed_home(a, b, style)
    assert a.redirected == [len(a.calls) - 1]  # the redirected call was the last one sent
    assert a_url in stats.stop_reason and b_url in stats.stop_reason
    assert any(a_url in m and b_url in m and "\n" not in m for m in messages)
    assert not any(KEY in m for m in messages)


# -- the command line: exit 2 and one line ------------------------------------------------------------

@pytest.mark.slow  # starts runner as a process
@pytest.mark.parametrize("via", ["live", "batch"])
def test_cli_an_azure_key_redirected_elsewhere_exits_2_with_one_line_naming_both_urls(tmp_path, via):
    write_jobs(tmp_path / "in.jsonl", 8, kinds=("chat",))

    async def build(stack):
        sim = await stack.enter_async_context(
            Simulator(SimConfig(), batch=BatchConfig(lines_per_s=1000, validate_s=0.1,
                                                     finalize_s=0.1, file_processing_s=0.1)))
        b = Front(sim.azure_endpoint)
        b_url = await stack.enter_async_context(serving(b))
        a = Front(sim.azure_endpoint, redirect=after(2), to=b_url)
        a_url = await stack.enter_async_context(serving(a))
        return a, b, a_url, b_url

    with in_thread(build) as (a, b, a_url, b_url):
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(tmp_path / "in.jsonl"),
             "-o", str(tmp_path / "out.jsonl"), "--no-progress", "--via", via, "--poll-every", "0.2",
             "--azure-endpoint", a_url, "--api-version", API_VERSION],
            cwd=ROOT, capture_output=True, timeout=60,
            env={**os.environ, "AZURE_OPENAI_API_KEY": KEY})
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_USAGE, err
    assert b.calls == [] and a.redirected  # (live: the calls on the wire then were redirected too)
    lines = [line for line in err.splitlines() if a_url in line and b_url in line]
    assert lines, err
    assert KEY not in err
