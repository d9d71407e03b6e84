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
