"""examples/shards/run-shards.sh as a user runs it: N shards of one job file on this machine
sharing a Redis it starts itself (with the password the URL names), against the simulated API,
then merged: every job exactly once; rerun, nothing is sent again."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.servers import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "shards" / "run-shards.sh"


@pytest.mark.slow
def test_run_shards_runs_each_job_once_sharing_a_redis_it_starts(tmp_path):
    jobs = [{"custom_id": f"j{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}}
            for i in range(30)]
    (tmp_path / "big.jsonl").write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    sim = subprocess.Popen([sys.executable, "-m", "runner", "simulate", "--host", "127.0.0.1",
                            "--port", str(free_port()), "--rpm", "600"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    redis_port = free_port()
    bin_dir = str(Path(redis_server_binary()).parent)
    env = {**os.environ, "OPENAI_API_KEY": "sk-shards", "PYTHONPATH": str(ROOT),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), bin_dir, os.environ["PATH"]]),
           "RUNNER_REDIS_URL": f"redis://:s3cret@127.0.0.1:{redis_port}/0"}
    try:
        env["OPENAI_BASE_URL"] = sim.stdout.readline().strip()
        for _ in range(2):  # the second run resumes: nothing left to send
            done = subprocess.run(["bash", str(SCRIPT), "big.jsonl", "3"], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        subprocess.run([str(Path(bin_dir) / "redis-cli"), "-p", str(redis_port), "-a", "s3cret",
                        "--no-auth-warning", "shutdown", "nosave"], capture_output=True)
    records = [orjson.loads(line) for line in (tmp_path / "big.results.jsonl").read_bytes().splitlines()]
    assert sorted(r["custom_id"] for r in records) == sorted(j["custom_id"] for j in jobs)
    assert all(r["error"] is None for r in records)
    shards = [tmp_path / f"big.shard-{k}-of-3.jsonl" for k in (1, 2, 3)]
    assert sum(len(p.read_bytes().splitlines()) for p in shards) == len(jobs)  # none sent twice
