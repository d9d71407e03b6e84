"""One run of a job file through the hosted Batch API: the batch backend's loop.

    read INPUT ─► pending jobs ─► packer ─► Splitter ─► chunk file + "planned" ─► upload ─► create
    (resume rule, minus jobs          (jobs.packing)   (runner.batch.plan)      (runner.batch.state:
     in an open chunk)                                                           every step journaled)
                                ┌──────────────── poll every --poll-every ◄──────────────┘
                                ▼
         completed / expired / cancelled / failed ─► collect: output + error files ─► classify ─► decide
                                                      one result line per job (exactly once), fsync,
                                                      then "closed": jobs without a final line are
                                                      pending again (expired, transient, bisected halves)

The same parts as live: the job reader, the packer and `split_response`, the result file
(`runner.files.checkpoint`), and one `classify()` / `decide()` for every line's answer. What differs
is only the transport of requests: batch files instead of calls.

Contract: a job is in at most one open chunk, a chunk is created at most once (`runner.batch.state`);
a result line is written at most once per batch line (its id is derived from the provider's line
id, and a collect repeated after a kill skips ids already in OUTPUT); with `wait=False` the run
submits, collects what finished, and returns with `in_progress` set while batches are still open.
Time (`clock`, `sleep`) and the network (`send`) are injected.
"""
from __future__ import annotations

import asyncio
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


import orjson

from jobs import codes, tokens
from jobs.codes import DUPLICATE
from jobs.digests import DigestSet
from jobs.endpoints import IMAGES_EDITS, spec_of
from jobs.job import Job
from jobs.packing import Packer, Request, pack, single
from jobs import intake as intake_
from jobs.intake import ChangedPolicy, ChangedReport, Fail, Intake, Pending, Refuse, Reject
from jobs.reader import BadLine, Duplicate, NotAJobFile
from jobs.shard import Shard
from jobs.spend import Spend, Unpriceable, job_bound
from jobs.results import FINGERPRINT, LineFacts, OutputState, error_record
from runner.api.endpoint import Endpoint, batch_setup_hint
from runner.api.transport import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, Send, SessionSender
from runner.batch.client import BatchClient, batch_url
from runner.batch.collect import judge_line
from runner.batch.plan import (
    AZURE_MAX_REQUESTS, MAX_FILE_BYTES, OPENAI_MAX_REQUESTS, Draft, LineTooLarge, MIN_FILE_BYTES,
    PACK_LINE_PREFIX, Splitter, job_requests,
)
from runner.batch.lineindex import LineIndex
from runner.batch.state import FINAL_STATUSES, BatchState, Chunk
from runner.errors import (
    APIError, ChangedJobsError, ConfigurationError, EndpointUnusable, RunnerError, StopRunError,
    UnusableInput,
)
from runner.files import checkpoint as ckpt
from runner.files.session import OutputSession, Stop
from runner.files.images import (
    ImageStore, SaveFailed, as_json_edit, check_uploads, default_images_dir,
)
from runner.files.inputs import Rereader, read_items
from runner.outcome import Action, classify, retry_delay, stops_before_answer
from runner.report.log import console_echo
from runner.report.stats import BatchStats
from runner.retry import Attempts, Backoff, GiveUpClock
from runner.tokenizer import token_counter

if TYPE_CHECKING:
    from rich.console import Console

    from runner.report.metrics import MetricsFile

POLL_START_S = 10.0    # the first poll of a batch: most small batches need minutes, not seconds
POLL_GROWTH = 1.5      # each poll that sees no batch finish waits this much longer ...
POLL_MAX_S = 300.0     # ... up to five minutes
CALL_BACKOFF_BASE_S = 1.0   # a Files/Batches call answered 429/5xx/nothing: full-jitter backoff
CALL_BACKOFF_MAX_S = 300.0  # ... up to this (the server's delay wins, within MAX_SERVER_DELAY_S)
CALL_GIVE_UP_S = 600.0      # a call with no usable answer for this long stops the run (exit 3)
STOP_POLL_S = 0.2      # how often a sleeping run looks for a stop
TOKEN_LIMIT_CODES = frozenset({"token_limit_exceeded", "enqueued_token_limit_exceeded",
                               "tokens_enqueued_limit_exceeded"})
_LIMIT_IN_MESSAGE = re.compile(r"Limit:\s*([\d,]+)\s*enqueued tokens", re.IGNORECASE)
RUN_TAG, CHUNK_TAG = "runner_run", "runner_chunk"  # batch metadata keys
LOOKUP_HINT = ("; a batch may have been created for these jobs, so they are not submitted again "
               "until the provider lists its batches. If it cannot, `runner cancel INPUT -o "
               "OUTPUT` gives them up (they become pending; were the batch created after all, "
               "they would be paid twice)")
FILE_PENDING = frozenset({"uploaded", "pending", "running"})  # a file not yet usable (Azure)
FILE_POLL_S = 1.0      # the first look at a file still being processed


@dataclass(frozen=True, slots=True)
class BatchRunConfig:
    """Everything one batch run needs; built by the CLI (or a test)."""

    input: str
    output: Path
    endpoint: Endpoint = field(default_factory=Endpoint)
    wait: bool = True
    poll_every: float | None = None  # None: POLL_START_S growing to POLL_MAX_S
    max_requests: int | None = None  # None: the provider's published limit
    max_bytes: int = MAX_FILE_BYTES
    max_attempts: int = 6
    retry_failed: bool = False
    retry_codes: frozenset[str] = frozenset()  # retry permanent failures with these codes only
    changed: ChangedPolicy = ChangedPolicy.REFUSE  # jobs edited since their result (--changed)
    pack: bool = True
    cancel: bool = False  # `runner cancel`: cancel open batches, collect them, submit nothing
    status_interval: float = 30.0
    connect_timeout: float = CONNECT_TIMEOUT_S
    read_timeout: float = READ_TIMEOUT_S
    images_dir: Path | None = None  # where images go (default: beside the output, named after it)
    inline_images: bool = False  # keep b64_json in result lines too
    shard: Shard | None = None  # submit only the jobs of this shard of the input (--shard K/N)
    max_cost: float | None = None  # --max-cost: USD this run may submit, at its upper bound
    limit: int | None = None  # --limit: submit only the first this many pending jobs
    prices: Any = None  # the PriceTable --max-cost counts with (the CLI's: at Batch API prices)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        if self.max_bytes < MIN_FILE_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_FILE_BYTES}")
        if self.poll_every is not None and not self.poll_every > 0:
            raise ValueError("poll_every must be a positive number of seconds")

    @property
    def line_limit(self) -> int:
        if self.max_requests is not None:
            return self.max_requests
        return AZURE_MAX_REQUESTS if self.endpoint.azure else OPENAI_MAX_REQUESTS


