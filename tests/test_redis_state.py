"""Budgets shared through a real Redis (`runner.pacing.redis_state`): limiters of separate
"processes" (each its own connection and state) pointed at one redis-server, on real time (Redis's
clock cannot be virtual), with small limits and sub-second windows."""
from __future__ import annotations

import asyncio
import time

import pytest

from runner.api.headers import RateLimitInfo
from runner.live.run import IMAGES_BUDGET
from runner.pacing.limiter import RateLimiter
from runner.pacing.limiters import KEY_BUDGET, Limiters
from runner.pacing.redis_state import RedisBudgets, RedisLost, RedisUnavailable
from tests.servers import free_port

API_KEY = "sk-proj-THISKEYMUSTNEVERREACHREDIS0123456789"
BASE_URL = "https://api.example.test/v1"
MODEL = "gpt-4o-mini"


async def process(url: str, *, rpm=None, tpm=None, timeout_s=5.0, api_key=API_KEY, model=MODEL):
    """One runner process's view: its own connection and its own limiter on the shared budget."""
    budgets = RedisBudgets(url, api_key, timeout_s=timeout_s)
    await budgets.connect()
    limiter = RateLimiter(rpm=rpm, tpm=tpm, state=budgets.state(BASE_URL, model))
    return budgets, limiter


async def restart_empty(server) -> None:
    """Stop the redis-server and start it again on its port: empty (it keeps nothing)."""
    port = server.port
    server.stop()
    await asyncio.to_thread(server.start, port=port)


async def admit_for(limiter: RateLimiter, seconds: float, tokens: int = 0) -> list[float]:
    """Admission times (monotonic) of one caller admitting as fast as the budget allows."""
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await asyncio.wait_for(limiter.acquire(tokens), end - time.monotonic())
        except asyncio.TimeoutError:
            break
        times.append(time.monotonic())
    return times


@pytest.mark.slow  # over a second of real time
async def test_three_processes_together_never_exceed_the_requests_budget(redis_server):
    # 600 RPM = 10 a second, 1 s burst: over 1.5 s the budget holds 10 + 15 requests at most.
    procs = [await process(redis_server.url, rpm=600, tpm=600_000) for _ in range(3)]
    start = time.monotonic()
    runs = await asyncio.gather(*(admit_for(limiter, 1.5) for _, limiter in procs))
    elapsed = time.monotonic() - start
    total = sum(len(times) for times in runs)
    assert total <= 10 + 10 * elapsed + 1
    assert total >= 0.8 * (10 + 10 * 1.5)  # and the budget is used, not wasted
    assert all(len(times) >= 3 for times in runs)  # nobody starves
    for budgets, _ in procs:
        await budgets.close()


@pytest.mark.slow  # over a second of real time
async def test_two_processes_together_never_exceed_the_tokens_budget(redis_server):
    # 60,000 TPM = 1,000 tokens a second, capacity 1,000; requests of 100 tokens.
    procs = [await process(redis_server.url, rpm=60_000, tpm=60_000) for _ in range(2)]
    start = time.monotonic()
    runs = await asyncio.gather(*(admit_for(limiter, 1.2, tokens=100) for _, limiter in procs))
    elapsed = time.monotonic() - start
    tokens = 100 * sum(len(times) for times in runs)
    assert tokens <= 1_000 + 1_000 * elapsed + 100
    assert tokens >= 0.8 * (1_000 + 1_000 * 1.2)
    for budgets, _ in procs:
        await budgets.close()


@pytest.mark.slow  # over a second of real time
async def test_a_429_seen_by_one_process_holds_back_the_other(redis_server):
    budgets_a, a = await process(redis_server.url, rpm=600, tpm=600_000)
    budgets_b, b = await process(redis_server.url, rpm=600, tpm=600_000)
    await a.acquire(0)
    a.on_rate_limited(None, 1.0, None)  # the server says: nothing for a second
    await budgets_a.states[0].flush()  # in Redis (a write reaches it one round trip later)
    start = time.monotonic()
    await b.acquire(0)
    assert time.monotonic() - start >= 0.8
    await budgets_a.close()
    await budgets_b.close()


