"""A set of strings kept as 64-bit digests, 8 bytes a slot: answers "certainly not in" or "in,
unless its digest collides".

    slot (one word of an `array('Q')`, at most `MAX_LOAD` full):  the string's digest (0: empty)

Where `jobs.idtable.IdTable` is exact because every match is read back from a file, a
`DigestSet` keeps no way back to its strings: it is for questions where a wrong "in" is
**harmless and a wrong "not in" impossible**. The batch backend asks it "is this job in an open
batch?": a job said to be in one by a collision waits for the next plan (it is sent once that
batch closes), it is never sent twice. Two strings share a digest with a chance of about
n² / 2^65 (1.4e-8 for a million ids); the digest (`hash()` of the str, salted per process) is
injected, so tests make every string collide.
"""
from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable

__all__ = ["DigestSet"]

MAX_LOAD = 0.5  # slots in use before the table doubles (short probes: most look-ups miss)
MIN_SLOTS = 1 << 6
MASK = (1 << 64) - 1


def default_digest(text: str) -> int:
    return hash(text) & MASK


class DigestSet:
    """Strings added, by digest: `s in d` is True for every string added (and for a string whose
    digest equals one's); False only for a string certainly never added."""

    __slots__ = ("_slots", "_count", "_digest")

    def __init__(self, items: Iterable[str] = (), *,
                 digest: Callable[[str], int] = default_digest, expected: int = 0) -> None:
        """`expected`: how many strings will be added, when known: the table is then allocated
        once for them, instead of doubling on the way (its last doubling holds the old slots
        and the new, half again of its memory, at once)."""
        self._digest = digest
        size = MIN_SLOTS
        while size * MAX_LOAD < expected:
            size <<= 1
        self._slots = array("Q", bytes(8 * size))
        self._count = 0
        for item in items:
            self.add(item)

    def __len__(self) -> int:
        """Distinct digests held (the strings added, less those that collided)."""
        return self._count

    @property
    def nbytes(self) -> int:
        return 8 * len(self._slots)

    def _key(self, text: str) -> int:
        return (self._digest(text) & MASK) or 1  # 0 marks an empty slot

    def add(self, text: str) -> None:
        key = self._key(text)
        slots = self._slots
        mask = len(slots) - 1
        i = key & mask
        while slots[i]:
            if slots[i] == key:
                return
            i = (i + 1) & mask
        slots[i] = key
        self._count += 1
        if self._count > len(slots) * MAX_LOAD:
            self._grow()

    def __contains__(self, text: object) -> bool:
        if not isinstance(text, str):
            return False
        key = self._key(text)
        slots = self._slots
        mask = len(slots) - 1
        i = key & mask
        while True:
            held = slots[i]
            if held == key:
                return True
            if not held:
                return False
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._slots
        slots = self._slots = array("Q", bytes(16 * len(old)))
        mask = len(slots) - 1
        for key in old:
            if key:
                i = key & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = key
