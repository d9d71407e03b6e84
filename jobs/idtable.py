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

Cost: 8 bytes a slot, at most `MAX_LOAD` full, so 11 to 21 bytes an id; one recall per id found
(the owner reads that line anyway: it holds what the table is asked about). The digest
(`hash()` of the str, salted per process, so no input can be crafted to collide) is never
stored: the probing index is taken from the same top bits the slot keeps, so the table doubles
without reading anything back, up to `INDEX_BITS` bits of index (16.7 million slots, 12.5
million ids); past that each doubling recalls every id once.
"""
from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator

__all__ = ["IdTable", "default_digest"]

POSITION_BITS = 40                 # positions below 2**40 - 1 (a 1 TiB file, a trillion lines)
INDEX_BITS = 64 - POSITION_BITS    # digest bits kept in a slot: the probe index comes from them
POSITION_MASK = (1 << POSITION_BITS) - 1
MAX_POSITION = POSITION_MASK - 1
MAX_LOAD = 0.75                    # slots in use before the table doubles
MIN_SLOTS = 1 << 10
DIGEST_MASK = (1 << 64) - 1


def default_digest(custom_id: str) -> int:
    """64 bits of the id's `hash()`: random per process, so stable only within one run."""
    return hash(custom_id) & DIGEST_MASK


class IdTable:
    """Distinct custom_ids, each with the position it was last `put` at. `recall(position)` gives
    the id written there (None when nothing readable is: the slot then matches no id)."""

    __slots__ = ("_slots", "_shift", "_count", "_limit", "_recall", "_digest", "_marks")

    def __init__(self, recall: Callable[[int], str | None], *,
                 digest: Callable[[str], int] = default_digest, slots: int = MIN_SLOTS) -> None:
        size = MIN_SLOTS
        while size < slots:
            size <<= 1
        self._recall = recall
        self._digest = digest
        self._count = 0
        self._marks: bytearray | None = None  # one bit a slot, once something is marked
        self._allocate(size)

    def _allocate(self, size: int) -> None:
        self._slots = array("Q", bytes(8 * size))
        self._shift = 64 - size.bit_length() + 1  # index = the digest's top bits
        self._limit = int(size * MAX_LOAD)

    def __len__(self) -> int:
        return self._count

    def reserve(self, count: int) -> None:
        """Make room for `count` ids at once, while the table is empty: it is then allocated once
        instead of doubling through every power of two, whose last doubling holds the old slots
        and the new (half again of the table's memory) at the same time."""
        if self._count:
            raise ValueError("reserve() is for an empty table")
        size = len(self._slots)
        while size * MAX_LOAD < count:
            size <<= 1
        if size > len(self._slots):
            self._allocate(size)

    @property
    def nbytes(self) -> int:
        return self._slots.itemsize * len(self._slots)

    def _start(self, digest: int) -> int:
        return digest >> self._shift

    def find(self, custom_id: str) -> int:
        """The position `custom_id` was last put at, or -1 when it is not in the table."""
        slot = self._slot_of(custom_id, self._digest(custom_id))
        return -1 if slot < 0 else (self._slots[slot] & POSITION_MASK) - 1

    def _slot_of(self, custom_id: str, digest: int) -> int:
        slots, recall = self._slots, self._recall
        mask = len(slots) - 1
        tag = digest >> POSITION_BITS
        i = digest >> self._shift
        while True:
            word = slots[i]
            if not word:
                return -1
            if word >> POSITION_BITS == tag and recall((word & POSITION_MASK) - 1) == custom_id:
                return i
            i = (i + 1) & mask

    def put(self, custom_id: str, position: int) -> int:
        """Record `custom_id` at `position` (its last position from now on); returns the
        position it had before, or -1 when it is new."""
        if not 0 <= position <= MAX_POSITION:
            raise ValueError(f"position {position} out of range (0..{MAX_POSITION})")
        digest = self._digest(custom_id)
        slots, recall = self._slots, self._recall
        mask = len(slots) - 1
        tag = digest >> POSITION_BITS
        word = (tag << POSITION_BITS) | (position + 1)
        i = digest >> self._shift
        while True:
            held = slots[i]
            if not held:
                break
            if held >> POSITION_BITS == tag and recall((held & POSITION_MASK) - 1) == custom_id:
                slots[i] = word
                return (held & POSITION_MASK) - 1
            i = (i + 1) & mask
        slots[i] = word
        self._count += 1
        if self._count > self._limit:
            self._grow()
        return -1

    def setdefault(self, custom_id: str, position: int) -> int:
        """The position `custom_id` has; when it has none, put it at `position` and return -1."""
        held = self.find(custom_id)
        if held < 0:
            self.put(custom_id, position)
        return held

    def put_all(self, ids: list[str], positions: list[int],
                replaced: Callable[[int, int], None] | None = None) -> None:
        """`put` each of `ids` at the same index of `positions`, in order; `replaced(n, old)` is
        called for each one that was already in (`old`: its position before). The loop of a
        file's worth of `put`s, with nothing looked up twice."""
        if positions and not (0 <= min(positions) and max(positions) <= MAX_POSITION):
            raise ValueError(f"positions out of range (0..{MAX_POSITION})")
        digest, recall = self._digest, self._recall
        hashed = digest is default_digest
        slots, shift, count, limit = self._slots, self._shift, self._count, self._limit
        mask = len(slots) - 1
        for n, custom_id in enumerate(ids):
            key = hash(custom_id) & DIGEST_MASK if hashed else digest(custom_id)
            tag = key >> POSITION_BITS
            word = (tag << POSITION_BITS) | (positions[n] + 1)
            i = key >> shift
            while True:
                held = slots[i]
                if not held:
                    slots[i] = word
                    count += 1
                    if count > limit:
                        self._count = count
                        self._grow()
                        slots, shift, limit = self._slots, self._shift, self._limit
                        mask = len(slots) - 1
                    break
                if held >> POSITION_BITS == tag and recall((held & POSITION_MASK) - 1) == custom_id:
                    slots[i] = word
                    if replaced is not None:
                        replaced(n, (held & POSITION_MASK) - 1)
                    break
                i = (i + 1) & mask
        self._count = count

    def mark(self, custom_id: str) -> int:
        """Mark `custom_id` (as claimed, seen: the owner's meaning); returns its position, or -1
        when it is not in the table (nothing marked). Marks are for a table that no longer
        grows: a `put` that doubles the table forgets them."""
        slot = self._slot_of(custom_id, self._digest(custom_id))
        if slot < 0:
            return -1
        if self._marks is None:
            self._marks = bytearray(len(self._slots) // 8 + 1)
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
        size = 2 * len(old)
        self._marks = None
        self._allocate(size)
        slots, mask = self._slots, size - 1
        shift = self._shift
        exact = size.bit_length() - 1 <= INDEX_BITS
        for word in old:
            if not word:
                continue
            if exact:  # the kept bits hold the whole index
                i = (word >> POSITION_BITS) >> (shift - POSITION_BITS)
            else:  # past INDEX_BITS: read the id back for the bits not kept
                custom_id = self._recall((word & POSITION_MASK) - 1)
                digest = self._digest(custom_id) if custom_id is not None else word & ~POSITION_MASK
                i = digest >> shift
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = word
