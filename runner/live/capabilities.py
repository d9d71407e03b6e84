"""What one lane (base URL, endpoint, model) has shown, during a run, that it takes: list prompts
(packs) and `n`. The dispatcher asks before it sends and tells after each answer; what one answer
means stays `runner.outcome`'s.

Packs::

    UNPROVEN ──a pack answered in full (or in part: a fault)────────► TRUSTED  (a later failed pack is
       │                                                                    an ordinary transient failure)
       └──PACK_FAILURES_TO_STOP packs refused as lists are────────────► OFF  (jobs go alone for the
                                                                              rest of the run)

Only shapes a transient fault cannot give count against packing (`refuses_lists`): an answer
holding exactly the first prompt's choices (`list_not_taken`: the server read one prompt), or a
500 with a blank message (a server that fails on any list). A truncated body, a reset, a 503, an
answer with a few choices missing are faults: retried, never a lesson. While a lane is UNPROVEN
only one pack at a time is on the wire there (`claim_pack`): the first pack is a probe, so a
server that answers only the first item of a list costs at most PACK_FAILURES_TO_STOP packed
requests however many packs are waiting. A pack that fails there is never failed as a pack: its
jobs are sent alone. `--pack` (`trusted=True`) starts the lane TRUSTED: packing is never turned
off.

`n`: a request answered with exactly one choice per prompt, indexed 0..prompts-1, where `n`
asked for more is noted (`note_n_ignored`); N_IGNORED_TO_CONFIRM such requests confirm that the
lane ignores `n`, unless the lane has answered a request asking for `n` > 1 in full
(`n_answered`): then it honours `n`, and a short answer was a fault. From confirmation on, the
lane's jobs asking for more than one choice fail as `n_not_supported` without being sent: their
answers could not be used, and a run does not pay for answers it cannot use. (The dispatcher
sends a job whose own answer looked like this at least once more before it fails.)
"""
from __future__ import annotations

import asyncio
import enum
from collections import deque

from jobs import codes

__all__ = ["PACK_FAILURES_TO_STOP", "N_IGNORED_TO_CONFIRM", "PackState", "LaneCapabilities",
           "refuses_lists"]

PACK_FAILURES_TO_STOP = 2  # packs refused as lists on a lane where none has worked: packing goes off
N_IGNORED_TO_CONFIRM = 2  # requests answered ignoring `n` that confirm the lane ignores it
BLANK_500 = "HTTP 500"  # the message of a 500 whose body says nothing (`runner.outcome.classify`)


LIST_EVIDENCE_PROMPTS = 3  # a pack this large answered for its first prompt alone is evidence


def refuses_lists(code: str, message: str, prompts: int = LIST_EVIDENCE_PROMPTS) -> bool:
    """Whether a verdict (`code`, `message`) to a pack of `prompts` prompts has the shape of a
    server that does not take list prompts: only the first prompt answered (of a pack of at
    least LIST_EVIDENCE_PROMPTS: one dropped choice of a pack of two looks the same), or a blank
    500. Faults (a cut body, a 503, a few choices missing) never do."""
    if code == codes.LIST_NOT_TAKEN:
        return prompts >= LIST_EVIDENCE_PROMPTS
    return code == codes.SERVER_ERROR and message == BLANK_500


class PackState(enum.Enum):
    UNPROVEN = "unproven"  # no pack answered in full yet: one pack at a time
    TRUSTED = "trusted"  # a pack was answered in full: packs go freely
    OFF = "off"  # packs failed before any worked: jobs go alone


class LaneCapabilities:
    """One lane's learned capabilities; see the module docstring. Only the event loop's thread
    touches it."""

    __slots__ = ("packs", "pack_failures", "n_ignored", "n_honoured", "n_message", "_probe",
                 "_waiters")

    def __init__(self, *, trusted: bool = False) -> None:
        self.packs = PackState.TRUSTED if trusted else PackState.UNPROVEN
        self.pack_failures = 0
        self.n_ignored = 0  # requests answered ignoring n
        self.n_honoured = False  # a request asking n > 1 was answered in full here
        self.n_message = ""  # what the confirming answer said
        self._probe: object | None = None  # the pack on the wire while UNPROVEN
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def ignores_n(self) -> bool:
        return self.n_ignored >= N_IGNORED_TO_CONFIRM and not self.n_honoured

    async def claim_pack(self, pack: object) -> bool:
        """Whether `pack` may be sent now (False: packing is OFF here, send its jobs alone).

        TRUSTED: at once. UNPROVEN: once no other pack is on the wire; `pack` is then the probe
        until `release_pack(pack)` or its task ends. Waiters are served in arrival order."""
        while self.packs is PackState.UNPROVEN and self._probe not in (None, pack):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        if self.packs is PackState.OFF:
            return False
        if self.packs is PackState.UNPROVEN and self._probe is None:
            self._probe = pack
            task = asyncio.current_task()
            if task is not None:  # a probe cancelled on the wire must not block the lane
                task.add_done_callback(lambda _: self.release_pack(pack))
        return True

    def release_pack(self, pack: object) -> None:
        """`pack`'s attempt is over (answered or not); the next waiting pack may go."""
        if self._probe is pack:
            self._probe = None
            self._wake()

    def pack_answered(self) -> None:
        """A pack came back answered in full: packs work here."""
        if self.packs is PackState.UNPROVEN:
            self.packs = PackState.TRUSTED
            self._wake()

    def pack_failed(self) -> bool:
        """A pack was refused as a list (`refuses_lists`). True when this turned packing OFF."""
        if self.packs is not PackState.UNPROVEN:
            return False
        self.pack_failures += 1
        if self.pack_failures < PACK_FAILURES_TO_STOP:
            return False
        self.packs = PackState.OFF
        self._wake()
        return True

    def note_n_ignored(self, message: str) -> bool:
        """A request's answer gave each prompt one choice where `n` asked for more (`message`
        says how). True when the lane is now known to ignore `n`."""
        self.n_ignored += 1
        if self.ignores_n and not self.n_message:
            self.n_message = message
        return self.ignores_n

    def n_answered(self) -> bool:
        """A request asking `n` > 1 was answered in full: the lane honours `n` (any earlier
        short answer was a fault). True when this undid a conclusion."""
        undone = self.ignores_n
        self.n_honoured = True
        return undone

    def _wake(self) -> None:
        """Every waiter re-checks (a woken waiter may be cancelled before it runs; waking all means
        no wake-up is lost)."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
