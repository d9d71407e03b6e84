"""One run of a job file: lock the output, read the checkpoint, dispatch, leave everything consistent."""
from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from jobs.intake import ChangedPolicy, Intake
from jobs.job import Job
from jobs.reader import BadLine, Duplicate
from jobs.results import OutputState
from jobs.settled import Settled
from jobs.shard import Shard
from runner.files import checkpoint as ckpt
from runner.files import resume_index
from runner.live.dispatch import DispatchConfig, Dispatcher
from runner.api.endpoint import Endpoint
from runner.pacing.limiter import DEFAULT_BURST_S
from runner.pacing.limiters import KEY_BUDGET, Limiters
from runner.pacing.redis_state import DEFAULT_REDIS_TIMEOUT_S, RedisBudgets
from runner.report.log import console_echo, terminal_console
from runner.report.progress import LOG_INTERVAL_S, Eta, ProgressReporter, describe_limits
from runner.report.stats import RunStats
from runner.files.guard import check_output
from runner.files.session import OutputSession, Stop
from runner.files.images import ImageStore, check_uploads, default_images_dir
from runner.files.inputs import ReadMark, count_lines, read_items, read_unsettled, settle_lines
from runner.api.transport import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, Send, SessionSender

if TYPE_CHECKING:
    from rich.console import Console

    from runner.report.metrics import MetricsFile

