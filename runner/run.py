"""One run of a job file: lock the output, read the checkpoint, dispatch, leave everything consistent."""
from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from jobs.results import OutputState
from runner import checkpoint as ckpt
from runner.dispatch import DispatchConfig, Dispatcher
from runner.endpoint import Endpoint
from runner.limiter import DEFAULT_BURST_S, Limiters
from runner.progress import LOG_INTERVAL_S, ProgressReporter, describe_limits
from runner.report import RunStats
from runner.source import count_lines, read_items
from runner.transport import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, Send, aiohttp_sender, open_session


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one run needs; built by the CLI (or a test) and passed to `run`."""

    input: str
    output: Path
    endpoint: Endpoint = field(default_factory=Endpoint)
    rpm: float | None = None
    tpm: float | None = None
    burst_s: float = DEFAULT_BURST_S
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    pack: bool = True
    connect_timeout: float = CONNECT_TIMEOUT_S
    read_timeout: float = READ_TIMEOUT_S
    status_interval: float = LOG_INTERVAL_S  # seconds between status lines when not on a terminal


async def run(config: RunConfig, *, send: Send | None = None, console: Console | None = None,
              log: Callable[[str], None] | None = None, progress: bool = True,
              handle_signals: bool = True) -> RunStats:
    """Run the jobs of `config.input` still pending in `config.output`; raises CheckpointError
    when the output is locked by another run or unusable."""
    console = console or Console(stderr=True)
    log = log or (lambda message: console.print(message, highlight=False, markup=False, soft_wrap=True))
    lock = ckpt.RunLock(config.output)
    lock.acquire()
    try:
        state = OutputState()
        loaded = ckpt.load(config.output, state)
        if loaded.torn_bytes:
            log(f"{config.output}: cut off a torn last line ({loaded.torn_bytes} bytes) left by an "
                "interrupted run; its job runs again")
        for number in loaded.bad_lines:
            log(f"{config.output}:{number}: not a result line (skipped; its job runs again)")
        checkpoint = ckpt.Checkpoint(config.output, secrets=(config.endpoint.api_key,))
        checkpoint.open()
        try:
            return await _dispatch(config, state, checkpoint, send, console, log, progress,
                                   handle_signals)
        finally:
            await checkpoint.sync()
            checkpoint.close()
    finally:
        lock.release()


async def _dispatch(config: RunConfig, state: OutputState, checkpoint: ckpt.Checkpoint,
                    send: Send | None, console: Console, log: Callable[[str], None],
                    progress: bool, handle_signals: bool) -> RunStats:
    loop = asyncio.get_running_loop()
    session = None
    if send is None:
        session = open_session(max_connections=config.dispatch.concurrency,
                               connect_timeout=config.connect_timeout,
                               read_timeout=config.read_timeout)
        send = aiohttp_sender(session)
    limiters = Limiters(rpm=config.rpm, tpm=config.tpm, burst_s=config.burst_s)
    dispatcher = Dispatcher(send=send, endpoint=config.endpoint, limiters=limiters,
                            sink=checkpoint.append, config=config.dispatch, pack=config.pack, log=log)
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, dispatcher.stop, f"interrupted by {sig.name}")
    helpers = [asyncio.create_task(checkpoint.run_syncer())]
    try:
        if progress:
            total = count_lines(config.input)
            reporter = ProgressReporter(dispatcher.stats, total, console=console, clock=loop.time,
                                        limits=lambda: describe_limits(limiters), log=log,
                                        log_interval=config.status_interval)
            helpers.append(asyncio.create_task(reporter.run()))
        stats = await dispatcher.run(read_items(config.input), state)
        for model in stats.model_requests:
            limiter = limiters.get(config.endpoint.budget_key(model))
            stats.limits[model] = (limiter.rpm, limiter.tpm)
        return stats
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if session is not None:
            await session.close()
