"""The dispatcher: jobs in, one result line per job out, under the API's budgets.

    input lines ─► producer ─► Request tasks ─► lane: slot ─► limiter.acquire ─► send ─► classify
                   (resume filter,               (one lane per endpoint+model)              │
                    packing)                                                              decide
                                                                                            │
                                                              SUCCEED: one line per job
                                                              RETRY_PACED: the limiter holds the 429 debt
                                                              RETRY_AFTER_SLEEP: server delay or backoff
                                                              FAIL: error line(s) · BISECT: send the halves
                                                              UNPACK: send each job alone
                                                              STOP_RUN: stop() — quota, auth, 429s only

The outcome policy (what an answer means, whether to retry, bisect or give up) is
`runner.outcome`'s; the dispatcher acts on its decisions. What a lane has shown it takes (packs,
`n`) is learned per lane in `runner.live.capabilities`: a lane whose packs fail before any worked
gets its jobs alone, and one that ignores `n` gets no more jobs asking for it.

Invariants:
- a job is written at most once per run, and only with its final outcome; a job the run did not
  finish (stopped by quota, auth, a signal or an unwritable output) gets no line, so the next run
  picks it up;
- memory is bounded: at most `max_pending` requests and `MAX_PENDING_JOBS` jobs are inside the
  dispatcher at once (the producer waits for room), plus the packer's `MAX_HELD_JOBS`;
- `stop()` stops sending at once, gives requests already on the wire `grace_s` to answer (their
  results are written), then cancels the rest.
Time (`clock`, `sleep`), the network (`send`), true token counts (`counter`) and result-line ids
(`record_ids`) are injected.
"""
from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from jobs import codes, tokens
from jobs.endpoints import spec_of
from jobs.job import Job
from jobs.packing import (
    Budget, ListNotTaken, MissingChoices, NChoicesIgnored, Packer, PartialAnswer, Request, halves,
    pack, single, split_response,
)
from jobs import intake as intake_
from jobs.intake import (
    ChangedPolicy, ChangedReport, Fail, Intake, Pending, Refuse, Reject, Run, Skip, SkipReason,
)
from jobs.reader import BadLine, Duplicate, NotAJobFile
from jobs.codes import DUPLICATE
from jobs.results import Outcome, OutputState, RecordIds, error_record, record_outcome, success_record
from jobs.settled import DONE, KEPT, PENDING, Settled
from jobs.structured import first_problem
from runner.api.endpoint import Endpoint, setup_hint
from runner.api.headers import RateLimitInfo
from runner.api.imagelimits import as_token_headers
from runner.files.images import ImageStore, SaveFailed
from runner.errors import (
    APITimeoutError, BadResponseError, ChangedJobsError, InvalidJSONError, ListNotTakenError,
    NChoicesIgnoredError,
    RunnerError,
    StopRunError, UnusableInput,
)
from runner.live.capabilities import LaneCapabilities, PackState, refuses_lists
from runner.live.concurrency import ConcurrencyLimit, lane_limit
from runner.pacing.limiter import Permit, RateLimiter, RequestTooLarge
from runner.pacing.limiters import Limiters
from runner.report.stats import RunStats
from runner.outcome import Action, Attempts, Backoff, Decision, Step, Verdict, classify, decide
from runner.tokenizer import token_counter
from runner.api.transport import HttpRequest, HttpResponse, Send, only_tree_errors

if TYPE_CHECKING:
    from jobs.spend import Prices, Spend

MAX_ATTEMPTS = 6
DEFAULT_CONCURRENCY = 128     # upper bound on requests in flight, and on open sockets
PENDING_PER_SLOT = 4          # requests waiting for budget, per concurrency slot
MAX_PENDING_JOBS = 16_384     # jobs inside the dispatcher at once (bounds memory with packing)
PACK_FLUSH_S = 0.05           # send partial packs when the input pauses this long
GRACE_S = 5.0                 # how long answers already on the wire may take after stop()


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """How one run dispatches. `concurrency` caps requests in flight (all models together) and open
    sockets; each model's live limit adapts below it."""

    max_attempts: int = MAX_ATTEMPTS
    concurrency: int = DEFAULT_CONCURRENCY
    grace_s: float = GRACE_S
    retry_failed: bool = False
    retry_codes: frozenset[str] = frozenset()  # retry permanent failures with these codes only
    changed: ChangedPolicy = ChangedPolicy.REFUSE  # jobs edited since their result (--changed)
    trust_packs: bool = False  # --pack: lanes take packs from the start, never turned off
    max_cost: float | None = None  # --max-cost: USD this run may spend (`jobs.spend`)
    limit: int | None = None  # --limit: run only the first this many pending jobs

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_cost is not None and not self.max_cost > 0:
            raise ValueError("max_cost must be a positive number of USD")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")

    @property
    def max_pending(self) -> int:
        return self.concurrency * PENDING_PER_SLOT


