"""Job file reading: every bad-line kind gets a message naming the file and line; good lines run."""
import orjson
import pytest

from jobs.job import Job
from jobs.reader import BadLine, Duplicate, parse_line, read_jobs

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
    (line(url="/v1/images/generations"), "unsupported url '/v1/images/generations'"),
    (line(url=...), "unsupported url None"),
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
