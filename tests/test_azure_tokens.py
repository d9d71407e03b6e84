"""Microsoft Entra ID tokens that refresh themselves (`runner.api.entra`): the token provider seam
on a fake clock, the 401 rule on the `send` seam, a real command as an asyncio subprocess, a fake
azure-identity credential, and runs that outlive several tokens against a tiny Azure front (an
aiohttp server before the simulator that accepts a token only until it expires), live and
`--via batch`, on virtual time: an hour of run with tokens that live ten minutes."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections import Counter

import orjson
import pytest
from aiohttp import web

from runner.api.endpoint import Endpoint
from runner.api.entra import (
    COGNITIVE_SCOPE, REFRESH_BEFORE_S, RETRY_FETCH_S, Token, TokenSource, authorized,
    command_provider, identity_provider, jwt_expiry, parse_token,
)
from runner.api.transport import HttpRequest, HttpResponse
from runner.cli.batch import refresh
from runner.batch.run import BatchRunConfig, run_batch
from runner.errors import TokenRejected, TokenUnavailable
from runner.exit_codes import EXIT_IN_PROGRESS, EXIT_OK, EXIT_STOPPED, EXIT_USAGE
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.outcome import Action, classify
from runner.simulator.batches import BatchConfig
from runner.simulator.server import SimConfig, Simulator
from tests.fronts import Front, in_thread, serving
from tests.test_e2e import ROOT, assert_exactly_once, read_results, write_jobs

EPOCH = 1_800_000_000.0  # virtual runs start here on the wall clock the tokens speak
API_VERSION = "2024-10-21"
AZURE_401 = {"error": {"code": "401", "message": "Unauthorized. Access token is missing, invalid, "
                       "audience is incorrect (https://cognitiveservices.azure.com), or have expired."}}


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def jwt(exp: float | None, n: int = 0) -> str:
    claims = {"aud": "https://cognitiveservices.azure.com", "n": n}
    if exp is not None:
        claims["exp"] = int(exp)
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.c2lnbmF0dXJl{n}"


def claims_of(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


class Clock:
    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Minter:
    """A token provider: a JWT living `lifetime` s on `clock`, read as a command's output is."""

    def __init__(self, clock, lifetime: float | None = 600.0, fail: bool = False) -> None:
        self.clock, self.lifetime, self.fail = clock, lifetime, fail
        self.minted: list[str] = []

    async def __call__(self) -> Token:
        if self.fail:
            raise TokenUnavailable("--azure-ad-token-command 'mint' failed (exit 1): no login")
        n = len(self.minted) + 1
        if self.lifetime is None:
            value = f"opaque-token-{n}"
        else:
            value = jwt(self.clock() + self.lifetime, n)
        self.minted.append(value)
        return parse_token(value + "\n")


# -- reading a token ------------------------------------------------------------------------------

@pytest.mark.parametrize("token, exp", [
    (jwt(EPOCH + 3600), EPOCH + 3600),
    (jwt(None), None),                    # a JWT without exp
    ("opaque", None),
    ("a.b.c", None),                      # not base64 JSON
    (f"x.{b64({'exp': 'soon'})}.y", None),
    (f"x.{b64({'exp': True})}.y", None),
    (f"x.{b64({'exp': 1.5e9})}.y", 1.5e9),
])
def test_the_expiry_of_a_token_is_its_jwt_exp_or_unknown(token, exp):
    assert jwt_expiry(token) == exp


def test_a_command_may_print_the_token_alone_or_azure_clis_json():
    token = jwt(EPOCH + 3600)
    assert parse_token(token + "\n") == Token(token, EPOCH + 3600)
    as_json = orjson.dumps({"accessToken": "opaque", "expires_on": 1_900_000_000,
                            "tokenType": "Bearer"})
    assert parse_token(as_json) == Token("opaque", 1_900_000_000.0)
    assert parse_token(orjson.dumps({"accessToken": token})).expires_at == EPOCH + 3600


@pytest.mark.parametrize("output", [b"", b"  \n", b"secret words\n", b"secret\nmore\n",
                                    b"{secret json", b'{"secret": 1}'])
