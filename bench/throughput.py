"""Issue 3 benchmark: peak RSS and jobs/s of `runner run` for many tiny jobs, no rate limits.

    python bench/throughput.py [--jobs 200000] [--concurrency 64]

Runs the simulator in its own process and `runner run` in another, measures the runner's peak RSS
(wait4 rusage of that process alone) and CPU use, and compares with a bare aiohttp client that sends
the same requests with the same concurrency and does nothing else (no parsing, no checkpoint): the
ratio says how much of the achievable rate against this simulator on this machine the runner gets.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jobs(path: Path, n: int) -> None:
    with open(path, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"custom_id": f"job-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": "gpt-4o-mini", "max_tokens": 4,
                                           "messages": [{"role": "user", "content": f"q{i}"}]}}) + b"\n")


def start_simulator(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "runner", "simulate", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # the base URL: it is listening
    return proc


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_runner(jobs: Path, out: Path, base_url: str, concurrency: int, sim_pid: int) -> dict:
    sim_cpu0 = cpu_seconds(sim_pid)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", str(jobs), "-o", str(out),
                             "--base-url", base_url, "--concurrency", str(concurrency), "--no-progress"],
                            cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": "sk-bench"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"runner exited {code}:\n{err}")
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "cpu": usage.ru_utime + usage.ru_stime,
            "sim_cpu": cpu_seconds(sim_pid) - sim_cpu0}


async def bare_client(jobs: Path, base_url: str, concurrency: int) -> float:
    """Send every job's body with `concurrency` workers and read the answers; nothing else."""
    bodies = [orjson.dumps(orjson.loads(line)["body"]) for line in jobs.read_bytes().splitlines()]
    url = base_url + "/chat/completions"
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        it = iter(bodies)

        async def worker() -> None:
            for body in it:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    port = free_port()
    sim = start_simulator(port)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            jobs, out = Path(tmp) / "jobs.jsonl", Path(tmp) / "out.jsonl"
            write_jobs(jobs, args.jobs)
            ours = run_runner(jobs, out, base_url, args.concurrency, sim.pid)
            lines = out.read_bytes().count(b"\n")
            assert lines == args.jobs, f"{lines} result lines for {args.jobs} jobs"
            bare_wall = asyncio.run(bare_client(jobs, base_url, args.concurrency))
    finally:
        sim.terminate()
        sim.wait()
    rate, bare_rate = args.jobs / ours["wall"], args.jobs / bare_wall
    print("| jobs | runner jobs/s | bare client jobs/s | runner / bare | runner peak RSS | "
          "runner CPU busy | simulator CPU busy |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.jobs:,} | {rate:,.0f} | {bare_rate:,.0f} | {rate / bare_rate:.2f} | "
          f"{ours['rss_mb']:.0f} MB | {ours['cpu'] / ours['wall']:.0%} | "
          f"{ours['sim_cpu'] / ours['wall']:.0%} |")


if __name__ == "__main__":
    main()
