"""Issue 11 benchmark: a 10,000-job file through `--via batch` on the simulator's Batch API.

    python bench/batch.py                       # 10,000 jobs, default and small batch files
    python bench/batch.py --jobs 2000 --max-requests 500

The simulator and the runner share one process on `runner.clock`'s virtual-time loop over real
loopback sockets, so the provider's hours (here: validating 30 s, 50 lines a second, finalizing
30 s per batch) pass in virtual time while every byte still goes through the Files and Batches
API. Reported per configuration: real wall time (what runner itself costs: reading, splitting,
uploading, collecting, fsync), virtual time (what the provider took), batches, lines per batch,
jobs per line (packing), 429/5xx-free correctness, and the cost next to the same file live, both
from `runner estimate` (list prices; the Batch API at half of them).
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import orjson

from runner.api.endpoint import Endpoint
from runner.report.batches import batch_files
from runner.report.prices import batch_price_table
from runner.batch.run import BatchRunConfig, run_batch
from runner.clock import VirtualClockLoop
from runner.report.estimate import estimate_file
from runner.report.prices import load_prices
from runner.simulator.batches import BatchConfig
from runner.simulator.answers import chat_prompt, completion_text, embedding_vector
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator

PROVIDER = BatchConfig(lines_per_s=50, validate_s=30, finalize_s=30)


def write(path: Path, n: int) -> list[dict]:
    jobs = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            job = {"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "gpt-4o-mini", "max_tokens": 50,
                            "messages": [{"role": "user", "content": f"Summarise item {i} in a line."}]}}
        elif kind == 1:
            job = {"custom_id": f"cmpl-{i}", "method": "POST", "url": "/v1/completions",
                   "body": {"model": "gpt-3.5-turbo-instruct", "prompt": f"Item {i}:", "max_tokens": 20}}
        else:
            job = {"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": "text-embedding-3-small", "input": f"item {i}"}}
        jobs.append(job)
    path.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    return jobs


def correct(job: dict, record: dict) -> bool:
    if record["error"] is not None:
        return False
    body = record["response"]["body"]
    if job["url"] == "/v1/embeddings":
        return body["data"][0]["embedding"] == embedding_vector(job["body"]["input"])
    if job["url"] == "/v1/completions":
        return body["choices"][0]["text"] == completion_text(job["body"]["prompt"], 0)
    return body["choices"][0]["message"]["content"] == completion_text(
        chat_prompt(job["body"]["messages"]), 0)


def one(jobs_path: Path, jobs: list[dict], max_requests: int | None, pack: bool) -> dict:
    out = jobs_path.with_name(f"out-{max_requests}-{pack}.jsonl")
    loop = VirtualClockLoop(wait_for_threads=True)
    asyncio.set_event_loop(loop)

    async def main():
        async with Simulator(SimConfig(), clock=loop.time, batch=PROVIDER) as sim:
            config = BatchRunConfig(input=str(jobs_path), output=out, max_requests=max_requests,
                                    endpoint=Endpoint(base_url=sim.base_url, api_key="sk-bench"),
                                    pack=pack, poll_every=60.0)
            started = loop.time()
            stats = await run_batch(config, progress=False, handle_signals=False, log=lambda m: None)
            return stats, loop.time() - started, sim.batches.stats

    real = time.perf_counter()
    try:
        stats, virtual, provider = loop.run_until_complete(main())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    real = time.perf_counter() - real
    records = {r["custom_id"]: r for r in map(orjson.loads, out.read_bytes().splitlines())}
    ok = sum(correct(j, records[j["custom_id"]]) for j in jobs if j["custom_id"] in records)
    return {"max_requests": max_requests or 50_000, "pack": pack, "exit": stats.exit_code(),
            "correct": ok, "batches": provider.created, "lines": stats.batch_lines,
            "lines_per_batch": stats.batch_lines / max(1, provider.created),
            "jobs_per_line": len(jobs) / max(1, stats.batch_lines),
            "real_s": real, "virtual_min": virtual / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--max-requests", type=int, default=1000,
                        help="the small-file configuration's lines per batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.jsonl"
        jobs = write(path, args.jobs)
        prices = load_prices()
        live = estimate_file(str(path), rpm=None, tpm=None, prices=prices)
        batch = estimate_file(str(path), rpm=None, tpm=None, prices=batch_price_table(prices))
        print(f"{args.jobs:,} jobs (chat, completions, embeddings in thirds); provider: validating "
              f"{PROVIDER.validate_s:g} s, {PROVIDER.lines_per_s:g} lines/s, finalizing "
              f"{PROVIDER.finalize_s:g} s per batch")
        print(f"cost (runner estimate, upper bound): live ${live.cost:.4f}, via batch "
              f"${batch.cost:.4f} ({batch.cost / live.cost:.0%}); batch files at 50,000 lines: "
              f"{batch_files(batch, 50_000)}, at {args.max_requests:,}: "
              f"{batch_files(batch, args.max_requests)}")
        print(f"{'lines/file':>10} {'pack':>5} {'exit':>4} {'correct':>8} {'batches':>7} "
              f"{'lines':>6} {'lines/batch':>11} {'jobs/line':>9} {'real s':>7} {'provider min':>12}")
        for max_requests, pack in ((None, True), (None, False), (args.max_requests, True),
                                   (args.max_requests, False)):
            r = one(path, jobs, max_requests, pack)
            print(f"{r['max_requests']:>10,} {'yes' if r['pack'] else 'no':>5} {r['exit']:>4} "
                  f"{r['correct']:>8,} {r['batches']:>7} {r['lines']:>6,} "
                  f"{r['lines_per_batch']:>11,.0f} {r['jobs_per_line']:>9.1f} {r['real_s']:>7.1f} "
                  f"{r['virtual_min']:>12.1f}")


if __name__ == "__main__":
    main()
