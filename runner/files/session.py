"""The output session: one run's hold on OUTPUT, the same for every backend.

    async with OutputSession(input, output, log=...) as session:   guard, signals, lock
        report = session.load(state)       OUTPUT read into `state` (repaired, oddities logged)
        await session.check_changed(intake, items)   jobs edited since their results: refuse (exit 2)
        checkpoint = session.open()        appending from here on
        ... the backend's loop, stopped by `session.stop` ...
        problem = await session.finish()   last sync, close
                                           (leaving: signals restored, lock released and removed)

Contract: nothing beside OUTPUT is created or changed before the guard has passed (an OUTPUT
that is INPUT, a job file or compressed is refused first); no second run appends to OUTPUT while
this one holds it; a SIGINT/SIGTERM at any moment, even while OUTPUT is read, becomes
`session.stop(reason)`; every line appended is synced before the session ends, and a failure to
do so is returned by `finish` as the reason the run stopped (resumable).
"""
from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from types import TracebackType

from jobs.intake import ChangedPolicy, ChangedReport, Intake, Refuse, settle
from jobs.job import Job
from jobs.reader import BadLine, Duplicate
from jobs.results import OutputState
from jobs.settled import Settled
from runner.errors import ChangedJobsError, RunnerError
from runner.files import checkpoint as ckpt
from runner.files import resume_index
from runner.files.guard import check_output
from runner.files.inputs import STDIN, input_name

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop:
    """A request to stop the run early (resumable), which may come (by signal) before there is
    anything to stop: the first reason is kept, `wait()` returns once asked, and each connected
    target is called with the reason (at once if it was asked already)."""

    __slots__ = ("reason", "_targets", "_event")

    def __init__(self) -> None:
        self.reason: str | None = None
        self._targets: list[Callable[[str], None]] = []
        self._event = asyncio.Event()

    def __call__(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()
        for target in list(self._targets):
            target(reason)

    @property
    def asked(self) -> bool:
        return self.reason is not None

    async def wait(self) -> None:
        await self._event.wait()

    def connect(self, target: Callable[[str], None]) -> None:
        self._targets.append(target)
        if self.reason is not None:
            target(self.reason)

    def disconnect(self, target: Callable[[str], None]) -> None:
        if target in self._targets:
            self._targets.remove(target)


class OutputSession:
    """OUTPUT held for one run of INPUT (see the module docstring). `secrets` never reach a line
    written; `log` gets what the session has to say (repairs, oddities of OUTPUT)."""

    def __init__(self, input: str, output: Path, *, log: Callable[[str], None],
                 secrets: tuple[str | None, ...] = (), handle_signals: bool = True) -> None:
        self.input = input
        self.output = output
        self.stop = Stop()
        self.checkpoint: ckpt.Checkpoint | None = None
        self._log = log
        self._secrets = tuple(s for s in secrets if s)
        self._signals = SIGNALS if handle_signals else ()
        self._lock = ckpt.RunLock(output)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._states: list[OutputState] = []  # loaded here: their files are let go at the end

    async def __aenter__(self) -> OutputSession:
        check_output(self.input, self.output)  # before the lock: nothing beside OUTPUT changes
        self._loop = asyncio.get_running_loop()
        for sig in self._signals:  # from the start: a signal while OUTPUT is read counts too
            self._loop.add_signal_handler(sig, self.stop, f"interrupted by {sig.name}")
        try:
            self._lock.acquire()
        except BaseException:
            self._remove_signals()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self.checkpoint is not None:  # left by an error: close without hiding it
                try:
                    self.checkpoint.close()
                except ckpt.CheckpointError as e:
                    self._log(f"runner: {e}")
                self.checkpoint = None
        finally:
            for state in self._states:
                state.close()
            self._remove_signals()
            self._lock.release()

    def _remove_signals(self) -> None:
        if self._loop is not None:
            for sig in self._signals:
                self._loop.remove_signal_handler(sig)

    def load(self, state: OutputState, *, start: int = 0, report: bool = True
             ) -> ckpt.LoadReport:
        """Read OUTPUT into `state` (its lines from offset `start` on) and repair it for
        appending (`checkpoint.load`); say what was cut off or skipped, and how many results
        carry no fingerprint (unless not `report`: then `report` it later, or not at all when
        OUTPUT is read again)."""
        self._states.append(state)
        loaded = ckpt.load(self.output, state, start=start)
        if report:
            self.report(loaded, state)
        return loaded

    def report(self, loaded: ckpt.LoadReport, state: OutputState, *, lines: bool = True) -> None:
        """Say what `load` found (`loaded`, into `state`) that a user should know (only the
        repair without `lines`: the lines are read and reported again)."""
        output = self.output
        if loaded.torn_bytes:
            self._log(f"{output}: cut off a torn last line ({loaded.torn_bytes} bytes) left by an "
                      "interrupted run; its job runs again")
        if not lines:
            return
        for number in loaded.first_bad_lines:
            self._log(f"{output}:{number}: not a result line (skipped; its job runs again)")
        if loaded.bad_lines > len(loaded.first_bad_lines):
            self._log(f"{output}: {loaded.bad_lines - len(loaded.first_bad_lines):,} more lines "
                      "that are not result lines")
        unprinted = len(state.done) + len(state.permanent) - len(state.fingerprints)
        if unprinted > 0:
            self._log(f"{output}: {unprinted:,} results carry no job fingerprint (written before "
                      "runner recorded them, or by another tool): they count as answers to the "
                      "jobs as they are now")

    async def check_changed(self, intake: Intake,
                            items: Callable[[], AsyncIterable[Job | BadLine | Duplicate]],
                            settled: Settled | None = None) -> None:
        """Refuse the run (`ChangedJobsError`, exit 2) before anything is sent when jobs of INPUT
        changed since their results and the run's `intake` would refuse them (its --changed
        policy is REFUSE; a failure retried by --retry-failed or --retry-codes runs, edited or
        not). INPUT is read once more for this, only when OUTPUT holds fingerprinted results;
        stdin cannot be read twice: there the intake stops the run at the first changed job it
        meets instead. `settled`, when given, is filled with what each line came to
        (`jobs.intake.settle`), and `read_all` set once every item was decided."""
        if intake.changed is not ChangedPolicy.REFUSE or not intake.state.fingerprints \
                or self.input == STDIN:
            return
        await self.decide_all(intake, items, settled)

    async def decide_all(self, intake: Intake,
                     items: Callable[[], AsyncIterable[Job | BadLine | Duplicate]],
                         settled: Settled | None = None) -> None:
        """Decide every item before anything is sent: `check_changed` whatever the policy and
        OUTPUT hold (the check, and the pass that settles a partial resume index)."""
        report = ChangedReport()
        try:
            async for item in items():
                if self.stop.asked:
                    return
                decision = intake.decide(item)
                if isinstance(decision, Refuse):
                    report.add(decision.job)
                elif settled is not None:
                    settle(settled, decision)
        except (RunnerError, ValueError, OSError):  # not a job file, unreadable: the backend's
            return                                  # own reading reports it as it always has
        if report.count:
            raise ChangedJobsError(report.message(input_name(self.input), str(self.output)))
        if settled is not None:
            settled.read_all = True

    def open(self, *, keeps_partial_index: bool = False) -> ckpt.Checkpoint:
        """Start appending to OUTPUT (created if need be). A partial resume index is removed
        first unless this run `keeps_partial_index` (writes its own): it would not know what
        this run appends (`runner.files.resume_index`)."""
        if not keeps_partial_index:
            resume_index.discard_partial(self.output)
        self.checkpoint = ckpt.Checkpoint(self.output, secrets=self._secrets)
        self.checkpoint.open()
        return self.checkpoint

    async def finish(self) -> str | None:
        """Sync and close OUTPUT; the reason the run must count as stopped when its last lines
        could not be made durable (already logged), else None."""
        checkpoint, self.checkpoint = self.checkpoint, None
        if checkpoint is None:
            return None
        problem = None
        try:
            await checkpoint.sync()
        except ckpt.CheckpointError as e:
            self._log(f"runner: {e}")
            problem = str(e)
        try:
            checkpoint.close()
        except ckpt.CheckpointError as e:
            self._log(f"runner: {e}")
            problem = problem or str(e)
        return problem
