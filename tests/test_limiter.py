"""The limiter's promises, checked on a fake clock (buckets) or the virtual loop (RateLimiter):
every admission time below is exact virtual time, not a real-time tolerance."""
from __future__ import annotations

import asyncio
import math

import pytest

from runner.clock import run_virtual
from runner.simulator.budgets import TokenBucket as ServerBucket
from runner.api.headers import RateLimitInfo
from runner.pacing.bucket import TokenBucket
from runner.pacing.calibration import (
    CALIBRATION_MAX,
    CALIBRATION_MIN,
    CALIBRATION_WINDOW_S,
    ChargeAudit,
)
from runner.pacing.limiter import (
    FALLBACK_RETRY_AFTER_S,
    LimiterStats,
    RateLimiter,
    RequestTooLarge,
)
from runner.pacing.limiters import Limiters
from runner.pacing.state import Admission, Limit, MemoryBudgetState

EXACT = 1e-9  # float noise in level + rate * dt; far below any time a test distinguishes


Info = RateLimitInfo  # every field defaults to None: the headers a response did not carry


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def now() -> float:
    return asyncio.get_running_loop().time()


async def admit(limiter: RateLimiter, log: list, name: str, tokens: int = 0,
                start: float = 0.0) -> None:
    """Arrive at virtual time `start`, acquire, and log (name, admission time)."""
    if start:
        await asyncio.sleep(start)
    await limiter.acquire(tokens)
    log.append((name, now()))


def times(log: list) -> list[float]:
    return [t for _, t in log]


# -- TokenBucket ------------------------------------------------------------------------------


def test_bucket_starts_full_and_refills_continuously_up_to_capacity():
    clock = FakeClock()
    bucket = TokenBucket(2.0, 10.0, clock=clock)
    assert bucket.level() == 10.0
    bucket.take(10)
    clock.now = 1.5
    assert bucket.level() == 3.0
    clock.now = 100.0
    assert bucket.level() == 10.0


def test_bucket_wait_time_is_exact_time_until_amount_fits():
    clock = FakeClock()
    bucket = TokenBucket(4.0, 8.0, clock=clock, level=0.0)
    assert bucket.wait_time(2) == 0.5
    assert not bucket.has_capacity(2)
    clock.now = 0.5
    assert bucket.wait_time(2) == 0.0
    assert bucket.has_capacity(2)
    assert bucket.wait_time(0) == 0.0


def test_bucket_amount_above_capacity_fits_when_full_and_leaves_debt():
    clock = FakeClock()
    bucket = TokenBucket(1.0, 2.0, clock=clock, level=1.0)
    assert bucket.wait_time(5) == 1.0  # waits for full (2), not for 5
    clock.now = 1.0
    assert bucket.has_capacity(5)
    bucket.take(5)
    assert bucket.level() == -3.0
    assert bucket.wait_time(1) == 4.0


def test_bucket_refund_never_exceeds_capacity_and_debt_lowers_level():
    clock = FakeClock()
    bucket = TokenBucket(1.0, 5.0, clock=clock)
    bucket.take(2)
    bucket.refund(10)
    assert bucket.level() == 5.0
    bucket.add_debt(7)
    assert bucket.level() == -2.0


def test_bucket_correct_only_ever_lowers_the_level():
    clock = FakeClock()
    bucket = TokenBucket(1.0, 5.0, clock=clock, level=3.0)
    bucket.correct(100)
    assert bucket.level() == 3.0
    bucket.correct(1)
    assert bucket.level() == 1.0


def test_bucket_set_rate_refills_elapsed_time_at_old_rate_and_clips_to_new_capacity():
    clock = FakeClock()
    bucket = TokenBucket(1.0, 10.0, clock=clock, level=0.0)
    assert bucket.level() == 0.0  # time starts at first use
    clock.now = 2.0
    bucket.set_rate(10.0, 20.0)
    assert bucket.level() == 2.0  # two seconds at the old rate, no jump to the new capacity
    clock.now = 3.0
    assert bucket.level() == 12.0
    bucket.set_rate(1.0, 4.0)
    assert bucket.level() == 4.0


def test_bucket_reads_the_clock_only_when_used_and_time_starts_then():
    def no_loop_yet() -> float:
        raise AssertionError("clock read at construction")

    TokenBucket(1.0, 1.0, clock=no_loop_yet)  # may be built before the event loop runs
    clock = FakeClock(50.0)
    bucket = TokenBucket(1.0, 5.0, clock=clock, level=0.0)
    clock.now = 51.0
    assert bucket.level() == 0.0
    clock.now = 52.0
    assert bucket.level() == 1.0


@pytest.mark.parametrize("rate, capacity", [(0, 1), (-1, 1), (1, 0), (math.inf, 1), (math.nan, 1)])
def test_bucket_rejects_non_positive_or_non_finite_rate_and_capacity(rate, capacity):
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity, clock=FakeClock())


# -- MemoryBudgetState ------------------------------------------------------------------------


