"""Matching an answer back to the jobs of a request by index, with usage apportioned."""
import random

import pytest

from jobs.job import Job
from jobs.packing import MissingChoices, NChoicesIgnored, Request, apportion, single, split_response


def job(cid, url="/v1/completions", **body):
    return Job(cid, url, {"model": "m", **body}, 1)


def completion_answer(prompts, n, rng=None):
    choices = [{"index": p * n + j, "text": f"{prompt}#{j}", "finish_reason": "stop", "logprobs": None}
               for p, prompt in enumerate(prompts) for j in range(n)]
    (rng or random.Random(0)).shuffle(choices)
    return {"id": "cmpl", "object": "text_completion", "model": "m", "choices": choices,
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}}


def test_single_job_answer_is_kept_with_choices_in_index_order():
    j = job("a", prompt="p", n=3)
    answers = split_response(single(j, 10), completion_answer(["p"], 3))
    assert [c["index"] for c in answers[0]["choices"]] == [0, 1, 2]
    assert answers[0]["usage"]["total_tokens"] == 42


@pytest.mark.parametrize("n", [1, 2, 3])
def test_packed_choices_go_to_their_own_jobs_reindexed_from_zero(n):
    prompts = ["alpha", "bravo", "charlie", "delta"]
    jobs = tuple(job(f"id{i}", prompt=p, n=n) for i, p in enumerate(prompts))
    request = Request("/v1/completions", {"model": "m", "prompt": prompts, "n": n}, jobs, 0)
    answers = split_response(request, completion_answer(prompts, n))
    for prompt, answer in zip(prompts, answers):
        assert [c["text"] for c in answer["choices"]] == [f"{prompt}#{j}" for j in range(n)]
        assert [c["index"] for c in answer["choices"]] == list(range(n))
    assert sum(a["usage"]["prompt_tokens"] for a in answers) == 30
    assert sum(a["usage"]["completion_tokens"] for a in answers) == 12
    assert all(a["usage"]["total_tokens"] == a["usage"]["prompt_tokens"] + a["usage"]["completion_tokens"]
               for a in answers)


def test_a_missing_choice_fails_the_whole_answer_not_one_job_silently():
    prompts = ["a", "b"]
    request = Request("/v1/completions", {"model": "m", "prompt": prompts}, (job("1", prompt="a"), job("2", prompt="b")), 0)
    answer = completion_answer(prompts, 1)
    answer["choices"] = [c for c in answer["choices"] if c["index"] != 1]
    with pytest.raises(MissingChoices, match="first missing index 1"):
        split_response(request, answer)


def test_embeddings_are_matched_by_data_index():
    inputs = ["x", "yy", "zzz"]
    jobs = tuple(job(f"e{i}", url="/v1/embeddings", input=t) for i, t in enumerate(inputs))
    request = Request("/v1/embeddings", {"model": "m", "input": inputs}, jobs, 0)
    data = [{"object": "embedding", "index": i, "embedding": [float(i)]} for i in (2, 0, 1)]
    answers = split_response(request, {"object": "list", "data": data, "model": "m",
                                       "usage": {"prompt_tokens": 6, "total_tokens": 6}})
    assert [a["data"][0]["embedding"] for a in answers] == [[0.0], [1.0], [2.0]]
    assert all(a["data"][0]["index"] == 0 for a in answers)
    assert [a["usage"]["prompt_tokens"] for a in answers] == [1, 2, 3]


def test_chat_answer_needs_n_choices():
    j = job("c", url="/v1/chat/completions", messages=[], n=2)
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}
    with pytest.raises(MissingChoices):
        split_response(single(j, 1), body)


