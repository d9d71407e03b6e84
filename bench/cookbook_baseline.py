"""A baseline pacer in the manner of the OpenAI cookbook's ``api_request_parallel_processor.py``,
written for this benchmark: what a careful script without server feedback achieves.

Its pacing, as the cookbook describes it:

* two local counters, requests and tokens, each starting with a whole minute of capacity
  (``rpm`` and ``tpm``) and refilled continuously at ``limit / 60`` per second, never above it;
* a request goes out as soon as both counters hold its cost (one request, its estimated tokens);
* after any 429, nothing new goes out until 15 s after the latest 429 (a global cool-down);
* a failed request is queued for a retry, up to 5 attempts in all; no other backoff.

It reads no rate-limit header and sends no ``retry-after`` back. Token costs come from
`jobs.tokens.rate_limit_charge` (the server's own rule), so the comparison is about pacing alone,
not about estimating. Input is a Batch API job file; output is one Batch API result line per job.

    python bench/cookbook_baseline.py JOBS -o OUT --base-url URL --rpm 900 --tpm 240000 \
        [--time-limit S]

Prints one JSON line of counts (jobs, succeeded, failed, requests, rate_limited, seconds).
``--time-limit`` stops sending after S seconds and waits for the answers on the wire, so a slow run
can be measured on part of its work.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.results import RecordIds, error_record, success_record  # noqa: E402
from jobs.tokens import rate_limit_charge  # noqa: E402

PAUSE_AFTER_RATE_LIMIT_S = 15.0
MAX_ATTEMPTS = 5
LOOP_SLEEP_S = 0.001  # the main loop's tick
MINUTE_S = 60.0


@dataclass(slots=True)
class Tally:
    """What one baseline run did."""

    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    requests: int = 0
    rate_limited: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class _Pending:
    job: dict
    cost: int
    attempts_left: int


class _Capacity:
    """A counter refilled continuously at ``limit / 60`` per second up to ``limit``; starts full."""

    __slots__ = ("limit", "level", "_stamp")

    def __init__(self, limit: float, now: float) -> None:
        self.limit = limit
        self.level = limit
        self._stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self._stamp) * self.limit / MINUTE_S)
        self._stamp = now


async def run_baseline(jobs: list[dict], output: Path, *, base_url: str, api_key: str,
                       rpm: float, tpm: float, max_attempts: int = MAX_ATTEMPTS,
                       time_limit: float = float("inf"),
                       clock: Callable[[], float] | None = None) -> Tally:
    """Send every job in `jobs` paced as described in the module docstring and write its result;
    after `time_limit` seconds send nothing new (jobs not sent then get no result line)."""
    clock = clock or asyncio.get_running_loop().time
    tally = Tally(jobs=len(jobs))
    queue = deque(_Pending(job, rate_limit_charge(job["url"], job["body"]), max_attempts)
                  for job in jobs)
    retries: deque[_Pending] = deque()
    requests, tokens = _Capacity(rpm, clock()), _Capacity(tpm, clock())
    last_rate_limit = -float("inf")
    in_flight: set[asyncio.Task[None]] = set()
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    record_id = RecordIds(os.urandom(8).hex())
    started = clock()

    async def send(session: aiohttp.ClientSession, item: _Pending, sink) -> None:
        nonlocal last_rate_limit
        url = base_url.rstrip("/") + item.job["url"].removeprefix("/v1")
        tally.requests += 1
        try:
            async with session.post(url, data=orjson.dumps(item.job["body"]),
                                    headers=headers) as response:
                status, body = response.status, await response.read()
                request_id = response.headers.get("x-request-id")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            status, body, request_id = None, str(exc).encode(), None
        if status == 200:
            tally.succeeded += 1
            sink(success_record(item.job["custom_id"], orjson.loads(body), record_id=record_id(),
                                request_id=request_id))
            return
        if status == 429:
            tally.rate_limited += 1
            last_rate_limit = clock()
        if item.attempts_left > 0:
            retries.append(item)
            return
        tally.failed += 1
        sink(error_record(item.job["custom_id"], "gave_up", f"status {status}: {body[:200]!r}",
                          record_id=record_id(), status=status, request_id=request_id))

    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    connector = aiohttp.TCPConnector(limit=0)  # the cookbook puts no cap on connections
    with output.open("wb") as out:
        def sink(record: dict) -> None:
            out.write(orjson.dumps(record) + b"\n")

        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            item: _Pending | None = None
            while True:
                now = clock()
                if now - started >= time_limit:
                    queue.clear()
                    retries.clear()
                    item = None
                if item is None:
                    item = retries.popleft() if retries else queue.popleft() if queue else None
                requests.refill(now)
                tokens.refill(now)
                if item is not None and requests.level >= 1 and tokens.level >= item.cost:
                    requests.level -= 1
                    tokens.level -= item.cost
                    item.attempts_left -= 1
                    task = asyncio.create_task(send(session, item, sink))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    item = None
                if item is None and not queue and not retries and not in_flight:
                    break
                await asyncio.sleep(LOOP_SLEEP_S)
                cool_down = min(last_rate_limit + PAUSE_AFTER_RATE_LIMIT_S,
                                started + time_limit) - clock()
                if cool_down > 0:
                    await asyncio.sleep(cool_down)
    tally.seconds = clock() - started
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--rpm", type=float, required=True)
    parser.add_argument("--tpm", type=float, required=True)
    parser.add_argument("--max-attempts", type=int, default=MAX_ATTEMPTS)
    parser.add_argument("--time-limit", type=float, default=float("inf"),
                        help="Send nothing new after this many seconds.")
    args = parser.parse_args()
    jobs = [orjson.loads(line) for line in args.jobs.read_bytes().splitlines() if line.strip()]
    tally = asyncio.run(run_baseline(jobs, args.output, base_url=args.base_url,
                                     api_key=os.environ.get("OPENAI_API_KEY", "sk-bench"),
                                     rpm=args.rpm, tpm=args.tpm, max_attempts=args.max_attempts,
                                     time_limit=args.time_limit))
    print(orjson.dumps(asdict(tally)).decode())


if __name__ == "__main__":
    main()
