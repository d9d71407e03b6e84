"""Virtual time for asyncio tests, in the manner of trio's ``MockClock(autojump_threshold=0)``.

`VirtualClockLoop` is a `SelectorEventLoop` whose `time()` is a number it owns. Whenever no callback
is ready and no file descriptor is ready, time jumps straight to the next scheduled timer instead of
blocking in ``select()``; so ``await asyncio.sleep(450)`` returns at once, with ``loop.time()``
exactly 450 s later, and wake-ups happen in exactly the order real time would produce.

Contract:

* Virtual time starts at ``start`` (default 0.0) and only moves forward, and only when every task
  is blocked: it never moves while a callback is ready to run.
* A jump lands exactly on the earliest timer's deadline (``TimerHandle.when()``), so a sleep of
  ``d`` started at ``t`` wakes with ``loop.time() == t + d`` (float addition, no accumulated drift).
* Real I/O still works: every iteration first polls the selector without blocking (or for up to
  ``autojump_threshold`` real seconds) and delivers ready file descriptors before any jump. With no
  timer at all and nothing ready, the loop blocks in ``select()`` as a normal loop does, so a
  thread's ``call_soon_threadsafe`` or a socket still wakes it.
* ``autojump_threshold`` (real seconds, default 0) is for tests that talk to another *process*: a
  reply that takes real milliseconds would otherwise lose the race against a virtual jump to, say,
  a 600 s request timeout. Within one process leave it at 0.
* ``wait_for_threads=True``: time never jumps while a ``run_in_executor`` call
  (``asyncio.to_thread``, aiofiles, aiohttp's host lookup) is still running; the loop blocks until
  that call ends or real I/O arrives, so no virtual time passes during real work in a thread. Off
  by default: a thread that itself waits on a virtual timer would then never finish.

The loop reads ``self._scheduled`` (the timer heap of `asyncio.BaseEventLoop`, stable since 3.4),
because jumping to ``now + timeout`` would add float error; this is the one private detail used.

Helpers: `run_virtual(coro_or_fn)` runs one coroutine on a fresh virtual loop (like `asyncio.run`);
`virtual_loop()` is a context manager yielding a fresh loop set as the current one.
"""
from __future__ import annotations

import asyncio
import contextlib
import selectors
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

__all__ = ["VirtualClockLoop", "run_virtual", "virtual_loop"]

T = TypeVar("T")


class _JumpingSelector(selectors.BaseSelector):
    """Delegates to a real selector; turns a would-block ``select(timeout)`` into a time jump."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualClockLoop) -> None:
        self._inner = inner
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return self._inner.select(0)
        events = self._inner.select(self._loop.autojump_threshold)
        if events:
            return events
        if timeout is None or self._loop._executor_calls:
            # no timer pending, or a thread is working for the loop: wait for real I/O or for
            # another thread's call_soon_threadsafe (an executor call ending is one)
            return self._inner.select(None)
        self._loop._jump_to_next_timer()
        return []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Any:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever every task is blocked.

    ``start``: the value of ``time()`` before any jump. ``autojump_threshold``: real seconds to wait
    for I/O before jumping (0 = poll without blocking). ``wait_for_threads``: never jump while a
    ``run_in_executor`` call is running. See the module docstring for the contract.
    """

    def __init__(self, *, start: float = 0.0, autojump_threshold: float = 0.0,
                 wait_for_threads: bool = False) -> None:
        self._virtual_now = float(start)
        self.autojump_threshold = float(autojump_threshold)
        self.wait_for_threads = wait_for_threads
        self._executor_calls = 0  # run_in_executor calls not done yet (with wait_for_threads)
        super().__init__(_JumpingSelector(selectors.DefaultSelector(), self))
        if not autojump_threshold >= 0:
            self.close()
            raise ValueError(f"autojump_threshold must be >= 0, got {autojump_threshold!r}")

    def time(self) -> float:
        """Virtual seconds; moves only by jumps to the next timer."""
        return self._virtual_now

    def run_in_executor(self, executor: Any, func: Callable[..., T], *args: Any
                        ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        if self.wait_for_threads:
            self._executor_calls += 1
            future.add_done_callback(self._executor_call_done)
        return future

    def _executor_call_done(self, _future: asyncio.Future[Any]) -> None:
        self._executor_calls -= 1

    def _jump_to_next_timer(self) -> None:
        scheduled = self._scheduled  # BaseEventLoop's heap of TimerHandle; [0] is the earliest
        if scheduled:
            self._virtual_now = max(self._virtual_now, scheduled[0].when())


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


@contextlib.contextmanager
def virtual_loop(*, start: float = 0.0, autojump_threshold: float = 0.0,
                 wait_for_threads: bool = False) -> Iterator[VirtualClockLoop]:
    """Yield a fresh `VirtualClockLoop` installed as the current event loop; on exit cancel what is
    left, shut down async generators and the default executor, and close the loop."""
    loop = VirtualClockLoop(start=start, autojump_threshold=autojump_threshold,
                            wait_for_threads=wait_for_threads)
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def run_virtual(
    coro_or_fn: Awaitable[T] | Callable[[], Awaitable[T]],
    *,
    start: float = 0.0,
    autojump_threshold: float = 0.0,
    wait_for_threads: bool = False,
) -> T:
    """Run a coroutine (or a zero-argument async function) to completion on a fresh virtual loop,
    return its result, and close the loop — `asyncio.run` with virtual time."""
    with virtual_loop(start=start, autojump_threshold=autojump_threshold,
                      wait_for_threads=wait_for_threads) as loop:
        awaitable = coro_or_fn() if callable(coro_or_fn) else coro_or_fn
        return loop.run_until_complete(awaitable)