def test_state_admit_takes_both_buckets_or_neither_and_says_how_long_and_why():
    clock = FakeClock()
    state = MemoryBudgetState(clock=clock)
    assert state.admit(10**9) == Admission()  # no limit known: nothing to wait for
    state.set_limit("requests", Limit(60, "user", capacity=2))   # 1 a second, 2 at once
    state.set_limit("tokens", Limit(600, "user", capacity=10))   # 10 a second, 10 at once
    assert state.admit(8).taken
    refused = state.admit(5)  # a request is left, 2 tokens are not enough: nothing is taken
    assert refused == Admission(wait_s=pytest.approx(0.3), requests_bound=False, tokens_bound=True)
    assert (state.level("requests"), state.level("tokens")) == (1.0, 2.0)
    state.hold(1.0)
    assert state.admit(0) == Admission(wait_s=1.0)  # held: neither bucket binds
    clock.now = 1.0
    assert state.admit(5).taken
    assert (state.level("requests"), state.level("tokens")) == (1.0, 5.0)  # refilled to full first


# -- RateLimiter: pacing ----------------------------------------------------------------------


def test_rpm_60_with_2s_burst_admits_the_third_request_at_exactly_one_second():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=None, burst_s=2.0)
        limiter.observe(None, Info())  # tokens: no header, so unlimited
        log: list = []
        await asyncio.gather(*(admit(limiter, log, str(i)) for i in range(5)))
        return times(log)

    assert run_virtual(main) == [0.0, 0.0, 1.0, 2.0, 3.0]


def test_weighted_requests_are_admitted_at_exact_times():
    async def main():
        # 10 tokens/s, a 10-token bucket; requests are effectively unlimited (1000/s)
        limiter = RateLimiter(rpm=60_000, tpm=600, burst_s=1.0)
        log: list = []
        await asyncio.gather(*(admit(limiter, log, name, tokens)
                               for name, tokens in [("a", 10), ("b", 5), ("c", 5), ("d", 20),
                                                    ("e", 1)]))
        return log

    log = run_virtual(main)
    assert [name for name, _ in log] == ["a", "b", "c", "d", "e"]
    # a drains the bucket; b, c wait 0.5 s each; d (20 > capacity 10) waits for a full bucket at
    # 2.0 and leaves -10; e then needs 11 tokens of refill: 1.1 s.
    assert times(log) == pytest.approx([0.0, 0.5, 1.0, 2.0, 3.1], abs=EXACT)


def test_burst_after_idle_is_capped_at_the_bucket_capacity():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=60_000, burst_s=2.0)
        log: list = []
        await asyncio.gather(*(admit(limiter, log, str(i), start=10.0) for i in range(4)))
        return times(log)

    # ten idle seconds still hold only two requests (2 s of burst): the rest pace at 1/s
    assert run_virtual(main) == [10.0, 10.0, 11.0, 12.0]


def test_steady_state_uses_the_full_rate():
    async def main():
        limiter = RateLimiter(rpm=600, tpm=60_000, burst_s=1.0)  # 10/s, 10 burst; 1000 tok/s
        log: list = []
        await asyncio.gather(*(admit(limiter, log, str(i), 100) for i in range(110)))
        return times(log)

    t = run_virtual(main)
    # tokens bind (100 per request, 10 requests/s of budget): 10 at once, then one per 0.1 s
    assert t[9] == 0.0
    assert t[-1] == pytest.approx(10.0, abs=EXACT)


def test_request_larger_than_the_whole_tpm_fails_at_once():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=1000)
        with pytest.raises(RequestTooLarge) as caught:
            await limiter.acquire(1001)
        assert isinstance(caught.value, ValueError)
        assert (caught.value.tokens, caught.value.tpm) == (1001, 1000)
        assert now() == 0.0
        await limiter.acquire(1000)  # exactly the TPM is admissible
        return limiter.stats

    assert run_virtual(main) == LimiterStats(requests=1, tokens=1000, wait_s=0.0, rate_limited=0)


def test_oversized_request_within_tpm_is_admitted_when_full_and_goes_into_debt():
    async def main():
        limiter = RateLimiter(rpm=60_000, tpm=6000, burst_s=1.0)  # 100 tok/s, capacity 100
        log: list = []
        await asyncio.gather(admit(limiter, log, "half", 50), admit(limiter, log, "big", 450),
                             admit(limiter, log, "next", 100))
        return times(log)

    # big waits for a full bucket (0.5 s), leaves -350; next needs 450 of refill: 4.5 s more
    assert run_virtual(main) == pytest.approx([0.0, 0.5, 5.0], abs=EXACT)


# -- RateLimiter: FIFO and cancellation -------------------------------------------------------


def test_fifo_a_large_request_queued_first_is_not_starved_by_later_small_ones():
    async def main():
        limiter = RateLimiter(rpm=60_000, tpm=600, burst_s=1.0)  # 10 tok/s, capacity 10
        log: list = []
        await limiter.acquire(10)  # drain
        await asyncio.gather(admit(limiter, log, "large", 8),
                             *(admit(limiter, log, f"small{i}", 1) for i in range(3)))
        return log

    log = run_virtual(main)
    assert [name for name, _ in log] == ["large", "small0", "small1", "small2"]
    assert times(log) == pytest.approx([0.8, 0.9, 1.0, 1.1], abs=EXACT)