SNAPSHOT_INTERVAL_S = 10.0  # seconds between partial resume indexes while a run goes
IMAGES_BUDGET = "#images"  # an image lane's budget in Redis: its model's name and this


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one run needs; built by the CLI (or a test) and passed to `run`."""

    input: str
    output: Path
    endpoint: Endpoint = field(default_factory=Endpoint)
    rpm: float | None = None
    tpm: float | None = None
    burst_s: float = DEFAULT_BURST_S
    budget_scope: str = "auto"  # runner.pacing.limiters.BUDGET_SCOPES
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    pack: bool = True
    connect_timeout: float = CONNECT_TIMEOUT_S
    read_timeout: float = READ_TIMEOUT_S
    status_interval: float = LOG_INTERVAL_S  # seconds between status lines when not on a terminal
    ipm: float | None = None  # images per minute, per image model (learned from the server too)
    images_dir: Path | None = None  # where images go (default: beside the output, named after it)
    inline_images: bool = False  # keep b64_json in result lines too
    redis: str | None = None  # budgets shared with every process on this Redis (runner.pacing.redis_state)
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT_S  # a Redis lost longer than this stops the run
    shard: Shard | None = None  # run only the jobs of this shard of the input (--shard K/N)
    prices: Any = None  # a PriceTable: what --max-cost counts with (default: the shipped one)
    index_interval: float = SNAPSHOT_INTERVAL_S  # seconds between partial resume indexes


async def run(config: RunConfig, *, send: Send | None = None, console: Console | None = None,
              log: Callable[[str], None] | None = None, progress: bool = True,
              handle_signals: bool = True, limiters: Limiters | None = None,
              metrics: MetricsFile | None = None) -> RunStats:
    """Run the jobs of `config.input` still pending in `config.output`; raises CheckpointError
    when the output is locked by another run or unusable (`OutputRefused` when it is the input,
    another job file or compressed: then nothing is written, not even the lock file). `limiters`
    paces the run (by default fresh ones from ``config.rpm``, ``config.tpm`` and
    ``config.burst_s``, kept in ``config.redis`` when given: `RedisUnavailable` when it cannot be
    reached); pass them to read what they learned afterwards. `metrics` (--metrics-file) is
    written every `METRICS_INTERVAL_S` while the jobs run."""
    check_output(config.input, config.output)  # first: a refused OUTPUT before Redis is asked
    budgets = None
    if config.redis is not None and limiters is None:
        budgets = RedisBudgets(config.redis, config.endpoint.api_key, timeout_s=config.redis_timeout)
        try:
            await budgets.connect()  # RedisUnavailable: at once, before anything is touched
        except BaseException:
            await budgets.close()
            raise
        follow = config.budget_scope == "auto"
        limiters = Limiters(rpm=config.rpm, tpm=config.tpm, burst_s=config.burst_s,
                            scope=config.budget_scope,
                            states=lambda url, model: budgets.state(url, model, follow_moves=follow))
    try:
        return await _run(config, send, console, log, progress, handle_signals, limiters, budgets,
                          metrics)
    finally:
        if budgets is not None:
            await budgets.close()


async def _run(config: RunConfig, send: Send | None, console: Console | None,
               log: Callable[[str], None] | None, progress: bool, handle_signals: bool,
               limiters: Limiters | None, budgets: RedisBudgets | None,
               metrics: MetricsFile | None = None) -> RunStats:
    console = console if console is not None else terminal_console()
    log = log or console_echo(console)
    async with OutputSession(config.input, config.output, log=log,
                             secrets=(config.endpoint.api_key,),
                             handle_signals=handle_signals) as session:
        stamp = resume_index.InputStamp.of(config.input)  # None: INPUT can have no index
        found = None
        if stamp is not None:
            found = await asyncio.to_thread(resume_index.load, config.output, config.input,
                                            config.shard, retrying=_retrying(config))
        index = found if isinstance(found, resume_index.Index) else None
        marked = None  # a first run's INPUT, read with a mark for its partial indexes
        try:
            state = OutputState()  # left empty when a whole index answers: OUTPUT is not read
            if isinstance(found, resume_index.Partial):
                index = await _settle_partial(config, session, state, found, log)
                if index is None and not session.stop.asked:  # OUTPUT is read whole after all
                    state = OutputState()
                    session.load(state)
            elif index is None:
                session.load(state)
            if session.stop.asked:
                return RunStats(stop_reason=session.stop.reason)
            if index is None:
                index, marked = await _first_reading(config, session, _intake(config, state),
                                                     stamp)
            keeps = stamp is not None and (index is not None or marked is not None) \
                and _snapshots_allowed(config)
            checkpoint = session.open(keeps_partial_index=keeps)
            if stamp is not None:
                checkpoint.hasher = await _output_hasher(checkpoint, index)
            settled = index.settled if index is not None else Settled()
            snapshots = None
            if keeps:
                snapshots = _Snapshots(config, stamp, settled, checkpoint, index=index,
                                       mark=None if marked is None else marked[1])
            stats = None
            try:
                stats = await _dispatch(config, state, checkpoint, send, console, log, progress,
                                        session.stop, limiters, budgets, metrics, settled, index,
                                        snapshots, marked)
            finally:
                if snapshots is not None:  # a save still being written lands first
                    await snapshots.idle()
                appended = checkpoint.written
                problem = await session.finish()
                if problem is not None and stats is not None and stats.stop_reason is None:
                    stats.stop_reason = problem
        finally:
            if index is not None:
                index.close()
            if marked is not None:
                marked[0].close()
        if stamp is not None:
            if index is not None and index.from_check and stats.stop_reason is None \
                    and settled.read_all and index.reread.hexdigest() != index.input_sha256:
                stats.stop_reason = (f"{config.input} changed while this run read it (the jobs "
                                     "it had checked were not read again): run again to check "
                                     "every job")
                snapshots = None
            # a run stopped early leaves jobs it had started with their old lines in OUTPUT (a
            # kept failure retried, a changed job rerun): their states are not PENDING, nor known
            finished = problem is None and stats.stop_reason is None
            await _save_index(config, stamp, index, settled, checkpoint, appended,
                              finished=finished, log=log, snapshots=snapshots)
        return stats


def _retrying(config: RunConfig) -> bool:
    """Whether this run sends kept failures again (--retry-failed, --retry-codes)."""
    return config.dispatch.retry_failed or bool(config.dispatch.retry_codes)


def _snapshots_allowed(config: RunConfig) -> bool:
    """Whether this run may write partial indexes: with the default --changed, no retries."""
    return not _retrying(config) and config.dispatch.changed is ChangedPolicy.REFUSE


def _intake(config: RunConfig, state: OutputState) -> Intake:
    dispatch = config.dispatch
    return Intake(state, retry_failed=dispatch.retry_failed, retry_codes=dispatch.retry_codes,
                  changed=dispatch.changed)


async def _settle_partial(config: RunConfig, session: OutputSession, state: OutputState,
                          partial: resume_index.Partial, log: Callable[[str], None]
                          ) -> resume_index.Index | None:
    """Read into `state` OUTPUT's lines after a `partial` index, and decide against them every
    line of INPUT the index leaves, as the check before a run does (`settle_lines`: a line none
    of them answers stays PENDING unparsed, only its id read for the duplicate check; a changed
    job is refused). The states then read as a whole index's, from the check (`_checked_input`).
    None, `partial` closed, when that cannot be done (a duplicate id, a line after the index
    answering a job it settled, INPUT changed or unreadable, a stop): OUTPUT is read whole."""
    checked, digest = Settled(bytearray(partial.settled.states)), hashlib.sha256()
    try:
        loaded = session.load(state, start=partial.tail_from, report=False)
        answered = {facts.custom_id for _, facts in state.finals()}
        await session.decide_all(_intake(config, state), lambda: _only_shard(config, settle_lines(
            config.input, partial.input_file, partial.input_bytes, checked, answered,
            hasher=digest, vouched=partial.vouched)), checked)
    except BaseException:
        partial.close()
        raise
    if not checked.read_all or checked.void is not None or session.stop.asked:
        partial.close()
        if not session.stop.asked:
            session.report(loaded, state, lines=False)  # a torn line cut off, say so now
            log(f"runner: {config.output}: reading it whole: its partial resume index cannot be "
                f"used ({checked.void or 'INPUT could not be read'})")
        return None
    session.report(loaded, state)
    partial.input_file.seek(0)
    try:  # OUTPUT's digest carried on over its lines after the index (as repaired by the load)
        hasher = await asyncio.to_thread(resume_index.sha256_on, partial.output_hasher,
                                         config.output, partial.tail_from,
                                         os.stat(config.output).st_size)
    except (OSError, ValueError):
        hasher = None
    # its own partial indexes may read lines added to INPUT when OUTPUT answers no line
    # outside INPUT: so was it for the index's, and every id answered since was met
    return resume_index.Index(checked, partial.input_file, partial.input_bytes,
                              digest.hexdigest(), hasher, reread=hashlib.sha256(),
                              grows=partial.grows and not answered)


async def _first_reading(config: RunConfig, session: OutputSession, intake: Intake,
                         stamp: resume_index.InputStamp | None
                         ) -> tuple[resume_index.Index | None, tuple[BinaryIO, ReadMark] | None]:
    """How a run that no index answers reads INPUT. A first run over an empty OUTPUT (that may
    keep partial indexes) reads it once as it goes, with a mark (`_Snapshots`); otherwise the
    check for changed jobs reads it first, and when it reads a regular file whole it settles the
    finished jobs (`_checked_input`: the run then reads only the lines left)."""
    source = None if stamp is None else _open_stamped(config.input, stamp)
    if source is None:
        await session.check_changed(intake, lambda: _items(config))
        return None, None
    if _snapshots_allowed(config) and intake.state.empty():
        return None, (source, ReadMark(hashlib.sha256()))
    checked, digest = Settled(), hashlib.sha256()
    try:
        await session.check_changed(intake, lambda: _only_shard(config, read_unsettled(
            config.input, source, stamp.size, Settled(), duplicates=True, hasher=digest)),
            checked)
    except BaseException:
        source.close()
        raise
    return _checked_input(source, stamp, checked, digest), None


class _Snapshots:
    """The partial resume indexes of a run (`resume_index.save_partial`), written every
    --index-every seconds while it goes and once more when it stops early, so that a killed
    run's next resume reads only what OUTPUT gained since. Only runs that know, for every line
    of INPUT not settled, that no line of OUTPUT written before answers it write them: a run
    from an index (its states cover INPUT whole), and a first run over an empty OUTPUT (its
    states cover the lines read so far: `mark`; those not decided yet are PENDING). A line is
    settled when its result is written, in the same step, so what `take` captures holds."""

    def __init__(self, config: RunConfig, stamp: resume_index.InputStamp, settled: Settled,
                 checkpoint: ckpt.Checkpoint, *, index: resume_index.Index | None = None,
                 mark: ReadMark | None = None) -> None:
        self._writing: asyncio.Future[None] | None = None
        self._config = config
        self._stamp = stamp
        self._settled = settled
        self._checkpoint = checkpoint
        self._index = index
        self._mark = mark
        self._taken_at = checkpoint.size  # OUTPUT's size at the last snapshot (or the start)

    def take(self) -> Callable[[], None] | None:
        """What a snapshot now would say, captured at once, as a blocking function writing it
        (None when there is nothing new, or it could not be trusted)."""
        checkpoint, settled = self._checkpoint, self._settled
        if checkpoint.size == self._taken_at or checkpoint.broken or checkpoint.hasher is None \
                or settled.void is not None:
            return None
        self._taken_at = checkpoint.size
        if self._index is not None:
            lines, grows = len(settled.states), self._index.grows
            input_bytes, input_sha256 = self._index.input_bytes, self._index.input_sha256
        else:  # a first run: OUTPUT answers nothing but the lines it read
            assert self._mark is not None
            lines, input_bytes, grows = self._mark.lines, self._mark.size, True
            input_sha256 = self._mark.hasher.copy().hexdigest()
        with memoryview(settled.states) as view, view[:lines] as head:
            states = bytes(head)  # one copy (10 MB at ten million lines), no slice first
        output_bytes, output_sha256 = checkpoint.size, checkpoint.hasher.copy().hexdigest()
        config, stamp = self._config, self._stamp

        def write() -> None:
            if resume_index.InputStamp.of(config.input) == stamp:  # else INPUT changed: none
                resume_index.save_partial(config.output, config.shard, states,
                                          input_bytes=input_bytes, input_sha256=input_sha256,
                                          output_bytes=output_bytes, output_sha256=output_sha256,
                                          grows=grows)
        return write

    def input_sha256(self, size: int) -> str | None:
        """The digest of INPUT's first `size` bytes when the mark read exactly those."""
        mark = self._mark
        return mark.hasher.hexdigest() if mark is not None and mark.size == size else None

    async def save(self) -> None:
        """Write a snapshot now, if there is one to write (OSError when it cannot be), after
        the one under way: writes never overlap, and a write outlives the task that started
        it (its thread goes on) until `idle`."""
        await self.idle()
        write = self.take()
        if write is not None:
            self._writing = asyncio.ensure_future(asyncio.to_thread(write))
            await asyncio.shield(self._writing)

    async def idle(self) -> None:
        """Wait for a write under way, if any (whatever became of it)."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)

    async def run(self, interval: float,
                  sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        """Write one every `interval` seconds until cancelled; losing one only costs time."""
        while True:
            await sleep(interval)
            try:
                await self.save()
            except OSError:
                pass


async def _output_hasher(checkpoint: ckpt.Checkpoint, index: resume_index.Index | None
                         ) -> resume_index.Digest | None:
    """OUTPUT's digest so far, to go on with what this run appends (None when unreadable): the
    index's when it has it."""
    if index is not None and index.output_hasher is not None:
        return index.output_hasher
    try:
        return await asyncio.to_thread(resume_index.file_sha256, checkpoint.path, checkpoint.size)
    except (OSError, ValueError):
        return None


