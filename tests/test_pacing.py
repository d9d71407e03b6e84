"""Pacing end to end: the runner against the simulator on one virtual-time loop, over real loopback
sockets, with limits tight enough that pacing decides the run time. A minute of virtual time takes
a fraction of a second.

Each test checks the three promises of pacing: every job gets its own answer; 429s stay under 1 %
of requests; and the run takes no more than 1 / 0.95 of the ideal time. The ideal is what the
server's own buckets allow: they start full (``burst_s`` seconds of budget), so the first
``rate × burst_s`` of the work passes at once and the rest at ``rate``:
``ideal = (work - rate × burst_s) / rate``, plus the latency of the last answer.
"""
from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from runner.clock import VirtualClockLoop, virtual_loop
from runner.live.dispatch import DispatchConfig
from runner.api.endpoint import Endpoint
from runner.pacing.limiter import DEFAULT_BURST_S
from runner.pacing.limiters import Limiters
from runner.live.run import RunConfig, run
from runner.simulator.answers import chat_prompt, completion_text
from runner.simulator.config import SimConfig, SimStats
from runner.simulator.server import Simulator

MIN_EFFICIENCY = 0.95
MAX_429_SHARE = 0.01
SERVER_BURST_S = 2.0
PROMPT_CHARS = 40  # 10 tokens: with max_tokens 390 a completion costs exactly 400 tokens
MAX_TOKENS = 390


@pytest.fixture
def loop():
    # The run reads its input and syncs its checkpoint in worker threads (aiofiles) and aiohttp
    # resolves the host in one: time must not jump while they work. Loopback socket data is ready
    # for the reader once the writer's ``send`` returns, so sockets need no such care (runs give
    # the same times with an ``autojump_threshold`` of half a millisecond).
    with virtual_loop(wait_for_threads=True) as loop:
        yield loop


