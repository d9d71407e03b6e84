"""`runner run --via batch` as a user runs it: the real command line in subprocesses against the
simulator's Batch API (marked slow: real time), SIGKILL at random moments, then cron-style
`--no-wait` runs until the work is done."""
from __future__ import annotations

import random
import signal
import time

import orjson
import pytest

from runner.simulator.batches import BatchConfig
from runner.simulator.server import SimConfig, Simulator, run_in_thread
from tests.test_e2e import assert_exactly_once, cli, finish, read_results, write_jobs


@pytest.mark.slow
def test_sigkill_three_times_across_submit_poll_and_collect_then_no_wait_runs_finish_it(tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    rng = random.Random(2027)
    sim = Simulator(SimConfig(fault_rate=0.05, faults=("500", "503"), seed=9),
                    batch=BatchConfig(lines_per_s=150, validate_s=0.3, finalize_s=0.2))
    with run_in_thread(simulator=sim) as base_url:
        args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--via", "batch",
                "--base-url", base_url, "--poll-every", "0.2", "--batch-max-requests", "20",
                "--max-attempts", "10", "--no-progress"]
        for _ in range(3):
            proc = cli(*args)
            time.sleep(rng.uniform(0.3, 2.0))
            assert proc.poll() is None, finish(proc)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        codes = []
        for _ in range(60):  # cron, every few seconds here
            code, _, err = finish(cli(*args, "--no-wait"))
            codes.append(code)
            if code != 4:
                break
            time.sleep(0.5)
        batches = sim.batches.stats
    assert codes[-1] == 0, err
    assert 4 in codes or len(codes) == 1
    records = read_results(out)
    assert len(records) == len(jobs)
    assert_exactly_once(jobs, records)
    twice = {cid: ids for cid, ids in batches.succeeded.items() if len(ids) > 1}
    assert not twice  # no job answered by two batches
    state = [orjson.loads(x) for x in (tmp_path / "out.jsonl.batches").read_bytes().splitlines()]
    assert b"sk-test-key" not in (tmp_path / "out.jsonl.batches").read_bytes()
    assert {e["event"] for e in state} >= {"run", "planned", "uploaded", "created", "closed"}