def test_output_that_is_not_a_token_is_refused_without_quoting_it(output):
    with pytest.raises(ValueError) as info:
        parse_token(output)
    assert "secret" not in str(info.value)


def test_a_token_in_a_message_from_outside_is_masked():
    from runner.redact import mask_secrets
    token = jwt(EPOCH + 3600)
    assert mask_secrets(f"invalid token {token} (expired)") == "invalid token eyJ*** (expired)"


# -- the source: when tokens are fetched -------------------------------------------------------------

async def test_the_first_calls_share_one_fetch_and_the_token_is_kept_until_it_nears_expiry():
    clock = Clock()
    minter = Minter(clock)
    source = TokenSource(minter, what="mint", clock=clock)
    leases = await asyncio.gather(*(source.lease() for _ in range(20)))
    assert source.fetches == 1 and {lease.serial for lease in leases} == {1}
    clock.now += 600 - REFRESH_BEFORE_S - 1
    assert (await source.lease()).serial == 1 and source.fetches == 1


async def test_a_token_near_expiry_is_refreshed_in_the_background_while_calls_go_on():
    clock = Clock()
    gate = asyncio.Event()
    minter = Minter(clock)

    async def slow():
        if minter.minted:
            await gate.wait()
        return await minter()

    source = TokenSource(slow, what="mint", clock=clock)
    await source.lease()
    clock.now += 600 - REFRESH_BEFORE_S + 1
    assert (await source.lease()).serial == 1  # not waiting: the old one is still good
    await asyncio.sleep(0)
    assert source.fetches == 2
    gate.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert (await source.lease()).serial == 2


async def test_a_call_waits_for_a_new_token_when_the_old_one_has_expired():
    clock = Clock()
    source = TokenSource(Minter(clock), what="mint", clock=clock)
    await source.lease()
    clock.now += 601
    lease = await source.lease()
    assert lease.serial == 2 and lease.token.expires_at == clock.now + 600


async def test_a_failed_background_refresh_keeps_the_token_and_is_tried_again_later():
    clock = Clock()
    minter = Minter(clock)
    source = TokenSource(minter, what="mint", clock=clock)
    await source.lease()
    minter.fail = True
    clock.now += 600 - REFRESH_BEFORE_S + 1
    assert (await source.lease()).serial == 1
    await asyncio.sleep(0)
    assert source.fetches == 2
    assert (await source.lease()).serial == 1 and source.fetches == 2  # not before RETRY_FETCH_S
    clock.now += RETRY_FETCH_S
    minter.fail = False
    await source.lease()
    await asyncio.sleep(0)
    assert source.fetches == 3 and (await source.lease()).serial == 2


async def test_no_token_to_be_had_raises_token_unavailable_naming_the_provider():
    clock = Clock()
    source = TokenSource(Minter(clock, fail=True), what="mint", clock=clock)
    with pytest.raises(TokenUnavailable, match="token-command 'mint' failed"):
        await source.lease()
    verdict = classify(None, {}, None, exc=TokenUnavailable("x"))
    assert verdict.action is Action.STOP_RUN and not verdict.misconfigured  # exit 3, resumable


async def test_a_token_already_expired_when_fetched_is_no_token():
    clock = Clock()
    source = TokenSource(Minter(clock, lifetime=-5), what="mint", clock=clock)
    with pytest.raises(TokenUnavailable, match="expired"):
        await source.lease()


# -- the 401 rule, on the send seam ------------------------------------------------------------------

BASE = "https://res.openai.azure.com"
URL = BASE + "/openai/deployments/d/chat/completions?api-version=2024-10-21"


class AzureFront:
    """A scripted Azure: accepts the tokens in `good` (a set of token values, changed by tests)."""

    def __init__(self) -> None:
        self.good: set[str] = set()
        self.seen: list[str] = []

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.seen.append(token)
        await asyncio.sleep(0)
        if token in self.good:
            return HttpResponse(200, {}, b"{}")
        return HttpResponse(401, {}, orjson.dumps(AZURE_401))


