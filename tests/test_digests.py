"""`jobs.digests.DigestSet`: never a wrong "not in"; a wrong "in" only when digests collide."""
from jobs.digests import DigestSet


def test_every_string_added_is_in_and_strings_never_added_are_not():
    added = [f"job-{i}" for i in range(5000)]
    d = DigestSet(added[:2500])
    for text in added[2500:]:
        d.add(text)
    assert all(text in d for text in added)
    assert not any(f"other-{i}" in d for i in range(5000))
    assert len(d) == 5000 and d.nbytes <= 8 * 4 * 5000  # doubled as it filled: 8 bytes a slot


def test_a_colliding_digest_can_only_say_in_never_not_in():
    d = DigestSet(digest=lambda text: len(text) % 3 + 1)  # every string collides with a third of all
    words = [f"w{i}" * (i % 7 + 1) for i in range(300)]
    for word in words:
        d.add(word)
    assert all(word in d for word in words)  # through every doubling
    assert "never added" in d  # the documented false "in": same digest as an added one
    assert len(d) == 3


def test_digest_zero_is_a_string_like_any_other():
    d = DigestSet(["a"], digest=lambda text: 0 if text == "a" else 5)
    assert "a" in d and "b" not in d and 42 not in d


def test_a_set_told_how_many_strings_come_is_allocated_once_for_them():
    d = DigestSet(expected=4096)
    size = d.nbytes
    assert size == 8 * 8192  # the smallest power of two holding 4,096 at most half full
    for i in range(4096):
        d.add(f"job-{i}")
    assert d.nbytes == size and len(d) == 4096  # never doubled
    assert all(f"job-{i}" in d for i in range(4096)) and "job-4096" not in d
    d.add("one more")  # past what was said: it doubles as any set does
    assert d.nbytes == 2 * size and "one more" in d and "job-0" in d