def test_cancelled_waiters_leave_the_queue_and_consume_no_capacity():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=60_000, burst_s=1.0)  # one request per second
        log: list = []
        await limiter.acquire(1)  # t=0, bucket empty
        head = asyncio.ensure_future(admit(limiter, log, "head"))
        middle = asyncio.ensure_future(admit(limiter, log, "middle"))
        last = asyncio.ensure_future(admit(limiter, log, "last"))
        await asyncio.sleep(0.5)
        head.cancel()     # sleeping at the head of the queue
        middle.cancel()   # queued behind it
        await last
        assert head.cancelled() and middle.cancelled()
        return log, limiter.stats

    log, stats = run_virtual(main)
    assert log == [("last", 1.0)]  # not 3.0: the cancelled two took nothing
    assert stats.requests == 2


# -- RateLimiter: 429s ------------------------------------------------------------------------


def test_after_a_429_nothing_is_admitted_before_retry_after_and_the_head_exactly_then():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=6000, burst_s=1.0)
        log: list = []
        permit = await limiter.acquire(100)  # t=0: both buckets now empty
        head = asyncio.ensure_future(admit(limiter, log, "head", 50))
        second = asyncio.ensure_future(admit(limiter, log, "second", 50))
        await asyncio.sleep(0.5)
        limiter.on_rate_limited(permit, 5.0, None)
        await asyncio.gather(head, second)
        return log, limiter.stats.rate_limited

    log, seen = run_virtual(main)
    # head: 5.5 exactly (not its pre-429 time of 1.0); second: paced 1 s later by the requests bucket
    assert log == [("head", pytest.approx(5.5, abs=EXACT)), ("second", pytest.approx(6.5, abs=EXACT))]
    assert seen == 1


def test_a_429_blames_only_the_exhausted_bucket():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=6000, burst_s=2.0)  # 2 requests, 200 tokens of burst
        limiter.on_rate_limited(None, 3.0, Info(remaining_requests=0, remaining_tokens=5000))
        t_requests = now(), limiter.requests_bucket.level(), limiter.tokens_bucket.level()
        await limiter.acquire(100)
        return t_requests, now()

    (t0, requests_level, tokens_level), admitted = run_virtual(main)
    assert tokens_level == 200.0          # untouched: the server said tokens were plentiful
    assert requests_level == -2.0         # refills to 1 request exactly at 3.0
    assert admitted == pytest.approx(3.0, abs=EXACT)


def test_repeated_429s_in_one_episode_do_not_stack():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=None, burst_s=1.0)
        limiter.observe(None, Info())
        for _ in range(5):  # five in-flight requests all come back 429 at once
            limiter.on_rate_limited(None, 2.0, Info(remaining_requests=0))
        await limiter.acquire(1)
        return now(), limiter.stats.rate_limited

    assert run_virtual(main) == (pytest.approx(2.0, abs=EXACT), 5)


def test_a_429_with_no_usable_retry_after_uses_the_fallback():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=None, burst_s=1.0)
        limiter.observe(None, Info())
        limiter.on_rate_limited(None, math.nan, Info(remaining_requests=0))
        await limiter.acquire(1)
        return now()

    assert run_virtual(main) == pytest.approx(FALLBACK_RETRY_AFTER_S, abs=EXACT)


def test_a_429_with_no_limits_known_holds_admission_for_retry_after():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        limiter.observe(None, Info())  # no headers: unlimited, so there is no bucket to put in debt
        limiter.on_rate_limited(None, 4.0, Info())
        log: list = []
        await asyncio.gather(*(admit(limiter, log, str(i)) for i in range(3)))
        return times(log)

    assert run_virtual(main) == [4.0, 4.0, 4.0]


# -- RateLimiter: learning from headers -------------------------------------------------------


def test_a_lower_remaining_header_delays_the_next_admission():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=60_000, burst_s=2.0)
        limiter.observe(None, Info(remaining_requests=0))  # someone else drained the key
        await limiter.acquire(1)
        return now()

    assert run_virtual(main) == 1.0


def test_a_late_answer_counts_the_servers_refill_since_its_request_was_admitted():
    async def main(from_acquiring_task: bool) -> list[float]:
        limiter = RateLimiter(rpm=600, tpm=10**9, burst_s=1.0)  # 10 a second, 10 at once
        info = Info(limit_requests=600, remaining_requests=9)  # the server's count after request 1

        async def first() -> None:
            permit = await limiter.acquire(0)
            await asyncio.sleep(2.0)  # a slow answer: the server has refilled 20 since
            if from_acquiring_task:
                limiter.observe(permit, info)

        task = asyncio.ensure_future(first())
        await asyncio.gather(*(limiter.acquire(0) for _ in range(9)))
        await task
        if not from_acquiring_task:
            limiter.observe(None, info)  # no permit: `remaining` taken as it stands
        log: list = []
        await asyncio.gather(*(admit(limiter, log, str(i)) for i in range(10)))
        return times(log)

    assert run_virtual(main(True)) == [2.0] * 10  # 9 + 20 - 9 left: our full bucket stands
    assert run_virtual(main(False))[-1] == pytest.approx(2.1)  # level cut to the stale 9


def test_a_higher_remaining_header_never_raises_our_level():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=60_000, burst_s=2.0)
        await limiter.acquire(1)
        permit = await limiter.acquire(1)
        limiter.observe(permit, Info(remaining_requests=59))  # our two may not be counted yet
        await limiter.acquire(1)
        return now()

    assert run_virtual(main) == 1.0


