"""A set of custom_ids in 8 (or 4) bytes a slot, exact because every match is confirmed against the file.

    slot, wide (one 64-bit word of an `array('Q')`):  digest's top 24 bits │ position + 1 (40 bits)
    slot, narrow (a 32-bit word of an `array('I')`):  digest's lowest t bits │ position + 1 (32 - t)
                                                      └─ a filter (and, wide, while they suffice,
                                                         where the table starts probing)

An id is never kept, only where it is written: a position the owner knows how to read back
(`recall(position) -> custom_id`: the byte offset of a result line in OUTPUT, the line number of
a job in INPUT). A lookup probes from the slot its digest picks; a slot whose kept digest bits
match is **confirmed by recalling the id at its position and comparing it with the id asked
for**. So two ids whose digests collide (entirely or in the bits kept) can never be taken for one
another: a collision costs one more read of the file, never a wrong answer. That is the whole
exactness argument, and it does not depend on the digest: tests use a digest of a few bits to
make every lookup collide.

The table has any number of slots (not only a power of two), so it is sized to what it holds:
the kept bits, read as a fraction and scaled to the table's size, give the slot probing starts at
(`tag * size >> 24`, "fastrange": a multiply where a power of two takes a shift); probing goes on
slot by slot and wraps at the last. The start comes from the bits the slot keeps, so the table
grows without reading anything back while it has at most 2**(kept bits) slots (16.7 million,
wide: 12.5 million ids reserved); past that the start takes all 64 bits of the digest
(`digest * size >> 64`), so each growth recalls every id once.

A **narrow** table (`narrow=True`) is for positions that are small numbers, line numbers: its
slot is half as wide, and `reserve(count)` gives positions the bits `count` needs (with a quarter
more for lines the estimate missed) and the digest what is left: 8 bits at 10 million lines. They
are the digest's lowest bits, unrelated to where probing starts (always the top 64 bits), so
about one new id in 170 recalls an id that is not it (a read of INPUT; a wide table's kept bits,
which also pick the start, are alike in neighbouring slots: one in 33 there). Any growth recalls
every id; a position that outgrows its bits makes the table wide (every id recalled once).

Cost: 8 bytes a slot (4 narrow). `reserve(count)` allocates count / `RESERVE_LOAD` slots: 10.7
bytes an id wide, 5.3 narrow (107 and 53 MB for 10 million ids; a power of two took 134 MB), with
room for a count estimated 13 % low before `MAX_LOAD`; a table that grows doubles past
`MAX_LOAD`. One recall per id found (the owner reads that line anyway: it holds what the table is
asked about), and up to one per other id whose kept bits are the same (n / 2**24 of them on
average, wide: 0.6 at 10 million ids). The digest (`hash()` of the str, salted per process, so no
input can be crafted to collide) is never stored.
"""
from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator

__all__ = ["IdTable", "default_digest"]

