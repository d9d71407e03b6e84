"""`runner merge`: each job's final line once over several outputs (a table of cases), and the
command itself."""
from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from jobs.merge import merge_outputs
from tests.conftest import ROOT


def ok(cid: str, text: str = "a") -> bytes:
    return orjson.dumps({"custom_id": cid, "response": {"status_code": 200, "body": {"t": text}},
                         "error": None})


def failed(cid: str, code: str) -> bytes:
    return orjson.dumps({"custom_id": cid, "response": None,
                         "error": {"code": code, "message": "m"}})


@pytest.mark.parametrize(("outputs", "expected"), [
    ([[ok("a"), ok("b")], [ok("c")]], [ok("a"), ok("b"), ok("c")]),
    ([[failed("a", "server_error"), ok("a", "second")]], [ok("a", "second")]),  # last line wins
    ([[ok("a")], [failed("a", "server_error")]], [ok("a")]),  # success beats a later failure
    ([[failed("a", "server_error")], [failed("a", "invalid_request")]],
     [failed("a", "invalid_request")]),
    ([[ok("a", "1")], [ok("a", "2")]], [ok("a", "2")]),  # equal: the later output
    ([[b"", b"not json", b"[1]", ok("a")[:-3]], [ok("b")]], [ok("b")]),  # junk and torn lines
])
def test_merge_keeps_each_jobs_final_line_once(outputs, expected):
    assert merge_outputs(outputs) == [line + b"\n" for line in expected]


@pytest.mark.slow  # the CLI in subprocesses
def test_runner_merge_writes_one_output(tmp_path):
    (tmp_path / "1.jsonl").write_bytes(ok("a") + b"\n" + failed("b", "server_error") + b"\n")
    (tmp_path / "2.jsonl").write_bytes(ok("b") + b"\n" + ok("c") + b"\n")
    proc = subprocess.run([sys.executable, "-m", "runner", "merge", str(tmp_path / "1.jsonl"),
                           str(tmp_path / "2.jsonl"), "-o", str(tmp_path / "all.jsonl")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "all.jsonl").read_bytes().splitlines()
    assert lines == [ok("a"), ok("b"), ok("c")]
    again = subprocess.run([sys.executable, "-m", "runner", "merge", str(tmp_path / "1.jsonl"),
                            "-o", str(tmp_path / "1.jsonl")], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2  # never over one of its inputs


# -- the command's guard and the forgotten shard -------------------------------------------------------

def _merge_cli(*args):
    from click.testing import CliRunner
    from runner.cli.main import main
    return CliRunner().invoke(main, ["merge", *map(str, args)])


def _result(cid):
    import orjson
    return orjson.dumps({"id": f"r-{cid}", "custom_id": cid, "error": None,
                         "response": {"status_code": 200, "request_id": None, "body": {}}}) + b"\n"


def _job(cid):
    import orjson
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/embeddings",
                         "body": {"model": "text-embedding-3-small", "input": cid}}) + b"\n"


def test_merge_refuses_to_write_over_a_job_file_and_changes_nothing(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(_job("a") + _job("b"))
    part = tmp_path / "big.1.jsonl"
    part.write_bytes(_result("a"))
    before = jobs.read_bytes()
    result = _merge_cli(part, "-o", jobs)
    assert result.exit_code == 2 and "holds job lines" in result.output
    assert jobs.read_bytes() == before
    result = _merge_cli(part, "-o", jobs, "--jobs", jobs)
    assert result.exit_code == 2 and jobs.read_bytes() == before


def test_merge_given_the_job_file_reports_jobs_no_output_holds_and_exits_3(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"".join(_job(c) for c in "abcd"))
    one, two = tmp_path / "big.1.jsonl", tmp_path / "big.2.jsonl"
    one.write_bytes(_result("a") + _result("b"))
    two.write_bytes(_result("d"))
    merged = tmp_path / "all.jsonl"
    result = _merge_cli(one, two, "-o", merged, "--jobs", jobs)
    assert result.exit_code == 3, result.output
    assert "1 jobs of" in result.output and "'c' (line 3)" in result.output
    assert len(merged.read_bytes().splitlines()) == 3
    two.write_bytes(_result("c") + _result("d"))
    assert _merge_cli(one, two, "-o", merged, "--jobs", jobs).exit_code == 0
