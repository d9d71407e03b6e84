"""Packing: which jobs share a request, how many, and splitting a rejected pack."""
import pytest

from jobs.job import Job
from jobs.tokens import rate_limit_charge
from jobs.packing import (DEFAULT_PACK_JOBS, MAX_LIST_ITEMS, Budget, Packer, group_key, halves, pack,
                          pack_size)


def comp(cid, prompt="p", **extra):
    return Job(cid, "/v1/completions", {"model": "m", "prompt": prompt, "max_tokens": 8, **extra}, 1)


def emb(cid, text="t", **extra):
    return Job(cid, "/v1/embeddings", {"model": "e", "input": text, **extra}, 1)


def chat(cid):
    return Job(cid, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]}, 1)


def test_jobs_differing_only_in_prompt_share_a_group():
    assert group_key(comp("a", "one")) == group_key(comp("b", "two"))
    assert group_key(emb("a", "one")) == group_key(emb("b", "two"))


@pytest.mark.parametrize("other", [
    comp("b", temperature=0.5), comp("b", n=2), comp("b", stop=["\n"]), comp("b", logprobs=2),
    comp("b", max_tokens=9), Job("b", "/v1/completions", {"model": "other", "prompt": "p", "max_tokens": 8}, 1),
])
def test_any_other_difference_separates_groups(other):
    assert group_key(comp("a")) != group_key(other)


@pytest.mark.parametrize("job", [chat("c"), comp("l", prompt=["x", "y"]), comp("t", prompt=[1, 2, 3]),
                                 emb("l", text=["a", "b"])])
def test_chat_and_list_valued_jobs_go_alone(job):
    assert group_key(job) is None


def test_field_order_does_not_matter_for_grouping():
    a = Job("a", "/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 8, "temperature": 0}, 1)
    b = Job("b", "/v1/completions", {"temperature": 0, "max_tokens": 8, "prompt": "y", "model": "m"}, 1)
    assert group_key(a) == group_key(b)


@pytest.mark.parametrize("charge, budget, size", [
    (10, None, DEFAULT_PACK_JOBS),
    (10, Budget(rpm=30, tpm=None), MAX_LIST_ITEMS),                       # only requests bind
    (10, Budget(rpm=30, tpm=1_000_000), MAX_LIST_ITEMS),                  # 4167 wanted, API caps
    (400, Budget(rpm=900, tpm=240_000), 1),                               # tokens bind already
    (10, Budget(rpm=600, tpm=60_000), 13),                                # ceil(10 * 1.25)
    (100, Budget(rpm=10, tpm=10_000_000, token_capacity=5_000), 50),      # the bucket admits 50 at once
    (1_000_000, Budget(rpm=10, tpm=None), 1),                             # never below one
])
def test_pack_size_lets_tokens_bind_within_the_apis_limits(charge, budget, size):
    assert pack_size(charge, budget) == size


def test_packer_emits_full_packs_and_flushes_the_rest_in_body_order():
    packer = Packer(budget=lambda model: Budget(rpm=600, tpm=60_000))  # 13 jobs of charge 10
    out = []
    for i in range(30):
        out += packer.add(comp(f"j{i}", f"prompt {i}"), 10)
    assert [len(r.jobs) for r in out] == [13, 13] and packer.held == 4
    out += packer.flush()
    assert packer.held == 0 and [len(r.jobs) for r in out] == [13, 13, 4]
    first = out[0]
    assert first.body["prompt"] == [f"prompt {i}" for i in range(13)]
    assert first.body["max_tokens"] == 8 and first.charge == 130
    assert [j.custom_id for r in out for j in r.jobs] == [f"j{i}" for i in range(30)]


def test_unpackable_jobs_pass_straight_through_untouched():
    packer = Packer()
    c = chat("c")
    [request] = packer.add(c, 5)
    assert request.jobs == (c,) and request.body is c.body


def test_a_lone_packable_job_is_sent_with_its_own_body():
    packer = Packer()
    job = comp("a")
    packer.add(job, 3)
    [request] = packer.flush()
    assert request.body is job.body and not request.packed


def test_too_many_open_groups_sends_the_oldest():
    packer = Packer(max_open=2)
    assert packer.add(comp("a", temperature=0), 1) == []
    assert packer.add(comp("b", temperature=1), 1) == []
    [sent] = packer.add(comp("c", temperature=2), 1)
    assert sent.jobs[0].custom_id == "a"


def test_halves_split_a_pack_and_keep_every_job_once():
    jobs = [comp(f"j{i}", f"p{i}") for i in range(5)]
    request = pack(jobs, 50)
    left, right = halves(request)
    assert [j.custom_id for j in left.jobs + right.jobs] == [j.custom_id for j in jobs]
    assert left.body["prompt"] == ["p0", "p1"]
    assert left.charge + right.charge == sum(rate_limit_charge(j.url, j.body) for j in jobs)
    [only] = halves(pack(jobs[:2], 20))[:1]
    assert not only.packed and only.body is jobs[0].body


def test_a_job_that_would_overfill_a_pack_closes_it_first():
    packer = Packer(budget=lambda model: Budget(rpm=10, tpm=10_000_000, token_capacity=100))
    assert packer.add(comp("a"), 10) == []
    first, second = packer.add(comp("b"), 95)  # 105 > the 100 the bucket can admit at once
    assert [j.custom_id for j in first.jobs] == ["a"] and [j.custom_id for j in second.jobs] == ["b"]
    assert packer.held == 0


def test_held_jobs_are_bounded_by_sending_the_largest_pack():
    packer = Packer(max_held=5)
    for i in range(4):
        assert packer.add(comp(f"a{i}", temperature=0), 1) == []
    packer.add(comp("b0", temperature=1), 1)
    [sent] = packer.add(comp("b1", temperature=1), 1)
    assert len(sent.jobs) == 4 and packer.held == 2


def test_stop_packing_sends_that_url_and_models_jobs_alone_and_unpacks_its_partial_packs():
    packer = Packer(lambda model: Budget(rpm=10, tpm=None))  # packs of 2,048: everything stays open
    assert packer.add(comp("a", "one"), 1) == [] and packer.add(comp("b", "two"), 1) == []
    assert packer.add(emb("x", "three"), 1) == []
    alone = packer.stop_packing("/v1/completions", "m")
    assert [(r.packed, [j.custom_id for j in r.jobs]) for r in alone] == [(False, ["a"]), (False, ["b"])]
    assert packer.held == 1
    [later] = packer.add(comp("c", "four"), 1)
    assert not later.packed and later.body == comp("c", "four").body
    assert packer.add(emb("y", "five"), 1) == []  # other (url, model) keep packing
    [embeddings] = packer.flush()
    assert [j.custom_id for j in embeddings.jobs] == ["x", "y"]