def keyed(url: str = URL) -> HttpRequest:
    return HttpRequest("POST", url, {"Authorization": "Bearer ", "Content-Type": "application/json"}, b"{}")


async def test_ten_calls_meeting_an_expired_token_share_one_renewal_and_each_succeeds():
    clock = Clock()
    minter = Minter(clock, lifetime=None)
    source = TokenSource(minter, what="mint", clock=clock)

    class Expiring(AzureFront):
        async def __call__(self, request):
            self.good = {minter.minted[-1]} if len(minter.minted) > 1 or not self.seen else set()
            return await super().__call__(request)

    azure = Expiring()
    send = authorized(azure, source, BASE)
    assert (await send(keyed())).status == 200  # the first token accepted
    answers = await asyncio.gather(*(send(keyed()) for _ in range(10)))
    assert [a.status for a in answers] == [200] * 10
    assert source.fetches == 2  # one renewal for the ten
    assert len(azure.seen) == 1 + 10 + 10  # each sent once more, no more


async def test_a_401_to_a_fresh_token_raises_token_rejected_with_azures_message():
    clock = Clock()
    source = TokenSource(Minter(clock), what="mint", clock=clock)
    send = authorized(AzureFront(), source, BASE)
    with pytest.raises(TokenRejected) as info:
        await send(keyed())
    assert "audience is incorrect" in str(info.value) and "mint" in str(info.value)
    assert source.fetches == 1  # a fresh token refused is not fetched again
    verdict = classify(None, {}, None, exc=info.value)
    assert verdict.action is Action.STOP_RUN and verdict.misconfigured  # exit 2


async def test_calls_without_authorization_or_to_another_origin_pass_untouched_and_fetch_nothing():
    clock = Clock()
    source = TokenSource(Minter(clock), what="mint", clock=clock)
    seen = []

    async def record(request):
        seen.append(request)
        return HttpResponse(200, {}, b"")

    send = authorized(record, source, BASE)
    download = HttpRequest("GET", "https://blob.example/img.png?sig=x", {})
    await send(download)
    await send(keyed("https://other.example/openai/x"))
    assert seen == [download, keyed("https://other.example/openai/x")] and source.fetches == 0


# -- a real command, a fake credential -------------------------------------------------------------

def python_command(code: str) -> str:
    return f"{sys.executable} -c {json.dumps(code)}"


@pytest.mark.slow  # starts a process
async def test_a_token_command_runs_without_blocking_the_event_loop():
    token = jwt(EPOCH + 3600)
    fetch = command_provider(python_command(f"import time; time.sleep(0.5); print({token!r})"))
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        got = await fetch()
    finally:
        ticker.cancel()
    assert got == Token(token, EPOCH + 3600)
    assert ticks >= 10  # the loop ran on while the command slept


@pytest.mark.slow  # starts a process
async def test_a_failing_command_names_itself_and_its_last_stderr_line_never_the_token():
    command = python_command("import sys; print('eyJ' + 'secret.eyJpart.sig'); "
                             "sys.stderr.write('ERROR: AADSTS700082: refresh token expired\\n'); "
                             "sys.exit(1)")
    with pytest.raises(TokenUnavailable) as info:
        await command_provider(command)()
    message = str(info.value)
    assert "--azure-ad-token-command" in message and "exit 1" in message
    assert "AADSTS700082" in message and "eyJsecret" not in message


@pytest.mark.slow  # starts a process
async def test_a_command_that_hangs_is_killed_after_its_timeout():
    fetch = command_provider(python_command("import time; time.sleep(30)"), timeout_s=0.3)
    with pytest.raises(TokenUnavailable, match="did not finish within 0.3 s"):
        await fetch()


async def test_azure_identity_is_asked_for_the_cognitive_services_scope():
    asked = []

    class FakeCredential:  # azure-identity's shape: get_token(*scopes) -> AccessToken(token, expires_on)
        def get_token(self, *scopes):
            asked.append(scopes)
            return type("AccessToken", (), {"token": "eyJ-identity-token", "expires_on": 1_900_000_000})()

    token = await identity_provider(FakeCredential())()
    assert asked == [(COGNITIVE_SCOPE,)] and token == Token("eyJ-identity-token", 1_900_000_000.0)