def test_the_server_limit_replaces_a_too_high_user_guess():
    async def main():
        limiter = RateLimiter(rpm=6000, tpm=None, burst_s=1.0)  # the user guessed 100/s
        limiter.observe(None, Info(limit_requests=60, remaining_requests=59,
                                   reset_requests=1.0))  # the server says 1/s
        log: list = []
        await asyncio.gather(*(admit(limiter, log, str(i)) for i in range(4)))
        return limiter.rpm, times(log)

    rpm, t = run_virtual(main)
    assert rpm == 60
    assert t == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=EXACT)


def test_the_server_limit_raises_a_too_low_user_guess_and_wakes_the_head_early():
    async def main():
        limiter = RateLimiter(rpm=6, tpm=None, burst_s=1.0)  # 0.1/s: the head would wait 10 s
        limiter.observe(None, Info())
        permit = await limiter.acquire(1)  # level 0.1 - 1 = -0.9
        log: list = []
        head = asyncio.ensure_future(admit(limiter, log, "head"))
        await asyncio.sleep(1.0)  # level -0.8
        limiter.observe(permit, Info(limit_requests=600))  # 10/s: needs 1.8 more -> 0.18 s
        await head
        return limiter.rpm, log

    rpm, log = run_virtual(main)
    assert rpm == 600
    assert log == [("head", pytest.approx(1.18, abs=EXACT))]


def test_azure_remaining_only_headers_raise_a_too_low_user_limit_but_infer_none():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=1000, burst_s=1.0)
        permit = await limiter.acquire(10)
        limiter.observe(permit, Info(remaining_requests=119, remaining_tokens=79_990))
        first = limiter.rpm, limiter.tpm
        limiter.observe(None, Info(remaining_requests=100, remaining_tokens=50_000))  # never lowers
        return first, (limiter.rpm, limiter.tpm)

    first, later = run_virtual(main)
    # remaining without a reset may count a window shorter than a minute: no rpm is inferred from
    # it, but the user's tpm, certainly too low if 79,990 tokens remain, is raised
    assert first == (None, 79_990)
    assert later == first


def test_a_limit_is_inferred_from_remaining_and_reset_when_no_limit_header_is_sent():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        limiter.observe(None, Info(remaining_requests=90, reset_requests=6.0))
        return limiter.rpm

    # 90 left and 6 s to full at limit/60 per s: limit - 90 = limit * 6/60 -> limit = 100
    assert run_virtual(main) == pytest.approx(100.0)


# -- RateLimiter: cautious start --------------------------------------------------------------


def test_cautious_start_admits_one_probe_then_paces_by_the_learned_limits():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None, burst_s=2.0)
        log: list = []
        tasks = [asyncio.ensure_future(admit(limiter, log, str(i), 10)) for i in range(4)]
        await asyncio.sleep(3.0)  # the probe's answer takes 3 s
        assert log == [("0", 0.0)]
        limiter.observe(None, Info(limit_requests=60, remaining_requests=59, reset_requests=1.0,
                             limit_tokens=60_000, remaining_tokens=59_990, reset_tokens=0.01))
        await asyncio.gather(*tasks)
        return limiter.rpm, limiter.tpm, times(log)

    rpm, tpm, t = run_virtual(main)
    assert (rpm, tpm) == (60, 60_000)
    assert t == pytest.approx([0.0, 3.0, 3.0, 4.0], abs=EXACT)  # burst of 2, then 1/s


def test_cautious_start_without_rate_limit_headers_makes_the_unknown_limit_unlimited():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        log: list = []
        tasks = [asyncio.ensure_future(admit(limiter, log, str(i), 10_000)) for i in range(50)]
        await asyncio.sleep(0.25)
        limiter.observe(None, Info())
        await asyncio.gather(*tasks)
        return limiter.rpm, limiter.tpm, times(log)

    rpm, tpm, t = run_virtual(main)
    assert (rpm, tpm) == (None, None)
    assert t == [0.0] + [0.25] * 49


def test_with_both_limits_given_no_request_waits_for_a_first_answer():
    async def main():
        limiter = RateLimiter(rpm=600, tpm=60_000_000, burst_s=1.0)
        log: list = []
        await asyncio.gather(*(admit(limiter, log, str(i), 10) for i in range(12)))
        return times(log)

    # nothing is ever observed: the bucket's second of budget goes at once, then 10 per second
    assert run_virtual(main) == pytest.approx([0.0] * 10 + [0.1, 0.2], abs=EXACT)


def test_cautious_start_applies_when_only_one_limit_is_unknown():
    async def main():
        limiter = RateLimiter(rpm=6000, tpm=None)
        log: list = []
        tasks = [asyncio.ensure_future(admit(limiter, log, str(i), 10)) for i in range(3)]
        await asyncio.sleep(1.0)
        assert len(log) == 1
        limiter.observe(None, Info(limit_tokens=600_000))
        await asyncio.gather(*tasks)
        return times(log)

    assert run_virtual(main) == [0.0, 1.0, 1.0]


