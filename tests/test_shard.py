"""`--shard K/N`: which shard a custom_id falls in, and the option's parsing, as tables."""
from __future__ import annotations

import pytest

from jobs.shard import Shard, parse_shard, shard_of


@pytest.mark.parametrize(("custom_id", "count", "expected"), [
    ("", 1, 1),
    ("anything", 1, 1),
])
def test_shard_of_is_in_range_and_stable(custom_id, count, expected):
    assert shard_of(custom_id, count) == expected
    assert 1 <= shard_of(custom_id, count) <= count


def test_shard_of_does_not_change_between_versions():
    # Pinned values: changing the hash would move jobs between shards of a run in progress.
    assert [shard_of(f"job-{i}", 4) for i in range(8)] == PINNED


PINNED = [1, 4, 3, 1, 4, 1, 3, 1]


def test_every_id_falls_in_exactly_one_shard_and_shards_are_balanced():
    ids = [f"req-{i}/ü" for i in range(3000)]
    shards = [Shard(k, 3) for k in (1, 2, 3)]
    counts = [sum(shard.holds(i) for i in ids) for shard in shards]
    assert sum(counts) == 3000 and min(counts) > 900
    assert all(sum(shard.holds(i) for shard in shards) == 1 for i in ids)


def test_a_line_without_a_custom_id_belongs_to_shard_1_only():
    assert Shard(1, 3).holds(None) and not Shard(2, 3).holds(None)


@pytest.mark.parametrize(("text", "shard"), [("1/1", Shard(1, 1)), ("2/3", Shard(2, 3)),
                                              (" 3/3", Shard(3, 3))])
def test_parse_shard_reads_k_of_n(text, shard):
    assert parse_shard(text) == shard


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "3", "a/b", "1/2/3", "-1/2", ""])
def test_parse_shard_rejects_what_is_not_k_of_n(text):
    with pytest.raises(ValueError, match="K/N"):
        parse_shard(text)