async def _save_index(config: RunConfig, stamp: resume_index.InputStamp,
                      index: resume_index.Index | None, settled: Settled,
                      checkpoint: ckpt.Checkpoint, appended: int, *, finished: bool,
                      log: Callable[[str], None], snapshots: _Snapshots | None = None) -> None:
    """Write OUTPUT's resume index when this run may (see `runner.files.resume_index`): it
    `finished` (no stop: every job it started got its line) having decided every line of INPUT,
    which did not change meanwhile; else a last partial index (`snapshots`), when it keeps
    them (the one it had stays when it has nothing newer to say); else remove an index this
    run's lines made stale."""
    if (finished and settled.read_all and settled.void is None and checkpoint.hasher is not None
            and not checkpoint.broken and resume_index.InputStamp.of(config.input) == stamp):
        try:
            await asyncio.to_thread(
                resume_index.save, config.output, config.input, config.shard, settled,
                input_sha256=_input_sha256(index, snapshots, stamp),
                output_bytes=checkpoint.size, output_hasher=checkpoint.hasher)
            return
        except (OSError, ValueError) as e:
            log(f"runner: cannot write the resume index of {config.output} ({e}); the next run "
                "reads OUTPUT whole")
    elif snapshots is not None and not finished:
        try:
            await snapshots.save()
            return
        except OSError:
            pass
    if appended:
        resume_index.discard(config.output)