def test_a_probe_that_got_no_response_lets_the_next_waiter_probe():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        log: list = []
        tasks = [asyncio.ensure_future(admit(limiter, log, str(i))) for i in range(3)]
        await asyncio.sleep(1.0)
        limiter.on_failure(None)  # connection error: still nothing learned
        await asyncio.sleep(1.0)
        assert times(log) == [0.0, 1.0]
        limiter.observe(None, Info())
        await asyncio.gather(*tasks)
        return times(log)

    assert run_virtual(main) == [0.0, 1.0, 2.0]


def test_a_probe_answered_by_a_bare_429_is_retried_after_retry_after():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        log: list = []
        tasks = [asyncio.ensure_future(admit(limiter, log, str(i))) for i in range(2)]
        await asyncio.sleep(1.0)
        limiter.on_rate_limited(None, 2.0, None)  # nothing learned; still cautious
        await asyncio.sleep(5.0)
        assert times(log) == [0.0, 3.0]  # the second probe, after retry_after
        limiter.observe(None, Info())
        await asyncio.gather(*tasks)
        return times(log)

    assert run_virtual(main) == [0.0, 3.0]


def test_a_tpm_learned_while_waiting_rejects_a_request_that_can_never_fit():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        permit = await limiter.acquire(10)  # the probe
        waiter = asyncio.ensure_future(limiter.acquire(5000))
        await asyncio.sleep(1.0)
        limiter.observe(permit, Info(limit_tokens=1000))
        with pytest.raises(RequestTooLarge):
            await waiter
        return now()

    assert run_virtual(main) == 1.0


# -- calibration, stats, registry -------------------------------------------------------------


def test_calibration_scales_charges_by_a_bounded_ewma():
    limiter = RateLimiter(rpm=60, tpm=60_000)
    assert limiter.charge(100) == 100
    limiter.calibrate(estimated=100, charged=150)  # 0.8 * 1.0 + 0.2 * 1.5
    assert limiter.calibration == pytest.approx(1.1)
    assert limiter.charge(100) == 110
    for _ in range(100):
        limiter.calibrate(estimated=10, charged=1000)
    assert limiter.calibration == CALIBRATION_MAX
    for _ in range(100):
        limiter.calibrate(estimated=1000, charged=1)
    assert limiter.calibration == CALIBRATION_MIN
    limiter.calibrate(estimated=0, charged=100)  # ignored
    assert limiter.calibration == CALIBRATION_MIN


def test_acquire_charges_the_calibrated_amount_capped_at_the_tpm():
    async def main():
        limiter = RateLimiter(rpm=60_000, tpm=1000)
        for _ in range(50):
            limiter.calibrate(estimated=100, charged=300)
        assert limiter.calibration == CALIBRATION_MAX == 2.0
        first = (await limiter.acquire(300)).charged
        # 1800 would exceed the whole TPM: capped to 1000
        second = (await limiter.acquire(900)).charged
        return first, second, limiter.stats.tokens

    assert run_virtual(main) == (600, 1000, 1600)


def charge(server: ServerBucket, amount: float) -> tuple[int, float]:
    """Charge `amount` to the simulator's own bucket; return the headers' (remaining, reset)."""
    server.take(amount)
    return server.remaining(), server.time_to_full()


def audit_run(audit: ChargeAudit, *, factor: float, interval: float, seconds: float,
              estimate: int = 100, refused: frozenset[int] = frozenset()
              ) -> list[tuple[int, float]]:
    """Requests every `interval` s against a server charging `factor` × `estimate` (1000 tok/s,
    2 s bucket); every sample the audit gives."""
    clock = FakeClock()
    server = ServerBucket(1000.0, 2000.0, clock=clock)
    samples, total = [], 0
    for seq in range(1, int(seconds / interval) + 1):
        clock.now = seq * interval
        total += estimate
        if seq in refused:
            audit.rejected(seq, estimate)
            continue
        remaining, reset = charge(server, estimate * factor)
        sample = audit.record(seq, clock.now, total, remaining, reset, 1000.0)
        if sample is not None:
            samples.append(sample)
    return samples


def test_audit_measures_the_servers_charge_per_estimated_token_from_remaining_deltas():
    samples = audit_run(ChargeAudit(), factor=1.3, interval=0.1, seconds=6)  # 1300 of 1000 tok/s
    assert len(samples) > 30
    assert all(charged / estimated == pytest.approx(1.3, rel=0.01)
               for estimated, charged in samples)
    first_estimated, _ = samples[0]
    assert first_estimated >= CALIBRATION_WINDOW_S / 0.1 * 100  # a sample spans a whole window


def test_audit_gives_no_sample_while_the_servers_bucket_may_have_been_full():
    # 600 of 1000 tok/s: the bucket refills faster than it is drawn, so it is full between requests
    assert audit_run(ChargeAudit(), factor=1.0, interval=0.5, seconds=20, estimate=300) == []


def test_audit_leaves_refused_requests_out_of_the_estimate():
    refused = frozenset({25, 26, 40})
    samples = audit_run(ChargeAudit(), factor=1.2, interval=0.1, seconds=8, refused=refused)
    assert len(samples) > 30
    assert all(charged / estimated == pytest.approx(1.2, rel=0.01)
               for estimated, charged in samples)


