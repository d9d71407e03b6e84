"""`--redis` end to end: runs sharing one budget through a real redis-server against the simulated
API (real time), and the command line's promises about an unreachable Redis."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import orjson
import pytest

from jobs.merge import merge_outputs
from jobs.shard import Shard
from runner.api.endpoint import Endpoint
from runner.live.run import RunConfig, run
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator
from tests.conftest import ROOT, run_offline
from tests.servers import free_port
from tests.test_e2e import write_jobs

pytestmark = pytest.mark.slow  # real time, several seconds, or the CLI in subprocesses

KEY = "sk-proj-SHAREDKEYOFTHEORGANISATION0123456789"


async def test_two_runs_on_one_key_share_the_budget_and_meet_no_storm_of_429s(tmp_path,
                                                                              redis_server):
    # The server holds one second of 2,400 RPM (40 requests); each run alone would pace itself
    # at the whole rate, so together without a shared budget they send twice it.
    async with Simulator(SimConfig(rpm=2400, tpm=10_000_000, burst_s=1.0)) as sim:
        configs = []
        for name in ("a", "b"):
            write_jobs(tmp_path / f"{name}.jsonl", 60, kinds=("chat",), prefix=name)
            configs.append(RunConfig(input=str(tmp_path / f"{name}.jsonl"),
                                     output=tmp_path / f"{name}.out.jsonl",
                                     endpoint=Endpoint(base_url=sim.base_url, api_key=KEY),
                                     redis=redis_server.url))
        stats = await asyncio.gather(*(run(config, progress=False, handle_signals=False,
                                           log=lambda m: None) for config in configs))
    assert [s.exit_code() for s in stats] == [0, 0]
    assert sim.stats.rate_limited <= 3, sim.stats.by_status


def test_an_unreachable_redis_exits_2_naming_the_url_without_its_password(tmp_path):
    write_jobs(tmp_path / "in.jsonl", 2)
    url = f"redis://runner:hunter2-pw@127.0.0.1:{free_port()}/0"
    for args, env in ((["--redis", url], {}), ([], {"RUNNER_REDIS_URL": url})):
        proc = run_offline(str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), *args,
                           stdin_path=tmp_path / "in.jsonl", env=env)
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.decode()
        assert "hunter2" not in err and "redis://runner:***@127.0.0.1:" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_the_redis_password_is_not_in_the_help(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner", "run", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RUNNER_REDIS_URL": "redis://:hunter2-pw@h:1/0"})
    assert proc.returncode == 0 and "--redis" in proc.stdout
    assert "hunter2" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("option", ["--redis-timeout"])
def test_redis_timeout_must_be_positive(tmp_path, option):
    write_jobs(tmp_path / "in.jsonl", 1)
    proc = run_offline(str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), option, "0",
                       stdin_path=tmp_path / "in.jsonl")
    assert proc.returncode == 2


async def test_redis_lost_mid_run_stops_it_resumably_after_the_timeout(tmp_path, redis_server):
    write_jobs(tmp_path / "in.jsonl", 200, kinds=("chat",))
    async with Simulator(SimConfig(rpm=1200, tpm=10_000_000, burst_s=1.0)) as sim:
        config = RunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                           endpoint=Endpoint(base_url=sim.base_url, api_key=KEY),
                           redis=redis_server.url, redis_timeout=0.5)
        running = asyncio.ensure_future(run(config, progress=False, handle_signals=False,
                                            log=lambda m: None))
        await asyncio.sleep(1.0)
        redis_server.stop()
        stopped_at = sim.stats.requests
        stats = await asyncio.wait_for(running, 10.0)
    assert stats.exit_code() == 3
    assert "Redis" in stats.stop_reason and "s3cret" not in stats.stop_reason
    assert sim.stats.requests <= stopped_at + 1  # nothing sent once Redis was gone
    assert 0 < (tmp_path / "out.jsonl").read_bytes().count(b"\n") < 200  # what came back is kept


async def test_three_shards_sharing_redis_then_merge_run_every_job_exactly_once(tmp_path,
                                                                               redis_server):
    write_jobs(tmp_path / "in.jsonl", 90, kinds=("chat",))
    async with Simulator(SimConfig(rpm=6000, tpm=10_000_000, burst_s=1.0)) as sim:
        configs = [RunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / f"{k}.jsonl",
                             endpoint=Endpoint(base_url=sim.base_url, api_key=KEY),
                             redis=redis_server.url, shard=Shard(k, 3)) for k in (1, 2, 3)]
        stats = await asyncio.gather(*(run(config, progress=False, handle_signals=False,
                                           log=lambda m: None) for config in configs))
    assert [s.exit_code() for s in stats] == [0, 0, 0]
    assert sim.stats.requests == 90  # no job sent twice
    counts = [(tmp_path / f"{k}.jsonl").read_bytes().count(b"\n") for k in (1, 2, 3)]
    assert sum(counts) == 90 and min(counts) > 15
    merged = merge_outputs((tmp_path / f"{k}.jsonl").read_bytes().splitlines() for k in (1, 2, 3))
    ids = sorted(orjson.loads(line)["custom_id"] for line in merged)
    jobs = sorted(orjson.loads(line)["custom_id"]
                  for line in (tmp_path / "in.jsonl").read_bytes().splitlines())
    assert ids == jobs


def test_a_bad_shard_is_a_usage_error(tmp_path):
    write_jobs(tmp_path / "in.jsonl", 1)
    proc = run_offline(str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                       "--shard", "4/3", stdin_path=tmp_path / "in.jsonl")
    assert proc.returncode == 2 and "K/N" in proc.stderr.decode()