def _input_sha256(index: resume_index.Index | None, snapshots: _Snapshots | None,
                  stamp: resume_index.InputStamp) -> str | None:
    """INPUT's digest as this run read it, when it read it whole: the index's, or the mark's of
    a first run (None: INPUT is hashed once more to save the index)."""
    if index is not None:
        return index.input_sha256
    return None if snapshots is None else snapshots.input_sha256(stamp.size)


def _open_stamped(path: str, stamp: resume_index.InputStamp) -> BinaryIO | None:
    """INPUT opened, when it is still the file `stamp` describes; else None."""
    try:
        source = open(path, "rb", buffering=0)
    except OSError:
        return None
    st = os.fstat(source.fileno())
    if resume_index.InputStamp(st.st_size, st.st_mtime_ns, st.st_ino) != stamp:
        source.close()
        return None
    return source


def _checked_input(source: BinaryIO, stamp: resume_index.InputStamp, checked: Settled,
                   digest: resume_index.Digest) -> resume_index.Index | None:
    """When the check before the run read INPUT whole (`source`, its first `stamp.size` bytes)
    and settled finished jobs in a file without duplicate ids: the run reads only the lines left
    (as from a resume index), from the start of the same file, as far, hashing what it reads
    again to compare with the check's `digest` at the end. Else None, `source` closed: the run
    reads INPUT whole again."""
    if not checked.read_all or checked.void is not None or not checked.states:
        source.close()
        return None
    source.seek(0)
    return resume_index.Index(checked, source, stamp.size, digest.hexdigest(), None,
                              reread=hashlib.sha256())


