"""Job file reading: every bad-line kind gets a message naming the file and line; good lines run."""
import orjson
import pytest

from jobs.job import Job
from jobs.reader import NOT_A_JOB_FILE_AFTER, BadLine, Duplicate, NotAJobFile, parse_line, read_jobs

GOOD = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}


def line(**changes):
    obj = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in obj.items() if v is not ...})


@pytest.mark.parametrize("raw, expected", [
    (b'{"custom_id": "a", "body": {"model"', "malformed or truncated JSON"),
    (b"hello world", "not JSON: 'hello world'"),
    (b'\xff\xfe{"custom_id": "a"}', "invalid UTF-8 at byte 0"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'"just a string"', "expected a JSON object, got str"),
    (line(custom_id=...), "missing custom_id"),
    (line(custom_id=7), "custom_id must be a string, got int"),
    (line(custom_id=""), "custom_id is empty"),
    (line(body=...), "missing body"),
    (line(body=[1]), "body must be a JSON object, got list"),
    (line(body={"messages": []}), "body.model must be a non-empty string"),
    (line(url="/v1/audio/speech"), "unsupported url '/v1/audio/speech'"),
    (line(url=...), "missing url"),
    (line(method="GET"), "unsupported method 'GET'"),
])
def test_bad_line_is_reported_with_file_line_and_reason(raw, expected):
    item = parse_line(raw, 12, "jobs.jsonl")
    assert isinstance(item, BadLine)
    assert str(item).startswith("jobs.jsonl:12: ")
    assert expected in item.reason


@pytest.mark.parametrize("raw", [b"", b"   ", b"\t\r", b"\r"])
def test_blank_lines_are_skipped_silently(raw):
    assert parse_line(raw, 1, "f") is None


@pytest.mark.parametrize("custom_id", ["with space", "a/b/c", "naïve-日本語", "tab\there", '"quoted"'])
def test_custom_id_may_hold_any_characters(custom_id):
    job = parse_line(line(custom_id=custom_id), 3, "f")
    assert isinstance(job, Job) and job.custom_id == custom_id and job.line == 3


def test_body_is_kept_exactly_and_custom_id_does_not_enter_it():
    body = {"model": "m", "messages": [], "temperature": 0.2, "x-extra": {"nested": [1, None]}}
    job = parse_line(line(body=body), 1, "f")
    assert job.body == body and "custom_id" not in job.body


def test_method_defaults_to_post_when_absent():
    assert isinstance(parse_line(line(method=...), 1, "f"), Job)


def test_reading_goes_on_after_bad_lines_and_flags_duplicates_with_both_lines():
    lines = [line(custom_id="a"), b"garbage", b"", line(custom_id="b"), line(custom_id="a"),
             b'{"custom_id": "c", "trunc']
    items = list(read_jobs(lines, "in.jsonl"))
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["Job", "BadLine", "Job", "Duplicate", "BadLine"]
    dup = items[3]
    assert isinstance(dup, Duplicate) and dup.line == 5 and dup.first_line == 1
    assert "in.jsonl:5:" in str(dup) and "line 1" in str(dup)
    assert [i.line for i in items] == [1, 2, 4, 5, 6]


def test_a_file_of_random_bytes_stops_with_one_clear_message_after_a_run_of_bad_lines():
    import random
    rng = random.Random(5)
    garbage = [bytes(rng.randrange(256) for _ in range(80)).replace(b"\n", b"") for _ in range(100)]
    seen = []
    with pytest.raises(NotAJobFile) as caught:
        for item in read_jobs(garbage, "data.bin"):
            seen.append(item)
    assert len(seen) == NOT_A_JOB_FILE_AFTER - 1 and all(isinstance(i, BadLine) for i in seen)
    assert caught.value.last.line == NOT_A_JOB_FILE_AFTER
    assert str(caught.value).startswith("data.bin does not look like a JSONL job file")


def test_a_result_file_given_as_input_is_named_as_such():
    result = orjson.dumps({"id": "r", "custom_id": "a", "response": None, "error": {"code": "x"}})
    with pytest.raises(NotAJobFile, match="look like result lines"):
        list(read_jobs([result] * NOT_A_JOB_FILE_AFTER, "out.jsonl"))


def test_bad_lines_after_a_first_job_never_stop_the_reading():
    lines = [line()] + [b"garbage"] * (3 * NOT_A_JOB_FILE_AFTER)
    items = list(read_jobs(lines, "in.jsonl"))
    assert isinstance(items[0], Job) and len(items) == 1 + 3 * NOT_A_JOB_FILE_AFTER


def test_fewer_bad_lines_at_the_start_than_the_limit_are_only_reported():
    lines = [b"garbage"] * (NOT_A_JOB_FILE_AFTER - 1) + [line()]
    items = list(read_jobs(lines, "in.jsonl"))
    assert isinstance(items[-1], Job) and len(items) == NOT_A_JOB_FILE_AFTER


def test_a_short_input_of_only_bad_lines_ends_with_the_same_clear_message():
    items = []
    with pytest.raises(NotAJobFile, match="does not look like a JSONL job file") as caught:
        for item in read_jobs([b"garbage"] * 3, "short.bin"):
            items.append(item)
    assert len(items) == 3 and caught.value.last is None  # every bad line was already given out
