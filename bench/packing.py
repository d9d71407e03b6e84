"""Issue 5 benchmark: jobs per request slot with packing, on virtual time.

    python bench/packing.py

The simulator and the runner run in one process on `runner.clock`'s virtual-time loop over real
loopback sockets, so a run paced at RPM 30 for many virtual minutes takes seconds and its timing is
set by the rate limit alone, not by this machine's load. Jobs per request slot = correct jobs per
second / (RPM / 60). Baseline: the same runner with packs fixed at 20 jobs.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import orjson

import jobs.packing
from runner.clock import run_virtual
from runner.live.dispatch import DispatchConfig
from runner.api.endpoint import Endpoint
from runner.live.run import RunConfig, run
from runner.simulator.answers import completion_text, embedding_vector
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator

RPM, TPM, BURST_S, LATENCY_MS = 30, 10_000_000, 2.0, 500
POISON = "<<poison>>"


def write(path: Path, n: int, kind: str, poison_at: int | None = None) -> list[dict]:
    jobs = []
    for i in range(n):
        text = f"tiny prompt {i}" + (f" {POISON}" if i == poison_at else "")
        if kind == "completions":
            job = {"custom_id": f"j{i}", "method": "POST", "url": "/v1/completions",
                   "body": {"model": "gpt-3.5-turbo-instruct", "prompt": text, "max_tokens": 8}}
        else:
            job = {"custom_id": f"j{i}", "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": "text-embedding-3-small", "input": text}}
        jobs.append(job)
    path.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    return jobs


def correct(job: dict, record: dict) -> bool:
    if record["error"] is not None:
        return False
    body = record["response"]["body"]
    if job["url"] == "/v1/embeddings":
        return [d["embedding"] for d in body["data"]] == [embedding_vector(job["body"]["input"])]
    return [c["text"] for c in body["choices"]] == [completion_text(job["body"]["prompt"], 0)]


async def one_run(tmp: Path, n: int, kind: str, poison_at: int | None) -> dict:
    jobs = write(tmp / "in.jsonl", n, kind, poison_at)
    out = tmp / "out.jsonl"
    out.unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    sim = Simulator(SimConfig(rpm=RPM, tpm=TPM, burst_s=BURST_S, latency_ms=LATENCY_MS,
                              poison=POISON, seed=1), clock=loop.time)
    async with sim:
        start = loop.time()
        stats = await run(RunConfig(input=str(tmp / "in.jsonl"), output=out,
                                    endpoint=Endpoint(base_url=sim.base_url, api_key="k"),
                                    rpm=RPM, tpm=TPM, dispatch=DispatchConfig(max_attempts=10)),
                          progress=False, handle_signals=False, log=lambda m: None)
        wall = loop.time() - start
    records = {r["custom_id"]: r for r in map(orjson.loads, out.read_bytes().splitlines())}
    good = sum(correct(j, records[j["custom_id"]]) for j in jobs)
    return {"jobs": n, "correct": good, "requests": stats.requests, "wall": wall,
            "bisect": stats.bisect_requests, "429s": stats.rate_limited,
            "per_slot": good / wall / (RPM / 60)}


def measure(n: int, kind: str, fixed: int | None, poison_at: int | None = None) -> dict:
    original = jobs.packing.pack_size
    if fixed is not None:
        jobs.packing.pack_size = lambda charge, budget: fixed  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return run_virtual(one_run(Path(tmp), n, kind, poison_at), autojump_threshold=0.002)
    finally:
        jobs.packing.pack_size = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=20_000, help="jobs in the steady-state runs")
    args = parser.parse_args()
    rows = [
        ("completions", 1_000, None, None, "packing (ours)"),
        ("completions", 1_000, 20, None, "fixed packs of 20"),
        ("completions", args.large, None, None, "packing (ours)"),
        ("completions", args.large, 20, None, "fixed packs of 20"),
        ("embeddings", 1_000, None, None, "packing (ours)"),
        ("embeddings", args.large, None, None, "packing (ours)"),
        ("completions", 1_000, None, 500, "packing, 1 poisoned prompt"),
    ]
    print(f"RPM {RPM}, TPM {TPM:,}, burst {BURST_S:g} s, {LATENCY_MS} ms latency, virtual time\n")
    print("| endpoint | jobs | packer | correct | requests | jobs/request | virtual wall s | jobs per request slot | bisect requests | 429s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, n, fixed, poison_at, label in rows:
        r = measure(n, kind, fixed, poison_at)
        print(f"| {kind} | {n:,} | {label} | {r['correct']:,} | {r['requests']:,} | "
              f"{r['correct'] / max(1, r['requests'] - r['bisect']):,.0f} | {r['wall']:,.1f} | "
              f"{r['per_slot']:,.0f} | {r['bisect']} | {r['429s']} |", flush=True)


if __name__ == "__main__":
    main()
