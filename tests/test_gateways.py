"""Gateways and their rate limits, end to end on virtual time: the runner against the simulator
playing a LiteLLM-style proxy (fixed 60 s windows, `retry-after: 60`, its own header names, one
budget per key over every model) or a server speaking the IETF draft's headers.

Each test checks a promise of issue "Real servers, not only our simulator": the header variants are
read; a window's whole quota is used when the server shows it (and a spent window waits for its
reset instead of dripping into 429s); limits unknown are inferred from what a window admitted, not
from the length of its penalty; a budget shared by the key's models is learned (from the headers,
from what the others spent, or from 429s) or given with ``budget_scope``; OpenAI's own buckets are
still paced at the safe 1 s burst.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from runner.api.endpoint import Endpoint
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.pacing.limiter import DEFAULT_BURST_S
from runner.pacing.limiters import Limiters
from runner.report.stats import RunStats
from runner.simulator.config import SimConfig, SimStats
from runner.simulator.server import Simulator
from tests.test_pacing import assert_each_job_got_its_own_answer, chat_job

WINDOW_S = 60.0
MODELS = ("gpt-4o-mini", "gpt-4o")


@dataclass(frozen=True, slots=True)
class Outcome:
    seconds: float
    sim: SimStats
    stats: RunStats
    limiters: Limiters


def run_jobs(loop, tmp_path: Path, jobs: list[dict], sim_config: SimConfig, *,
             rpm: float | None = None, burst_s: float = DEFAULT_BURST_S,
             scope: str = "auto") -> Outcome:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs))

    async def main() -> Outcome:
        simulator = Simulator(sim_config, clock=loop.time, sleep=asyncio.sleep,
                              wall_clock=loop.time)  # calendar minutes on virtual time
        base_url = await simulator.start()
        limiters = Limiters(rpm=rpm, tpm=None, burst_s=burst_s, scope=scope)
        try:
            started = loop.time()
            stats = await run(
                RunConfig(input=str(source), output=out, rpm=rpm, burst_s=burst_s, pack=False,
                          budget_scope=scope, endpoint=Endpoint(base_url=base_url, api_key="sk-t"),
                          dispatch=DispatchConfig()),
                progress=False, handle_signals=False, log=lambda message: None,
                limiters=limiters)
            seconds = loop.time() - started
        finally:
            await simulator.stop()
        assert stats.exit_code() == 0, stats
        return Outcome(seconds, simulator.stats, stats, limiters)

    outcome = loop.run_until_complete(main())
    assert_each_job_got_its_own_answer(jobs, out)
    return outcome


def window_ideal(requests: int, per_window: int) -> float:
    """Windows open at their first request: what a perfect client needs."""
    return (math.ceil(requests / per_window) - 1) * WINDOW_S


def window(header_style: str, rpm: int = 60, limiter: str = "window", **more) -> SimConfig:
    return SimConfig(rpm=rpm, limiter=limiter, header_style=header_style, **more)


# -- fixed windows -----------------------------------------------------------------------------

@pytest.mark.parametrize("header_style, told, efficiency, most_429s", [
    ("openai", False, 0.97, 0),   # limit, remaining and the window's reset announced
    ("litellm", False, 0.95, 3),  # LiteLLM's names, no reset: one 429 per window ends it
    ("ietf", False, 0.97, 0),
    ("none", False, 0.8, 40),     # nothing announced: the first window ends in a flood of 429s
    ("none", True, 0.95, 3),      # --rpm 60 --burst 60, as the gateway's documentation says
])
def test_a_fixed_window_is_spent_at_once_and_waited_out(loop, tmp_path, header_style, told,
                                                        efficiency, most_429s):
    jobs = [chat_job(i) for i in range(150)]  # two and a half windows of RPM 60
    outcome = run_jobs(loop, tmp_path, jobs, window(header_style),
                       **({"rpm": 60, "burst_s": 60} if told else {}))
    ideal = window_ideal(len(jobs), 60)
    assert outcome.seconds <= ideal / efficiency, (outcome.seconds, ideal)
    assert outcome.sim.rate_limited <= most_429s, outcome.sim.rate_limited


def test_a_window_learned_from_429s_is_what_it_admitted_not_a_cut_per_penalty(loop, tmp_path):
    """The old rule cut the limit by a quarter at every `retry-after: 60`: 9 RPM where 60 were
    allowed. Now the limit is what one window admitted, and it holds over many windows."""
    jobs = [chat_job(i) for i in range(300)]
    outcome = run_jobs(loop, tmp_path, jobs, window("none"))
    limiter = outcome.limiters.get(next(iter(k for k, _ in outcome.limiters.items())))
    assert limiter.rpm == pytest.approx(60, rel=0.1)
    assert limiter.windowed
    assert outcome.seconds <= window_ideal(len(jobs), 60) / 0.9


def test_a_window_the_server_announces_is_held_until_its_reset_without_429s(loop, tmp_path):
    jobs = [chat_job(i) for i in range(100)]
    outcome = run_jobs(loop, tmp_path, jobs, window("openai", rpm=40))
    assert outcome.sim.rate_limited == 0
    assert outcome.seconds <= window_ideal(len(jobs), 40) + 2.0
    [(_, limiter)] = outcome.limiters.items()
    assert limiter.windowed and limiter.trusts_server
    assert limiter.requests_bucket.capacity == pytest.approx(40)  # the window's whole quota


# -- the burst a server offers -----------------------------------------------------------------

def test_openai_buckets_are_paced_at_the_safe_one_second_burst(loop, tmp_path):
    """A bucket holding a whole minute, announced with OpenAI's headers: runner keeps its 1 s
    burst (OpenAI may enforce a minute's limit over shorter slices) and sends no 429-drawing
    flood at the start."""
    jobs = [chat_job(i) for i in range(60)]
    outcome = run_jobs(loop, tmp_path, jobs, SimConfig(rpm=600, burst_s=60.0))
    [(_, limiter)] = outcome.limiters.items()
    assert not limiter.trusts_server
    assert limiter.requests_bucket.capacity == pytest.approx(600 / 60 * DEFAULT_BURST_S)


def test_a_gateways_bucket_is_trusted_only_as_far_as_it_has_shown(loop, tmp_path):
    """IETF headers on a 2 s bucket: the count is trusted, but only up to what the server has
    shown it holds, so a pause never turns into a burst of a whole minute's worth."""
    jobs = [chat_job(i) for i in range(200)]
    outcome = run_jobs(loop, tmp_path, jobs, SimConfig(rpm=300, burst_s=2.0, header_style="ietf"))
    [(_, limiter)] = outcome.limiters.items()
    assert limiter.trusts_server and not limiter.windowed
    assert limiter.requests_bucket.capacity <= 300 / 60 * 2.0 + 1
    ideal = (len(jobs) - 10) / 5
    assert outcome.seconds <= ideal / 0.95
    assert outcome.sim.rate_limited <= 0.02 * outcome.sim.requests


# -- one budget for the key over every model ---------------------------------------------------

def two_models(n: int) -> list[dict]:
    return [chat_job(i, model) for i in range(n) for model in MODELS]


def key_budget(header_style: str, burst_s: float = 2.0) -> SimConfig:
    return SimConfig(rpm=600, burst_s=burst_s, budget_scope="key", header_style=header_style)


@pytest.mark.parametrize("header_style, burst_s, why", [
    ("litellm", 2.0, "name the key's budget"),        # LiteLLM's "api_key" descriptor
    ("openai", 60.0, "only the other models sent"),   # remaining fell by what the others sent
    ("openai", 2.0, "met 429s at its own limit"),     # a small bucket: only 429s tell
])
def test_a_budget_shared_by_the_keys_models_is_learned(loop, tmp_path, header_style, burst_s, why):
    jobs = two_models(150)
    outcome = run_jobs(loop, tmp_path, jobs, key_budget(header_style, burst_s))
    [(base_url, reason)] = outcome.stats.budget_shared
    assert why in reason
    limiters = {id(limiter) for _, limiter in outcome.limiters.items()}
    assert len(limiters) == 1  # both models paced by one budget
    assert outcome.sim.rate_limited <= 0.03 * len(jobs)
    ideal = (len(jobs) - 10 * 2.0) / 10  # OpenAI's minute-long bucket is still paced at 1 s bursts
    assert outcome.seconds <= ideal / 0.95


def test_budget_scope_key_shares_from_the_start_and_model_never_does(loop, tmp_path):
    jobs = two_models(100)
    shared = run_jobs(loop, tmp_path / "key", jobs, key_budget("none"), rpm=600, scope="key")
    assert shared.sim.rate_limited == 0
    apart = run_jobs(loop, tmp_path / "model", jobs, key_budget("litellm"), scope="model")
    assert apart.stats.budget_shared == []
    assert len({id(limiter) for _, limiter in apart.limiters.items()}) == 2
    assert apart.sim.rate_limited > 20  # each model paced at the key's whole limit: twice too fast


@pytest.fixture(autouse=True)
def _dirs(tmp_path):
    (tmp_path / "key").mkdir()
    (tmp_path / "model").mkdir()


def test_two_models_each_with_its_own_window_are_not_taken_for_one_budget(loop, tmp_path):
    """A window does not refill as a bucket does: its remaining must not read as spent by others."""
    jobs = two_models(100)
    outcome = run_jobs(loop, tmp_path, jobs, window("openai", latency_ms=100))
    assert outcome.stats.budget_shared == []
    assert outcome.seconds <= window_ideal(100, 60) + 2.0


def test_litellms_router_calendar_minutes_are_found_by_probing_not_waited_out_for_60_s(loop,
                                                                                       tmp_path):
    """LiteLLM's router: a deployment's rpm per calendar minute, OpenAI's limit and remaining
    names without a reset, and 429s that say only `llm_provider-retry-after: 60`. Waiting the
    full 60 s after every 429 loses up to a minute per window; one request every few seconds finds
    the new minute, whose first answer opens its whole quota."""
    loop.run_until_complete(asyncio.sleep(25.0))  # the run starts 25 s into a calendar minute
    jobs = [chat_job(i) for i in range(150)]
    outcome = run_jobs(loop, tmp_path, jobs, window("litellm-router", rpm=61, limiter="minute"))
    # 60 pass per minute (the router refuses the 61st): 0-35 s, 35-95 s, the last 30 from 95 s
    ideal = 95.0
    assert outcome.seconds <= ideal + 6.0, outcome.seconds
    [(_, limiter)] = outcome.limiters.items()
    assert limiter.windowed and limiter.rpm == 61
    assert outcome.sim.rate_limited <= 2 * (60 // 5 + 1)  # a probe every 5 s, per window end


def test_litellms_router_windows_of_two_models_are_not_taken_for_one_budget(loop, tmp_path):
    """No reset header: a window cannot be told from a bucket by its numbers, so its remaining
    (which does not refill) must not read as spent by the other model."""
    jobs = two_models(100)
    outcome = run_jobs(loop, tmp_path, jobs, window("litellm-router", rpm=61, limiter="minute"))
    assert outcome.stats.budget_shared == []
    assert len({id(limiter) for _, limiter in outcome.limiters.items()}) == 2


def test_429s_at_a_windows_edge_are_not_taken_for_a_shared_budget(loop, tmp_path):
    """Told a minute's burst, two models on LiteLLM's router straddle a calendar minute and meet
    a handful of 429s each: those come from the window's edge, not from one budget for the key."""
    loop.run_until_complete(asyncio.sleep(50.0))  # ten seconds before a minute ends
    jobs = two_models(100)
    outcome = run_jobs(loop, tmp_path, jobs, window("litellm-router", rpm=61, limiter="minute",
                                                    latency_ms=2000), rpm=60, burst_s=60)
    assert outcome.sim.rate_limited >= 5  # the edge was met
    assert outcome.stats.budget_shared == []


def test_a_windows_quota_goes_out_at_once_even_when_answers_are_slow(loop, tmp_path):
    """Little's law at the budget's average rate would keep 8 in flight against 1.5 s answers and
    spread a window's 60 requests over 10 s; a trusted window's quota is what may be in flight."""
    jobs = [chat_job(i) for i in range(150)]
    outcome = run_jobs(loop, tmp_path, jobs, window("openai", latency_ms=1500))
    assert outcome.seconds <= window_ideal(len(jobs), 60) + 2 * 1.5 + 1.0, outcome.seconds