async def test_azure_identity_failing_names_the_credential():
    class NoIdentity:
        def get_token(self, *scopes):
            raise RuntimeError("DefaultAzureCredential failed to retrieve a token.\nAttempted: ...")

    with pytest.raises(TokenUnavailable, match=r"--azure-identity \(NoIdentity\).*failed to retrieve"):
        await identity_provider(NoIdentity())()


# -- runs that outlive several tokens ----------------------------------------------------------------

def entra_check(clock, *, accept_for: float | None = None, refuse_all: bool = False):
    """A `Front.check` playing Azure: a bearer JWT is accepted until its `exp`; a token without
    one for `accept_for` s after it is first seen; anything else gets Azure's 401."""
    first_seen: dict[str, float] = {}
    tally = Counter()

    def check(request: web.Request) -> web.Response | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        now = clock()
        try:
            exp = claims_of(token).get("exp")
        except (IndexError, ValueError):
            exp = None
        if exp is None and accept_for is not None:
            exp = first_seen.setdefault(token, now) + accept_for
        if refuse_all or exp is None or now >= exp:
            tally["refused"] += 1
            return web.json_response(AZURE_401, status=401)
        tally["accepted"] += 1
        tally[token] += 1
        return None

    return check, tally


def entra_endpoint(url: str, source: TokenSource) -> Endpoint:
    return Endpoint(base_url=url, azure=True, api_version=API_VERSION, bearer=True, tokens=source)


def virtual_wall(loop):
    return lambda: EPOCH + loop.time()


def test_live_an_hour_long_run_outlives_six_ten_minute_tokens_with_no_401(loop, tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 120, kinds=("chat",))
    wall = virtual_wall(loop)
    minter = Minter(wall, lifetime=600)
    source = TokenSource(minter, what="mint", clock=wall)
    check, tally = entra_check(wall)

    async def main():
        async with Simulator(SimConfig(rpm=2, burst_s=1.0), clock=loop.time) as sim:
            front = Front(sim.azure_endpoint, check=check)
            async with serving(front) as url:
                return await run(RunConfig(input=str(tmp_path / "in.jsonl"),
                                           output=tmp_path / "out.jsonl", rpm=2, burst_s=1.0,
                                           endpoint=entra_endpoint(url, source)),
                                 progress=False, handle_signals=False, log=lambda m: None)

    stats = loop.run_until_complete(main())
    assert stats.exit_code() == EXIT_OK
    assert loop.time() >= 3500  # the run took about an hour of virtual time
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    assert tally["refused"] == 0 and len(minter.minted) >= 6
    assert len([t for t in minter.minted if tally[t]]) >= 6  # each token carried calls


def test_live_opaque_tokens_are_renewed_on_the_first_401_and_no_attempt_is_counted(loop, tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 60, kinds=("chat",))
    wall = virtual_wall(loop)
    minter = Minter(wall, lifetime=None)
    source = TokenSource(minter, what="mint", clock=wall)
    check, tally = entra_check(wall, accept_for=600)

    async def main():
        async with Simulator(SimConfig(rpm=2, burst_s=1.0), clock=loop.time) as sim:
            front = Front(sim.azure_endpoint, check=check)
            async with serving(front) as url:
                return await run(RunConfig(input=str(tmp_path / "in.jsonl"),
                                           output=tmp_path / "out.jsonl", rpm=2, burst_s=1.0,
                                           endpoint=entra_endpoint(url, source),
                                           dispatch=DispatchConfig(max_attempts=1)),
                                 progress=False, handle_signals=False, log=lambda m: None)

    stats = loop.run_until_complete(main())
    assert stats.exit_code() == EXIT_OK, stats.stop_reason
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    assert tally["refused"] >= 2 and len(minter.minted) >= 3  # renewed on 401s, every 10 minutes
    assert stats.retries == 0  # max_attempts=1: a counted attempt would have failed a job