def _only_shard(config: RunConfig, items: AsyncIterator[Job | BadLine | Duplicate]
                ) -> AsyncIterator[Job | BadLine | Duplicate]:
    return items if config.shard is None else config.shard.only(items)


def _items(config: RunConfig, index: resume_index.Index | None = None,
           marked: tuple[BinaryIO, ReadMark] | None = None
           ) -> AsyncIterator[Job | BadLine | Duplicate]:
    """The items of INPUT this run takes (its shard's, with --shard); with a resume `index`, only
    the lines it leaves to read; `marked`: every line, read from that source, to its end, how
    far said by the mark (`_Snapshots`)."""
    if index is not None:
        items = read_unsettled(config.input, index.input_file, index.input_bytes, index.settled,
                               hasher=index.reread)
    elif marked is not None:
        source, mark = marked
        items = read_unsettled(config.input, source, None, Settled(), duplicates=True, mark=mark)
    else:
        items = read_items(config.input)
    return _only_shard(config, items)


async def _dispatch(config: RunConfig, state: OutputState, checkpoint: ckpt.Checkpoint,
                    send: Send | None, console: Console | None, log: Callable[[str], None],
                    progress: bool, stop: Stop, limiters: Limiters | None,
                    budgets: RedisBudgets | None = None,
                    metrics: MetricsFile | None = None, settled: Settled | None = None,
                    index: resume_index.Index | None = None, snapshots: _Snapshots | None = None,
                    marked: tuple[BinaryIO, ReadMark] | None = None) -> RunStats:
    """Dispatch the run's jobs; `settled` gathers what each line came to (from a resume `index`
    when one answers: its DONE and KEPT lines are not read again)."""
    loop = asyncio.get_running_loop()
    session = None
    if send is None:
        send = session = SessionSender(max_connections=config.dispatch.concurrency,
                                       connect_timeout=config.connect_timeout,
                                       read_timeout=config.read_timeout)
    send = config.endpoint.authorize(send)  # Entra ID tokens that refresh themselves
    if limiters is None:
        limiters = Limiters(rpm=config.rpm, tpm=config.tpm, burst_s=config.burst_s,
                            scope=config.budget_scope)
    # image lanes: their second bucket counts images (IPM), so their budgets are kept apart from
    # the text lanes'; like those, they come to share one when the server shows it counts the key's
    follow = config.budget_scope == "auto"
    image_limiters = Limiters(
        rpm=config.rpm, tpm=config.ipm, burst_s=config.burst_s, scope=config.budget_scope,
        states=None if budgets is None else lambda url, model: budgets.state(
            url, model + IMAGES_BUDGET, follow_moves=follow),
        key_budget=KEY_BUDGET + IMAGES_BUDGET)
    input_dir = Path.cwd() if config.input == "-" else Path(config.input).resolve().parent
    images = ImageStore(config.images_dir or default_images_dir(config.output),
                        relative_to=config.output.resolve().parent, send=send,
                        inline=config.inline_images)
    dispatcher = Dispatcher(send=send, endpoint=config.endpoint, limiters=limiters,
                            sink=checkpoint.append, config=config.dispatch, pack=config.pack, log=log,
                            images=images, image_limiters=image_limiters,
                            prepare=lambda job: check_uploads(job, input_dir, config.input),
                            prices=_prices(config), settled=settled,
                            settled_unread=index is not None)
    dispatcher.sharded = config.shard is not None
    stop.connect(dispatcher.stop)

    async def sync_often() -> None:
        try:
            await checkpoint.run_syncer()
        except ckpt.CheckpointError as e:  # durability is lost: stop, resumable
            dispatcher.stop(str(e))

    helpers = [asyncio.create_task(sync_often())]
    if snapshots is not None:
        helpers.append(asyncio.create_task(snapshots.run(config.index_interval)))
    try:
        if metrics is not None:
            metrics.stats = dispatcher.stats
            helpers.append(asyncio.create_task(metrics.run()))
        if progress or metrics is not None:
            holds = config.shard.holds if config.shard is not None else None
            total = await asyncio.to_thread(count_lines, config.input, holds)
            dispatcher.stats.input_lines = total
        if progress:
            eta = Eta(dispatcher.stats, lambda model, images: (
                image_limiters if images else limiters).get(config.endpoint.budget_key(model)))
            if total is not None:  # a regular, uncompressed file: it can be read once more
                to_read = None if index is None else Settled(bytearray(index.settled.states))
                helpers.append(asyncio.create_task(_plan_work(config, state, eta, to_read)))
            reporter = ProgressReporter(dispatcher.stats, total, console=console, clock=loop.time,
                                        limits=lambda: describe_limits(limiters), log=log,
                                        log_interval=config.status_interval, eta=eta,
                                        prices=config.prices, spend=dispatcher.spend,
                                        image_limit=lambda model: image_limiters.get(
                                            config.endpoint.budget_key(model)).tpm)
            helpers.append(asyncio.create_task(reporter.run()))
        stats = await dispatcher.run(_items(config, index, marked), state)
        for model in stats.model_requests:
            limiter = (image_limiters if model in stats.model_images else limiters).get(
                config.endpoint.budget_key(model))  # an image model's: (rpm, ipm)
            stats.limits[model] = (limiter.rpm, limiter.tpm)
        return stats
    finally:
        stop.disconnect(dispatcher.stop)
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if session is not None:
            await session.close()


def _prices(config: RunConfig) -> Any:
    """The price table --max-cost counts with: the run's, else the shipped one; None uncapped."""
    if config.dispatch.max_cost is None:
        return None
    if config.prices is not None:
        return config.prices
    from runner.report.prices import load_prices
    return load_prices()


async def _plan_work(config: RunConfig, state: OutputState, eta: Eta,
                     settled: Settled | None = None) -> None:
    """The run's work per model, for the ETA (`jobs.estimate.work_plan`), read in a thread while
    the jobs run (INPUT must be a regular file); none when that fails. With `settled` (a copy of
    the resume index's states, as the run began), only the lines it leaves to read."""

    def plan() -> dict[str, Any]:
        from jobs.estimate import work_plan
        from jobs.reader import read_jobs
        from runner.files.inputs import input_lines, input_name, unsettled_items
        items = read_jobs(input_lines(config.input), input_name(config.input)) if settled is None \
            else unsettled_items(config.input, settled)
        if config.shard is not None:
            items = (i for i in items if config.shard.holds(getattr(i, "custom_id", None)))
        return work_plan(items, state)

    try:
        eta.plan = await asyncio.to_thread(plan)
    except Exception:  # the run reads INPUT itself and reports what is wrong with it
        return