def test_audit_skips_windows_that_start_inside_a_burst_the_server_counted_in_another_order():
    clock = FakeClock()
    # far from full: every window is covered
    server = ServerBucket(1000.0, 5000.0, clock=clock, level=2000.0)
    audit, samples, answers = ChargeAudit(), [], []
    for seq in range(1, 11):  # a burst of 10 at t=0; the server happens to count it backwards
        audit.admitted(seq, 0.0, 100, 100 * seq)
    for seq in range(10, 0, -1):
        answers.append((seq, 0.0, 100 * seq, *charge(server, 100)))
    for seq in range(11, 60):  # then 10 a second, 1000 tok/s, as fast as the server refills
        clock.now = (seq - 10) * 0.1
        audit.admitted(seq, clock.now, 100, 100 * seq)
        answers.append((seq, clock.now, 100 * seq, *charge(server, 100)))
    for answer in answers:
        sample = audit.record(*answer, 1000.0)
        if sample is not None:
            samples.append(sample)
    assert samples and all(charged / estimated == pytest.approx(1.0, rel=0.01)
                           for estimated, charged in samples)


class SharedState(MemoryBudgetState):
    """Stands in for a budget kept outside this process (Redis: `BudgetState.shared`)."""

    shared = True

    async def admit_async(self, tokens: float) -> Admission:
        return self.admit(tokens)


def calibration_run(*, factor: float, same_task: bool = True, headers: str = "all",
                    rpm: float | None = None, tpm: float | None = None,
                    shared: bool = False) -> float:
    """200 requests of 100 estimated tokens through a limiter, answered by a server charging
    `factor` × 100 (TPM 60,000); the calibration after them."""

    async def main() -> float:
        state = SharedState(clock=now) if shared else None
        limiter = RateLimiter(rpm=rpm, tpm=tpm, state=state)
        server = ServerBucket(1000.0, 60_000.0, clock=now)  # a minute's worth, as OpenAI holds
        answers: asyncio.Queue = asyncio.Queue()

        async def observer() -> None:  # a task that never acquired
            while True:
                limiter.observe(None, await answers.get())
                answers.task_done()

        watching = asyncio.ensure_future(observer())
        for _ in range(200):
            permit = await limiter.acquire(100)
            remaining, reset = charge(server, 100 * factor)
            info = Info(limit_tokens=None if headers == "no-limit" else 60_000,
                        remaining_tokens=remaining,
                        reset_tokens=None if headers == "no-reset" else reset)
            if same_task:
                limiter.observe(permit, info)
            else:
                answers.put_nowait(info)
                await answers.join()
        watching.cancel()
        return limiter.calibration

    return run_virtual(main)


def test_observe_calibrates_the_charge_to_the_servers_accounting():
    assert calibration_run(factor=1.3) == pytest.approx(1.3, abs=0.01)
    assert calibration_run(factor=0.8) == pytest.approx(0.8, abs=0.01)
    assert calibration_run(factor=1.0) == pytest.approx(1.0, abs=0.005)


def test_calibration_needs_the_servers_limit_and_reset_and_the_acquiring_task():
    assert calibration_run(factor=1.3, headers="no-reset") == 1.0
    assert calibration_run(factor=1.3, headers="no-limit", tpm=60_000) == 1.0  # the user's rate
    assert calibration_run(factor=1.3, same_task=False) == 1.0  # not tied to an admission


def test_stats_count_admissions_tokens_waiting_time_and_429s():
    async def main():
        limiter = RateLimiter(rpm=60, tpm=60_000, burst_s=1.0)
        await asyncio.gather(limiter.acquire(10), limiter.acquire(20), limiter.acquire(30))
        limiter.on_rate_limited(None, 1.0, None)
        return limiter.stats

    stats = run_virtual(main)
    assert stats == LimiterStats(requests=3, tokens=60, wait_s=pytest.approx(3.0), rate_limited=1)


def test_invalid_limits_are_rejected_when_built():
    for kwargs in ({"rpm": 0, "tpm": None}, {"rpm": None, "tpm": -5},
                   {"rpm": 60, "tpm": 60, "burst_s": 0}):
        with pytest.raises(ValueError):
            RateLimiter(**kwargs)
        with pytest.raises(ValueError):
            Limiters(**{"burst_s": 1.0, **kwargs})


def test_acquire_rejects_negative_tokens():
    async def main():
        with pytest.raises(ValueError):
            await RateLimiter(rpm=60, tpm=60).acquire(-1)

    run_virtual(main)


def test_limiters_hold_one_independent_limiter_per_base_url_and_model():
    async def main():
        limiters = Limiters(rpm=60, tpm=60_000, burst_s=1.0)
        a = limiters.get(("https://api.openai.com/v1", "gpt-4o-mini"))
        b = limiters.get(("https://api.openai.com/v1", "gpt-4o"))
        assert limiters.get(("https://api.openai.com/v1", "gpt-4o-mini")) is a
        assert a is not b
        await a.acquire(1)
        await b.acquire(1)  # b's budget is its own: no wait
        t_b = now()
        await a.acquire(1)
        return t_b, now(), [key for key, _ in limiters.items()]

    t_b, t_a, keys = run_virtual(main)
    assert (t_b, t_a) == (0.0, 1.0)
    assert keys == [("https://api.openai.com/v1", "gpt-4o-mini"), ("https://api.openai.com/v1", "gpt-4o")]