def test_live_a_fresh_token_refused_stops_the_run_with_exit_2_and_azures_message(loop, tmp_path):
    write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    wall = virtual_wall(loop)
    source = TokenSource(Minter(wall), what="mint", clock=wall)
    check, tally = entra_check(wall, refuse_all=True)

    async def main():
        async with Simulator(SimConfig(), clock=loop.time) as sim:
            async with serving(Front(sim.azure_endpoint, check=check)) as url:
                return await run(RunConfig(input=str(tmp_path / "in.jsonl"),
                                           output=tmp_path / "out.jsonl",
                                           endpoint=entra_endpoint(url, source)),
                                 progress=False, handle_signals=False, log=lambda m: None)

    stats = loop.run_until_complete(main())
    assert stats.exit_code() == EXIT_USAGE
    assert "token_rejected" in stats.stop_reason and "audience is incorrect" in stats.stop_reason
    assert source.fetches == 1


def test_live_a_token_that_cannot_be_had_stops_with_exit_3_naming_the_command(loop, tmp_path):
    write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    wall = virtual_wall(loop)
    source = TokenSource(Minter(wall, fail=True), what="mint", clock=wall)

    async def main():
        async with Simulator(SimConfig(), clock=loop.time) as sim:
            stats = await run(RunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                                        endpoint=entra_endpoint(sim.azure_endpoint, source)),
                              progress=False, handle_signals=False, log=lambda m: None)
            return stats, sim.stats.requests

    stats, requests = loop.run_until_complete(main())
    assert stats.exit_code() == EXIT_STOPPED and requests == 0
    assert "--azure-ad-token-command 'mint' failed" in stats.stop_reason
    assert not (tmp_path / "out.jsonl").read_bytes()  # no job burnt


def batch_sim(loop, lines_per_s=0.02):
    return Simulator(SimConfig(), clock=loop.time,
                     batch=BatchConfig(lines_per_s=lines_per_s, validate_s=60, finalize_s=60,
                                       file_processing_s=5))


def test_batch_a_wait_run_polling_for_an_hour_outlives_six_tokens(loop, tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 60, kinds=("chat",))
    wall = virtual_wall(loop)
    minter = Minter(wall, lifetime=600)
    source = TokenSource(minter, what="mint", clock=wall)
    check, tally = entra_check(wall)

    async def main():
        sim = batch_sim(loop)
        await sim.start()
        try:
            async with serving(Front(sim.azure_endpoint, check=check)) as url:
                config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                                        endpoint=entra_endpoint(url, source), poll_every=60.0)
                return await run_batch(config, progress=False, handle_signals=False, log=lambda m: None)
        finally:
            await sim.stop()

    stats = loop.run_until_complete(main())
    assert stats.exit_code() == EXIT_OK, stats.stop_reason
    assert loop.time() >= 3000
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    assert tally["refused"] == 0 and len(minter.minted) >= 5


def test_batch_status_refresh_and_cancel_send_the_current_token(loop, tmp_path):
    write_jobs(tmp_path / "in.jsonl", 20, kinds=("chat",))
    wall = virtual_wall(loop)
    minter = Minter(wall, lifetime=600)
    check, tally = entra_check(wall)

    async def main():
        sim = batch_sim(loop, lines_per_s=0.001)
        await sim.start()
        try:
            async with serving(Front(sim.azure_endpoint, check=check)) as url:
                def config(**kw):
                    source = TokenSource(minter, what="mint", clock=wall)  # one per process
                    return BatchRunConfig(input=str(tmp_path / "in.jsonl"),
                                          output=tmp_path / "out.jsonl",
                                          endpoint=entra_endpoint(url, source), poll_every=60.0, **kw)
                submitted = await run_batch(config(wait=False), progress=False,
                                            handle_signals=False, log=lambda m: None)
                await asyncio.sleep(3600)  # the first token is long dead
                batches = await refresh(tmp_path / "out.jsonl", config().endpoint)
                cancelled = await run_batch(config(cancel=True), progress=False,
                                            handle_signals=False, log=lambda m: None)
                return submitted, batches, cancelled
        finally:
            await sim.stop()

    submitted, batches, cancelled = loop.run_until_complete(main())
    assert submitted.exit_code() == EXIT_IN_PROGRESS
    assert batches and all(b["status"] for b in batches)
    assert cancelled.stop_reason is None and not cancelled.in_progress
    assert tally["refused"] == 0 and len(minter.minted) >= 3  # at least one per process