class Room:
    """Bounds the requests and jobs inside the dispatcher (memory). One producer waits in `enter`;
    a request bigger than the whole room still enters when the room is empty."""

    __slots__ = ("max_requests", "max_jobs", "requests", "jobs", "_freed")

    def __init__(self, max_requests: int, max_jobs: int) -> None:
        self.max_requests, self.max_jobs = max_requests, max_jobs
        self.requests = self.jobs = 0
        self._freed = asyncio.Event()

    def _fits(self, jobs: int) -> bool:
        return self.requests == 0 or (self.requests < self.max_requests
                                      and self.jobs + jobs <= self.max_jobs)

    async def enter(self, jobs: int) -> None:
        while not self._fits(jobs):
            self._freed.clear()
            await self._freed.wait()
        self.requests += 1
        self.jobs += jobs

    def leave(self, jobs: int) -> None:
        self.requests -= 1
        self.jobs -= jobs
        self._freed.set()


class InputError(StopRunError):
    """The input could not be read to its end (an I/O error); the run stops, resumable."""


class Slots:
    """A FIFO semaphore whose limit may change while it is held (the adaptive concurrency limit)."""

    __slots__ = ("_limit", "_used", "_waiters")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def used(self) -> int:
        return self._used

    def set_limit(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._wake()

    async def acquire(self) -> None:
        if self._used < self._limit and not self._waiters:
            self._used += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as we were cancelled: hand it on
            elif fut in self._waiters:  # a release may have skipped it already
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self._used -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._used < self._limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self._used += 1
                fut.set_result(None)


@dataclass(slots=True)
class Lane:
    """One budget (endpoint + model): its limiter, and its own concurrency slots sized by its rate,
    its latency and the server's learned capacity (`runner.live.concurrency`), so requests waiting
    for one model's budget hold at most that lane's share of the run's slots. (The room for pending
    requests is shared, in input order: a file dominated by a slow model's jobs slows the reading of
    the others' too.) `in_flight` counts its requests on the wire."""

    limiter: RateLimiter
    slots: Slots
    learned: ConcurrencyLimit
    in_flight: int = 0


class SinglePacker:
    """Sends every job alone (`--no-pack`)."""

    held = 0

    def add(self, job: Job, charge: int) -> list[Request]:
        return [single(job, charge)]

    def flush(self) -> list[Request]:
        return []

    def stop_packing(self, url: str, model: str) -> list[Request]:
        return []


class Dispatcher:
    """Runs the jobs of one input against one endpoint; see the module docstring for the contract."""

    def __init__(self, *, send: Send, endpoint: Endpoint, limiters: Limiters,
                 sink: Callable[[dict[str, Any]], None], config: DispatchConfig = DispatchConfig(),
                 stats: RunStats | None = None, backoff: Backoff | None = None,
                 pack: bool = True, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 log: Callable[[str], None] = lambda message: None,
                 counter: tokens.TokenCounter = token_counter,
                 record_ids: Callable[[], str] | None = None,
                 images: ImageStore | None = None, image_limiters: Limiters | None = None,
                 prepare: Callable[[Job], Job | BadLine] | None = None,
                 prices: Prices | None = None, settled: Settled | None = None,
                 settled_unread: bool = False) -> None:
        self._send = only_tree_errors(send)  # so `classify` reads the tree's errors only
        # what each line of INPUT came to, for the resume index (`runner.files.resume_index`);
        # `settled_unread`: from an index, whose DONE and KEPT lines the items leave out (they are
        # counted as the lines after them are admitted, as their Skip decisions would have been)
        self.settled = settled if settled is not None else Settled()
        self._passed_to: int | None = 0 if settled_unread else None  # lines accounted for
        self._endpoint = endpoint
        self._limiters = limiters
        # image lanes: their own limiters, whose second bucket counts images (IPM), not tokens
        self._image_limiters = image_limiters or limiters
        self._images = images  # saves image answers as files before their lines are written
        self._prepare = prepare  # checks a job against the file system (uploads) before sending
        self._sink = sink
        self.config = config
        self.stats = stats or RunStats()
        self._backoff = backoff or Backoff()
        self._packer: Packer | SinglePacker = Packer(self._budget) if pack else SinglePacker()
        self._clock = clock
        self._sleep = sleep
        self._log = log
        self._counter = counter  # true token counts, for the context-window check
        # ids of the result lines: by default a fresh random prefix, so ids are unique across runs
        self._record_id = record_ids or RecordIds(os.urandom(8).hex())
        self._lanes: dict[tuple[str, str], Lane] = {}
        self._capabilities: dict[tuple[tuple[str, str], str], LaneCapabilities] = {}
        self._last_success: float | None = None  # when the run last had a 2xx answer
        self.slots = Slots(config.concurrency)  # all lanes together: requests in flight, sockets
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[Any]] = set()
        self._room = Room(config.max_pending, MAX_PENDING_JOBS)
        self.sharded = False  # the items are one shard of INPUT (an empty one is no mistake)
        self._stopped = asyncio.Event()
        self._left_wire = asyncio.Event()  # set whenever a request's answer (or failure) arrives
        # --max-cost: the money against the cap, at `prices` (`jobs.spend`)
        self._prices = prices
        self.spend: Spend | None = None
        if config.max_cost is not None:  # jobs.spend is loaded only for a capped run
            from jobs.spend import Spend
            self.spend = Spend(config.max_cost)
        self._spend_freed = asyncio.Event()
        self._admitted = 0  # jobs the intake let run (--limit counts them)
        self.limited = False  # --limit held back pending jobs

    # -- control ---------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    def stop(self, reason: str) -> None:
        """Stop the run early (resumable): no new requests; answers on the wire get the grace period."""
        if not self._stopped.is_set():
            self.stats.stop_reason = reason
            self._log(f"stopping: {reason}")
            self._stopped.set()

    def _now(self) -> float:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        return self._clock()

    def _lane(self, model: str, url: str | None = None) -> Lane:
        key = self._endpoint.budget_key(model)
        images = url is not None and spec_of(url).images
        lane = self._lanes.get((*key, "images") if images else key)
        if lane is None:
            cap = self.config.concurrency
            limiters = self._image_limiters if images else self._limiters
            limiter, learned = limiters.get(key), ConcurrencyLimit(maximum=cap)
            lane = self._lanes[(*key, "images") if images else key] = Lane(
                limiter, Slots(self._lane_limit(limiter, learned)), learned)
        return lane

    def _capabilities_of(self, request: Request) -> LaneCapabilities:
        """What the request's lane (base URL, endpoint, model) has shown it takes."""
        key = (self._endpoint.budget_key(request.model), request.url)
        caps = self._capabilities.get(key)
        if caps is None:
            caps = self._capabilities[key] = LaneCapabilities(trusted=self.config.trust_packs)
        return caps

    def _budget(self, model: str) -> Budget | None:
        """What the model's limiter knows of its budget, for sizing packs."""
        limiter = self._lane(model).limiter
        bucket = limiter.tokens_bucket
        return Budget(rpm=limiter.rpm, tpm=limiter.tpm,
                      token_capacity=bucket.capacity if bucket is not None else None)

    # -- the run ---------------------------------------------------------------------------------

    async def run(self, items: AsyncIterable[Job | BadLine | Duplicate], state: OutputState) -> RunStats:
        """Dispatch every job of `items` that `state` says still needs running; returns the stats."""
        self.stats.started = self._now()
        producer = asyncio.create_task(self._produce(items, state))
        finished = asyncio.create_task(self._drain(producer))
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            await asyncio.wait({finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
            failure = finished.exception() if finished.done() and not finished.cancelled() else None
            expected = isinstance(failure, (StopRunError, UnusableInput))
            if failure is not None:
                self.stats.unusable_input = isinstance(failure, UnusableInput)
                self.stop(str(failure) if expected else f"internal error: {failure!r}")
            if self.stopping:
                await self._shutdown(producer)
            if failure is not None and not expected:
                raise failure  # a bug: the caller reports it
        finally:
            for task in (producer, finished, stopped):
                task.cancel()
            await asyncio.gather(producer, finished, stopped, return_exceptions=True)
        self.stats.finished = self._now()
        self._note_caps()
        return self.stats

    def _note_caps(self) -> None:
        """What --max-cost and --limit did, in the stats (a limit that held jobs back stops the
        run, resumable: exit 3 says work remains)."""
        if self.spend is not None:
            self.stats.spend_cap, self.stats.spent = self.spend.cap, self.spend.spent
        if self.limited:
            self.stats.limit = self.config.limit
            if self.stats.stop_reason is None:
                self.stats.stop_reason = (f"--limit {self.config.limit:,}: ran the first "
                                          f"{self.config.limit:,} pending jobs; the next run "
                                          "takes the rest")

    async def _drain(self, producer: asyncio.Task[None]) -> None:
        await producer
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _shutdown(self, producer: asyncio.Task[None]) -> None:
        producer.cancel()
        waiting = [t for t in self._tasks if t not in self._sending]
        for task in waiting:
            task.cancel()
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=self.config.grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(producer, *self._tasks, return_exceptions=True)

    async def _produce(self, items: AsyncIterable[Job | BadLine | Duplicate], state: OutputState) -> None:
        intake = Intake(state, retry_failed=self.config.retry_failed,
                        retry_codes=self.config.retry_codes, changed=self.config.changed,
                        counter=self._counter, prepare=self._prepare)
        lines: asyncio.Queue[Job | BadLine | Duplicate | RunnerError | None] = asyncio.Queue(maxsize=1024)

        async def read() -> None:
            try:
                async for item in items:
                    await lines.put(item)
            except UnusableInput as exc:
                await lines.put(exc)
                return
            except NotAJobFile as exc:  # its last bad line is reported like the others first
                if exc.last is not None:
                    await lines.put(exc.last)
                await lines.put(UnusableInput(str(exc)))
                return
            except Exception as exc:  # an unreadable input must end the run, not hang it
                await lines.put(InputError(f"cannot read the input: {exc}"))
                return
            await lines.put(None)

        reader = asyncio.create_task(read())
        try:
            while not self.stopping:
                if self._packer.held and lines.empty():
                    try:  # the input paused: send partial packs rather than hold them back
                        item = await asyncio.wait_for(lines.get(), PACK_FLUSH_S)
                    except asyncio.TimeoutError:
                        await self._submit_all(self._packer.flush())
                        continue
                else:
                    item = await lines.get()
                if item is None:
                    self._pass_settled(len(self.settled.states) + 1)
                    self.stats.input_ended(sharded=self.sharded)
                    self.settled.read_all = True
                    break
                if isinstance(item, (InputError, UnusableInput)):
                    raise item
                if self._over_limit(item, intake):
                    self._pass_settled(item.line)  # the settled lines before it were reached
                    break
                await self._submit_all(self._admit(item, intake))
            if not self.stopping:
                await self._submit_all(self._packer.flush())
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def _admit(self, item: Job | BadLine | Duplicate, intake: Intake) -> list[Request]:
        """One input item, as the intake decides: reported, skipped, failed, or packed."""
        self._pass_settled(item.line)
        decision = intake.decide(item)
        self.stats.count_decision(decision)
        if isinstance(decision, Pending):
            decision = intake.ready(decision)
            self.stats.count_decision(decision)
        intake_.settle(self.settled, decision)
        match decision:
            case Reject(bad):
                self._log(str(bad))
            case intake_.Duplicate(duplicate, note):
                self._log(str(duplicate))
                if note:
                    self._sink(error_record(duplicate.custom_id, DUPLICATE, str(duplicate),
                                            record_id=self._record_id()))
            case Refuse(job):  # stdin (not read twice), or INPUT changed since the run began
                changed = ChangedReport()
                changed.add(job)
                raise ChangedJobsError(changed.message(sent=True))
            case Fail(job, code, message):
                self._fail_jobs((job,), code, message)
            case Run(job, charge):
                self._admitted += 1
                return self._packer.add(job, charge)
        return []

    def _pass_settled(self, line: int) -> None:
        """Count the index's DONE and KEPT lines before `line` not counted yet (lines the items
        left out), as the intake's Skip decisions count; `line` itself is accounted for."""
        if self._passed_to is None:
            return
        first, end = self._passed_to, line - 1
        if end > first:
            states = self.settled.states
            self.stats.count_settled(states.count(DONE, first, end), states.count(KEPT, first, end))
        self._passed_to = max(first, line)

    async def _submit_all(self, requests: list[Request]) -> None:
        for request in requests:
            await self._submit(request)

    async def _submit(self, request: Request) -> None:
        jobs = len(request.jobs)
        await self._room.enter(jobs)
        task = self._spawn(self._process(request))
        task.add_done_callback(lambda _: self._room.leave(jobs))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None or self.stopping:
            return
        exc = task.exception()
        if isinstance(exc, StopRunError):
            self.stop(str(exc))
        else:
            self._log(f"internal error: {exc!r}")
            self.stop(f"internal error: {exc!r}")

    # -- one request -----------------------------------------------------------------------------

    async def _process(self, request: Request, sent_before: int = 0) -> None:
        lane = self._lane(request.model, request.url)
        caps = self._capabilities_of(request)
        attempts = Attempts(sent_before, 0, 0)  # a job of a pack sent as a pack: sent once
        while not self.stopping:
            if not await self._may_send(request, caps, attempts):
                return
            limiter = lane.limiter  # read anew: the lane's models may have come to share a budget
            # Slots first (the lane's, then the run's), then the budget: a request is admitted
            # only when it can be sent at once, so requests held back by the concurrency cap never
            # leave together later.
            too_large = moved = None
            try:
                http = self._endpoint.build(request)
            except OSError as exc:  # an upload vanished or became unreadable since it was checked
                self._fail_jobs(request.jobs, codes.INVALID_REQUEST, f"cannot read an upload: {exc}")
                return
            bound = await self._hold_spend(request)
            if bound is None:
                return
            await lane.slots.acquire()
            try:
                await self.slots.acquire()
                try:
                    permit = await limiter.acquire(request.charge)
                except RequestTooLarge as exc:
                    too_large = exc
                else:
                    if self.stopping or self._refuses_n(request, caps, attempts):
                        limiter.on_failure(permit)  # admitted but never sent
                        return
                    moved = lane.limiter is not limiter  # its models came to share one budget
                    if moved:
                        limiter.on_failure(permit)  # admitted by the old budget: queue anew
                    else:
                        verdict, answers, response = await self._attempt(request, http, lane,
                                                                         limiter, permit)
                finally:
                    self.slots.release()
            finally:
                lane.slots.release()
            caps.release_pack(request)
            self._release_spend(bound)
            if moved:
                continue
            if too_large is not None:
                if request.packed:  # packed before the budget was known: send it in halves
                    await asyncio.wait([self._spawn(self._process(part)) for part in halves(request)])
                else:
                    message = str(too_large)
                    if spec_of(request.url).images:  # the image lane's budget counts images
                        message = (f"request asks for {too_large.tokens} images but the whole budget "
                                   f"is {too_large.tpm:g} images per minute; it can never be admitted")
                    self._fail_jobs(request.jobs, codes.REQUEST_TOO_LARGE, message)
                return
            decision = self._decide(request, caps, verdict, attempts)
            if decision.step is Step.STOP_RUN and verdict.endpoint_fault:
                # Nothing has answered yet: if requests on the wire to other routes or models
                # succeed, this fault is this request's own (a route this server lacks), not a
                # wrong base URL; the run stops only when nothing works.
                await self._settle()
                if self._last_success is not None:
                    decision = self._decide(request, caps, verdict, attempts)
            attempts = decision.attempts
            if verdict.code == codes.LIST_NOT_TAKEN and answers and answers[0] is not None:
                # the first job was answered all the same: written (a success of the run); what
                # follows is the rest's, whose attempts this answer does not spend
                self._last_success = self._now()
                self._succeed(request, answers, response)
                rest = request.jobs[1:]
                request = pack(rest, sum(tokens.rate_limit_charge(j.url, j.body) for j in rest))
                answers = None
                attempts = Attempts(attempts.sent, attempts.paced, attempts.counted - int(
                    decision.counts and attempts.counted > 0))
            if decision.step is Step.SUCCEED:
                if self._images is not None and spec_of(request.url).images:
                    answers = await self._save_images(request, answers, response)
                    if answers is None:
                        return
                self._succeed(request, answers, response)
                if answers is not None and None in answers:
                    await self._send_rest(request, answers)
                return
            if decision.step is Step.STOP_RUN:
                why = f"{verdict.code}: {decision.message}"
                if verdict.endpoint_fault or verdict.code in (codes.INVALID_API_KEY,
                                                              codes.PERMISSION_DENIED):
                    # the URL and the likely fix first
                    why = (f"{setup_hint(self._endpoint, request.url, request.model, verdict.code)}"
                           f" ({why})")
                if not self.stopping:  # the first stop's reason is the run's, and so its exit code
                    self.stats.misconfigured = verdict.misconfigured
                self.stop(why)
                return
            if decision.step is Step.FAIL:
                self._fail_jobs(request.jobs, decision.code, decision.message, response)
                return
            if decision.step is Step.BISECT:
                await self._bisect(request, verdict)
                return
            if decision.step is Step.UNPACK:
                # jobs of a pack whose answer ignored their n were seen once (each goes once
                # more, alone); jobs of a pack refused as a list were never answered at all
                await self._unpack(request, sent=verdict.code == codes.N_NOT_SUPPORTED)
                return
            self.stats.retries += 1
            if decision.step is Step.RETRY_PACED:
                continue  # the limiter now holds the debt; waiting there is exactly long enough
            await self._sleep(decision.wait(self._backoff))

    async def _attempt(self, request: Request, http: HttpRequest, lane: Lane,
                       limiter: RateLimiter, permit: Permit
                       ) -> tuple[Verdict, list[dict[str, Any]] | None, HttpResponse | None]:
        """Send once. Tells `limiter` (which admitted `permit`) exactly one of observe /
        on_rate_limited / on_failure."""
        task = asyncio.current_task()
        assert task is not None
        self._sending.add(task)
        self.stats.requests += 1
        if not spec_of(request.url).images:  # an image lane charges images, not tokens
            self.stats.charged_tokens += permit.charged
        self.stats.model_requests[request.model] += 1
        self.stats.model_charged[request.model] += permit.charged
        self.stats.in_flight += 1
        lane.in_flight += 1
        started = self._now()
        self.stats.sent(request.model, started)
        try:
            response = await self._send(http)
        except asyncio.CancelledError:
            limiter.on_failure(permit)
            raise
        except Exception as exc:  # no answer (APIConnectionError), or a bug in `send`
            limiter.on_failure(permit)
            if isinstance(exc, APITimeoutError):
                self._on_timeout(lane, started)
            return classify(None, {}, None, exc=exc), None, None
        finally:
            self._sending.discard(task)
            self.stats.in_flight -= 1
            lane.in_flight -= 1
            self.stats.answered(request.model, self._now())
            self._left_wire.set()
        headers = response.headers
        images = spec_of(request.url).images
        if images:  # images per minute, in the place of tokens
            headers = as_token_headers(headers, response.body if response.status == 429 else None)
        info = RateLimitInfo.from_headers(headers)
        verdict = classify(response.status, headers, response.body)
        self._notice_budget(request.model, info, permit, rate_limited=verdict.rate_limited,
                            images=images)
        if verdict.rate_limited:
            self.stats.rate_limited += 1
            limiter.on_rate_limited(permit, verdict.delay, info)
            return verdict, None, response
        limiter.observe(permit, info)  # first: the lane's size reads the rate it may have just learned
        if verdict.action is Action.OK:  # refusals come back at once: they say nothing of latency
            self._observe_latency(lane, self._now() - started)
        if verdict.action is Action.OK:
            body = None
            try:
                body = orjson.loads(response.body)
                verdict = classify(response.status, response.headers, body)  # the answer's shape
                if verdict.action is not Action.OK:
                    return verdict, None, response
                answers = split_response(request, body)
                problem = first_problem(request.jobs, answers)  # structured outputs checked
                if problem is not None:
                    self._billed(request, body)
                    return classify(None, {}, None, exc=InvalidJSONError(problem)), None, response
            except PartialAnswer as exc:  # keep what came back; the rest is sent again
                return verdict, [exc.answers.get(i) for i in range(len(request.jobs))], response
            except ListNotTaken as exc:  # a lesson, and (mostly) still the first job's own answer
                verdict = classify(None, {}, None, exc=ListNotTakenError(str(exc)))
                if exc.first is None:
                    self._billed(request, body)
                    return verdict, None, response
                return verdict, [exc.first] + [None] * (len(request.jobs) - 1), response
            except (orjson.JSONDecodeError, MissingChoices) as exc:  # jobs/ knows no runner errors
                self._billed(request, body)
                error = (NChoicesIgnoredError if isinstance(exc, NChoicesIgnored) else
                         ListNotTakenError if isinstance(exc, ListNotTaken) else BadResponseError)
                return classify(None, {}, None, exc=error(str(exc))), None, response
            return verdict, answers, response
        return verdict, None, response

    async def _may_send(self, request: Request, caps: LaneCapabilities,
                        attempts: Attempts = Attempts()) -> bool:
        """Whether to go on with `request` now. Not when its lane ignores the `n` it asks for (its
        jobs fail at once), nor a pack where packing is off (its jobs go alone). A pack on a lane
        whose packs are unproven waits until no other pack is on the wire there."""
        if self._refuses_n(request, caps, attempts):
            return False
        if not request.packed or await caps.claim_pack(request):
            return True
        await self._unpack(request)
        return False

    def _refuses_n(self, request: Request, caps: LaneCapabilities,
                   attempts: Attempts = Attempts()) -> bool:
        """Fail the request's jobs, unsent, when they ask for an `n` their lane ignores (checked
        again once admitted: the lane may have shown it while the request waited). A request
        already sent (its own answer looked like that) is sent once more instead: its second
        answer decides."""
        if request.n > 1 and caps.ignores_n and attempts.sent == 0:
            self._fail_jobs(request.jobs, codes.N_NOT_SUPPORTED, f"not sent: {caps.n_message}")
            return True
        return False

    async def _settle(self) -> None:
        """Wait until the run has a success, or no request is on the wire any more."""
        while self._last_success is None and self.stats.in_flight > 0 and not self.stopping:
            self._left_wire.clear()
            await self._left_wire.wait()

    def _decide(self, request: Request, caps: LaneCapabilities, verdict: Verdict,
                attempts: Attempts) -> Decision:
        """`decide()` with what the run knows (time since its last success, whether the lane
        ignored `n` before), then the lane's lesson: on a lane where no pack has worked, a pack
        that fails as a list not taken would fail is a strike, and is sent again job by job when
        packing goes off there or when its retries are used up."""
        now = self._now()
        if verdict.action is Action.OK:
            self._last_success = now
        since = now - (self.stats.started if self._last_success is None else self._last_success)
        if verdict.action is Action.OK and request.n > 1 and caps.n_answered():
            self._log(f"{request.model} ({request.url}): a request asking n={request.n} was "
                      "answered in full: the lane honours n after all (earlier short answers "
                      "were faults)")
        confirmed = was_confirmed = caps.ignores_n
        # a pack holding as many prompts as n asked choices looks the same when lists are ignored
        if verdict.code == codes.N_NOT_SUPPORTED and request.prompts != request.n and not confirmed:
            confirmed = caps.note_n_ignored(verdict.message)
            if confirmed:
                self.stats.n_ignored.append((request.model, request.url,
                                             f"{caps.n_ignored} requests answered with one choice "
                                             f"per prompt where n asked for more (last: "
                                             f"{verdict.message})"))
                self._log(f"{request.model} ({request.url}): {verdict.message}, on "
                          f"{caps.n_ignored} requests; jobs there asking for n > 1 fail as "
                          f"{codes.N_NOT_SUPPORTED} without being sent (after one more try for "
                          "a job whose own answer showed it)")
        # a job whose own answer is what confirms the lane is sent once more before it fails on
        # n; one answered after other requests had proved it fails at once
        confirmed = confirmed and (was_confirmed or attempts.sent > 0)
        decision = decide(verdict, attempts, packed=request.packed,
                          max_attempts=self.config.max_attempts, since_success=max(0.0, since),
                          confirmed=confirmed, answered=self._last_success is not None)
        if not request.packed or caps.packs is PackState.TRUSTED:
            return decision
        if decision.step is Step.SUCCEED:
            caps.pack_answered()
        elif verdict.action is Action.RETRY and refuses_lists(verdict.code, verdict.message,
                                                               request.prompts):
            if caps.pack_failed():
                self._packing_off(request, caps, verdict)
            if caps.packs is PackState.OFF or decision.step is Step.FAIL:
                return Decision(Step.UNPACK, verdict, decision.attempts, decision.message)
        return decision

    def _notice_budget(self, model: str, info: RateLimitInfo, permit: Permit, *,
                       rate_limited: bool = False, images: bool = False) -> None:
        """Whether the answer shows the models of its base URL share one budget; if so they are
        paced together from now on (said once in the log and the summary). Image lanes learn it
        among themselves (their budgets count images, not tokens)."""
        key = self._endpoint.budget_key(model)
        limiters = self._image_limiters if images else self._limiters
        if rate_limited and limiters.notice_429(key):
            why = f"{model} met 429s at its own limit while the other models were sending"
        elif limiters.notice(key, info, permit):
            why = ("its rate-limit headers name the key's budget" if info.scope == "key" else
                   f"{model}'s budget showed requests spent that only the other models sent")
        else:
            return
        what = "image model" if images else "model"
        self.stats.budget_shared.append((key[0], why))
        self._log(f"{key[0]}: one budget for the key over every {what} ({why}); pacing them "
                  "together from now on (--budget-scope model to keep them apart)")
        for other, lane in self._lanes.items():  # image lanes are (base, model, "images")
            if other[0] == key[0] and (len(other) == 3) == images:
                lane.limiter = limiters.get(other[:2])

    def _packing_off(self, request: Request, caps: LaneCapabilities, verdict: Verdict) -> None:
        """Packing just went off for the request's lane: say so once; the packer's partial packs
        there go job by job."""
        reason = (f"{caps.pack_failures} packs were refused as lists before any was answered "
                  f"in full (last: {verdict.code}: {verdict.message})")
        self.stats.packing_off.append((request.model, request.url, reason))
        self._log(f"packing off for {request.model} ({request.url}): {reason}; its jobs are sent "
                  "alone for the rest of the run")
        for alone in self._packer.stop_packing(request.url, request.model):
            self._spawn(self._process(alone))

    def _observe_latency(self, lane: Lane, seconds: float) -> None:
        """An answer's latency resizes its lane (`runner.live.concurrency`): enough in flight to use
        the budget at that latency (Little's law), no more than the server has shown it takes."""
        lane.learned.on_answer(seconds, lane.in_flight + 1)  # + 1: this answer was in flight too
        lane.slots.set_limit(self._lane_limit(lane.limiter, lane.learned))

    def _on_timeout(self, lane: Lane, sent_at: float) -> None:
        """No answer within the read timeout: the server's queue is longer than that, so the lane
        shrinks; the retry takes a lane slot again, so it waits for room at the smaller limit."""
        lane.learned.on_timeout(sent_at, self._now(), lane.in_flight)  # still counts this one
        lane.slots.set_limit(self._lane_limit(lane.limiter, lane.learned))

    def _lane_limit(self, limiter: RateLimiter, learned: ConcurrencyLimit) -> int:
        rpm = limiter.rpm
        bucket = limiter.requests_bucket
        burst = bucket.capacity if bucket is not None and limiter.trusts_server else 0.0
        return lane_limit(learned, cap=self.config.concurrency,
                          rate_per_s=None if rpm is None else rpm / 60.0, burst=burst)

    # -- outcomes --------------------------------------------------------------------------------

    def _succeed(self, request: Request, answers: list[dict[str, Any]] | None,
                 response: HttpResponse | None) -> None:
        assert answers is not None and response is not None
        request_id = response.headers.get("x-request-id")
        for job, answer in zip(request.jobs, answers):
            if answer is None:  # a partial answer lacked this job's choices: it goes again
                continue
            self._sink(success_record(job.custom_id, answer, record_id=self._record_id(),
                                      request_id=request_id, fingerprint=job.fingerprint))
            self.settled.set(job.line, DONE)
            self.stats.add_usage(job.model, answer.get("usage"))
            self.stats.succeeded += 1
            if self.spend is not None and self._prices is not None:
                from jobs.spend import answer_cost
                self.spend.pay(answer_cost(job, answer.get("usage"), self._prices))

    def _billed(self, request: Request, body: Any) -> None:
        """A 2xx answer no job could use (broken JSON for its schema, choices missing): the
        server billed its `usage` all the same, so the run's tokens and --max-cost count it."""
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return
        self.stats.add_billed(request.model, usage)
        if self.spend is not None and self._prices is not None:
            from jobs.spend import answer_cost
            self.spend.pay(answer_cost(request.jobs[0], usage, self._prices))

    async def _send_rest(self, request: Request, answers: list[dict[str, Any] | None]) -> None:
        """A pack answered in part (a fault: choices of several prompts came back, some were
        dropped): the jobs answered were written; the others go again as one pack, with fresh
        attempts (every partial answer writes at least one job, so this ends)."""
        if self.stopping:
            return
        rest = [job for job, answer in zip(request.jobs, answers) if answer is None]
        self.stats.partial_answers += 1
        self.stats.retries += 1
        self._log(f"an answer to {len(request.jobs)} packed jobs lacked the choices of "
                  f"{len(rest)}: the {len(request.jobs) - len(rest)} answered are kept, the "
                  f"{len(rest)} others are sent again")
        again = pack(rest, sum(tokens.rate_limit_charge(j.url, j.body) for j in rest))
        await asyncio.wait([self._spawn(self._process(again))])

    async def _save_images(self, request: Request, answers: list[dict[str, Any]] | None,
                           response: HttpResponse | None) -> list[dict[str, Any]] | None:
        """Every image of the answer written to its file (downloaded first when a `url`), then
        the answers to write; None when that failed and the job got a transient error line."""
        assert self._images is not None and answers is not None
        [job] = request.jobs
        saved = await self._images.save_job(job, answers[0])
        if isinstance(saved, SaveFailed):
            self._fail_jobs(request.jobs, saved.code, saved.message, response)
            return None
        self.stats.count_images(job.model, job.url, job.body)
        return [saved]

    async def _bisect(self, request: Request, verdict: Verdict) -> None:
        """A pack refused for something one prompt can cause: each half is sent again, recursively,
        so only the guilty jobs fail (`decide` chose this; other refusals fail the whole pack)."""
        if self.stopping:
            return
        parts = halves(request)
        self.stats.bisect_requests += len(parts)
        self._log(f"a pack of {len(request.jobs)} jobs was refused ({verdict.code}); sending it as "
                  f"{len(parts)} halves to find the job(s) at fault")
        await asyncio.wait([self._spawn(self._process(part)) for part in parts])

    async def _unpack(self, request: Request, sent: bool = False) -> None:
        """Send each job of a pack alone (packing is off on its lane, or its answer ignored `n`)."""
        if self.stopping:
            return
        parts = [single(job, tokens.rate_limit_charge(job.url, job.body)) for job in request.jobs]
        await asyncio.wait([self._spawn(self._process(part, int(sent))) for part in parts])

    def _fail_jobs(self, jobs: tuple[Job, ...], code: str, message: str,
                   response: HttpResponse | None = None) -> None:
        status = body = request_id = None
        if response is not None:
            status, request_id = response.status, response.headers.get("x-request-id")
            try:
                body = orjson.loads(response.body)
            except orjson.JSONDecodeError:
                body = None
        for job in jobs:
            record = error_record(job.custom_id, code, message, record_id=self._record_id(),
                                  status=status, body=body, request_id=request_id,
                                  fingerprint=job.fingerprint)
            self._sink(record)
            self.settled.set(job.line, KEPT if record_outcome(record) is Outcome.PERMANENT
                             else PENDING)
            self.stats.failed[code] += 1
            self.stats.model_failed[job.model] += 1

    # -- --max-cost and --limit ------------------------------------------------------------------

    async def _hold_spend(self, request: Request) -> float | None:
        """Hold the request's upper bound against --max-cost (0.0 without a cap); waits while
        answers on the wire may leave room. None when it cannot fit even with nothing on the
        wire, or cannot be priced: the run stops (resumable; exit 2 for a job without a price)."""
        spend = self.spend
        if spend is None or self._prices is None:
            return 0.0
        from jobs.spend import Unpriceable, job_bound
        try:
            bound = sum(job_bound(job, self._prices, self._counter) for job in request.jobs)
        except Unpriceable as exc:
            if not self.stopping:
                self.stats.misconfigured = True
            self.stop(str(exc))
            return None
        while not spend.fits(bound) and not self.stopping:
            if not spend.holding:  # nothing on the wire will leave room
                self.stats.spend_capped = True
                self.stop(f"--max-cost ${spend.cap:g} reached: {usd(spend.spent)} spent, the "
                          f"next request could cost up to {usd(bound)}")
                break
            self._spend_freed.clear()
            await self._spend_freed.wait()
        if self.stopping:
            return None
        spend.hold(bound)
        return bound

    def _release_spend(self, bound: float) -> None:
        if self.spend is not None and self._prices is not None:
            self.spend.release(bound)
            self._spend_freed.set()

    def _over_limit(self, item: Job | BadLine | Duplicate, intake: Intake) -> bool:
        """--limit N: N jobs were let run and `item` is one more that would run (it stays pending,
        the run ends resumable)."""
        limit = self.config.limit
        if limit is None or self._admitted < limit or not isinstance(item, Job):
            return False
        if not isinstance(intake.decide(item), Pending):  # pure: `_admit` decides it again
            return False
        self.limited = True
        return True


def usd(amount: float) -> str:
    """Dollars with the digits a small amount needs (never "$0.0000" for a cent's fraction)."""
    if amount == 0 or amount >= 0.01:
        return f"${amount:,.4f}"
    return f"${amount:.2g}" if amount >= 1e-6 else f"${amount:.1e}"