def test_one_choice_per_prompt_where_n_asked_for_more_names_the_ignored_n():
    j = job("c", url="/v1/chat/completions", messages=[], n=2)
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}
    with pytest.raises(NChoicesIgnored, match="1 choice came back where n=2 asked for 2") as caught:
        split_response(single(j, 1), body)
    assert (caught.value.n, caught.value.prompts) == (2, 1)
    prompts = ["a", "b", "c"]
    jobs = tuple(job(f"id{i}", prompt=p, n=2) for i, p in enumerate(prompts))
    request = Request("/v1/completions", {"model": "m", "prompt": prompts, "n": 2}, jobs, 0)
    with pytest.raises(NChoicesIgnored, match="3 choices, one per prompt, came back where n=2 for each "
                                              "of 3 prompts asked for 6"):
        split_response(request, completion_answer(prompts, 1))
    assert request.prompts == 3 and request.n == 2


def test_a_short_answer_that_is_not_one_choice_per_prompt_is_only_missing_choices():
    prompts = ["a", "b", "c"]
    jobs = tuple(job(f"id{i}", prompt=p, n=2) for i, p in enumerate(prompts))
    request = Request("/v1/completions", {"model": "m", "prompt": prompts, "n": 2}, jobs, 0)
    answer = completion_answer(prompts, 2)
    answer["choices"] = [c for c in answer["choices"] if c["index"] < 2]  # the first prompt only
    with pytest.raises(MissingChoices) as caught:
        split_response(request, answer)
    assert not isinstance(caught.value, NChoicesIgnored)


@pytest.mark.parametrize("body", [None, [], {"choices": None}, {"nochoices": []}])
def test_malformed_answers_are_missing_choices(body):
    with pytest.raises(MissingChoices):
        split_response(single(job("a", prompt="p"), 1), body)


@pytest.mark.parametrize("total, weights, parts", [
    (10, [1, 1], [5, 5]), (10, [1, 2, 1], [3, 5, 2]), (7, [1, 1, 1], [3, 2, 2]),
    (5, [0, 0], [3, 2]), (0, [3, 4], [0, 0]), (1, [1, 1, 1], [1, 0, 0]),
])
def test_apportion_splits_exactly(total, weights, parts):
    assert apportion(total, weights) == parts
    assert sum(apportion(total, weights)) == total


def test_a_pack_answered_in_part_keeps_every_job_answered_in_full():
    from jobs.packing import PartialAnswer
    prompts = ["a", "b", "c", "d"]
    jobs = tuple(job(f"id{i}", prompt=p, n=2) for i, p in enumerate(prompts))
    request = Request("/v1/completions", {"model": "m", "prompt": prompts, "n": 2}, jobs, 0)
    answer = completion_answer(prompts, 2)
    answer["choices"] = [c for c in answer["choices"] if c["index"] != 5]  # c's second choice
    with pytest.raises(PartialAnswer) as caught:
        split_response(request, answer)
    partial = caught.value
    assert sorted(partial.answers) == [0, 1, 3] and partial.missing == (2,)
    assert [c["text"] for c in partial.answers[3]["choices"]] == ["d#0", "d#1"]
    assert [c["index"] for c in partial.answers[3]["choices"]] == [0, 1]


def test_only_the_first_prompts_choices_is_a_list_not_taken_not_a_partial_answer():
    from jobs.packing import PartialAnswer
    prompts = ["a", "b", "c"]
    jobs = tuple(job(f"id{i}", prompt=p) for i, p in enumerate(prompts))
    request = Request("/v1/completions", {"model": "m", "prompt": prompts}, jobs, 0)
    answer = completion_answer(prompts, 1)
    answer["choices"] = [c for c in answer["choices"] if c["index"] == 0]
    with pytest.raises(MissingChoices) as caught:
        split_response(request, answer)
    assert not isinstance(caught.value, PartialAnswer)


def test_moderations_with_a_result_short_are_never_split_by_position():
    from jobs.packing import PartialAnswer
    inputs = ["x", "y", "z"]
    jobs = tuple(job(f"m{i}", url="/v1/moderations", input=t) for i, t in enumerate(inputs))
    request = Request("/v1/moderations", {"model": "m", "input": inputs}, jobs, 0)
    body = {"id": "modr", "model": "m", "results": [{"flagged": False}, {"flagged": True}]}
    with pytest.raises(MissingChoices) as caught:
        split_response(request, body)
    assert not isinstance(caught.value, PartialAnswer)
