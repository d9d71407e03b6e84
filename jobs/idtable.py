"""A set of custom_ids in 8 bytes a slot, exact because every match is confirmed against the file.

    slot (one 64-bit word of an `array('Q')`):   digest's top 24 bits │ position + 1 (40 bits)
                                                 └─ where the table starts probing (and a filter)

An id is never kept, only where it is written: a position the owner knows how to read back
(`recall(position) -> custom_id`: the byte offset of a result line in OUTPUT, the line number of
a job in INPUT). A lookup probes from the slot its digest picks; a slot whose 24 digest bits
match is **confirmed by recalling the id at its position and comparing it with the id asked
for**. So two ids whose digests collide (entirely or in the bits kept) can never be taken for one
another: a collision costs one more read of the file, never a wrong answer. That is the whole
exactness argument, and it does not depend on the digest: tests use a digest of a few bits to
make every lookup collide.

The table has any number of slots (not only a power of two), so it is sized to what it holds:
the 24 kept bits, read as a fraction of 2**24 and scaled to the table's size, give the slot
probing starts at (`tag * size >> 24`, "fastrange": a multiply where a power of two takes a
shift); probing goes on slot by slot and wraps at the last. The start comes from the bits the
slot keeps, so the table grows without reading anything back while it has at most
2**`INDEX_BITS` slots (16.7 million: 12.5 million ids reserved); past that the start takes all
64 bits of the digest (`digest * size >> 64`), so each growth recalls every id once.

Cost: 8 bytes a slot. `reserve(count)` allocates count / `RESERVE_LOAD` slots: 10.7 bytes an id,
107 MB for 10 million ids (a power of two took 134 MB), with room for a count estimated 13 % low
before `MAX_LOAD`; a table that grows doubles past `MAX_LOAD`: 9.4 to 19 bytes an id. One recall
per id found (the owner reads that line anyway: it holds what the table is asked about), and up
to one per other id whose 24 kept bits are the same (n / 2**24 of them on average: 0.6 at 10
million ids). The digest (`hash()` of the str, salted per process, so no input can be crafted to
collide) is never stored.
"""
from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator

__all__ = ["IdTable", "default_digest"]

POSITION_BITS = 40                 # positions below 2**40 - 1 (a 1 TiB file, a trillion lines)
INDEX_BITS = 64 - POSITION_BITS    # digest bits kept in a slot: the probe start comes from them
POSITION_MASK = (1 << POSITION_BITS) - 1
MAX_POSITION = POSITION_MASK - 1
# loads chosen with bench/idtable.py: at 0.75 full, put_all and find take 1.2 to 1.4 times what
# they take at 0.5 (a miss up to 1.7); at 0.9 a miss takes 4 to 7 times
MAX_LOAD = 0.85                    # slots in use before the table doubles
RESERVE_LOAD = 0.75                # how full `reserve(count)` leaves the table at `count` ids
MIN_SLOTS = 1 << 10
DIGEST_MASK = (1 << 64) - 1


def default_digest(custom_id: str) -> int:
    """64 bits of the id's `hash()`: random per process, so stable only within one run."""
    return hash(custom_id) & DIGEST_MASK