async def test_a_late_joiner_takes_the_limits_others_learned(redis_server):
    budgets_a, a = await process(redis_server.url)
    permit = await a.acquire(10)  # the probe
    a.observe(permit, RateLimitInfo(limit_requests=600, remaining_requests=599, reset_requests=0.1,
                                    limit_tokens=60_000, remaining_tokens=59_990,
                                    reset_tokens=0.01))
    await a.acquire(10)  # sends the learned limits ahead of it
    budgets_b, b = await process(redis_server.url)
    assert b.rpm is None
    await b.acquire(10)
    assert (b.rpm, b.tpm) == (600, 60_000)
    await budgets_a.close()
    await budgets_b.close()


async def test_other_keys_and_models_have_budgets_of_their_own(redis_server):
    budgets_a, a = await process(redis_server.url, rpm=60, tpm=600_000)  # capacity 1
    budgets_b, b = await process(redis_server.url, rpm=60, tpm=600_000,
                                 api_key="sk-another-key-0123456789")
    budgets_c, c = await process(redis_server.url, rpm=60, tpm=600_000, model="gpt-4o")
    for limiter in (a, b, c):
        await asyncio.wait_for(limiter.acquire(0), 0.5)  # each its own full bucket
    for budgets in (budgets_a, budgets_b, budgets_c):
        await budgets.close()


async def test_the_api_key_never_reaches_redis(redis_server):
    import redis.asyncio as aioredis  # here, not above: the fast tests never load redis
    budgets, limiter = await process(redis_server.url, rpm=600, tpm=60_000)
    await limiter.acquire(10)
    limiter.on_rate_limited(None, 0.1, None)
    await limiter.acquire(10)
    await budgets.close()
    client = aioredis.Redis.from_url(redis_server.url)
    dump = b""
    async for key in client.scan_iter("*"):
        dump += key
        kind = await client.type(key)
        if kind == b"hash":
            for field, value in (await client.hgetall(key)).items():
                dump += field + value
        else:
            dump += await client.get(key)
        if key.startswith(b"runner:budget:"):
            assert 0 < await client.ttl(key) <= 600  # what a dead process leaves expires
    await client.aclose()
    assert b"runner:budget:" in dump
    for secret in (API_KEY, API_KEY[3:], API_KEY[-20:]):
        assert secret.encode() not in dump


async def test_unreachable_redis_at_start_names_the_url_without_its_password():
    url = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    budgets = RedisBudgets(url, API_KEY)
    with pytest.raises(RedisUnavailable) as caught:
        await budgets.connect()
    message = str(caught.value)
    assert "hunter2" not in message and API_KEY not in message
    assert f"redis://:***@127.0.0.1:" in message
    await budgets.close()


async def test_redis_lost_longer_than_the_timeout_stops_admissions(redis_server):
    budgets, limiter = await process(redis_server.url, rpm=600, tpm=600_000, timeout_s=0.5)
    await limiter.acquire(0)
    redis_server.stop()
    start = time.monotonic()
    with pytest.raises(RedisLost) as caught:
        await asyncio.wait_for(limiter.acquire(0), 5.0)
    assert 0.4 <= time.monotonic() - start < 3.0
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)
    with pytest.raises(RedisLost):  # and it stays lost: no pacing alone
        await asyncio.wait_for(limiter.acquire(0), 1.0)
    await budgets.close()


async def test_redis_back_within_the_timeout_resumes_admissions(redis_server):
    budgets, limiter = await process(redis_server.url, rpm=600, tpm=600_000, timeout_s=10.0)
    await limiter.acquire(0)
    port = redis_server.port
    redis_server.stop()
    waiting = asyncio.ensure_future(limiter.acquire(0))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # nothing is admitted while Redis is away
    await asyncio.to_thread(redis_server.start, port=port)  # empty: the script is loaded anew
    await asyncio.wait_for(waiting, 8.0)
    await budgets.close()