def test_observe_accepts_the_real_rate_limit_info_from_headers():
    headers_module = pytest.importorskip("runner.api.headers")

    async def main():
        limiter = RateLimiter(rpm=None, tpm=None, burst_s=2.0)
        permit = await limiter.acquire(10)  # the probe
        limiter.observe(permit, headers_module.RateLimitInfo.from_headers({
            "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-limit-tokens": "60000", "x-ratelimit-remaining-tokens": "59990",
            "x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "10ms",
        }))
        return limiter.rpm, limiter.tpm

    assert run_virtual(main) == (60, 60_000)


def test_admissions_never_exceed_burst_plus_rate_in_any_window_under_random_load():
    import random

    rng = random.Random(7)
    rpm, tpm, burst_s = 600, 30_000, 1.0  # 10 req/s (10 burst), 500 tok/s (500 burst)

    async def main():
        limiter = RateLimiter(rpm=rpm, tpm=tpm, burst_s=burst_s)
        admitted: list[tuple[float, int]] = []

        async def one(start: float, tokens: int) -> None:
            await asyncio.sleep(start)
            charged = (await limiter.acquire(tokens)).charged
            admitted.append((now(), charged))

        tasks = [asyncio.ensure_future(one(rng.uniform(0, 20), rng.randint(1, 400)))
                 for _ in range(300)]
        for _ in range(40):  # cancellations and header noise while the queue is busy
            await asyncio.sleep(rng.uniform(0, 1.0))
            rng.choice(tasks).cancel()
            remaining = rng.randint(0, 30_000)  # OpenAI's: a reset that fits its bucket
            limiter.observe(None, Info(limit_requests=rpm, limit_tokens=tpm,
                                       remaining_tokens=remaining,
                                       reset_tokens=(tpm - remaining) / (tpm / 60)))
        await asyncio.gather(*tasks, return_exceptions=True)
        return admitted, sum(1 for t in tasks if t.cancelled())

    admitted, cancelled = run_virtual(main)
    assert len(admitted) + cancelled == 300
    # every window [start, end] between two admissions: in time order, the admissions from the
    # first at `start` up to each `end` (the last of equal times counts them all)
    admitted.sort()
    for i, (start, _) in enumerate(admitted):
        count = tokens = 0
        for end, charged in admitted[i:]:
            span = end - start
            count += 1
            tokens += charged
            # what a full bucket holds plus what it refills: never more (requests <= capacity)
            assert count <= rpm / 60 * (burst_s + span) + 1e-6
            assert tokens <= tpm / 60 * (burst_s + span) + 1e-6


def test_429s_with_no_limit_known_infer_one_and_shrink_it_per_episode():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None, burst_s=1.0)
        permit = await limiter.acquire(1)
        # an answer with no rate-limit headers: unlimited from now on
        limiter.observe(permit, Info())
        for _ in range(59):  # the server answers 60 requests in the first second ...
            permit = await limiter.acquire(1)
            limiter.observe(permit, Info())
        await asyncio.sleep(1.0)
        permit = await limiter.acquire(1)
        limiter.on_rate_limited(permit, 0.5, Info())  # ... then says no
        inferred = limiter.rpm
        permit = await limiter.acquire(1)
        limiter.on_rate_limited(permit, 0.5, Info())  # the same episode: no second cut
        same = limiter.rpm
        await asyncio.sleep(1.0)
        permit = await limiter.acquire(1)
        limiter.on_rate_limited(permit, 0.5, Info())  # a new episode: cut again
        return inferred, same, limiter.rpm

    inferred, same, later = run_virtual(main)
    assert inferred == pytest.approx(60 * 60 * 0.75)  # 60 answers a second, 75 % of it
    assert same == inferred and later == pytest.approx(inferred * 0.75)


def test_a_probed_limit_is_raised_only_while_it_holds_requests_back():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None, burst_s=1.0)
        permit = await limiter.acquire(1)
        limiter.observe(permit, Info())
        for _ in range(59):
            permit = await limiter.acquire(1)
            limiter.observe(permit, Info())
        await asyncio.sleep(1.0)
        permit = await limiter.acquire(1)
        limiter.on_rate_limited(permit, 0.5, Info())
        probed = limiter.rpm
        for _ in range(360):  # an hour of one quiet request every 10 s: the limit never binds
            await asyncio.sleep(10.0)
            permit = await limiter.acquire(1)
            limiter.observe(permit, Info())
        return probed, limiter.rpm

    probed, later = run_virtual(main)
    assert later == probed


# -- windows, gateways and shared budgets ----------------------------------------------------

def window_info(remaining: int, reset: float, limit: int = 60) -> RateLimitInfo:
    return RateLimitInfo(limit_requests=limit, remaining_requests=remaining, reset_requests=reset,
                         style="openai")


