"""Issue 21 benchmark: short runs bound by tokens per minute, ours against a minimal reference
client in the same run, on virtual time.

    python bench/short_tpm.py [--seconds 20] [--latency-ms 500] [--charge-factor 1.05]

Both clients meet the same simulator (a fresh one each), on `runner.clock`'s virtual-time loop over
real loopback sockets: RPM 10,000 and TPM 240,000 per model, buckets holding a whole minute (as
llmock's do), every request charged `ceil(estimate x charge_factor)` tokens where the estimate is
the limiter's own (prompt chars / 4 + max_tokens): the server counts a little more than the client
thinks, as llmock (body bytes / 4) and OpenAI do. The jobs: completions of a 10-token prompt and
max_tokens 390, as many as `--seconds` of the TPM take at the server's charge.

Rows: ``reference`` (below: a 1 s token bucket at the TPM it is told, charging its estimate, the
safe one-second burst and nothing else); ``ours told`` (`--tpm` and `--rpm` given); ``ours
learned`` (limits from the headers). Ideal = what a client with the safe 1 s burst needs: (work -
1 s of budget) / rate + one latency, work in the tokens the server charged. The figure that
matters is ours / reference in the same run, not a bare time.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
from pathlib import Path

import aiohttp
import orjson

from runner.api.endpoint import Endpoint
from runner.clock import virtual_loop
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator

TPM, RPM = 240_000, 10_000
SERVER_BURST_S = 60.0
PROMPT_CHARS, MAX_TOKENS = 40, 390  # the limiter's estimate: 10 + 390 = 400 tokens
MODEL = "gpt-3.5-turbo-instruct"


def jobs_for(seconds: float, factor: float) -> list[dict]:
    charged = math.ceil(400 * factor)
    count = int(seconds * TPM / 60 / charged)
    return [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": MODEL, "prompt": f"prompt {i:06d} ".ljust(PROMPT_CHARS, "."),
                      "max_tokens": MAX_TOKENS}} for i in range(count)]


async def reference(base_url: str, jobs: list[dict]) -> tuple[float, int]:
    """A minimal paced client: a token bucket of 1 s at the TPM, each request charged its estimate
    (prompt chars / 4 + max_tokens), a 429 waits its retry-after. (seconds, 429s)"""
    loop = asyncio.get_running_loop()
    rate, capacity = TPM / 60, TPM / 60 * 1.0
    level, updated, refused = capacity, loop.time(), 0
    lock = asyncio.Lock()

    async def take(amount: float) -> None:
        nonlocal level, updated
        async with lock:
            while True:
                now = loop.time()
                level = min(capacity, level + (now - updated) * rate)
                updated = now
                if level >= amount - 1e-6:  # float residue after an exact jump
                    level -= amount
                    return
                await asyncio.sleep((amount - level) / rate)

    async def one(session: aiohttp.ClientSession, job: dict) -> None:
        nonlocal refused
        body = job["body"]
        await take(math.ceil(len(body["prompt"]) / 4) + body["max_tokens"])
        while True:
            async with session.post(f"{base_url}/completions", json=body,
                                    headers={"Authorization": "Bearer k"}) as response:
                await response.read()
                if response.status != 429:
                    return
                refused += 1
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))

    start = loop.time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(session, job) for job in jobs))
    return loop.time() - start, refused


async def ours(base_url: str, jobs: list[dict], folder: Path, told: bool) -> tuple[float, int]:
    source = folder / f"in-{told}.jsonl"
    source.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs))
    loop = asyncio.get_running_loop()
    start = loop.time()
    stats = await run(RunConfig(input=str(source), output=folder / f"out-{told}.jsonl", pack=False,
                                tpm=TPM if told else None, rpm=RPM if told else None,
                                endpoint=Endpoint(base_url=base_url, api_key="k"),
                                dispatch=DispatchConfig()),
                      progress=False, handle_signals=False, log=lambda m: None)
    assert stats.exit_code() == 0, stats.stop_reason
    return loop.time() - start, stats.rate_limited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--charge-factor", type=float, default=1.05)
    args = parser.parse_args()
    jobs = jobs_for(args.seconds, args.charge_factor)
    work = len(jobs) * math.ceil(400 * args.charge_factor)
    rate = TPM / 60
    ideal = (work - rate * 1.0) / rate + args.latency_ms / 1000
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("reference", "ours told", "ours learned"):
            with virtual_loop(wait_for_threads=True) as loop:
                async def go() -> tuple[float, int]:
                    config = SimConfig(rpm=RPM, tpm=TPM, burst_s=SERVER_BURST_S,
                                       latency_ms=args.latency_ms, charge_factor=args.charge_factor)
                    async with Simulator(config, clock=loop.time) as sim:
                        if name == "reference":
                            return await reference(sim.base_url, jobs)
                        return await ours(sim.base_url, jobs, Path(tmp), name == "ours told")
                rows[name] = loop.run_until_complete(go())
    print(f"{len(jobs)} jobs, {work:,} tokens charged, ideal {ideal:.2f} s "
          f"(latency {args.latency_ms:g} ms, charge factor {args.charge_factor:g})")
    print("| client | seconds | of ideal | ours / reference | 429s |")
    print("|---|---:|---:|---:|---:|")
    for name, (seconds, refused) in rows.items():
        ratio = rows["reference"][0] / seconds
        print(f"| {name} | {seconds:.2f} | {ideal / seconds:.3f} | {ratio:.3f} | {refused} |")


if __name__ == "__main__":
    main()