@pytest.mark.slow  # several seconds of real time
async def test_a_process_asking_for_large_requests_is_not_starved_by_one_asking_for_small(
        redis_server):
    # 24,000 TPM: 400 tokens a second, a 3 s bucket of 1,200. The small asker alone keeps the
    # bucket near empty for ever (it takes each 100 tokens as soon as they come); the large one
    # needs it full, more than the 2 s ahead a request may be taken for. Admission is FIFO across
    # processes: once the large one waits, the small one waits behind it.
    async def make():
        budgets = RedisBudgets(redis_server.url, API_KEY)
        await budgets.connect()
        return budgets, RateLimiter(rpm=60_000, tpm=24_000, burst_s=3.0,
                                    state=budgets.state(BASE_URL, MODEL))
    (budgets_big, big), (budgets_small, small) = await make(), await make()
    hammering = asyncio.ensure_future(admit_for(small, 8.5, tokens=100))
    await asyncio.sleep(3.0)  # the small one has drained the bucket and keeps it drained
    start = time.monotonic()
    await asyncio.wait_for(big.acquire(1_200), 5.0)
    admitted = time.monotonic()
    assert admitted - start < 4.5
    small_times = await hammering
    assert any(t > admitted for t in small_times)  # and the small one carried on after it
    for budgets in (budgets_big, budgets_small):
        await budgets.close()


@pytest.mark.slow  # a few seconds of real time
async def test_a_waiting_process_that_dies_gives_its_place_back_within_seconds(redis_server):
    budgets_dead, dead = await process(redis_server.url, rpm=60_000, tpm=60_000)
    budgets_live, live = await process(redis_server.url, rpm=60_000, tpm=60_000)
    await live.acquire(1_000)  # the bucket is empty
    waiting = asyncio.ensure_future(dead.acquire(1_000))  # first in the queue ...
    await asyncio.sleep(0.2)
    waiting.cancel()  # ... and gone without a word (as under SIGKILL)
    budgets_dead.states[0].cancel()
    start = time.monotonic()
    await asyncio.wait_for(live.acquire(1_000), 6.0)
    assert time.monotonic() - start < 4.5  # its place expired: a poll (1 s) and a grace (2 s)
    await budgets_live.close()
    await budgets_dead.client.aclose()


async def test_after_a_redis_restart_the_processes_still_share_one_budget_with_its_limits(
        redis_server):
    budgets_a, a = await process(redis_server.url, rpm=600, tpm=60_000, timeout_s=10.0)
    await a.acquire(0)
    await restart_empty(redis_server)  # empty: no salt, no budget
    await a.acquire(0)  # the salt is set again and the limits A was told restored
    budgets_b, b = await process(redis_server.url)  # a newcomer told nothing
    await budgets_b.states[0].refresh()
    assert budgets_b.states[0].key == budgets_a.states[0].key
    assert budgets_b.states[0].read().requests.per_minute == 600
    assert budgets_b.states[0].read().tokens.per_minute == 60_000
    for budgets in (budgets_a, budgets_b):
        await budgets.close()


async def test_a_process_adopts_the_salt_a_newcomer_set_after_a_restart(redis_server):
    budgets_a, a = await process(redis_server.url, rpm=600, tpm=60_000, timeout_s=10.0)
    await a.acquire(0)
    await restart_empty(redis_server)
    budgets_b, b = await process(redis_server.url, rpm=600, tpm=60_000)  # connects first
    await b.acquire(0)
    await a.acquire(0)  # finds the salt not its own: adopts it
    assert budgets_a.states[0].key == budgets_b.states[0].key
    for budgets in (budgets_a, budgets_b):
        await budgets.close()