class _SeenState(OutputState):
    """`OutputState` that also keeps the result-line ids of the jobs in `watch`: the jobs of
    batches a killed run may have started to collect, so collecting them again skips the lines
    already written (memory grows with those lines only, not with OUTPUT; `watch` is digests,
    so a job colliding with one adds its lines' ids too, which only skips lines never written
    again: result-line ids are unique)."""

    __slots__ = ("ids", "watch")

    def __init__(self, watch: DigestSet | None = None) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.watch = watch if watch is not None else DigestSet()

    def account_lines(self, data: bytes, position: int, *,
                      keep_done: bool = False) -> Iterator[tuple[int, bytes]]:
        if not self.watch:
            return super().account_lines(data, position, keep_done=keep_done)
        return self._account_slow(data, 0, len(data), position, keep_done)  # every line's id

    def account(self, facts: LineFacts, position: int, *, keep_done: bool = False) -> None:
        super().account(facts, position, keep_done=keep_done)
        if facts.custom_id in self.watch:
            record_id = orjson.loads(self.lines.read(position)).get("id")
            if isinstance(record_id, str):
                self.ids.add(record_id)


def _expected_jobs(config: BatchRunConfig) -> int:
    """About how many results this run may write: INPUT's jobs (its shard's share, from a sample
    of it; at most --limit; none said with --max-cost, which may stop it anywhere), accounted in
    its view of OUTPUT, whose table then grows once to hold them rather than doubling on the way
    (its last doubling held 67 + 134 MB at 10,000,000 jobs). Not allocated before it is needed:
    while the plan reads INPUT, the reader's table is held."""
    if config.max_cost is not None:
        return 0
    with Rereader.of(config.input) as reread:
        lines = 0 if reread is None else reread.lines()
    lines = lines if config.shard is None else lines // config.shard.count
    return lines if config.limit is None else min(lines, config.limit)


class _Stopped(Exception):
    """A stop was asked for while waiting: unwind to the loop, leave the state as it is."""


async def run_batch(config: BatchRunConfig, *, send: Send | None = None,
                    console: Console | None = None, log: Callable[[str], None] | None = None,
                    progress: bool = True, handle_signals: bool = True,
                    clock: Callable[[], float] | None = None,
                    sleep: Callable[[float], Any] = asyncio.sleep,
                    metrics: MetricsFile | None = None) -> BatchStats:
    """Run the pending jobs of `config.input` through the Batch API (see the module docstring).
    Raises CheckpointError when OUTPUT is in use or unusable, like the live run. `metrics`
    (--metrics-file) is written every `METRICS_INTERVAL_S` while the run goes, waits included."""
    if config.input == "-" or not os.path.isfile(config.input):
        raise ckpt.CheckpointError(f"--via batch reads INPUT again as batches finish: give a "
                                   f"file, not {config.input!r}")
    log = log or console_echo(console)
    loop = asyncio.get_running_loop()
    stats = BatchStats(live=False, reads_input=not config.cancel)
    session = None
    async with OutputSession(config.input, config.output, log=log,
                             secrets=(config.endpoint.api_key,),
                             handle_signals=handle_signals) as output:
        state = BatchState(config.output)
        if state.load():
            log(f"{state.path}: cut off a torn last line left by an interrupted run")
        seen = _SeenState(state.jobs_of(chunk for chunk in state.open_chunks()
                                        if chunk.status in FINAL_STATUSES))
        output.load(seen)
        if not config.cancel:  # every result this run writes is accounted: room for them at once
            seen.expect(len(seen.done) + len(seen.transient) + len(seen.permanent)
                        + _expected_jobs(config))  # (when it next grows: not beside the reader's)
            await output.check_changed(Intake(seen, retry_failed=config.retry_failed,
                                              retry_codes=config.retry_codes,
                                              changed=config.changed), lambda: _items(config))
        state.open(os.urandom(8).hex())
        try:
            state.use_endpoint(config.endpoint.base_url)
            checkpoint = output.open()
            if send is None:
                send = session = SessionSender(max_connections=8,
                                               connect_timeout=config.connect_timeout,
                                               read_timeout=config.read_timeout)
            images = ImageStore(config.images_dir or default_images_dir(config.output),
                                relative_to=config.output.resolve().parent, send=send,
                                sleep=sleep, inline=config.inline_images, reuse_identical=True)
            engine = _Engine(config, BatchClient(send, config.endpoint), state, checkpoint, seen,
                             stats, log, clock or loop.time, sleep, output.stop,
                             progress=progress, images=images)
            writer = None
            if metrics is not None:  # the hours a batch takes are when monitoring asks
                metrics.stats = stats
                writer = asyncio.create_task(metrics.run())
            try:
                await engine.run()
            finally:
                if writer is not None:
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
                problem = await output.finish()
                if problem is not None and stats.stop_reason is None:
                    stats.stop_reason = problem
        finally:
            state.close()
            if session is not None:
                await session.close()
    return stats


def printed(record: dict[str, Any], fingerprints: Mapping[str, str] | None) -> dict[str, Any]:
    """`record` carrying its job's fingerprint from `fingerprints` (the chunk's: the job as it
    was sent), when it has one; a duplicate note carries none (it answers no job)."""
    error = record.get("error")
    if fingerprints and not (error is not None and error.get("code") == DUPLICATE):
        value = fingerprints.get(record["custom_id"])
        if value:
            record[FINGERPRINT] = value
    return record