POSITION_BITS = 40                 # wide: positions below 2**40 - 1 (a 1 TiB file, a trillion lines)
POSITION_MASK = (1 << POSITION_BITS) - 1
MAX_POSITION = POSITION_MASK - 1
NARROW_BITS = 32                   # a narrow slot's width
NARROW_POSITION_BITS = 24          # a narrow table's position bits until `reserve` sizes them
MIN_NARROW_TAG_BITS = 6            # fewer digest bits than this left by `reserve`: the table stays wide
NARROW_HEADROOM = 1.25             # positions `reserve(count)` makes room for: count times this
EXPECT_HEADROOM = 1.05             # `expect(count)` makes room for this many times `count`: with
                                   # MAX_LOAD, for an estimate up to 19 % low before it doubles
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
    the id written there (None when nothing readable is: the slot then matches no id). `narrow`:
    positions are small numbers (see the module docstring)."""

    __slots__ = ("_slots", "_size", "_shift", "_bits", "_count", "_limit", "_recall", "_digest",
                 "_marks", "_pbits", "_mask", "_kept", "_tag_shift", "_tag_mask", "_narrow",
                 "_expected")

    def __init__(self, recall: Callable[[int], str | None], *,
                 digest: Callable[[str], int] = default_digest, slots: int = MIN_SLOTS,
                 narrow: bool = False) -> None:
        self._recall = recall
        self._digest = digest
        self._count = 0
        self._marks: bytearray | None = None  # one bit a slot, once something is marked
        self._narrow = narrow
        self._expected = 0  # slots the next growth goes to at least (`expect`)
        self._layout(NARROW_POSITION_BITS if narrow else POSITION_BITS)
        self._allocate(max(slots, MIN_SLOTS))

    def _layout(self, position_bits: int) -> None:
        """Split a slot into kept digest bits and `position_bits` of position. A wide slot keeps
        the digest's top bits (where probing starts, while they suffice); a narrow one its
        lowest, which say nothing of where probing starts (from the top bits, always), so ids
        probing the same slots do not share them."""
        self._pbits = position_bits
        self._mask = (1 << position_bits) - 1
        self._kept = (NARROW_BITS if self._narrow else 64) - position_bits
        self._tag_shift = 0 if self._narrow else 64 - self._kept  # the kept bits:
        self._tag_mask = (1 << self._kept) - 1                     # digest >> shift & mask

    def _allocate(self, size: int) -> None:
        self._slots = array("I" if self._narrow else "Q", bytes((4 if self._narrow else 8) * size))
        self._size = size
        # the probe start: the top `bits` of the digest (those a slot keeps while they suffice)
        # scaled to the size, `(digest >> shift) * size >> bits`
        self._bits = self._kept if size <= 1 << self._kept and not self._narrow else 64
        self._shift = 64 - self._bits
        self._limit = int(size * MAX_LOAD)

    def __len__(self) -> int:
        return self._count

    def reserve(self, count: int, *, max_position: int | None = None) -> None:
        """Make room for `count` ids at once, while the table is empty: it is then allocated once,
        `count / RESERVE_LOAD` slots, instead of doubling on the way, whose last doubling holds
        the old slots and the new (half again of the table's memory) at the same time. A narrow
        table gives positions the bits `max_position` needs (by default `count`, and a quarter
        more), or turns wide when too few are left for the digest."""
        if self._count:
            raise ValueError("reserve() is for an empty table")
        if self._narrow:
            highest = int(count * NARROW_HEADROOM) if max_position is None else max_position
            bits = (highest + 1).bit_length()  # a slot holds position + 1
            if NARROW_BITS - bits < MIN_NARROW_TAG_BITS:
                self._narrow = False
                bits = POSITION_BITS
            self._layout(max(bits, NARROW_POSITION_BITS) if self._narrow else bits)
            self._allocate(self._size)
        size = int(count / RESERVE_LOAD) + 1
        if size > self._size:
            self._allocate(size)

    @property
    def nbytes(self) -> int:
        return self._slots.itemsize * len(self._slots)

    def find(self, custom_id: str) -> int:
        """The position `custom_id` was last put at, or -1 when it is not in the table."""
        slot = self._slot_of(custom_id, self._digest(custom_id))
        return -1 if slot < 0 else (self._slots[slot] & self._mask) - 1

    def _slot_of(self, custom_id: str, digest: int) -> int:
        slots, recall, size, pbits, mask = self._slots, self._recall, self._size, self._pbits, self._mask
        tag = digest >> self._tag_shift & self._tag_mask
        i = (digest >> self._shift) * size >> self._bits
        while True:
            word = slots[i]
            if not word:
                return -1
            if word >> pbits == tag and recall((word & mask) - 1) == custom_id:
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

    def _check(self, low: int, high: int) -> None:
        """Positions from `low` to `high` fit (a narrow table turns wide for them), or ValueError."""
        if not 0 <= low <= high <= MAX_POSITION:
            raise ValueError(f"position out of range (0..{MAX_POSITION})")
        if high >= self._mask:
            self._widen()

    def _place(self, custom_id: str, position: int, replace: bool) -> int:
        """`put` (`replace`) or `setdefault`, in one probe."""
        if not 0 <= position < self._mask:
            self._check(position, position)
        digest = self._digest(custom_id)
        slots, recall, size, pbits, mask = self._slots, self._recall, self._size, self._pbits, self._mask
        tag = digest >> self._tag_shift & self._tag_mask
        i = (digest >> self._shift) * size >> self._bits
        while True:
            held = slots[i]
            if not held:
                break
            if held >> pbits == tag and recall((held & mask) - 1) == custom_id:
                if replace:
                    slots[i] = (tag << pbits) | (position + 1)
                return (held & mask) - 1
            i += 1
            if i == size:
                i = 0
        slots[i] = (tag << pbits) | (position + 1)
        self._count += 1
        if self._count > self._limit:
            self._grow()
        return -1

    def put_all(self, ids: list[str], positions: list[int],
                replaced: Callable[[int, int], None] | None = None) -> None:
        """`put` each of `ids` at the same index of `positions`, in order; `replaced(n, old)` is
        called for each one that was already in (`old`: its position before). The loop of a
        file's worth of `put`s, with nothing looked up twice."""
        self._place_all(ids, positions, True, replaced)

    def setdefault_all(self, ids: list[str], positions: list[int]) -> list[tuple[int, int]]:
        """`setdefault` each of `ids` at the same index of `positions`, in order; the (n, its
        position) of each one that was already in (left as it was)."""
        found: list[tuple[int, int]] = []
        self._place_all(ids, positions, False, lambda n, held: found.append((n, held)))
        return found

    def _place_all(self, ids: list[str], positions: list[int], replace: bool,
                   met: Callable[[int, int], None] | None) -> None:
        """`put_all` (`replace`) or `setdefault_all`: `met(n, position)` for each id already in."""
        if positions:
            self._check(min(positions), max(positions))
        digest, recall = self._digest, self._recall
        hashed = digest is default_digest
        slots, size, shift, bits = self._slots, self._size, self._shift, self._bits
        pbits, mask, tag_shift, tag_mask = self._pbits, self._mask, self._tag_shift, self._tag_mask
        count, limit = self._count, self._limit
        for n, custom_id in enumerate(ids):
            key = hash(custom_id) & DIGEST_MASK if hashed else digest(custom_id)
            tag = key >> tag_shift & tag_mask
            word = (tag << pbits) | (positions[n] + 1)
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
                if held >> pbits == tag and recall((held & mask) - 1) == custom_id:
                    if replace:
                        slots[i] = word
                    if met is not None:
                        met(n, (held & mask) - 1)
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
        return (self._slots[slot] & self._mask) - 1

    def unmarked(self) -> Iterator[int]:
        """The position of every id not marked, in slot order."""
        marks, mask = self._marks, self._mask
        for slot, word in enumerate(self._slots):
            if word and (marks is None or not marks[slot >> 3] & (1 << (slot & 7))):
                yield (word & mask) - 1

    def positions(self) -> Iterator[int]:
        """The position of every id, in slot order."""
        mask = self._mask
        for word in self._slots:
            if word:
                yield (word & mask) - 1

    def expect(self, count: int) -> None:
        """The table will come to hold about `count` ids (an estimate): when it next grows, it
        grows to hold them at once, and `EXPECT_HEADROOM` more, rather than doubling on the way,
        each doubling holding the old slots and the new at once. Nothing is allocated now."""
        self._expected = max(self._expected, int(count * EXPECT_HEADROOM / RESERVE_LOAD) + 1)

    def _grow(self) -> None:
        self._rebuild(max(2 * self._size, self._expected))

    def _widen(self) -> None:
        """Turn a narrow table wide (a position past its bits): every id recalled once."""
        if self._narrow:
            self._rebuild(self._size, wide=True)

    def _rebuild(self, size: int, wide: bool = False) -> None:
        """Place every id in a new array of `size` slots (wide ones, if `wide`)."""
        old, old_pbits, old_mask, old_shift = self._slots, self._pbits, self._mask, self._tag_shift
        self._marks = None
        if wide:
            self._narrow = False
            self._layout(POSITION_BITS)
        self._allocate(size)
        slots, pbits, shift, bits = self._slots, self._pbits, self._shift, self._bits
        kept = bits == self._kept and not wide  # the kept bits are those the start is taken from
        for word in old:
            if not word:
                continue
            position = word & old_mask
            if kept:
                i = (word >> old_pbits) * size >> bits
                new = word
            else:  # read the id back for the bits not kept
                custom_id = self._recall(position - 1)
                digest = self._digest(custom_id) if custom_id is not None \
                    else (word >> old_pbits) << old_shift
                i = (digest >> shift) * size >> bits
                new = (digest >> self._tag_shift & self._tag_mask) << pbits | position
            while slots[i]:
                i += 1
                if i == size:
                    i = 0
            slots[i] = new