def test_batch_a_fresh_token_refused_stops_with_exit_2(loop, tmp_path):
    write_jobs(tmp_path / "in.jsonl", 5, kinds=("chat",))
    wall = virtual_wall(loop)
    source = TokenSource(Minter(wall), what="mint", clock=wall)
    check, _ = entra_check(wall, refuse_all=True)

    async def main():
        sim = batch_sim(loop)
        await sim.start()
        try:
            async with serving(Front(sim.azure_endpoint, check=check)) as url:
                config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                                        endpoint=entra_endpoint(url, source), poll_every=60.0)
                return await run_batch(config, progress=False, handle_signals=False, log=lambda m: None)
        finally:
            await sim.stop()

    stats = loop.run_until_complete(main())
    assert stats.exit_code() == EXIT_USAGE and "audience is incorrect" in stats.stop_reason


# -- the command line --------------------------------------------------------------------------------

def token_script(tmp_path, lifetime: float = 3600) -> str:
    script = tmp_path / "get-token.py"
    script.write_text("import base64, json, time\n"
                      "b = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b'=').decode()\n"
                      f"print(b({{'alg': 'none'}}) + '.' + b({{'exp': int(time.time() + {lifetime})}}) + '.sig')\n")
    return f"{sys.executable} {script}"


@pytest.mark.slow  # starts runner as a process
def test_cli_a_token_command_in_the_config_file_runs_a_job_file(tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 12, kinds=("chat",))
    (tmp_path / "runner.toml").write_text(
        f"azure_ad_token_command = {json.dumps(token_script(tmp_path))}\n")
    check, tally = entra_check(lambda: __import__("time").time())

    async def build(stack):
        sim = await stack.enter_async_context(Simulator(SimConfig()))
        return await stack.enter_async_context(serving(Front(sim.azure_endpoint, check=check)))

    with in_thread(build) as url:
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(tmp_path / "in.jsonl"), "-o",
             str(tmp_path / "out.jsonl"), "--no-progress", "--config", str(tmp_path / "runner.toml"),
             "--azure-endpoint", url, "--api-version", API_VERSION],
            cwd=ROOT, capture_output=True, timeout=60,
            env={k: v for k, v in os.environ.items() if "API_KEY" not in k})
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    assert tally["accepted"] >= 12 and tally["refused"] == 0


@pytest.mark.slow  # starts runner as a process
def test_cli_a_failing_token_command_exits_3_naming_it_and_sends_nothing(tmp_path):
    write_jobs(tmp_path / "in.jsonl", 3, kinds=("chat",))
    command = "echo 'ERROR: Please run az login to setup account.' >&2; exit 1"
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(tmp_path / "in.jsonl"), "-o",
         str(tmp_path / "out.jsonl"), "--no-progress", "--azure-endpoint", "http://127.0.0.1:9",
         "--api-version", API_VERSION, "--azure-ad-token-command", command],
        cwd=ROOT, capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_STOPPED, err
    assert "--azure-ad-token-command" in err and "az login" in err and "exit 1" in err


@pytest.mark.parametrize("args, message", [
    (["--azure-ad-token-command", "x"], "need --azure-endpoint"),
    (["--azure-endpoint", "http://127.0.0.1:9", "--azure-ad-token-command", "x", "--azure-identity"],
     "give one of"),
])
def test_cli_token_options_are_checked_before_anything_runs(tmp_path, args, message):
    from click.testing import CliRunner

    from runner.cli.main import main
    write_jobs(tmp_path / "in.jsonl", 1, kinds=("chat",))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o",
                                       str(tmp_path / "out.jsonl"), "--api-version", API_VERSION,
                                       *args])
    assert result.exit_code == EXIT_USAGE and message in result.output