class IdTable:
    """Distinct custom_ids, each with the position it was last `put` at. `recall(position)` gives
    the id written there (None when nothing readable is: the slot then matches no id)."""

    __slots__ = ("_slots", "_size", "_shift", "_bits", "_count", "_limit", "_recall", "_digest",
                 "_marks")

    def __init__(self, recall: Callable[[int], str | None], *,
                 digest: Callable[[str], int] = default_digest, slots: int = MIN_SLOTS) -> None:
        self._recall = recall
        self._digest = digest
        self._count = 0
        self._marks: bytearray | None = None  # one bit a slot, once something is marked
        self._allocate(max(slots, MIN_SLOTS))

    def _allocate(self, size: int) -> None:
        self._slots = array("Q", bytes(8 * size))
        self._size = size
        # the probe start: the top `bits` of the digest (those a slot keeps while they suffice)
        # scaled to the size, `(digest >> shift) * size >> bits`
        self._bits = INDEX_BITS if size <= 1 << INDEX_BITS else 64
        self._shift = 64 - self._bits
        self._limit = int(size * MAX_LOAD)

    def __len__(self) -> int:
        return self._count

    def reserve(self, count: int) -> None:
        """Make room for `count` ids at once, while the table is empty: it is then allocated once,
        `count / RESERVE_LOAD` slots, instead of doubling on the way, whose last doubling holds
        the old slots and the new (half again of the table's memory) at the same time."""
        if self._count:
            raise ValueError("reserve() is for an empty table")
        size = int(count / RESERVE_LOAD) + 1
        if size > self._size:
            self._allocate(size)

    @property
    def nbytes(self) -> int:
        return self._slots.itemsize * len(self._slots)

    def find(self, custom_id: str) -> int:
        """The position `custom_id` was last put at, or -1 when it is not in the table."""
        slot = self._slot_of(custom_id, self._digest(custom_id))
        return -1 if slot < 0 else (self._slots[slot] & POSITION_MASK) - 1

    def _slot_of(self, custom_id: str, digest: int) -> int:
        slots, recall, size = self._slots, self._recall, self._size
        tag = digest >> POSITION_BITS
        i = (digest >> self._shift) * size >> self._bits
        while True:
            word = slots[i]
            if not word:
                return -1
            if word >> POSITION_BITS == tag and recall((word & POSITION_MASK) - 1) == custom_id:
                return i
            i += 1
            if i == size:
                i = 0

    def put(self, custom_id: str, position: int) -> int:
        """Record `custom_id` at `position` (its last position from now on); returns the
        position it had before, or -1 when it is new."""
        return self._place(custom_id, position, True)

    def setdefault(self, custom_id: str, position: int) -> int:
        """The position `custom_id` has; when it has none, put it at `position` and return -1."""
        return self._place(custom_id, position, False)

    def _place(self, custom_id: str, position: int, replace: bool) -> int:
        """`put` (`replace`) or `setdefault`, in one probe."""
        if not 0 <= position <= MAX_POSITION:
            raise ValueError(f"position {position} out of range (0..{MAX_POSITION})")
        digest = self._digest(custom_id)
        slots, recall, size = self._slots, self._recall, self._size
        tag = digest >> POSITION_BITS
        i = (digest >> self._shift) * size >> self._bits
        while True:
            held = slots[i]
            if not held:
                break
            if held >> POSITION_BITS == tag and recall((held & POSITION_MASK) - 1) == custom_id:
                if replace:
                    slots[i] = (tag << POSITION_BITS) | (position + 1)
                return (held & POSITION_MASK) - 1
            i += 1
            if i == size:
                i = 0
        slots[i] = (tag << POSITION_BITS) | (position + 1)
        self._count += 1
        if self._count > self._limit:
            self._grow()
        return -1

    def put_all(self, ids: list[str], positions: list[int],
                replaced: Callable[[int, int], None] | None = None) -> None:
        """`put` each of `ids` at the same index of `positions`, in order; `replaced(n, old)` is
        called for each one that was already in (`old`: its position before). The loop of a
        file's worth of `put`s, with nothing looked up twice."""
        if positions and not (0 <= min(positions) and max(positions) <= MAX_POSITION):
            raise ValueError(f"positions out of range (0..{MAX_POSITION})")
        digest, recall = self._digest, self._recall
        hashed = digest is default_digest
        slots, size, shift, bits = self._slots, self._size, self._shift, self._bits
        count, limit = self._count, self._limit
        for n, custom_id in enumerate(ids):
            key = hash(custom_id) & DIGEST_MASK if hashed else digest(custom_id)
            tag = key >> POSITION_BITS
            word = (tag << POSITION_BITS) | (positions[n] + 1)
            i = (key >> shift) * size >> bits
            while True:
                held = slots[i]
                if not held:
                    slots[i] = word
                    count += 1
                    if count > limit:
                        self._count = count
                        self._grow()
                        slots, size, shift, bits = self._slots, self._size, self._shift, self._bits
                        limit = self._limit
                    break
                if held >> POSITION_BITS == tag and recall((held & POSITION_MASK) - 1) == custom_id:
                    slots[i] = word
                    if replaced is not None:
                        replaced(n, (held & POSITION_MASK) - 1)
                    break
                i += 1
                if i == size:
                    i = 0
        self._count = count

    def mark(self, custom_id: str) -> int:
        """Mark `custom_id` (as claimed, seen: the owner's meaning); returns its position, or -1
        when it is not in the table (nothing marked). Marks are for a table that no longer
        grows: a `put` that grows the table forgets them."""
        slot = self._slot_of(custom_id, self._digest(custom_id))
        if slot < 0:
            return -1
        if self._marks is None:
            self._marks = bytearray(self._size // 8 + 1)
        self._marks[slot >> 3] |= 1 << (slot & 7)
        return (self._slots[slot] & POSITION_MASK) - 1

    def unmarked(self) -> Iterator[int]:
        """The position of every id not marked, in slot order."""
        marks = self._marks
        for slot, word in enumerate(self._slots):
            if word and (marks is None or not marks[slot >> 3] & (1 << (slot & 7))):
                yield (word & POSITION_MASK) - 1

    def positions(self) -> Iterator[int]:
        """The position of every id, in slot order."""
        for word in self._slots:
            if word:
                yield (word & POSITION_MASK) - 1

    def _grow(self) -> None:
        old = self._slots
        self._marks = None
        self._allocate(2 * self._size)
        slots, size, shift, bits = self._slots, self._size, self._shift, self._bits
        kept = bits == INDEX_BITS  # the kept bits are those the start is taken from
        for word in old:
            if not word:
                continue
            if kept:
                i = (word >> POSITION_BITS) * size >> INDEX_BITS
            else:  # past INDEX_BITS: read the id back for the bits not kept
                custom_id = self._recall((word & POSITION_MASK) - 1)
                digest = self._digest(custom_id) if custom_id is not None else word & ~POSITION_MASK
                i = (digest >> shift) * size >> bits
            while slots[i]:
                i += 1
                if i == size:
                    i = 0
            slots[i] = word