def test_a_window_is_told_from_a_bucket_by_its_reset():
    async def main():
        bucket, window = RateLimiter(rpm=None, tpm=None), RateLimiter(rpm=None, tpm=None)
        bucket.observe(await bucket.acquire(0), window_info(59, 1.0))    # a bucket: 1 s per request
        window.observe(await window.acquire(0), window_info(59, 59.9))   # a window: all back at 60 s
        return bucket, window

    bucket, window = run_virtual(main())
    assert not bucket.windowed and not bucket.trusts_server
    assert bucket.requests_bucket.capacity == pytest.approx(1.0)  # OpenAI's: the safe 1 s burst
    assert window.windowed and window.trusts_server
    assert window.requests_bucket.capacity == pytest.approx(60.0)  # the window's whole quota


def test_a_spent_window_admits_nothing_until_its_reset():
    async def main():
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(rpm=None, tpm=None)
        limiter.observe(await limiter.acquire(0), window_info(2, 50.0, limit=3))
        for remaining in (1, 0):
            limiter.observe(await limiter.acquire(0), window_info(remaining, 50.0, limit=3))
        started = loop.time()
        await limiter.acquire(0)
        return loop.time() - started

    assert run_virtual(main()) == pytest.approx(50.0)


def test_a_windows_remaining_is_not_read_as_spent_by_others():
    """Our bucket-shaped picture of a budget used by us alone refills; a window does not: with
    no refill in the server's count, the difference is not someone else's spending."""
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        spends = []
        for remaining in range(59, 29, -1):
            permit = await limiter.acquire(0)
            info = window_info(remaining, 60.0 - (59 - remaining))
            spends.append(limiter.unexplained_spend(info, permit))
            limiter.observe(permit, info)
            await asyncio.sleep(1.0)
        return spends

    assert max(run_virtual(main())) == 0.0


def test_remaining_spent_beyond_our_own_sending_is_unexplained():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        permit = await limiter.acquire(0)
        info = RateLimitInfo(limit_requests=600, remaining_requests=599, reset_requests=0.1)
        limiter.unexplained_spend(info, permit)
        limiter.observe(permit, info)
        await asyncio.sleep(1.0)
        permit = await limiter.acquire(0)  # we sent 1 more; the server says 50 more went
        return limiter.unexplained_spend(
            RateLimitInfo(limit_requests=600, remaining_requests=549, reset_requests=5.1), permit)

    assert run_virtual(main()) == pytest.approx(49.0, abs=1.0)


def test_gateway_headers_are_trusted_up_to_what_the_server_showed():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        info = RateLimitInfo(limit_requests=600, remaining_requests=19, window_s=60.0,
                             style="litellm")
        limiter.observe(await limiter.acquire(0), info)
        return limiter

    limiter = run_virtual(main())
    assert limiter.trusts_server and not limiter.windowed
    assert limiter.requests_bucket.capacity == pytest.approx(20.0)  # shown: 19 left after 1
    assert limiter.requests_bucket.level() == pytest.approx(19.0, abs=0.5)


def test_window_length_429s_without_limits_teach_the_window_by_what_it_admitted():
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        for _ in range(25):
            limiter.observe(await limiter.acquire(0), RateLimitInfo())
        limiter.on_rate_limited(await limiter.acquire(0), 60.0, RateLimitInfo())
        return limiter

    limiter = run_virtual(main())
    assert limiter.rpm == pytest.approx(25.0)  # 25 per 60 s, not a share of a rate
    assert limiter.windowed and limiter.requests_bucket.capacity == pytest.approx(25.0)


def test_a_burst_answered_out_of_order_is_not_read_as_spending():
    """30 requests of a 60-request bucket, answered by the server in reverse order: each answer's
    `remaining` counts the later-admitted requests it worked on first. Our bucket must stay at the
    30 left, not be lowered by the reordering into debt."""
    async def main():
        limiter = RateLimiter(rpm=60, tpm=10**9, burst_s=60.0)
        probe = await limiter.acquire(0)
        limiter.observe(probe, RateLimitInfo(limit_requests=60, remaining_requests=59,
                                             reset_requests=1.0, limit_tokens=10**9))
        permits = [await limiter.acquire(0) for _ in range(29)]
        for position, permit in enumerate(reversed(permits), start=1):
            limiter.observe(permit, RateLimitInfo(limit_requests=60, remaining_requests=59 - position,
                                                  reset_requests=float(1 + position)))
        return limiter.requests_bucket.level()

    assert run_virtual(main()) == pytest.approx(30.0, abs=0.5)


def test_a_limit_and_remaining_without_reset_are_a_gateways_and_trusted():
    """OpenAI sends limit, remaining and reset; Azure no limit. LiteLLM's router sends OpenAI's
    limit and remaining names without a reset: its count is trusted, as a gateway's."""
    async def main():
        limiter = RateLimiter(rpm=None, tpm=None)
        limiter.observe(await limiter.acquire(0),
                        RateLimitInfo(limit_requests=61, remaining_requests=59, style="openai"))
        return limiter

    limiter = run_virtual(main())
    assert limiter.trusts_server
    assert limiter.requests_bucket.capacity == pytest.approx(60.0)


def test_a_budget_shared_with_other_processes_is_not_calibrated_from_remaining():
    """With Redis, `remaining` also drops by other processes' requests: read as our undercount,
    they raised the shared factor (0.55 of a TPM budget used by two processes)."""
    assert calibration_run(factor=1.3, shared=True) == 1.0
