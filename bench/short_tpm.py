"""Issue 21 benchmark: short runs bound by tokens per minute, ours against a minimal reference
client in the same run, on our simulator (virtual time) or against llmock (real time).

    python bench/short_tpm.py [--seconds 20] [--latency-ms 500] [--charge-factor 1.05]
    python bench/short_tpm.py --server llmock [--seconds 20] [--latency-ms 500] [--repeat 3]

``--server sim`` (the default): both clients meet the same simulator (a fresh one each), on
`runner.clock`'s virtual-time loop over real loopback sockets: RPM 10,000 and TPM 240,000 per
model, buckets holding a whole minute (as llmock's do), every request charged
`ceil(estimate x charge_factor)` tokens where the estimate is the limiter's own (prompt chars / 4
+ max_tokens): the server counts a little more than the client thinks, as llmock (body bytes / 4)
and OpenAI do. The jobs: completions of a 10-token prompt and max_tokens 390, as many as
`--seconds` of the TPM take at the server's charge.

``--server llmock``: the independent server of the issue (`llmock serve`, PyPI, a test
dependency; `tests/servers.py`), in real time: TPM 240,000 and RPM 10,000 per API key, buckets
full at start and holding a minute, each request charged body bytes // 4 + max_tokens, answers
after ``--latency-ms`` (llmock sleeps before it charges, 429s included). llmock has no
/v1/completions: the jobs are chat completions of a 40-character message and max_tokens 390, as
many as `--seconds` of the TPM take at llmock's charge. One fresh llmock per repetition; the
clients take turns on it, each with its own API key (llmock's buckets are per key) after a
``/_llmock/reset``; ours is ``python -m runner run`` in its own process. A client's time is the
server's (its journal): from its first request's arrival to its last answer's end, so start-up
costs nobody anything; ``start-up s`` and ``exit s`` are what the client's own wall time (its
process's, for ours: llmock's clock is the same monotonic clock) adds before the first request
and after the last answer (ours starts from bytecode, as an installed runner does: an untimed
warm-up run writes it into `PYCACHE`). ``--repeat`` repetitions (the machine is shared and noisy):
each row's median and range, the ratio ours / reference taken within each repetition.

Rows: ``reference`` (below: a 1 s token bucket at the TPM it is told, charging its estimate, the
safe one-second burst and nothing else); with llmock also ``reference, llmock's count`` (the same
client charging each request what llmock charges: body bytes // 4 + max_tokens); ``ours told``
(`--tpm` and `--rpm` given); ``ours learned`` (limits from the headers). Ideal = what a client
with the safe 1 s burst needs: (work - 1 s of budget) / rate + one latency, work in the tokens the
server charged. The figure that matters is ours / reference in the same run, not a bare time.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.tokens import rate_limit_charge
from runner.api.endpoint import Endpoint
from runner.clock import virtual_loop
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator

TPM, RPM = 240_000, 10_000
SERVER_BURST_S = 60.0
SAFE_BURST_S = 1.0  # what the ideal credits at once: the reference's bucket, runner's --burst
PROMPT_CHARS, MAX_TOKENS = 40, 390  # the limiter's estimate: 10 + 390 = 400 tokens
MODEL = "gpt-3.5-turbo-instruct"
CHAT_MODEL = "gpt-4o-mini"  # llmock answers chat, not /v1/completions
CLIENTS = ("reference", "ours told", "ours learned")
EXACT = "reference, llmock's count"  # llmock only: the reference charging what llmock charges
RUN_TIMEOUT_S = 300.0
PYCACHE = Path(tempfile.gettempdir()) / "runner-bench-short-tpm-pycache"  # bytecode of the runs


def jobs_for(seconds: float, factor: float) -> list[dict]:
    charged = math.ceil(400 * factor)
    count = int(seconds * TPM / 60 / charged)
    return [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": MODEL, "prompt": f"prompt {i:06d} ".ljust(PROMPT_CHARS, "."),
                      "max_tokens": MAX_TOKENS}} for i in range(count)]


def llmock_charge(body: dict) -> int:
    """What llmock charges a request against TPM (`llmock.ratelimit.requested_tokens`): its body's
    bytes // 4 (at least 1) + max_tokens; the body as both clients send it (`orjson.dumps`)."""
    return max(1, len(orjson.dumps(body)) // 4) + body["max_tokens"]


def chat_jobs_for(seconds: float) -> list[dict]:
    """Chat jobs of one 40-character message and max_tokens 390 (bodies of equal length), as many
    as `seconds` of the TPM take at llmock's charge."""
    def body(i: int) -> dict:
        return {"model": CHAT_MODEL, "max_tokens": MAX_TOKENS, "messages": [
            {"role": "user", "content": f"prompt {i:06d} ".ljust(PROMPT_CHARS, ".")}]}
    count = int(seconds * TPM / 60 / llmock_charge(body(0)))
    return [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": body(i)} for i in range(count)]


def estimate(body: dict) -> int:
    """The minimal client's estimate: prompt chars / 4 (rounded up) + max_tokens."""
    text = body.get("prompt") or "".join(m["content"] for m in body.get("messages", ()))
    return math.ceil(len(text) / 4) + body["max_tokens"]


async def reference(base_url: str, jobs: list[dict], key: str = "k",
                    charge: Callable[[dict], int] = estimate) -> tuple[float, int]:
    """A minimal paced client: a token bucket of 1 s at the TPM, each request charged
    ``charge(body)`` (by default its estimate: prompt chars / 4 + max_tokens), a 429 waits its
    retry-after. (seconds, 429s)"""
    loop = asyncio.get_running_loop()
    rate, capacity = TPM / 60, TPM / 60 * SAFE_BURST_S
    level, updated, refused = capacity, loop.time(), 0
    lock = asyncio.Lock()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

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
        url = base_url + job["url"].removeprefix("/v1")
        await take(charge(body))
        while True:
            async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
                await response.read()
                if response.status != 429:
                    assert response.status == 200, response.status
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


def on_simulator(args: argparse.Namespace) -> None:
    jobs = jobs_for(args.seconds, args.charge_factor)
    work = len(jobs) * math.ceil(400 * args.charge_factor)
    rate = TPM / 60
    ideal = (work - rate * SAFE_BURST_S) / rate + args.latency_ms / 1000
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CLIENTS:
            with virtual_loop(wait_for_threads=True) as loop:
                async def go(name: str = name) -> tuple[float, int]:
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


# -- against llmock, in real time --------------------------------------------------------------

def run_ours_cli(base_url: str, key: str, source: Path, folder: Path, told: bool) -> dict:
    """`python -m runner run` on `source` in its own process; its summary (`--summary-json`)."""
    name = "told" if told else "learned"
    summary = folder / f"summary-{name}.json"
    command = [sys.executable, "-m", "runner", "run", str(source), "-o",
               str(folder / f"out-{name}.jsonl"), "--base-url", base_url, "--no-progress",
               "--summary-json", str(summary)]
    if told:
        command += ["--tpm", str(TPM), "--rpm", str(RPM)]
    env = {**os.environ, "OPENAI_API_KEY": key, "PYTHONPYCACHEPREFIX": str(PYCACHE),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # start as an installed runner does: compiled
    done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise SystemExit(f"runner exited {done.returncode}:\n{done.stderr[-2000:]}")
    return orjson.loads(summary.read_bytes())


def served(journal: list[dict], jobs: list[dict]) -> tuple[float, float, int]:
    """(the first chat request's arrival, the last answer's end, 429s), by the server's own
    journal (`time.monotonic()`); checks that every job was answered once with its own body."""
    chat = [r for r in journal if r["path"] == "/v1/chat/completions"]
    answered = [r for r in chat if r["status"] == 200]
    assert len(answered) == len(jobs), (len(answered), len(jobs))
    sent = sorted(orjson.dumps(r["body"]) for r in answered)
    assert sent == sorted(orjson.dumps(job["body"]) for job in jobs), "a body was changed"
    first, last = min(r["started_at"] for r in chat), max(r["ended_at"] for r in chat)
    return first, last, sum(r["status"] == 429 for r in chat)


def on_llmock(args: argparse.Namespace) -> None:
    from tests.servers import Llmock  # the simulator mode needs no llmock

    jobs = chat_jobs_for(args.seconds)
    work = sum(llmock_charge(job["body"]) for job in jobs)
    ours_estimate = sum(rate_limit_charge(job["url"], job["body"]) for job in jobs)
    rate = TPM / 60
    ideal = (work - rate * SAFE_BURST_S) / rate + args.latency_ms / 1000
    runs: list[dict[str, tuple[float, int, float, float, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = folder / "in.jsonl"
        source.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs))
        for repetition in range(args.repeat):
            rows: dict[str, tuple[float, int, float, float, float]] = {}
            with Llmock(rpm=RPM, tpm=TPM, latency_ms=int(args.latency_ms)) as server:
                if repetition == 0:  # untimed: writes the bytecode the timed runs start from
                    warm_up = folder / "warm-up.jsonl"
                    warm_up.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs[:2]))
                    run_ours_cli(server.base_url, "sk-warm-up", warm_up, folder, told=True)
                for name in (CLIENTS[0], EXACT, *CLIENTS[1:]):
                    server.reset()  # a clean journal; the key is new anyway
                    for entry in folder.glob("out-*"):  # no run resumes another's output
                        entry.unlink()
                    key = f"sk-short-tpm-{repetition}-{name.replace(' ', '-').replace(',', '')}"
                    began = time.monotonic()
                    if name == "reference":
                        asyncio.run(reference(server.base_url, jobs, key))
                        charged = sum(estimate(job["body"]) for job in jobs)
                    elif name == EXACT:
                        asyncio.run(reference(server.base_url, jobs, key, charge=llmock_charge))
                        charged = work
                    else:
                        summary = run_ours_cli(server.base_url, key, source, folder,
                                               told=name == "ours told")
                        charged = summary["models"][CHAT_MODEL]["charged_tokens"]
                    ended = time.monotonic()
                    first, last, refused = served(server.requests(), jobs)
                    rows[name] = (last - first, refused, charged / ours_estimate, first - began,
                                  ended - last)
            runs.append(rows)
            print(f"run {repetition + 1}: " + ", ".join(
                f"{name} {seconds:.2f} s ({refused} 429s)" for name, (seconds, refused, *_)
                in rows.items()), file=sys.stderr, flush=True)
    print(f"{len(jobs)} chat jobs; runner's estimate {ours_estimate:,} tokens, llmock charged "
          f"{work:,} ({work / ours_estimate:.3f} x); ideal {ideal:.2f} s (latency "
          f"{args.latency_ms:g} ms); {args.repeat} runs: median (range)")
    print("| client | seconds | of ideal | ours / reference | 429s | charged / estimate "
          "| start-up s | exit s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")

    def spread(values: list[float], digits: int) -> str:
        middle, low, high = (f"{v:.{digits}f}" for v in
                             (statistics.median(values), min(values), max(values)))
        return middle if low == high else f"{middle} ({low}-{high})"

    for name in runs[0]:
        seconds = [rows[name][0] for rows in runs]
        ratios = [rows["reference"][0] / rows[name][0] for rows in runs]
        print(f"| {name} | {spread(seconds, 2)} | {spread([ideal / s for s in seconds], 3)} | "
              f"{spread(ratios, 3)} | {spread([float(rows[name][1]) for rows in runs], 0)} | "
              f"{spread([rows[name][2] for rows in runs], 3)} | "
              f"{spread([rows[name][3] for rows in runs], 2)} | "
              f"{spread([rows[name][4] for rows in runs], 2)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("sim", "llmock"), default="sim")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--charge-factor", type=float, default=1.05,
                        help="the simulator's charge per estimated token (sim only)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (llmock only)")
    args = parser.parse_args()
    if args.server == "llmock":
        on_llmock(args)
    else:
        on_simulator(args)


if __name__ == "__main__":
    main()
