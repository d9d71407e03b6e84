"""Small ways input goes wrong, each with one clear message and nothing created that was not
asked for (trust issue, item 7)."""
from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from jobs.reader import BadLine, Job, read_jobs
from runner.cli.main import main
from tests.test_e2e import read_results, write_jobs

JOB = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}'


def test_a_utf8_byte_order_mark_is_read_as_the_start_of_the_file():
    [item] = list(read_jobs([b"\xef\xbb\xbf" + JOB], "in.jsonl"))
    assert isinstance(item, Job) and item.custom_id == "a"
    [later] = list(read_jobs([JOB.replace(b'"a"', b'"b"'), b"\xef\xbb\xbf" + JOB], "in.jsonl"))[1:]
    assert isinstance(later, BadLine)  # only the file's start may carry one


def test_a_job_without_url_is_reported_as_missing_url():
    item, _ = list(read_jobs([b'{"custom_id": "a", "method": "POST", "body": {"model": "m"}}', JOB.replace(b'"a"', b'"b"')],
                                  "in.jsonl"))
    assert isinstance(item, BadLine) and item.reason == "missing url"


@pytest.mark.parametrize("output", ["-", "/dev/stdout", "/dev/null"])
def test_an_output_that_is_not_a_file_is_refused_once_with_exit_2(tmp_path, simulated, output):
    write_jobs(tmp_path / "in.jsonl", 2)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o", output,
                                       "--no-progress"])
    assert result.exit_code == 2
    assert result.output.count("is not an output file") == 1
    assert not (tmp_path / "-").exists()


def test_an_empty_job_file_says_so_and_exits_2_leaving_no_output(tmp_path, simulated):
    (tmp_path / "in.jsonl").write_bytes(b"\n\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o", str(out),
                                       "--no-progress"])
    assert result.exit_code == 2
    assert "INPUT holds no jobs" in result.output
    assert not (tmp_path / "out.jsonl.lock").exists() and not out.read_bytes()


def test_an_empty_shard_is_no_mistake(tmp_path, simulated):
    (tmp_path / "in.jsonl").write_bytes(JOB + b"\n")
    codes = {CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o",
                                       str(tmp_path / f"out.{k}.jsonl"), "--no-progress",
                                       "--shard", f"{k}/2"]).exit_code for k in (1, 2)}
    assert codes == {0}


def test_a_binary_file_gets_one_message_and_nothing_is_created(tmp_path, simulated):
    (tmp_path / "in.jsonl").write_bytes(bytes(range(256)) * 20)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o",
                                       str(tmp_path / "out.jsonl"), "--no-progress"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "is a binary file" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_missing_output_folder_is_named(tmp_path, simulated):
    write_jobs(tmp_path / "in.jsonl", 2)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o",
                                       str(tmp_path / "nope" / "out.jsonl"), "--no-progress"])
    assert result.exit_code == 2
    assert f"the folder of the output does not exist: {tmp_path / 'nope'}" in result.output


def test_a_clean_run_leaves_no_lock_file_and_a_stopped_one_says_read_so_far(tmp_path, simulated):
    write_jobs(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o", str(out),
                                       "--no-progress", "--summary-json", str(tmp_path / "s.json")])
    assert result.exit_code == 0 and "3 in input" in result.output
    assert not (tmp_path / "out.jsonl.lock").exists()
    assert orjson.loads((tmp_path / "s.json").read_bytes())["jobs"]["input_read_to_end"] is True
    assert len(read_results(out)) == 3


def test_a_run_stopped_before_the_end_of_its_input_says_read_so_far():
    from runner.report.stats import RunStats
    from runner.report.summary import summary_lines
    stats = RunStats(jobs=1828, succeeded=1828, stop_reason="interrupted by SIGTERM")
    assert "1,828 read so far" in summary_lines(stats, "out.jsonl", None)[1]
    stats.input_ended(sharded=False)
    assert "1,828 in input" in summary_lines(stats, "out.jsonl", None)[1]


def test_a_binary_file_without_nul_bytes_is_refused_too(tmp_path, simulated):
    (tmp_path / "in.jsonl").write_bytes(bytes(range(128, 256)) * 40)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o",
                                       str(tmp_path / "out.jsonl"), "--no-progress"])
    assert result.exit_code == 2 and "is a binary file" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
