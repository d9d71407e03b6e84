"""Adaptive concurrency end to end: the runner against the simulator on one virtual-time loop.

A local model server that answers one request at a time (`SimConfig(serial=True)`) must not be
flooded into timeouts and re-sends with the default `--concurrency`; a server whose answers are slow
but parallel must still get many requests at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from runner.api.endpoint import Endpoint
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.report.stats import RunStats
from runner.simulator.config import SimConfig, SimStats
from runner.simulator.server import Simulator
from tests.test_pacing import assert_each_job_got_its_own_answer, chat_job

from runner.clock import VirtualClockLoop

LOCAL_SERVER = SimConfig(serial=True, latency_ms=7000)  # 7 s per answer, one at a time
JOBS = 40
MAX_REQUESTS_PER_JOB = 1.1
MAX_SLOWDOWN = 1.1  # against the same run with --concurrency 1




@dataclass(frozen=True, slots=True)
class Outcome:
    seconds: float  # virtual seconds the run took
    stats: RunStats
    sim: SimStats


def run_jobs(loop: VirtualClockLoop, tmp_path: Path, jobs: list[dict], sim_config: SimConfig, *,
             concurrency: int = DispatchConfig().concurrency) -> Outcome:
    """Run `jobs` against `sim_config` with the default read timeout (120 s), no limits given."""
    source, out = tmp_path / f"in-{concurrency}.jsonl", tmp_path / f"out-{concurrency}.jsonl"
    source.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs))

    async def main() -> Outcome:
        async with Simulator(sim_config, clock=loop.time) as simulator:
            started = loop.time()
            stats = await run(
                RunConfig(input=str(source), output=out, pack=False,
                          endpoint=Endpoint(base_url=simulator.base_url, api_key="sk-test"),
                          dispatch=DispatchConfig(concurrency=concurrency)),
                progress=False, handle_signals=False, log=lambda message: None)
            seconds = loop.time() - started
        assert stats.exit_code() == 0, stats
        return Outcome(seconds, stats, simulator.stats)

    outcome = loop.run_until_complete(main())
    assert_each_job_got_its_own_answer(jobs, out)
    return outcome


def test_a_one_at_a_time_server_gets_each_job_once_as_fast_as_with_concurrency_1(loop, tmp_path):
    jobs = [chat_job(i) for i in range(JOBS)]
    adaptive = run_jobs(loop, tmp_path, jobs, LOCAL_SERVER)
    one = run_jobs(loop, tmp_path, jobs, LOCAL_SERVER, concurrency=1)
    # measured: 40 requests for 40 jobs, no timeout, no work done for nobody; 285.6 s either way
    assert adaptive.sim.requests <= MAX_REQUESTS_PER_JOB * JOBS
    assert adaptive.stats.requests <= MAX_REQUESTS_PER_JOB * JOBS
    assert adaptive.sim.abandoned == 0 and adaptive.stats.retries == 0
    assert adaptive.seconds <= MAX_SLOWDOWN * one.seconds, (adaptive.seconds, one.seconds)
    assert adaptive.sim.max_in_flight <= 8  # measured: 6 (slow start 4, +1 per answer, then shrinks)


def test_a_server_slow_but_parallel_still_gets_many_requests_at_once(loop, tmp_path):
    # 7 s answers, all served at once, no limits announced: latency is high but flat, not a queue
    jobs = [chat_job(i) for i in range(200)]
    outcome = run_jobs(loop, tmp_path, jobs, SimConfig(latency_ms=7000))
    # measured: 101 at once (slow start: 4, 8, ... per 7 s round trip, after the probe), 50.5 s
    assert outcome.sim.max_in_flight >= 64
    assert outcome.stats.requests == len(jobs)
