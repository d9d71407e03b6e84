"""`jobs.idtable.IdTable` at sizes that are not powers of two: sized to what it holds, exact
whatever the digests, growing without reading ids back while the kept bits hold the index."""
from __future__ import annotations

import pytest

from jobs import idtable
from jobs.idtable import DIGEST_MASK, MAX_LOAD, RESERVE_LOAD, IdTable

COLLIDE = [lambda cid: 0, lambda cid: hash(cid) & 3, lambda cid: (hash(cid) & 3) << 62,
           lambda cid: DIGEST_MASK]  # the last: every id starts probing at the last slot


class Written:
    """The ids at their positions, and how many times the table read one back."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.recalls = 0

    def recall(self, position: int) -> str:
        self.recalls += 1
        return self.ids[position]

    def add(self, table: IdTable, cid: str) -> int:
        self.ids.append(cid)
        return table.put(cid, len(self.ids) - 1)


def test_reserve_allocates_what_its_count_needs_not_the_next_power_of_two():
    table = IdTable(Written().recall)
    table.reserve(100_003)
    assert table.nbytes == 8 * (int(100_003 / RESERVE_LOAD) + 1)  # 1,066,712 bytes, not 2**21


def test_a_reserved_table_takes_ids_past_its_estimate_before_it_grows():
    # an estimate a little low (a file's head shorter than the rest) must not cost a growth,
    # whose old and new slots are held at once
    written = Written()
    table = IdTable(written.recall)
    table.reserve(10_001)
    reserved = table.nbytes
    for i in range(int(10_001 * 1.1)):
        written.add(table, f"job-{i}")
    assert table.nbytes == reserved and len(table) == 11_001


@pytest.mark.parametrize("digest", COLLIDE)
@pytest.mark.parametrize("slots, reserve", [(1237, 0), (0, 1001)], ids=["1237", "reserve-1001"])
def test_at_an_odd_size_colliding_digests_still_find_exactly_the_ids_put(digest, slots, reserve):
    written = Written()
    table = IdTable(written.recall, digest=digest, slots=slots)
    table.reserve(reserve)
    size = table.nbytes
    assert size == 8 * (slots or int(reserve / RESERVE_LOAD) + 1)  # 1,237 or 1,335 slots
    ids = [f"job-{i}" for i in range(900)]  # 73 % of 1,237 slots, 67 % of 1,335
    assert all(written.add(table, cid) == -1 for cid in ids)
    assert [written.add(table, cid) for cid in ids[:5]] == [0, 1, 2, 3, 4]  # last put wins
    assert len(table) == 900 and table.nbytes == size  # no growth on the way
    assert all(table.find(cid) == i for i, cid in enumerate(ids[5:], 5))
    assert [table.find(cid) for cid in ids[:5]] == [900, 901, 902, 903, 904]
    assert table.find("job-900") == -1 and table.find("") == -1 and table.find("job-01") == -1
    written.ids.append("new")
    assert table.setdefault("job-7", 999) == 7 and table.setdefault("new", 905) == -1
    assert table.find("job-7") == 7 and table.find("new") == 905
    assert sorted(table.positions()) == list(range(5, 906))


@pytest.mark.parametrize("digest", [idtable.default_digest, *COLLIDE])
def test_a_table_of_odd_size_grows_through_odd_sizes_and_keeps_every_id(digest):
    written = Written()
    table = IdTable(written.recall, digest=digest, slots=1100)
    sizes = [table.nbytes]
    for i in range(4000 if digest is idtable.default_digest else 1000):
        written.add(table, f"job-{i}")
        if table.nbytes != sizes[-1]:  # just grown: every id put so far is still there
            sizes.append(table.nbytes)
            assert all(table.find(f"job-{k}") == k for k in range(i + 1))
    assert sizes == [8 * 1100, 8 * 2200, 8 * 4400, 8 * 8800][:len(sizes)] and len(sizes) >= 2
    assert len(sizes) == 4 or digest is not idtable.default_digest
    assert table.find(f"job-{len(table)}") == -1 and len(table) == len(written.ids)


def test_growth_reads_no_id_back_while_the_kept_bits_hold_the_index():
    # a digest whose kept bits differ for every id: a lookup reads back only the id it finds,
    # and growing (from 1,100 slots to 2,200 and 4,400) reads back none
    written = Written()
    table = IdTable(written.recall, digest=lambda cid: (int(cid[4:]) * 7919 % (1 << 24)) << 40,
                    slots=1100)
    for i in range(3000):
        written.add(table, f"job-{i}")
    assert written.recalls == 0 and table.nbytes == 8 * 4400
    assert all(table.find(f"job-{i}") == i for i in range(3000)) and written.recalls == 3000


def test_past_the_kept_bits_growth_reads_each_id_back_and_lookups_use_more_bits(monkeypatch):
    # the same table keeping 11 digest bits (2,048 slots) instead of 24: growing past them reads
    # every id back for the bits the slots do not keep, and lookups take those bits too
    monkeypatch.setattr(idtable, "POSITION_BITS", 53)
    written = Written()
    table = IdTable(written.recall, slots=1500)
    full = int(1500 * MAX_LOAD)
    for i in range(full):
        written.add(table, f"job-{i}")
    before = written.recalls
    written.add(table, "grows")  # 1,500 slots -> 3,000: past 2**11
    assert table.nbytes == 8 * 3000 and written.recalls - before >= full
    for i in range(3500):
        written.add(table, f"more-{i}")  # -> 6,000 slots, reading every id back again
    assert table.nbytes == 8 * 6000
    assert all(table.find(f"job-{i}") == i for i in range(full)) and table.find("grows") == full
    assert all(table.find(f"more-{i}") == full + 1 + i for i in range(3500))
    assert table.find("absent") == -1


def test_probing_past_the_last_slot_goes_on_at_the_first():
    written = Written()
    table = IdTable(written.recall, digest=lambda cid: DIGEST_MASK, slots=1237)  # all at 1,236
    for i in range(50):
        written.add(table, f"job-{i}")
    assert all(table.find(f"job-{i}") == i for i in range(50)) and table.find("job-50") == -1
    assert list(table.positions()) == [*range(1, 50), 0]  # slots 0..48, then the last one
    # a file's worth at once: the same wrapping, the ids already in told with their old line
    replaced: list[tuple[int, int]] = []
    at_once = IdTable(written.recall, digest=lambda cid: DIGEST_MASK, slots=1237)
    written.ids += written.ids[:5]
    at_once.put_all(written.ids, list(range(55)), lambda n, old: replaced.append((n, old)))
    assert replaced == [(50 + i, i) for i in range(5)] and len(at_once) == 50
    assert all(at_once.find(f"job-{i}") == (50 + i if i < 5 else i) for i in range(50))
    assert at_once.find("job-50") == -1


@pytest.mark.parametrize("digest, count", [(idtable.default_digest, 2001),
                                           (lambda cid: DIGEST_MASK, 300), (lambda cid: 0, 300)])
def test_marks_of_a_reserved_table_name_exactly_the_ids_not_marked(digest, count):
    written = Written()
    table = IdTable(written.recall, digest=digest)
    table.reserve(2001)  # 2,669 slots: the marks' last byte holds slots 2,664 to 2,668
    for i in range(count):
        written.add(table, f"job-{i}")
    marked = set(range(0, count, 3)) | {count - 1}
    assert all(table.mark(f"job-{i}") == i for i in sorted(marked))
    assert table.mark(f"job-{count}") == -1
    assert sorted(table.unmarked()) == [i for i in range(count) if i not in marked]


# --- narrow tables: line numbers in 4 bytes a slot ------------------------------------------

def test_a_narrow_table_takes_half_the_bytes_and_gives_the_digest_what_positions_leave():
    table = IdTable(Written().recall, narrow=True)
    table.reserve(10_000_000)  # line numbers up to 12.5 million: 24 bits, 8 left to the digest
    assert table.nbytes == 4 * (int(10_000_000 / RESERVE_LOAD) + 1)  # 53 MB, not 107
    assert (table._pbits, table._kept) == (24, 8)
    small = IdTable(Written().recall, narrow=True)
    small.reserve(1000)
    assert small._kept == 8  # never fewer position bits than a table not reserved has
    huge = IdTable(Written().recall, narrow=True)
    huge.reserve(1000, max_position=200_000_000)  # 28 bits of line number leave 4: wide
    assert huge._slots.itemsize == 8 and huge._pbits == idtable.POSITION_BITS


def test_a_reserved_narrow_table_takes_a_quarter_more_line_numbers_than_its_count():
    written = Written()
    table = IdTable(written.recall, narrow=True)
    table.reserve(1 << 20)  # line numbers to 1.25 * 2**20: 21 bits, and never fewer than 24
    assert table._pbits == 24
    at = {int((1 << 23) * 1.2) + i: f"job-{i}" for i in range(10)}
    tight = IdTable(at.get, narrow=True)
    tight.reserve(1 << 23)  # 1.25 * 2**23 needs 24 bits: an estimate 20 % low still fits
    assert tight._pbits == 24 and tight._slots.itemsize == 4
    tight.put_all(list(at.values()), list(at))
    assert tight._slots.itemsize == 4 and all(tight.find(cid) == n for n, cid in at.items())


@pytest.mark.parametrize("digest", [idtable.default_digest, *COLLIDE])
def test_a_narrow_table_finds_exactly_the_ids_put_and_grows_reading_each_back(digest):
    written = Written()
    table = IdTable(written.recall, digest=digest, narrow=True)
    table.reserve(800)
    for i in range(1200 if digest is not idtable.default_digest else 3000):
        assert written.add(table, f"job-{i}") == -1
    count = len(table)
    assert table.nbytes > 4 * (int(800 / RESERVE_LOAD) + 1)  # grown past its estimate
    assert all(table.find(f"job-{i}") == i for i in range(count))
    assert table.setdefault("job-3", 5000) == 3 and table.find("job-3") == 3
    assert table.find(f"job-{count}") == -1 and table.find("") == -1
    assert sorted(table.positions()) == list(range(count))


def test_a_narrow_table_grows_by_reading_every_id_back():
    # its kept bits are not where probing starts: a growth must read each id back for its digest
    written = Written()
    table = IdTable(written.recall, narrow=True)
    assert table._kept == 8 and table.nbytes == 4 * idtable.MIN_SLOTS
    full = int(idtable.MIN_SLOTS * MAX_LOAD)
    for i in range(full):
        written.add(table, f"job-{i}")
    before = written.recalls
    written.add(table, "grows")
    assert table.nbytes == 8 * idtable.MIN_SLOTS and written.recalls - before >= full
    assert all(table.find(f"job-{i}") == i for i in range(full)) and table.find("grows") == full


@pytest.mark.parametrize("bulk", [False, True], ids=["put", "put_all"])
def test_a_position_past_a_narrow_tables_bits_makes_it_wide_keeping_every_id(bulk):
    written = Written()
    table = IdTable(written.recall, digest=lambda cid: hash(cid) & 7, narrow=True)
    for i in range(300):
        written.add(table, f"job-{i}")
    marked_before = table.mark("job-1")
    far = (1 << idtable.NARROW_POSITION_BITS) + 5  # does not fit 24 bits
    recall = written.recall
    written.recall = lambda position: "far" if position == far else recall(position)  # type: ignore[method-assign]
    table._recall = written.recall
    if bulk:
        table.put_all(["far", "job-2"], [far, 2])
    else:
        assert table.put("far", far) == -1
    assert table._slots.itemsize == 8 and table.nbytes == 8 * idtable.MIN_SLOTS
    assert marked_before == 1 and table.find("far") == far and len(table) == 301
    assert all(table.find(f"job-{i}") == i for i in range(300))


def test_a_narrow_tables_few_kept_bits_still_spare_nearly_every_new_id_a_read_back():
    # the kept bits are the digest's lowest: ids probing the same slots do not share them (kept
    # from the top, as a wide table keeps them, 8 bits would match every neighbour's)
    written = Written()
    table = IdTable(written.recall, narrow=True)
    table.reserve(50_000)
    assert table._kept == 8
    for i in range(50_000):
        written.add(table, f"job-{i}")
    assert written.recalls < 50_000 * 0.02


def test_a_narrow_table_reserved_for_larger_positions_gives_them_the_bits():
    # the merge's table: line numbers and a 2-bit rank, 4 times the line count
    far = (1 << 26) - 2
    at = {n: f"job-{n}" for n in range(100)} | {far: "far", far + 1: "next"}
    table = IdTable(at.get, narrow=True)
    table.reserve(1000, max_position=far)  # + 1 in 26 bits
    assert table._pbits == 26 and table._kept == 6 and table._slots.itemsize == 4
    big = IdTable(at.get, narrow=True)
    big.reserve(1000, max_position=far + 1)  # 27 bits, 5 left: wide
    assert big._slots.itemsize == 8
    table.put_all([f"job-{n}" for n in range(100)], list(range(100)))
    assert table.put("far", far) == -1 and table._slots.itemsize == 4 and table.find("far") == far
    assert table.put("next", far + 1) == -1 and table._slots.itemsize == 8  # past 26 bits: wide
    assert table.find("far") == far and table.find("next") == far + 1
    assert all(table.find(f"job-{n}") == n for n in range(100))


def test_a_table_told_what_to_expect_grows_once_to_hold_it_and_keeps_every_id():
    written = Written()
    table = IdTable(written.recall)
    table.expect(20_000)
    assert table.nbytes == 8 * idtable.MIN_SLOTS  # nothing allocated before it is needed
    sizes = {table.nbytes}
    for i in range(20_000):
        written.add(table, f"job-{i}")
        sizes.add(table.nbytes)
    assert sizes == {8 * idtable.MIN_SLOTS,
                     8 * (int(20_000 * idtable.EXPECT_HEADROOM / RESERVE_LOAD) + 1)}
    assert all(table.find(f"job-{i}") == i for i in range(20_000))
