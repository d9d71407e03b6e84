"""Issue 13 benchmark: start-up time, and a short TPM-bound run against a minimal client.

    python bench/startup.py [--jobs 200] [--repeat 3]

Measures, in one run:

* ``runner --help``: wall time of the process (best of ``--repeat``), and ``python -c pass`` for
  the interpreter's own share;
* a short TPM-bound run: ``--jobs`` completions jobs of 525 tokens each (a 100-character prompt,
  ``max_tokens`` 500) against the simulator holding TPM 300,000 with a 2 s bucket (RPM 10,000, so
  tokens bind), limits given on the command line; wall time of the ``runner run`` process, start-up
  included, against the minimal client below in its own process on the same file and server
  (median of ``--repeat``, a fresh simulator for each run so both start from a full bucket).

The minimal client is the plain script a careful user writes: one token bucket of one second of
the limit, starting full, refilled continuously; a request goes when the bucket holds its tokens;
a 429 is retried after its ``retry-after``. It reads no other header and packs nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
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


SIM_RPM, SIM_TPM, SIM_BURST_S = 10_000, 300_000, 2.0
PROMPT_CHARS, MAX_TOKENS = 100, 500  # 25 + 500 = 525 tokens charged per job
CONCURRENCY = 64


def write_jobs(path: Path, n: int) -> None:
    with open(path, "wb") as f:
        for i in range(n):
            prompt = f"question {i}: ".ljust(PROMPT_CHARS, "x")
            f.write(orjson.dumps({"custom_id": f"job-{i}", "method": "POST",
                                  "url": "/v1/completions",
                                  "body": {"model": "gpt-3.5-turbo-instruct", "prompt": prompt,
                                           "max_tokens": MAX_TOKENS}}) + b"\n")


# -- the minimal client (run in its own process: python bench/startup.py --client ...) ----------

async def minimal_client(jobs: Path, out: Path, base_url: str, tpm: float) -> None:
    rate = tpm / 60.0
    level, last = rate, time.monotonic()  # one second of budget, full at the start
    lines = [orjson.loads(line) for line in jobs.read_bytes().splitlines() if line.strip()]
    queue: asyncio.Queue = asyncio.Queue()
    for job in lines:
        queue.put_nowait(job)
    lock = asyncio.Lock()
    results: list[bytes] = []

    async def take(tokens: int) -> None:
        nonlocal level, last
        async with lock:  # FIFO
            while True:
                now = time.monotonic()
                level, last = min(rate, level + (now - last) * rate), now
                if level >= tokens:
                    level -= tokens
                    return
                await asyncio.sleep((tokens - level) / rate)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            job = queue.get_nowait()
            body = job["body"]
            tokens = -(-len(body["prompt"]) // 4) + body["max_tokens"]
            while True:
                await take(tokens)
                async with session.post(base_url + job["url"].removeprefix("/v1"),
                                        json=body) as resp:
                    data = await resp.read()
                    if resp.status == 429:
                        await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
                        continue
                results.append(orjson.dumps({"custom_id": job["custom_id"],
                                             "response": {"status_code": resp.status,
                                                          "body": orjson.loads(data)}}))
                break

    headers = {"Authorization": "Bearer sk-bench"}
    async with aiohttp.ClientSession(headers=headers) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    out.write_bytes(b"\n".join(results) + b"\n")


# -- the measurement ---------------------------------------------------------------------------

def timed(argv: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def with_simulator(fn):  # type: ignore[no-untyped-def]
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "runner", "simulate", "--port", str(port),
                            "--rpm", str(SIM_RPM), "--tpm", str(SIM_TPM),
                            "--burst", str(SIM_BURST_S)],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert sim.stdout is not None
        sim.stdout.readline()  # the base URL: it is listening
        return fn(f"http://127.0.0.1:{port}/v1")
    finally:
        sim.terminate()
        sim.wait()


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_bytes().splitlines() if b'"status_code":200' in line
               or b'"status_code": 200' in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--client", nargs=3, metavar=("JOBS", "OUT", "BASE_URL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        jobs, out, base_url = args.client
        asyncio.run(minimal_client(Path(jobs), Path(out), base_url, SIM_TPM))
        return

    python = min(timed([sys.executable, "-c", "pass"]) for _ in range(args.repeat))
    helps = min(timed([sys.executable, "-m", "runner", "--help"]) for _ in range(args.repeat))
    print(f"python -c pass:  {python:.3f} s")
    print(f"runner --help:   {helps:.3f} s (best of {args.repeat})")

    env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
    runner_s, client_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.jsonl"
        write_jobs(jobs, args.jobs)
        for i in range(args.repeat):
            out_r, out_c = Path(tmp) / f"runner-{i}.jsonl", Path(tmp) / f"client-{i}.jsonl"
            runner_s.append(with_simulator(lambda url: timed(
                [sys.executable, "-m", "runner", "run", str(jobs), "-o", str(out_r),
                 "--base-url", url, "--rpm", str(SIM_RPM), "--tpm", str(SIM_TPM),
                 "--no-progress"], env)))
            client_s.append(with_simulator(lambda url: timed(
                [sys.executable, __file__, "--client", str(jobs), str(out_c), url])))
            for out in (out_r, out_c):
                if count_lines(out) != args.jobs:
                    raise SystemExit(f"{out.name}: {count_lines(out)} of {args.jobs} succeeded")
    ideal = (args.jobs * (PROMPT_CHARS // 4 + MAX_TOKENS) - SIM_TPM / 60 * SIM_BURST_S) / (SIM_TPM / 60)
    r, c = statistics.median(runner_s), statistics.median(client_s)
    print(f"TPM-bound run, {args.jobs} completions jobs x 525 tokens, simulator TPM {SIM_TPM:,} "
          f"with a {SIM_BURST_S:g} s bucket, limits given (median of {args.repeat}; "
          f"the server allows {ideal:.1f} s):")
    print(f"  runner run:      {r:.2f} s   {[round(x, 2) for x in runner_s]}")
    print(f"  minimal client:  {c:.2f} s   {[round(x, 2) for x in client_s]}")
    print(f"  ratio runner / client: {r / c:.3f}")


if __name__ == "__main__":
    main()