async def test_image_models_sharing_the_keys_budget_keep_it_apart_from_the_text_models(
        redis_server):
    # the image lanes' budgets count images where the text lanes' count tokens: once their models
    # are found to share the key's budget, it goes by a name of its own
    budgets = RedisBudgets(redis_server.url, API_KEY)
    await budgets.connect()
    limiters = Limiters(rpm=None, tpm=None, scope="auto",
                        states=lambda base_url, name: budgets.state(base_url, name + IMAGES_BUDGET),
                        key_budget=KEY_BUDGET + IMAGES_BUDGET)
    key = (BASE_URL, "dall-e-3")
    limiter = limiters.get(key)
    info = RateLimitInfo(limit_requests=300, remaining_requests=290, window_s=60.0, scope="key",
                         style="litellm")
    permit = await limiter.acquire(1)
    assert limiters.notice(key, info, permit)
    limiter.observe(permit, info)
    await limiter.acquire(1)
    [state] = budgets.states
    assert state.key == budgets.key(BASE_URL, KEY_BUDGET + IMAGES_BUDGET)
    assert state.key != budgets.key(BASE_URL, KEY_BUDGET)
    await budgets.close()


async def test_processes_that_learn_the_keys_budget_from_different_models_share_it(redis_server):
    # --budget-scope auto: each process learns from its own model's answers that the server
    # counts one budget for the key; both then keep it under the key's one name.
    processes = []
    for model in ("gpt-4o-mini", "gpt-4o"):
        budgets = RedisBudgets(redis_server.url, API_KEY)
        await budgets.connect()
        limiters = Limiters(rpm=None, tpm=None, scope="auto",
                            states=lambda base_url, name, b=budgets: b.state(base_url, name))
        key = (BASE_URL, model)
        limiter = limiters.get(key)
        info = RateLimitInfo(limit_requests=600, remaining_requests=590, limit_tokens=60_000,
                             remaining_tokens=59_000, window_s=60.0, scope="key", style="litellm")
        permit = await limiter.acquire(10)
        assert limiters.notice(key, info, permit)
        limiter.observe(permit, info)
        await limiter.acquire(10)
        processes.append((budgets, limiter))
    (budgets_a, a), (budgets_b, b) = processes
    assert budgets_a.states[0].key == budgets_b.states[0].key
    assert budgets_a.states[0].key == budgets_a.key(BASE_URL, KEY_BUDGET)
    assert (b.rpm, b.tpm) == (600, 60_000)
    for budgets, _ in processes:
        await budgets.close()


@pytest.mark.slow  # two seconds of real time
async def test_a_tightly_bound_budget_costs_about_one_round_trip_per_admission(redis_server):
    # A request that fits within 2 s is taken at once, to be sent when its turn comes: the
    # process does not ask again (without that, every admission was a refusal and a retry).
    procs = [await process(redis_server.url, rpm=1_200, tpm=6_000_000) for _ in range(2)]
    runs = await asyncio.gather(*(admit_for(limiter, 2.0) for _, limiter in procs))
    admitted = sum(len(times) for times in runs)
    round_trips = sum(budgets.states[0].round_trips for budgets, _ in procs)
    assert admitted >= 0.8 * (20 + 20 * 2.0)
    assert round_trips <= 1.15 * admitted + 4  # + the first limits' writes
    for budgets, _ in procs:
        await budgets.close()


@pytest.mark.slow  # over a second of real time
async def test_a_request_taken_ahead_but_not_sent_is_given_back(redis_server):
    budgets_a, a = await process(redis_server.url, rpm=60, tpm=600_000)  # 1 a second, bucket 1
    budgets_b, b = await process(redis_server.url, rpm=60, tpm=600_000)
    await a.acquire(0)  # the bucket is empty
    ahead = asyncio.ensure_future(a.acquire(0))  # taken for a second from now ...
    await asyncio.sleep(0.2)
    ahead.cancel()  # ... and given up (the run stopped)
    await budgets_a.states[0].flush()
    start = time.monotonic()
    await b.acquire(0)
    assert time.monotonic() - start < 1.3  # 0.8 s; without the refund 1.8 s
    for budgets in (budgets_a, budgets_b):
        await budgets.close()


