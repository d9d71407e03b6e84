"""Issue 13 benchmark: start-up time, and a short TPM-bound run against a minimal client.

    python bench/startup.py [--jobs 200] [--repeat 3] [--source]

Measures, in one run:

* ``runner --help``: wall time of the process (best of ``--repeat``), and ``python -c pass`` for
  the interpreter's own share; then where its imports go (``python -X importtime``, self time
  summed by top-level package, once: importtime's own overhead inflates them);
* a short TPM-bound run: ``--jobs`` completions jobs of 525 tokens each (a 100-character prompt,
  ``max_tokens`` 500) against the simulator holding TPM 300,000 with a 2 s bucket (RPM 10,000, so
  tokens bind), limits given on the command line; wall time of the ``runner run`` process, start-up
  included, against the minimal client below in its own process on the same file and server
  (median of ``--repeat``, a fresh simulator for each run so both start from a full bucket).

Bytecode: by default every process reads bytecode compiled beforehand, as an installed package
has it (pip compiles at install), from a private ``PYTHONPYCACHEPREFIX`` written by one untimed
warm-up round; the source tree is not touched. ``--source`` runs in the environment as it is: in
a source checkout under ``PYTHONDONTWRITEBYTECODE`` runner then compiles each of its modules at
every start (about 0.1 s), which no installed runner does.

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

def bytecode_env(tmp: Path, source: bool) -> dict[str, str]:
    """The environment of every process measured (see the module docstring)."""
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
    if not source:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


def import_breakdown(env: dict[str, str], top: int = 5) -> list[tuple[str, float]]:
    """Self import time of what `import runner.cli.main` (all `runner --help` imports) adds to a
    bare interpreter's start, in ms, summed by top-level package, largest first, then the rest."""
    def self_ms(code: str) -> dict[str, float]:
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, env=env,
                             check=True, capture_output=True, text=True).stderr
        times = {}
        for line in err.splitlines():
            fields = line.removeprefix("import time:").split("|")
            if len(fields) == 3 and fields[0].strip().isdigit():  # not the header
                times[fields[2].strip()] = int(fields[0]) / 1000
        return times

    bare = self_ms("pass")
    by_package: dict[str, float] = {}
    for name, ms in self_ms("import runner.cli.main").items():
        if name not in bare:
            package = name.split(".")[0]
            by_package[package] = by_package.get(package, 0.0) + ms
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    return ranked[:top] + [("other", sum(ms for _, ms in ranked[top:]))]


def timed(argv: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def with_simulator(fn, env: dict | None = None):  # type: ignore[no-untyped-def]
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "runner", "simulate", "--port", str(port),
                            "--rpm", str(SIM_RPM), "--tpm", str(SIM_TPM),
                            "--burst", str(SIM_BURST_S)],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
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
    parser.add_argument("--source", action="store_true",
                        help="no bytecode prepared: the environment as it is (see above)")
    parser.add_argument("--client", nargs=3, metavar=("JOBS", "OUT", "BASE_URL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        jobs, out, base_url = args.client
        asyncio.run(minimal_client(Path(jobs), Path(out), base_url, SIM_TPM))
        return

    with tempfile.TemporaryDirectory() as tmp:
        env = bytecode_env(Path(tmp), args.source)
        jobs = Path(tmp) / "jobs.jsonl"
        write_jobs(jobs, args.jobs)

        def runner_run(url: str, out: Path, source: Path = jobs) -> float:
            return timed([sys.executable, "-m", "runner", "run", str(source), "-o", str(out),
                          "--base-url", url, "--rpm", str(SIM_RPM), "--tpm", str(SIM_TPM),
                          "--no-progress"], env)

        def client_run(url: str, out: Path, source: Path = jobs) -> float:
            return timed([sys.executable, __file__, "--client", str(source), str(out), url], env)

        if not args.source:  # the warm-up round writes the bytecode of every module either loads
            few = Path(tmp) / "few.jsonl"
            write_jobs(few, 5)
            timed([sys.executable, "-m", "runner", "--help"], env)
            with_simulator(lambda url: (runner_run(url, Path(tmp) / "warm-r.jsonl", few),
                                        client_run(url, Path(tmp) / "warm-c.jsonl", few)), env)
        print("bytecode:", "as the environment has it (--source)" if args.source else
              "compiled beforehand, as installed")

        python = min(timed([sys.executable, "-c", "pass"], env) for _ in range(args.repeat))
        helps = min(timed([sys.executable, "-m", "runner", "--help"], env)
                    for _ in range(args.repeat))
        print(f"python -c pass:  {python:.3f} s")
        print(f"runner --help:   {helps:.3f} s (best of {args.repeat})")
        print("  its imports (-X importtime, self ms by package): " + ", ".join(
            f"{name} {ms:.0f}" for name, ms in import_breakdown(env)))

        runner_s, client_s = [], []
        for i in range(args.repeat):
            out_r, out_c = Path(tmp) / f"runner-{i}.jsonl", Path(tmp) / f"client-{i}.jsonl"
            runner_s.append(with_simulator(lambda url: runner_run(url, out_r), env))
            client_s.append(with_simulator(lambda url: client_run(url, out_c), env))
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