def chat_job(i: int, model: str = "gpt-4o-mini") -> dict:
    return {"custom_id": f"chat-{model}-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}}


def completion_job(i: int, model: str = "gpt-3.5-turbo-instruct") -> dict:
    prompt = f"prompt {i:06d} ".ljust(PROMPT_CHARS, ".")
    return {"custom_id": f"cmpl-{model}-{i}", "method": "POST", "url": "/v1/completions",
            "body": {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS}}


def assert_each_job_got_its_own_answer(jobs: list[dict], out: Path) -> None:
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(records) == len(jobs)
    by_id = {r["custom_id"]: r for r in records}
    for job in jobs:
        record = by_id[job["custom_id"]]
        assert record["error"] is None, record
        body, answer = job["body"], record["response"]["body"]
        if "messages" in body:
            got, want = answer["choices"][0]["message"]["content"], chat_prompt(body["messages"])
        else:
            got, want = answer["choices"][0]["text"], body["prompt"]
        assert got == completion_text(want, 0)


@dataclass(frozen=True, slots=True)
class Outcome:
    seconds: float  # virtual seconds the run took
    sim: SimStats
    limiters: Limiters  # what paced the run, with what it learned


def run_jobs(loop: VirtualClockLoop, tmp_path: Path, jobs: list[dict], sim_config: SimConfig, *,
             rpm: float | None = None, tpm: float | None = None,
             concurrency: int = DispatchConfig().concurrency,
             later: tuple[float, SimConfig] | None = None, azure: bool = False) -> Outcome:
    """Serve `sim_config` (`later`: switch to another config at that virtual second) and run
    `jobs` through it on `loop`; check every job got its own answer."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs))

    async def switch(simulator: Simulator) -> None:
        if later is not None:
            await asyncio.sleep(later[0])
            simulator.config = later[1]

    async def main() -> Outcome:
        simulator = Simulator(sim_config, clock=loop.time, sleep=asyncio.sleep)
        base_url = await simulator.start()
        switching = asyncio.ensure_future(switch(simulator))
        limiters = Limiters(rpm=rpm, tpm=tpm, burst_s=DEFAULT_BURST_S)
        try:
            started = loop.time()
            stats = await run(
                RunConfig(input=str(source), output=out, rpm=rpm, tpm=tpm, pack=False,
                          endpoint=(Endpoint(base_url=simulator.azure_endpoint, api_key="sk-test",
                                             azure=True, api_version="2024-10-21") if azure
                                    else Endpoint(base_url=base_url, api_key="sk-test")),
                          dispatch=DispatchConfig(concurrency=concurrency)),
                progress=False, handle_signals=False, log=lambda message: None,
                limiters=limiters)
            seconds = loop.time() - started
        finally:
            switching.cancel()
            await simulator.stop()
        assert stats.exit_code() == 0, stats
        return Outcome(seconds, simulator.stats, limiters)

    outcome = loop.run_until_complete(main())
    assert_each_job_got_its_own_answer(jobs, out)
    return outcome


def ideal_seconds(work: float, per_minute: float, latency_s: float = 0.0) -> float:
    rate = per_minute / 60
    return max(0.0, work - rate * SERVER_BURST_S) / rate + latency_s


def assert_paced(outcome: Outcome, ideal: float) -> None:
    sim = outcome.sim
    assert sim.rate_limited < MAX_429_SHARE * sim.requests, (sim.rate_limited, sim.requests)
    assert outcome.seconds <= ideal / MIN_EFFICIENCY, (outcome.seconds, ideal)


# -- one budget, one bound ------------------------------------------------------------------------

RPM = 900
TPM = 240_000


@pytest.mark.parametrize("rpm", [None, 2 * RPM], ids=["discovered", "user-guess-2x-too-high"])
def test_chat_jobs_use_the_whole_rpm(loop, tmp_path, rpm):
    jobs = [chat_job(i) for i in range(480)]  # 32 s of the budget
    outcome = run_jobs(loop, tmp_path, jobs, SimConfig(rpm=RPM, burst_s=SERVER_BURST_S),
                       rpm=rpm, tpm=None if rpm is None else 10**9)
    assert_paced(outcome, ideal_seconds(len(jobs), RPM))
    [(_, limiter)] = outcome.limiters.items()
    assert limiter.rpm == RPM  # the server's number replaced the guess


@pytest.mark.parametrize("tpm", [None, 2 * TPM], ids=["discovered", "user-guess-2x-too-high"])
def test_400_token_completions_use_the_whole_tpm(loop, tmp_path, tpm):
    jobs = [completion_job(i) for i in range(400)]  # 160,000 tokens: 40 s of the budget
    outcome = run_jobs(loop, tmp_path, jobs, SimConfig(tpm=TPM, burst_s=SERVER_BURST_S),
                       rpm=None if tpm is None else 10**6, tpm=tpm)
    assert outcome.sim.tokens_charged == 400 * len(jobs)
    assert_paced(outcome, ideal_seconds(outcome.sim.tokens_charged, TPM))
    [(_, limiter)] = outcome.limiters.items()
    assert limiter.tpm == TPM and limiter.calibration == pytest.approx(1.0, abs=0.005)


# -- calibration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1.3, 0.8])
def test_the_charge_is_calibrated_to_a_server_that_counts_differently(loop, tmp_path, factor):
    jobs = [completion_job(i) for i in range(600)]  # 48 to 78 s of the budget
    outcome = run_jobs(loop, tmp_path, jobs,
                       SimConfig(tpm=TPM, burst_s=SERVER_BURST_S, charge_factor=factor))
    assert outcome.sim.tokens_charged == round(400 * factor) * len(jobs)
    # fewer than 1 % 429s while it learns, and the budget used in full in the server's own units
    assert_paced(outcome, ideal_seconds(outcome.sim.tokens_charged, TPM))
    [(_, limiter)] = outcome.limiters.items()
    assert limiter.calibration == pytest.approx(factor, abs=0.02)


# -- several budgets, latency ---------------------------------------------------------------------


def test_two_models_each_use_their_own_budget_in_full(loop, tmp_path):
    # one model bound by requests (tiny chats), the other by tokens (400-token completions),
    # interleaved in one file; each has its own RPM 900 and TPM 240,000
    chats = [chat_job(i, "chat-model") for i in range(480)]  # 32 s of RPM
    completions = [completion_job(i, "completion-model") for i in range(400)]  # 40 s of TPM
    jobs = [job for pair in zip(chats, completions) for job in pair] + chats[400:]
    outcome = run_jobs(loop, tmp_path, jobs,
                       SimConfig(rpm=RPM, tpm=TPM, burst_s=SERVER_BURST_S))
    ideal = max(ideal_seconds(len(chats), RPM), ideal_seconds(400 * len(completions), TPM))
    assert_paced(outcome, ideal)
    assert {key[1] for key, _ in outcome.limiters.items()} == {"chat-model", "completion-model"}


def test_with_2_s_latency_concurrency_rises_to_keep_the_rpm_used(loop, tmp_path):
    jobs = [chat_job(i) for i in range(480)]
    config = SimConfig(rpm=RPM, burst_s=SERVER_BURST_S, latency_ms=2000)
    outcome = run_jobs(loop, tmp_path, jobs, config, rpm=RPM, tpm=10**9)
    # the server answers 15 requests a second, each 2 s later: 30 must be in flight at once
    assert outcome.sim.max_in_flight >= 30
    assert_paced(outcome, ideal_seconds(len(jobs), RPM, latency_s=2.0))


@pytest.mark.slow  # over a second of real time
def test_requests_held_back_by_the_concurrency_cap_do_not_burst_out_into_429s(loop, tmp_path):
    # --concurrency 16 with 2 s answers caps the run at 8 requests a second, below RPM 900; when
    # answers get fast, whatever the limiter admitted meanwhile must not go out in one burst
    jobs = [chat_job(i) for i in range(900)]
    slow = SimConfig(rpm=RPM, burst_s=SERVER_BURST_S, latency_ms=2000)
    outcome = run_jobs(loop, tmp_path, jobs, slow, rpm=RPM, tpm=10**9, concurrency=16,
                       later=(20.0, dataclasses.replace(slow, latency_ms=50)))
    sim = outcome.sim
    assert sim.rate_limited < MAX_429_SHARE * sim.requests, (sim.rate_limited, sim.requests)


def test_azure_without_limits_paces_on_retry_after_and_every_job_succeeds(loop, tmp_path):
    # Azure sends only remaining-* headers: no limit is learned, 429s and their retry-after pace
    jobs = [chat_job(i) for i in range(300)]
    outcome = run_jobs(loop, tmp_path, jobs, SimConfig(rpm=RPM, burst_s=SERVER_BURST_S), azure=True)
    # measured: 0.87 of ideal, 4.5 % 429s (with --rpm/--tpm given, Azure runs like OpenAI)
    assert outcome.seconds <= 1.25 * ideal_seconds(len(jobs), RPM)
    assert outcome.sim.rate_limited < 0.1 * outcome.sim.requests