def _items(config: BatchRunConfig) -> AsyncIterator[Job | BadLine | Duplicate]:
    """The items of INPUT this run takes (its shard's, with --shard)."""
    items = read_items(config.input)
    return items if config.shard is None else config.shard.only(items)


class _Engine:
    """One batch run's loop over an open journal and output (see the module docstring); `run()`
    returns when every job has a final line, on a stop, or (--no-wait) after one pass."""

    def __init__(self, config: BatchRunConfig, client: BatchClient, state: BatchState,
                 checkpoint: ckpt.Checkpoint, seen: _SeenState, stats: BatchStats,
                 log: Callable[[str], None], clock: Callable[[], float],
                 sleep: Callable[[float], Any], stop: Stop, *, progress: bool = True,
                 backoff: Backoff | None = None, images: ImageStore | None = None) -> None:
        self.config, self.client, self.state = config, client, state
        self.checkpoint, self.seen, self.stats = checkpoint, seen, stats
        self.log, self.clock, self._sleep, self.stop = log, clock, sleep, stop
        self.endpoint = config.endpoint
        self.progress = progress
        self.images = images  # saves image answers as files before their lines are written
        self.backoff = backoff or Backoff(base=CALL_BACKOFF_BASE_S, cap=CALL_BACKOFF_MAX_S)
        # --retry-failed retries the permanent failures found at the start, once per run (a job
        # failed by this run is in `failed_here`: not sent again)
        self.intake = Intake(seen, retry_failed=config.retry_failed,
                             retry_codes=config.retry_codes, changed=config.changed,
                             counter=token_counter, prepare=self.prepare)
        self.planned_once = False
        self.dirty = True  # something changed since the input was last read: plan again
        self.last_status = -1e18
        self.fresh: set[str] = set()  # chunks uploaded by this process, never sent to create yet
        self.planned_here: set[str] = set()  # chunks planned by this process
        self.ready_files: set[str] = set()  # uploaded files the provider has processed
        self.requeued = 0
        self.waiting = 0  # jobs the last plan could not submit: no room under the enqueued-token limit
        self.failed_here: set[str] = set()  # jobs given a failure line this run: not sent again
        self.answered = False  # a Files/Batches call of this run has succeeded: the endpoint works
        # --max-cost: what is submitted, at its upper bound; --limit: jobs planned by this run
        self.spend = None if config.max_cost is None else Spend(config.max_cost)
        self.capped: str | None = None  # why no more is submitted (the cap is reached)
        self.planned_jobs = 0
        self.limited = False
        self.skipped_busy = False  # the last plan skipped jobs in open chunks (see `advance`)

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        stats = self.stats
        stats.started = self.clock()
        polls = 0
        try:
            while not self.stop.asked:
                finished = stats.finished_jobs
                changed = await self.advance()
                if not self.config.cancel and not self.capped and (self.dirty or changed):
                    self.dirty = False
                    await self.plan()
                # dirty after a plan: a chunk it made was given up before it was sent (its file
                # gone): its jobs are planned again after a pause, as the polls back off
                if not (self.state.open_chunks() or self.waiting or self.replanning()) \
                        or not self.config.wait:
                    break
                self.report()
                polls = 0 if stats.finished_jobs > finished else polls + 1
                await self.pause(self.poll_delay(polls))
                self.dirty = self.dirty or self.waiting
        except _Stopped:
            pass
        except NotAJobFile as e:
            stats.unusable_input = True
            stats.stop_reason = str(e)
            self.log(str(e))
        except RunnerError as e:  # a stop (quota, key, unwritable output) or an unusable input
            if isinstance(e, EndpointUnusable):
                self.unplan_unsent()
            stats.stop_reason = stats.stop_reason or str(e)
            stats.unusable_input = isinstance(e, UnusableInput)
            stats.misconfigured = isinstance(e, ConfigurationError)
            self.log(f"stopping: {e}")
        if self.stop.asked:  # a signal (the engine's own stops set their reason first)
            stats.stop_reason = stats.stop_reason or self.stop.reason
        stats.in_progress = bool(self.state.open_chunks() or self.waiting or self.replanning())
        if self.waiting and not self.state.open_chunks():
            self.log(f"{self.waiting:,} jobs wait for the enqueued-token limit to have room")
        stats.batch_status = Counter(c.status or "submitting" for c in self.state.open_chunks())
        self.note_caps()
        self.report(force=True)
        stats.finished = self.clock()

    def unplan_unsent(self) -> None:
        """Close the open chunks never uploaded (no batch can exist without a recorded upload):
        their jobs are pending again, for the next run to plan wherever it sends them."""
        for chunk in self.state.open_chunks():
            if chunk.file_id is None:
                self.state.close_chunk(chunk, "abandoned", retry=[], bisect=[],
                                       note="never uploaded: the endpoint did not work")

    def note_caps(self) -> None:
        """What --max-cost and --limit did, in the stats; once no batch is open, jobs they held
        back stop the run, resumable (exit 3)."""
        stats, limit = self.stats, self.config.limit
        if self.spend is not None:
            stats.spend_cap, stats.spent = self.spend.cap, self.spend.held
            stats.spend_capped = self.capped is not None
        if self.limited:
            stats.limit = limit
        if stats.in_progress or stats.stop_reason is not None:
            return
        if self.capped is not None:
            stats.stop_reason = self.capped
        elif self.limited:
            stats.stop_reason = (f"--limit {limit:,}: submitted the first {limit:,} pending jobs; "
                                 "the next run takes the rest")

    def poll_delay(self, polls: int) -> float:
        if self.config.poll_every is not None:
            return self.config.poll_every
        return min(POLL_MAX_S, POLL_START_S * POLL_GROWTH ** polls)

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds` on the injected sleep, looking for a stop every STOP_POLL_S."""
        end = self.clock() + seconds
        while not self.stop.asked:
            left = end - self.clock()
            if left <= 0:
                return
            await self._sleep(min(STOP_POLL_S, left))
        raise _Stopped

    def report(self, force: bool = False) -> None:
        """A status line every `status_interval` (batches by state, the provider's counts,
        results collected, elapsed); none without `progress`."""
        now = self.clock()
        if not self.progress:
            return
        if not force and now - self.last_status < self.config.status_interval:
            return
        self.last_status = now
        chunks = self.state.open_chunks()
        by = Counter(c.status or "submitting" for c in chunks)
        done = sum(c.counts.get("completed", 0) for c in chunks)
        failed = sum(c.counts.get("failed", 0) for c in chunks)
        total = sum(c.counts.get("total", 0) for c in chunks)
        states = ", ".join(f"{n} {s}" for s, n in sorted(by.items())) or "none open"
        self.log(f"batches: {states}; requests at the provider {done:,}/{total:,} done, "
                 f"{failed:,} failed; results collected this run {self.stats.finished_jobs:,}; "
                 f"elapsed {now - self.stats.started:,.0f} s")

    # -- calling the provider --------------------------------------------------------------------
    async def unless_stopped(self, coro: Any) -> Any:
        """`await coro`, abandoned (cancelled) when a stop comes first: every call is safe to cut
        short (an upload or create that may have happened is found again by the next run)."""
        if self.stop.asked:
            coro.close()
            raise _Stopped
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise _Stopped
        return task.result()

    async def call(self, what: str, fn: Callable[[], Any],
                   recover: Callable[[], Awaitable[Any]] | None = None) -> Any:
        """One Files/Batches call, retried until it answers: 429, 5xx and no answer back off
        (the server's delay when it gives one) and never fail a job; after `CALL_GIVE_UP_S` of
        nothing else the run stops, resumable (exit 3), as 401/403/quota stop it at once; any
        other refusal is raised as the `APIError` for the caller to judge. Before any call of
        the run has succeeded, an endpoint that cannot work (nothing listening, a route that
        answers 404 for itself) stops it at once (`EndpointUnusable`, naming the URL and the
        likely fix). `recover`, before each retry, looks for what an unclear failure may have
        done all the same (a batch created though its answer was lost): what it finds, if
        anything, is returned instead."""
        attempts = Attempts()
        give_up = GiveUpClock(CALL_GIVE_UP_S, self.clock)
        while True:
            if attempts.sent and recover is not None:
                try:
                    found = await recover()
                except StopRunError:
                    raise
                except RunnerError as exc:
                    # It may have been done all the same: never judge it refused; stop, resumable
                    raise StopRunError(f"{what}: cannot tell whether it was done: {exc}{LOOKUP_HINT}"
                                       ) from None
                if found is not None:
                    return found
            try:
                answer = await self.unless_stopped(fn())
            except StopRunError:
                raise  # (a file of ours that cannot be written: not the API's doing)
            except RunnerError as exc:
                verdict = classify(None, {}, None, exc=exc)
                if stops_before_answer(verdict, answered=self.answered):
                    hint = batch_setup_hint(self.endpoint, getattr(exc, "url", None), verdict.code)
                    raise EndpointUnusable(f"{hint} ({what}: {verdict.code}: {verdict.message})"
                                           ) from None
                if verdict.action is Action.STOP_RUN:
                    raise StopRunError(f"{verdict.code}: {verdict.message}") from None
                if verdict.action is not Action.RETRY:
                    raise
                attempts = attempts.then(counted=True)
                if give_up.failed():
                    raise StopRunError(f"{what}: no usable answer for {CALL_GIVE_UP_S:.0f} s "
                                       f"(last: {verdict.code}: {verdict.message})") from None
                delay = retry_delay(verdict, attempts.counted - 1, self.backoff)
                self.log(f"{what}: {verdict.code}: {verdict.message}; trying again in {delay:.1f} s")
                await self.pause(delay)
            else:
                self.answered = True
                return answer

    # -- advancing open chunks -------------------------------------------------------------------
    async def advance(self) -> bool:
        """Upload, create, poll and collect every open chunk as far as it goes now; True when one
        closed leaving jobs to plan again: jobs without a final line (retried, bisected, not run,
        or the whole chunk: refused, missing, abandoned), or any close after a plan that skipped
        jobs as busy (one may only have looked busy: `BatchState.busy_jobs`). A chunk whose
        every job got its final line needs no plan: INPUT is not read again for it."""
        replan = False
        closed = False
        for chunk in self.state.open_chunks():
            if self.config.cancel and chunk.batch_id is None:
                await self.abandon(chunk)
                replan = True
                continue
            if chunk.file_id is None:
                await self.upload(chunk)
            if chunk.batch_id is None and not chunk.closed:
                await self.create(chunk)
            if chunk.closed:
                replan = True
                continue
            try:
                if self.config.cancel and chunk.status not in FINAL_STATUSES | {"cancelling"}:
                    batch = await self.cancel_one(chunk)
                else:
                    batch = await self.call(f"poll {chunk.batch_id}",
                                            lambda c=chunk: self.client.get(c.batch_id))
            except APIError as exc:
                if exc.status != 404:
                    raise
                self.log(f"batch {chunk.batch_id} ({chunk.chunk}) is not known to the provider "
                         f"any more: its {chunk.job_count} jobs go into a later batch")
                self.state.close_chunk(chunk, "missing", retry=[], bisect=[], note=str(exc))
                replan = True
                continue
            self.note(chunk, batch)
            if batch.get("status") in FINAL_STATUSES:
                replan = await self.collect(chunk, batch) or replan
                closed = True
        replan = replan or (closed and self.skipped_busy)
        if replan:
            self.dirty = True
        return replan

    def replanning(self) -> bool:
        """Jobs wait for the next plan (a chunk given up before it was sent, say)."""
        return self.dirty and not self.config.cancel and not self.capped

    async def abandon(self, chunk: Chunk) -> None:
        """`runner cancel` on a chunk with no batch recorded: cancel the batch if one was created
        unrecorded, else close the chunk (its jobs stay pending) and delete its file."""
        found = await self.find(chunk) if chunk.file_id else None
        if found is not None:
            self.state.record({"event": "created", "chunk": chunk.chunk, "batch_id": found["id"]})
            self.note(chunk, await self.cancel_one(chunk))
            return
        if chunk.file_id is None:
            file = await self.uploaded_unrecorded(chunk, None)
            if file is not None:
                self.state.record({"event": "uploaded", "chunk": chunk.chunk, "file_id": file["id"]})
        self.state.close_chunk(chunk, "abandoned", retry=[], bisect=[], note="cancelled before its batch")
        await self.forget_file(chunk)

    async def cancel_one(self, chunk: Chunk) -> dict[str, Any]:
        try:
            return await self.call(f"cancel {chunk.batch_id}",
                                   lambda: self.client.cancel(chunk.batch_id))
        except APIError:  # already finished: just read it
            return await self.call(f"poll {chunk.batch_id}", lambda: self.client.get(chunk.batch_id))

    def note(self, chunk: Chunk, batch: dict[str, Any]) -> None:
        status = batch.get("status")
        counts = batch.get("request_counts") or {}
        if status != chunk.status or counts != chunk.counts:
            self.state.record({"event": "polled", "chunk": chunk.chunk, "status": status,
                               "counts": counts})

    async def upload(self, chunk: Chunk) -> None:
        """Upload the chunk's input file, streamed from disk (up to `--batch-max-bytes`: never
        read whole), and record its file id."""
        path = self.state.chunk_file(chunk.chunk)
        try:
            size = path.stat().st_size
            name = self.file_name(chunk)
            file = None
            if chunk.chunk not in self.planned_here:  # an earlier run may have uploaded it
                file = await self.uploaded_unrecorded(chunk, size)  # without recording it
            if file is None:
                file = await self.call(f"upload {chunk.chunk}",
                                       lambda: self.client.upload(name, path))
        except OSError:  # planned, but its file is gone (before or between attempts): no batch
            self.state.close_chunk(chunk, "abandoned", retry=[], bisect=[],  # was made with it
                                   note="its local input file is gone")
            self.dirty = True  # its jobs go into a later plan
            return
        self.state.record({"event": "uploaded", "chunk": chunk.chunk, "file_id": file["id"]})
        self.fresh.add(chunk.chunk)
        if file.get("status") not in FILE_PENDING:
            self.ready_files.add(file["id"])

    async def file_ready(self, chunk: Chunk) -> bool:
        """Wait while the provider processes the chunk's uploaded file (Azure answers an upload
        with `pending`); False when it ended in `error` (the chunk is then refused)."""
        file_id = chunk.file_id
        wait = FILE_POLL_S
        while file_id not in self.ready_files:
            file = await self.call(f"file {file_id}", lambda: self.client.file(file_id))
            status = file.get("status")
            if status == "error":
                details = file.get("status_details") or "the provider could not process the file"
                await self.refused(chunk, "file_error", str(details))
                return False
            if status not in FILE_PENDING:
                self.ready_files.add(file_id)
                break
            await self.pause(wait)
            wait = min(POLL_MAX_S, wait * POLL_GROWTH)
        return True

    def file_name(self, chunk: Chunk) -> str:
        return f"runner-{self.state.run_id}-{chunk.chunk}.jsonl"

    async def uploaded_unrecorded(self, chunk: Chunk, size: int | None) -> dict[str, Any] | None:
        """The chunk's file at the provider, found by its name (and size when known), or None."""
        listing = await self.call("list files", self.client.files)
        return next((f for f in listing.get("data") or () if isinstance(f, dict)
                     and f.get("filename") == self.file_name(chunk)
                     and (size is None or f.get("bytes") == size)), None)

    async def create(self, chunk: Chunk) -> None:
        """Create the chunk's batch exactly once. A chunk this process did not upload, or whose
        create got no clear answer (no answer, 5xx, 429), may already have its batch: it is
        looked for first, by listing batches and their metadata (run id and chunk id)."""
        if not await self.file_ready(chunk):
            return
        metadata = {RUN_TAG: self.state.run_id or "", CHUNK_TAG: chunk.chunk}
        found = await self.find(chunk) if chunk.chunk not in self.fresh else None
        if found is None:
            recovered: list[dict[str, Any]] = []

            async def look() -> dict[str, Any] | None:  # created though its answer was lost?
                batch = await self.find(chunk)
                if batch is not None:
                    recovered.append(batch)
                return batch

            try:
                found = await self.call(
                    f"create {chunk.chunk}",
                    lambda: self.client.create(chunk.file_id, chunk.url, metadata), recover=look)
            except StopRunError:
                raise
            except RunnerError as exc:  # refused as a whole
                verdict = classify(None, {}, None, exc=exc)
                await self.refused(chunk, verdict.code, verdict.message)
                return
            if not recovered:
                self.stats.batches_created += 1
                self.stats.batch_lines += chunk.line_count
                self.stats.requests += chunk.line_count
                self.stats.model_requests[chunk.model] += chunk.line_count
        self.state.record({"event": "created", "chunk": chunk.chunk, "batch_id": found["id"]})
        self.note(chunk, found)

    async def find(self, chunk: Chunk) -> dict[str, Any] | None:
        """A batch of this run and chunk at the provider (listing every page), or None. A
        listing refused for good stops the run, saying how to go on."""
        after = None
        while True:
            try:
                page = await self.call("list batches", lambda: self.client.batches(after))
            except APIError as exc:
                raise StopRunError(f"cannot tell whether the batch of {chunk.chunk} was created: "
                                   f"list batches: {exc}{LOOKUP_HINT}") from None
            for batch in page.get("data") or ():
                meta = batch.get("metadata") or {}
                if meta.get(RUN_TAG) == self.state.run_id and meta.get(CHUNK_TAG) == chunk.chunk:
                    return batch
            if not page.get("has_more") or not page.get("data"):
                return None
            after = page["data"][-1]["id"]

    async def refused(self, chunk: Chunk, code: str, message: str) -> None:
        """A batch that never ran as a whole (refused at create, or failed without naming lines).
        Its chunk is closed before its failure lines are written (see `_SeenState`: only chunks
        with a final status are watched for lines written before a kill)."""
        if code in TOKEN_LIMIT_CODES and not self.never_fits(chunk, message):
            self.token_limit(chunk, message)
            self.requeued += chunk.job_count
            self.state.close_chunk(chunk, "failed", retry=[], bisect=[], note=message)
        else:
            if code in TOKEN_LIMIT_CODES:  # one job over the whole limit: it can never run
                code = codes.REQUEST_TOO_LARGE
            self.log(f"batch {chunk.chunk} refused: {code}: {message}; its {chunk.job_count} jobs fail")
            # closed first: a kill before the lines are all written leaves the jobs without them
            # pending (nothing ran), never a rerun refusing the chunk again and writing them twice
            planned = self.state.planned(chunk)
            self.state.close_chunk(chunk, "failed", retry=[], bisect=[], note=message)
            for line_id, ids in planned.lines:
                self.write_failures(ids, code, message, f"{chunk.chunk}-{line_id}",
                                    planned.fingerprints)
            await self.checkpoint.sync()
        await self.forget_file(chunk)

    def never_fits(self, chunk: Chunk, message: str) -> bool:
        """A one-line batch over the limit with nothing else enqueued can never run: fail it."""
        match = _LIMIT_IN_MESSAGE.search(message)
        return (chunk.line_count == 1 and match is not None
                and chunk.tokens > int(match.group(1).replace(",", "")))

    def token_limit(self, chunk: Chunk, message: str) -> None:
        """Learn the model's enqueued-token limit from the message (else: what else is in flight,
        or half this chunk); its jobs stay pending until earlier batches finish."""
        match = _LIMIT_IN_MESSAGE.search(message)
        if match:
            limit = int(match.group(1).replace(",", ""))
        else:
            others = self.state.tokens_in_flight(chunk.model) - chunk.tokens
            limit = max(others, chunk.tokens // 2, 1)
        self.log(f"batch {chunk.chunk} ({chunk.model}) is over the enqueued-token limit "
                 f"({limit:,} tokens): its {chunk.job_count} jobs wait for earlier batches")
        if self.state.token_limits.get(chunk.model) != limit:
            self.state.record({"event": "token_limit", "model": chunk.model, "limit": limit})

    async def forget_file(self, chunk: Chunk) -> None:
        """Delete the chunk's uploaded input file at the provider (best effort)."""
        if chunk.file_id is None:
            return
        try:
            await self.call(f"delete {chunk.file_id}", lambda: self.client.delete_file(chunk.file_id))
        except (APIError, _Stopped):
            pass

    # -- collecting ------------------------------------------------------------------------------
    async def collect(self, chunk: Chunk, batch: dict[str, Any]) -> bool:
        """Write the result lines of a finished batch and close its chunk; True when jobs of it
        are left without a final line for this run (to plan again)."""
        status = batch["status"]
        errors = ((batch.get("errors") or {}).get("data")) or []
        if status == "failed" and not batch.get("output_file_id") and not batch.get("error_file_id"):
            named = [e for e in errors if isinstance(e, dict) and isinstance(e.get("line"), int)]
            if named:
                await self.validation_failed(chunk, named)
            else:
                first = next((e for e in errors if isinstance(e, dict)), {})
                await self.refused(chunk, str(first.get("code") or "batch_failed"),
                                   str(first.get("message") or "the batch failed"))
            self.stats.batches_collected += 1
            return True
        left = False  # jobs of the chunk are left without a final line (see `judge`)
        downloads: list[Path] = []
        try:
            for key in ("output_file_id", "error_file_id"):
                file_id = batch.get(key)
                if file_id:
                    path = self.state.chunk_file(chunk.chunk).with_suffix(f".{key[:-8]}.download")
                    path.unlink(missing_ok=True)  # a part left by a killed run is not an answer
                    downloads.append(path)  # removed below, whole or not
                    try:
                        await self.call(f"download {file_id}",
                                        lambda f=file_id, p=path: self.client.content_to(f, p))
                    except APIError as exc:
                        if exc.status != 404:
                            raise
                        self.log(f"the {key.removesuffix('_id').replace('_', ' ')} {file_id} of "
                                 f"batch {chunk.batch_id} is gone: its jobs go into a later batch")
                        continue
            # Indexed on disk, parsed a line at a time: an output file may not fit in memory.
            answers = await asyncio.to_thread(LineIndex, downloads)
            planned = await asyncio.to_thread(self.state.planned, chunk)
            with answers, await asyncio.to_thread(
                    LineIndex, [self.state.chunk_file(chunk.chunk)]) as uploaded:
                retry: list[str] = []
                bisect: list[list[str]] = []
                gave_up: list[str] = []
                for line_id, ids in planned.lines:
                    answer = answers.get(line_id)
                    if answer is None:
                        left = True  # not run (expired or cancelled without a line): pending again
                        continue
                    line = uploaded.get(line_id)  # the body as uploaded, the job's model back
                    request = (job_requests(chunk.url, {**line["body"], "model": chunk.model}, ids)
                               if line is not None else None)
                    left = await self.judge(chunk, planned.fingerprints, line_id, ids, request,
                                            answer, retry, bisect, gave_up) or left
        finally:
            for path in downloads:
                path.unlink(missing_ok=True)
        await self.checkpoint.sync()
        self.state.close_chunk(chunk, status, retry=retry, bisect=bisect, reset=gave_up)
        self.stats.batches_collected += 1
        await self.forget_file(chunk)
        return left or bool(retry) or bool(bisect)

    async def judge(self, chunk: Chunk, fingerprints: Mapping[str, str], line_id: str,
                    ids: tuple[str, ...], request: Request | None, answer: dict[str, Any],
                    retry: list[str], bisect: list[list[str]], gave_up: list[str]) -> bool:
        """One batch line's answer (`runner.batch.collect.judge_line`), acted on: its result
        lines written (carrying `fingerprints`: the chunk's), its jobs noted for a retry, or its
        halves for the next submission. True when jobs of the line are left without a final
        line (sent again, split, or never run): they are pending again."""
        outcome = judge_line(line_id, ids, request, answer,
                             spent=max((self.state.attempts[cid] for cid in ids), default=0),
                             max_attempts=self.config.max_attempts,
                             fallback_id=f"{chunk.chunk}-{line_id}")
        if (outcome.usage and self.images is not None and spec_of(chunk.url).images
                and outcome.records[0]["id"] not in self.seen.ids):  # not written before a kill
            assert request is not None
            if not await self.save_images(chunk, fingerprints, request, outcome.records[0],
                                          gave_up):
                return False  # its failure line written instead: final for this run
        # counted only as written: lines a killed run wrote are its, not this run's
        written = [record for record in outcome.records
                   if self.sink(printed(record, fingerprints))]
        if outcome.usage and written:
            for usage in outcome.usage:
                self.stats.add_usage(chunk.model, usage)
            self.stats.succeeded += sum(1 for record in written if record.get("error") is None)
        if outcome.gave_up:  # a later run starts these with fresh attempts, as live
            gave_up.extend(outcome.gave_up)
            final = set(outcome.gave_up)
            self.stats.failed[outcome.code] += sum(1 for record in written
                                                   if record["custom_id"] in final)
        if outcome.halves:
            bisect.extend(list(part) for part in outcome.halves)
            if not outcome.unpacked:  # jobs sent alone are no bisection's extra requests
                self.stats.bisect_requests += len(outcome.halves)
        if outcome.retried:
            self.stats.retries += 1
            retry.extend(outcome.retry)
        return len(outcome.records) < len(ids)  # a job's final line is one record of the outcome

    async def save_images(self, chunk: Chunk, fingerprints: Mapping[str, str], request: Request,
                          record: dict[str, Any], gave_up: list[str]) -> bool:
        """Before an image job's success line: every image of its answer saved as a file (the
        live path's `ImageStore.save_job`), the record's answer now naming the files. False when
        saving failed: the job's failure line is written instead (final for this run)."""
        assert self.images is not None
        [job] = request.jobs
        saved = await self.images.save_job(job, record["response"]["body"])
        if isinstance(saved, SaveFailed):
            response = record["response"]
            if self.sink(printed(error_record(job.custom_id, saved.code, saved.message,
                                      record_id=record["id"], status=response["status_code"],
                                      body=response["body"], request_id=response["request_id"]),
                                 fingerprints)):
                self.stats.failed[saved.code] += 1
            gave_up.append(job.custom_id)
            return False
        record["response"]["body"] = saved
        self.stats.count_images(chunk.model, job.url, job.body)
        return True

    def sink(self, record: dict[str, Any]) -> bool:
        """Append a result line unless this very line (by id) is already in OUTPUT; True when
        appended (counts follow what this run wrote). A job given a failure line is final for
        this run, transient or not (a later run retries it)."""
        if record.get("error") is not None and record["error"].get("code") != DUPLICATE:
            self.failed_here.add(record["custom_id"])
        if record["id"] in self.seen.ids:
            return False
        self.seen.add(record, self.checkpoint.append(record))
        return True

    def write_failures(self, ids: tuple[str, ...], code: str, message: str, record_id: str,
                       fingerprints: Mapping[str, str] | None = None) -> None:
        for i, cid in enumerate(ids):
            if self.sink(printed(error_record(
                    cid, code, message, record_id=record_id if len(ids) == 1 else f"{record_id}-{i}"),
                    fingerprints)):
                self.stats.failed[code] += 1

    async def validation_failed(self, chunk: Chunk, named: list[dict[str, Any]]) -> None:
        """A batch that failed validation naming lines: those jobs fail with the provider's
        message; the others are pending again."""
        planned = self.state.planned(chunk)
        for error in named:
            number = error["line"]
            if 1 <= number <= len(planned.lines):
                line_id, ids = planned.lines[number - 1]
                message = f"the Batch API refused this line: {error.get('message') or 'invalid'}"
                self.write_failures(ids, str(error.get("code") or codes.INVALID_REQUEST), message,
                                    f"{chunk.chunk}-line{number}", planned.fingerprints)
        self.log(f"batch {chunk.chunk} failed validation: {len(named)} line(s) refused; the other "
                 "jobs go into a later batch")
        await self.checkpoint.sync()
        self.state.close_chunk(chunk, "failed", retry=[], bisect=[], note="validation")
        await self.forget_file(chunk)

    # -- planning --------------------------------------------------------------------------------
    async def plan(self) -> None:
        """Read INPUT, split its pending jobs into chunks, and submit them."""
        first = not self.planned_once
        self.planned_once = True
        self.requeued = 0  # jobs of batches refused for the enqueued-token limit during this plan
        self.skipped_busy = False
        stats, state = self.stats, self.state
        succeeded_before = stats.succeeded if first else 0
        busy = state.busy_jobs()
        group_of = state.group_of()
        groups: dict[int, list[Job]] = {}
        endpoint = self.endpoint
        splitter = Splitter(
            max_lines=self.config.line_limit, max_bytes=self.config.max_bytes,
            wire_url=lambda url: batch_url(url, endpoint),
            wire_model=lambda model: endpoint.deployment(model) if endpoint.azure else model,
            room=self.room, idle=lambda model: state.tokens_in_flight(model) == 0,
            new_file=state.draft_file)
        packer = Packer() if self.config.pack else None
        counts = Counter()
        drafts: list[Draft] = []

        def add(requests: list[Request]) -> None:
            for request in requests:
                try:
                    drafts.extend(splitter.add(request, self.bound(request)))
                except LineTooLarge as e:
                    if len(request.jobs) > 1:  # a pack: its jobs may fit one by one
                        add([single(j, tokens.rate_limit_charge(j.url, j.body))
                             for j in request.jobs])
                    else:
                        [job] = request.jobs
                        self.write_failures((job.custom_id,), codes.REQUEST_TOO_LARGE, str(e),
                                            f"big-{state.run_id}-{job.line}",
                                            {job.custom_id: job.fingerprint or ""})

        intake = self.intake
        async for item in _items(self.config):
            if self.stop.asked:
                raise _Stopped
            decision = intake.decide(item)
            if first:
                stats.count_decision(decision)
                self.note_bad(decision)
            if isinstance(decision, Refuse):  # INPUT changed since the run began
                changed = ChangedReport()
                changed.add(decision.job)
                raise ChangedJobsError(changed.message(sent=True))
            if not isinstance(decision, Pending):
                continue
            cid = decision.job.custom_id
            if cid in busy:
                self.skipped_busy = True
                continue
            if cid in self.failed_here:
                continue
            ready = intake.ready(decision)
            if first:
                stats.count_decision(ready)
                self.note_bad(ready)
            if isinstance(ready, Reject):  # not for the Batch API, or an upload unreadable
                continue
            if isinstance(ready, Fail):
                self.write_failures((cid,), ready.code, ready.message,
                                    f"ctx-{state.run_id}-{ready.job.line}",
                                    {cid: ready.job.fingerprint or ""})
                continue
            item = ready.job
            if self.config.limit is not None and self.planned_jobs >= self.config.limit:
                self.limited = True
                break
            self.planned_jobs += 1
            counts["pending"] += 1
            group = group_of.get(cid)
            if group is not None:
                members = groups.setdefault(group, [])
                members.append(item)
                if len(members) == len(state.groups[group]):
                    add([self.pack_group(groups.pop(group))])
                if len(drafts) > 0:
                    await self.submit_all(drafts)
                    drafts = []
                continue
            charge = ready.charge
            add(packer.add(item, charge) if packer else [single(item, charge)])
            if drafts:  # submit full files as the input is read: memory stays bounded
                await self.submit_all(drafts)
                drafts = []
        for members in groups.values():
            add([self.pack_group(members)])
        if packer:
            add(packer.flush())
        drafts.extend(splitter.flush())
        stats.already_done -= succeeded_before  # collected by this run before its first plan
        if first:
            stats.input_ended(sharded=self.config.shard is not None)
        await self.submit_all(drafts)
        self.waiting = splitter.held + self.requeued
        if splitter.held:
            self.log(f"{splitter.held:,} jobs wait for room under the enqueued-token limit")
        await self.checkpoint.sync()

    def prepare(self, job: Job) -> Job | BadLine:
        """The job as its batch line carries it, or a `BadLine` naming file and line: an endpoint
        the Batch API does not take (image variations: run them with --via live), or an image
        to edit that cannot be read (relative paths are relative to the job file's folder, as
        live); an edit's images go into the line as data URLs (`as_json_edit`). A custom_id starting
        with `PACK_LINE_PREFIX` is a bad line: batch line ids are either a job's custom_id or a
        pack's id with that prefix, so reserving it keeps every line id of a file distinct."""
        if job.custom_id.startswith(PACK_LINE_PREFIX):
            return BadLine(self.config.input, job.line, f"custom_id {job.custom_id!r} starts with "
                           f"{PACK_LINE_PREFIX!r}, reserved for packed lines with --via batch; "
                           "rename it (or run it with --via live)", job.custom_id)
        if not spec_of(job.url).batch:
            return BadLine(self.config.input, job.line, f"{job.url} is not taken by the Batch API; "
                           "run these jobs with --via live (the other jobs run as batches)",
                           job.custom_id)
        if job.url != IMAGES_EDITS:
            return job
        checked = check_uploads(job, Path(self.config.input).resolve().parent, self.config.input)
        return checked if isinstance(checked, BadLine) else as_json_edit(checked, self.config.input)

    def pack_group(self, jobs: list[Job]) -> Request:
        charge = sum(tokens.rate_limit_charge(j.url, j.body) for j in jobs)
        return pack(jobs, charge)

    def room(self, model: str) -> int | None:
        limit = self.state.token_limits.get(model)
        if limit is None:
            return None
        return max(0, limit - self.state.tokens_in_flight(model))

    def note_bad(self, decision: object) -> None:
        """Report a line the intake rejected, and note a duplicate once per id in OUTPUT."""
        if isinstance(decision, Reject):
            self.log(str(decision.bad))
        elif isinstance(decision, intake_.Duplicate):
            self.log(str(decision.duplicate))
            if decision.note:
                item = decision.duplicate
                self.sink(error_record(item.custom_id, DUPLICATE, str(item),
                                       record_id=f"dup-{self.state.run_id}-{item.line}"))

    async def submit_all(self, drafts: list[Draft]) -> None:
        for draft in drafts:
            if not draft.lines:
                continue
            if not self.afford(draft):
                return
            chunk = Chunk(self.state.next_chunk_id(), draft.url, draft.model, draft.tokens,
                          draft.lines, fingerprints=draft.fingerprints)
            self.state.plan(chunk, draft.out)
            self.planned_here.add(chunk.chunk)
            chunk = self.state.chunks[chunk.chunk]
            await self.upload(chunk)
            if not chunk.closed:
                await self.create(chunk)


    def bound(self, request: Request) -> float:
        """What the request's jobs may cost at most, for --max-cost (0 without it)."""
        if self.spend is None:
            return 0.0
        try:
            return sum(job_bound(job, self.config.prices, token_counter) for job in request.jobs)
        except Unpriceable as e:
            raise ConfigurationError(str(e)) from None

    def afford(self, draft: Draft) -> bool:
        """Whether --max-cost lets the draft be submitted (its upper bound, `Draft.cost`, is
        then held for the rest of the run); once one does not fit, nothing more is submitted."""
        if self.spend is None or self.capped is not None:
            return self.capped is None
        bound = draft.cost
        if not self.spend.fits(bound):
            self.capped = (f"--max-cost ${self.spend.cap:g} reached: ${self.spend.held:,.4f} "
                           f"submitted at most, the next batch could cost up to ${bound:,.4f}")
            self.log(f"{self.capped}; nothing more is submitted this run")
            return False
        self.spend.hold(bound)
        return True
