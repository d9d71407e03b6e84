"""What `asyncio_throttle.Throttler` can and cannot do for us, measured against `RateLimiter`.

Scenario: 60 requests at 30 per second, all arriving at t=0; then a TPM-style scenario where one
400-token request arrives first, followed by twenty 10-token requests, against 1000 tokens/s.

Runs on the virtual clock by default (milliseconds of real time, exact numbers). Throttler reads
`time.monotonic()` directly and has no clock parameter, so for the virtual run its module's `time`
is swapped for a shim reading the loop's clock; `--real` runs both on real time instead (about 3 s).

    python bench/throttle_probe.py [--real]
"""
from __future__ import annotations

import argparse
import asyncio
import time
import types
from collections.abc import Awaitable, Callable

import asyncio_throttle.throttler as throttler_module
from asyncio_throttle import Throttler

from runner.clock import run_virtual
from runner.pacing.limiter import RateLimiter

REQUESTS = 60
RATE_PER_S = 30
BIG_TOKENS = 400
SMALL_TOKENS = 10
SMALLS = 20
TOKENS_PER_S = 1000
START_S = 0.005  # "at the start": within 5 ms, so the real-time run counts the same way


class _NoHeaders:
    limit_requests = remaining_requests = reset_requests = None
    limit_tokens = remaining_tokens = reset_tokens = None


class _Counter:
    """Counts how often a limiter goes to sleep (each one is a task wake-up later)."""

    def __init__(self) -> None:
        self.sleeps = 0

    async def sleep(self, delay: float) -> None:
        self.sleeps += 1
        await asyncio.sleep(delay)


def _patch_throttler(counter: _Counter, virtual: bool) -> Callable[[], None]:
    """Count Throttler's polling sleeps; on the virtual clock also make it read loop time."""
    saved = throttler_module.asyncio, throttler_module.time
    throttler_module.asyncio = types.SimpleNamespace(sleep=counter.sleep)
    if virtual:
        throttler_module.time = types.SimpleNamespace(
            monotonic=lambda: asyncio.get_running_loop().time())

    def restore() -> None:
        throttler_module.asyncio, throttler_module.time = saved

    return restore


def _max_in_window(times: list[float], window: float) -> int:
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


async def _admit_all(acquires: list[Callable[[], Awaitable[object]]]) -> list[float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out: list[float] = [0.0] * len(acquires)

    async def one(i: int) -> None:
        await acquires[i]()
        out[i] = loop.time() - t0

    await asyncio.gather(*(one(i) for i in range(len(acquires))))
    return out


async def _pacing(virtual: bool) -> dict[str, dict[str, float]]:
    results = {}
    counter = _Counter()
    restore = _patch_throttler(counter, virtual)
    try:
        throttler = Throttler(rate_limit=RATE_PER_S, period=1.0)
        times = await _admit_all([throttler.acquire] * REQUESTS)
    finally:
        restore()
    results["asyncio-throttle"] = _summarise(times, counter.sleeps)

    counter = _Counter()
    limiter = RateLimiter(rpm=RATE_PER_S * 60, tpm=None, sleep=counter.sleep)  # burst 1 s = 30
    limiter.observe(None, _NoHeaders())
    times = await _admit_all([lambda: limiter.acquire(1)] * REQUESTS)
    results["RateLimiter"] = _summarise(times, counter.sleeps)
    return results


def _summarise(times: list[float], sleeps: int) -> dict[str, float]:
    ordered = sorted(times)
    after_start = [t for t in ordered if t > START_S]
    return {
        "admitted in first 5 ms": sum(1 for t in times if t <= START_S),
        "admitted by t=1.0 s": sum(1 for t in times if t <= 1.0),
        "last admitted at (s)": ordered[-1],
        "max in any 1 s window": _max_in_window(ordered, 1.0),
        "max in 50 ms, after start": _max_in_window(after_start, 0.05) if after_start else 0,
        "sleep calls (wake-ups)": sleeps,
    }


async def _weighted(virtual: bool) -> dict[str, float]:
    """A 400-token request queued first, then 20 small ones. Throttler has no weights: the only
    emulation is 400 unit acquires, which interleave with the small requests' acquires."""
    counter = _Counter()
    restore = _patch_throttler(counter, virtual)
    try:
        throttler = Throttler(rate_limit=TOKENS_PER_S, period=1.0)
        for _ in range(TOKENS_PER_S):  # start with an empty budget, as mid-run
            await throttler.acquire()

        async def big() -> None:
            for _ in range(BIG_TOKENS):
                await throttler.acquire()

        async def small() -> None:
            for _ in range(SMALL_TOKENS):
                await throttler.acquire()

        times = await _admit_all([big] + [small] * SMALLS)
    finally:
        restore()
    result = {"throttle: big admitted at (s)": times[0],
              "throttle: smalls before big": sum(1 for t in times[1:] if t < times[0])}

    limiter = RateLimiter(rpm=60_000, tpm=TOKENS_PER_S * 60)
    await limiter.acquire(TOKENS_PER_S)  # empty budget
    times = await _admit_all([lambda: limiter.acquire(BIG_TOKENS)]
                             + [lambda: limiter.acquire(SMALL_TOKENS)] * SMALLS)
    result["RateLimiter: big admitted at (s)"] = times[0]
    result["RateLimiter: smalls before big"] = sum(1 for t in times[1:] if t < times[0])
    return result


def _print_table(pacing: dict[str, dict[str, float]], weighted: dict[str, float]) -> None:
    names = list(pacing)
    rows = list(pacing[names[0]])
    width = max(len(r) for r in rows) + 2
    print(f"{REQUESTS} requests at {RATE_PER_S}/s, all arriving at t=0")
    print(f"{'':{width}}" + "".join(f"{n:>18}" for n in names))
    for row in rows:
        print(f"{row:{width}}" + "".join(f"{pacing[n][row]:>18.6g}" for n in names))
    print()
    print(f"weighted: one {BIG_TOKENS}-token request queued first, then {SMALLS} x {SMALL_TOKENS} "
          f"tokens, {TOKENS_PER_S} tokens/s, budget empty at start")
    for key, value in weighted.items():
        print(f"  {key:38}{value:>10.4f}".rstrip("0").rstrip("."))


async def _main(virtual: bool) -> None:
    _print_table(await _pacing(virtual), await _weighted(virtual))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="run on real time (about 3 s)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.real:
        asyncio.run(_main(virtual=False))
    else:
        run_virtual(_main(virtual=True))
    print(f"\n({'real' if args.real else 'virtual'} clock; {time.perf_counter() - started:.2f} s "
          "of real time)")


if __name__ == "__main__":
    main()
