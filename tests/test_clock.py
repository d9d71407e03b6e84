"""The virtual clock: sleeps take no real time, wake in real-time order, at exact virtual times."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from runner.clock import VirtualClockLoop, run_virtual, virtual_loop


def test_450_virtual_seconds_take_under_one_real_second_and_wake_in_order():
    wakes: list[tuple[str, float]] = []

    async def sleeper(name: str, delays: list[float]) -> None:
        loop = asyncio.get_running_loop()
        for d in delays:
            await asyncio.sleep(d)
            wakes.append((name, loop.time()))

    async def main() -> float:
        await asyncio.gather(
            sleeper("a", [100, 200, 150]),   # 100, 300, 450
            sleeper("b", [50, 60, 40, 300.25]),  # 50, 110, 150, 450.25
            sleeper("c", [449.5]),
            sleeper("d", [0.25, 0.5]),        # 0.25, 0.75
        )  # no two deadlines tie: asyncio orders equal deadlines arbitrarily, as real time would
        return asyncio.get_running_loop().time()

    started = time.perf_counter()
    end = run_virtual(main)
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0
    assert end == 450.25
    assert wakes == [
        ("d", 0.25), ("d", 0.75), ("b", 50.0), ("a", 100.0), ("b", 110.0), ("b", 150.0),
        ("a", 300.0), ("c", 449.5), ("a", 450.0), ("b", 450.25),
    ]


def test_time_starts_at_start_and_does_not_move_while_callbacks_are_ready():
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        seen = [loop.time()]
        for _ in range(100):
            await asyncio.sleep(0)
        seen.append(loop.time())
        await asyncio.sleep(2.5)
        seen.append(loop.time())
        return seen

    assert run_virtual(main(), start=1000.0) == [1000.0, 1000.0, 1002.5]


def test_a_long_sleep_beyond_the_select_cap_jumps_exactly():
    async def main() -> float:
        await asyncio.sleep(3 * 86_400.0)  # asyncio caps select() at 24 h; the jump must not
        return asyncio.get_running_loop().time()

    assert run_virtual(main) == 3 * 86_400.0


def test_timeouts_fire_at_exact_virtual_times():
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), timeout=30)
        t1 = loop.time()
        fut = loop.create_future()
        loop.call_at(42.0, fut.set_result, None)
        await fut
        return t1, loop.time()

    assert run_virtual(main) == (30.0, 42.0)


def test_ready_socket_io_is_delivered_before_jumping():
    async def main() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            ticker = asyncio.ensure_future(asyncio.sleep(100))  # a pending timer to jump to
            await loop.sock_sendall(a, b"ping")
            data = await loop.sock_recv(b, 4)
            now = loop.time()
            ticker.cancel()
            return data, now
        finally:
            a.close()
            b.close()

    assert run_virtual(main) == (b"ping", 0.0)


def test_another_thread_wakes_a_loop_with_no_timers():
    async def main() -> str:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        threading.Timer(0.05, lambda: loop.call_soon_threadsafe(fut.set_result, "woken")).start()
        return await fut

    assert run_virtual(main) == "woken"


def test_virtual_loop_installs_the_loop_and_closes_it():
    with virtual_loop(start=5.0) as loop:
        assert isinstance(loop, VirtualClockLoop)
        assert asyncio.get_event_loop() is loop
        loop.run_until_complete(asyncio.sleep(1))
        assert loop.time() == 6.0
        leftover = loop.create_task(asyncio.sleep(10))
    assert loop.is_closed()
    assert leftover.cancelled()


def test_negative_autojump_threshold_is_rejected():
    with pytest.raises(ValueError):
        VirtualClockLoop(autojump_threshold=-1)


def test_wait_for_threads_keeps_time_still_while_an_executor_call_works():
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        timer = asyncio.ensure_future(asyncio.sleep(10))  # a pending timer to jump to
        await loop.run_in_executor(None, time.sleep, 0.05)  # 50 ms of real work in a thread
        during = loop.time()
        await timer
        return during, loop.time()

    assert run_virtual(main, wait_for_threads=True) == (0.0, 10.0)
    assert run_virtual(main) == (10.0, 10.0)  # by default time jumps while the thread works