@pytest.mark.slow  # over a second of real time
async def test_after_a_redis_restart_every_budget_gets_its_limits_back_not_only_the_first(
        redis_server):
    # Process A paces two models, process B one of them; Redis restarts empty. Whichever budget
    # meets the lost salt first sets it again; the others must still get their limits back, or
    # they would admit everything (a budget without limits has no bucket).
    budgets_a = RedisBudgets(redis_server.url, API_KEY, timeout_s=10.0)
    await budgets_a.connect()
    a1 = RateLimiter(rpm=60, tpm=600_000, state=budgets_a.state(BASE_URL, "m1"))
    a2 = RateLimiter(rpm=60, tpm=600_000, state=budgets_a.state(BASE_URL, "m2"))
    budgets_b = RedisBudgets(redis_server.url, API_KEY, timeout_s=10.0)
    await budgets_b.connect()
    b2 = RateLimiter(rpm=60, tpm=600_000, state=budgets_b.state(BASE_URL, "m2"))
    for limiter in (a1, a2, b2):
        await limiter.acquire(0)
    await restart_empty(redis_server)
    await asyncio.wait_for(a1.acquire(0), 3.0)  # m1 meets the lost salt and sets it again
    for limiter in (a2, b2):  # m2 (both processes): one bucket of 1 a second, and the limit kept
        admitted = await admit_for(limiter, 1.5)
        assert len(admitted) <= 3, len(admitted)
        assert limiter.rpm == 60
    for budgets in (budgets_a, budgets_b):
        await budgets.close()


async def test_a_process_on_one_model_follows_its_budget_when_another_finds_it_is_the_keys(
        redis_server):
    # A single-model process cannot learn that the key's models share one budget (nothing of its
    # own is spent by others); a process running two models can, and moves the budget.
    budgets_one = RedisBudgets(redis_server.url, API_KEY)
    await budgets_one.connect()
    one = RateLimiter(rpm=600, tpm=600_000, state=budgets_one.state(BASE_URL, "m1"))
    await one.acquire(0)
    budgets_two = RedisBudgets(redis_server.url, API_KEY)
    await budgets_two.connect()
    limiters = Limiters(rpm=600, tpm=600_000, scope="auto",
                        states=lambda base_url, name: budgets_two.state(base_url, name))
    learner = limiters.get((BASE_URL, "m1"))
    permit = await learner.acquire(0)
    info = RateLimitInfo(limit_requests=600, remaining_requests=590, limit_tokens=600_000,
                         remaining_tokens=590_000, window_s=60.0, scope="key", style="litellm")
    assert limiters.notice((BASE_URL, "m1"), info, permit)
    await budgets_two.states[0].flush()
    await one.acquire(0)  # its answer says where the budget went ...
    await budgets_one.states[0].flush()
    await one.acquire(0)
    assert budgets_one.states[0].key == budgets_two.key(BASE_URL, KEY_BUDGET)  # ... and it follows
    for budgets in (budgets_one, budgets_two):
        await budgets.close()


@pytest.mark.slow  # over a second of real time
async def test_a_429_while_a_request_waits_its_turn_puts_it_back_behind_the_servers_delay(
        redis_server):
    budgets, limiter = await process(redis_server.url, rpm=60, tpm=600_000)  # 1 a second
    await limiter.acquire(0)  # the bucket is empty
    waiting = asyncio.ensure_future(limiter.acquire(0))  # taken for a second from now
    await asyncio.sleep(0.2)
    start = time.monotonic()
    limiter.on_rate_limited(None, 3.0, None)  # the server: nothing for 3 s
    await asyncio.wait_for(waiting, 6.0)
    assert time.monotonic() - start >= 2.7  # not at its old turn, 0.8 s later
    await budgets.close()
