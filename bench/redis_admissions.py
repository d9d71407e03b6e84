"""Admissions per second per process through a shared budget in a local Redis
(`runner.pacing.redis_state`): one limiter with limits far above what it can admit, so every
admission is a round trip and nothing waits. Starts its own redis-server (tests/servers.py).

    python bench/redis_admissions.py [--seconds 3] [--callers 1]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.pacing.limiter import RateLimiter  # noqa: E402
from runner.pacing.redis_state import RedisBudgets  # noqa: E402
from tests.servers import RedisServer  # noqa: E402


async def measure(url: str, seconds: float, callers: int) -> tuple[int, int]:
    budgets = RedisBudgets(url, "sk-bench-key-0123456789")
    await budgets.connect()
    state = budgets.state("http://bench/v1", "m")
    limiter = RateLimiter(rpm=1e9, tpm=1e12, state=state)
    admitted = 0
    end = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal admitted
        while time.monotonic() < end:
            await limiter.acquire(100)
            admitted += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    await budgets.close()
    return admitted, state.round_trips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--callers", type=int, default=1)
    args = parser.parse_args()
    with RedisServer() as server:
        admitted, trips = asyncio.run(measure(server.url, args.seconds, args.callers))
    print(f"{admitted / args.seconds:,.0f} admissions/s per process, "
          f"{trips / max(admitted, 1):.2f} round trips per admission")


if __name__ == "__main__":
    main()
