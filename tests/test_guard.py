"""runner.files.guard: results are never appended to the job file, another job file, or a compressed file."""
import gzip
import os

import orjson
import pytest

from tests.conftest import run_offline
from runner.files.guard import OutputRefused, check_output

JOB = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
       "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
RESULT = {"id": "batch_req_1", "custom_id": "a", "error": None,
          "response": {"status_code": 200, "request_id": "r", "body": {"choices": []}}}


@pytest.fixture
def jobs(tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(orjson.dumps(JOB) + b"\n")
    return path


def test_an_absent_output_or_one_holding_results_is_accepted(tmp_path, jobs):
    check_output(str(jobs), tmp_path / "absent.jsonl")
    results = tmp_path / "results.jsonl"
    results.write_bytes(orjson.dumps(RESULT) + b"\n\n" + orjson.dumps(RESULT) + b"\n")
    check_output(str(jobs), results)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    check_output(str(jobs), tmp_path / "empty.jsonl")


def test_the_job_file_itself_is_refused_naming_both_paths(jobs):
    with pytest.raises(OutputRefused, match="is the job file") as caught:
        check_output(str(jobs), jobs)
    assert str(jobs) in str(caught.value) and "nothing was written" in str(caught.value)


@pytest.mark.parametrize("link", [os.symlink, os.link])
def test_a_link_to_the_job_file_is_refused(tmp_path, jobs, link):
    alias = tmp_path / "alias.jsonl"
    link(jobs, alias)
    with pytest.raises(OutputRefused, match="through a link") as caught:
        check_output(str(jobs), alias)
    assert str(jobs) in str(caught.value) and str(alias) in str(caught.value)


def test_another_job_file_is_refused(tmp_path, jobs):
    other = tmp_path / "other-jobs.jsonl"
    other.write_bytes(b"\n" + orjson.dumps({**JOB, "custom_id": "b"}) + b"\n")
    with pytest.raises(OutputRefused, match="holds job lines") as caught:
        check_output(str(jobs), other)
    assert str(other) in str(caught.value) and str(jobs) in str(caught.value)


def test_a_compressed_output_is_refused(tmp_path, jobs):
    packed = tmp_path / "results.jsonl.gz"
    packed.write_bytes(gzip.compress(orjson.dumps(RESULT) + b"\n"))
    with pytest.raises(OutputRefused, match="gzip-compressed"):
        check_output(str(jobs), packed)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["same", "symlink", "stdin", "other job file"])
def test_the_cli_exits_2_and_changes_nothing(tmp_path, jobs, how):
    before = jobs.read_bytes()
    if how == "same":
        output = jobs
    elif how == "other job file":
        output = tmp_path / "more-jobs.jsonl"
        output.write_bytes(before)
    else:
        output = tmp_path / "results.jsonl"
        output.symlink_to(jobs)
    source = "-" if how == "stdin" else str(jobs)
    proc = run_offline(source, "-o", str(output), stdin_path=jobs)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.decode()
    assert str(output) in message and "nothing was written" in message
    assert jobs.read_bytes() == before and output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {"jobs.jsonl", output.name}), "no lock file or other file was left behind"
