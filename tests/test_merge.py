"""`runner merge`: each job's final line once over several outputs (a table of cases), and the
command itself."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from click.testing import CliRunner

from jobs.merge import merge_outputs
from runner.cli.main import main
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


# -- flat memory: the rule kept exactly (issue 22) --------------------------------------------------

COLLIDE = [lambda cid: 0, lambda cid: hash(cid) & 3, lambda cid: (hash(cid) & 7) << 61]


def transient(cid: str, text: str = "t") -> bytes:
    return orjson.dumps({"custom_id": cid, "response": {"status_code": 500, "body": {"t": text}},
                         "error": {"code": "server_error", "message": text}})


def permanent(cid: str, text: str = "p") -> bytes:
    return orjson.dumps({"custom_id": cid, "response": {"status_code": 400, "body": {"t": text}},
                         "error": {"code": "invalid_request", "message": text}})


def note(cid: str, text: str = "") -> bytes:
    return orjson.dumps({"custom_id": cid, "response": None,
                         "error": {"code": "duplicate_custom_id", "message": "m"}})


def reference_merge(outputs: list[list[bytes]]) -> list[bytes]:
    """The rule as it was first written: every line held in dicts (the oracle)."""
    from jobs.results import Outcome, record_outcome
    rank = {Outcome.TRANSIENT: 0, Outcome.PERMANENT: 1, Outcome.DONE: 2}
    merged: dict[str, tuple[int, bytes]] = {}
    for lines in outputs:
        final: dict[str, tuple[int, bytes]] = {}
        for raw in lines:
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            cid = record.get("custom_id") if isinstance(record, dict) else None
            outcome = record_outcome(record) if isinstance(cid, str) else None
            if outcome is not None:
                final[cid] = (rank[outcome], raw + b"\n")
        for cid, (r, raw) in final.items():
            if cid not in merged or r >= merged[cid][0]:
                merged[cid] = (r, raw)
    return [raw for _, raw in merged.values()]


def runner_ok(cid: str, text: str = "a") -> bytes:
    """A success as runner writes it (`{"id":…,"custom_id":…` first: read from its head)."""
    return _result(cid)[:-1].replace(b'"body":{}', b'"body":{"t":"%s"}' % text.encode())


def runner_note(cid: str, text: str = "") -> bytes:
    return orjson.dumps({"id": "r", "custom_id": cid, "response": None,
                         "error": {"code": "duplicate_custom_id", "message": text}})


def random_outputs(rng, outputs: int, lines: int, ids: int) -> list[list[bytes]]:
    makers = [ok, transient, permanent, note, runner_ok, runner_ok, runner_note]
    junk = [b"", b"not json", b"[1]", b'{"custom_id": 7}', b'{"no": "id"}']
    result = []
    for k in range(outputs):
        out = []
        for i in range(lines):
            if rng.random() < 0.1:
                out.append(rng.choice(junk) if rng.random() < 0.7 else ok("x")[:-4])  # torn
            else:
                out.append(rng.choice(makers)(f"job-{rng.randrange(ids)}", f"{k}.{i}"))
        result.append(out)
    return result


@pytest.mark.parametrize("digest", COLLIDE)
def test_merge_with_every_lookup_colliding_gives_each_job_its_own_final_line(digest):
    import random
    rng = random.Random(7)
    for _ in range(20):
        outputs = random_outputs(rng, rng.randrange(1, 5), rng.randrange(0, 40), rng.randrange(1, 25))
        assert merge_outputs(outputs, digest=digest) == reference_merge(outputs)


@pytest.mark.parametrize(("outputs", "expected"), [
    # the last line within an output is its final even when an earlier one ranks higher ...
    ([[permanent("a")], [ok("a"), transient("a")]], [permanent("a")]),
    ([[transient("a")], [ok("a"), transient("a", "2")]], [transient("a", "2")]),
    # ... and a success in any output beats the failures of every other
    ([[ok("a", "1")], [transient("a")], [permanent("a")]], [ok("a", "1")]),
    ([[transient("a")], [ok("a", "2")], [permanent("a")], [transient("a")]], [ok("a", "2")]),
    ([[permanent("a", "1")], [transient("a")], [permanent("a", "3")]], [permanent("a", "3")]),
    # a duplicate note is nobody's result, and never hides one
    ([[ok("a")], [note("a")]], [ok("a")]),
    ([[note("a"), note("b")], [ok("b")]], [ok("b")]),
])
def test_merge_ranks_each_outputs_final_line_across_outputs(outputs, expected):
    assert merge_outputs(outputs) == [line + b"\n" for line in expected]
    assert merge_outputs(outputs, digest=COLLIDE[0]) == [line + b"\n" for line in expected]


def test_merge_puts_each_job_where_it_first_appears_with_its_winning_line():
    outputs = [[transient("b"), note("z"), ok("a", "1"), transient("c")],
               [ok("d"), ok("c", "2"), ok("b", "2"), note("e")],
               [ok("e"), permanent("a")]]
    assert merge_outputs(outputs) == [line + b"\n" for line in
                                      [ok("b", "2"), ok("a", "1"), ok("c", "2"), ok("d"), ok("e")]]


@pytest.mark.parametrize("line", [
    _result("a")[:-1],
    _result("é ü")[:-1],
    _result("")[:-1],
    # a second custom_id key (JSON's last one counts), escaped or not, or an escaped head
    _result("a")[:-2] + b',"custom_id":"b"}',
    _result("a")[:-2] + b',"custom\\u005fid":"b"}',
    b'{"id":"x","custom_id":"a\\"b","response":{"status_code":200},"error":null}',
    b'{"id":"x\\"y","custom_id":"a","response":{"status_code":200},"error":null}',
    b'{"id":"x","custom_id":"a","response":{"status_code":200,"body":{"k":"custom_id"}},"error":null}',
    ok("a"), transient("a"), permanent("a"),
])
def test_a_result_lines_id_read_from_its_head_is_the_id_json_gives(line):
    from jobs.merge import result_id, verdict
    assert result_id(line) == verdict(line)[0] == orjson.loads(line)["custom_id"]


def write_output(path, lines: list[bytes], breaks: list[bytes]) -> None:
    path.write_bytes(b"".join(line + brk for line, brk in zip(lines, breaks)))


@pytest.mark.parametrize("digest", COLLIDE[:2])
def test_merging_files_read_in_small_pieces_gives_what_splitlines_gives(tmp_path, monkeypatch,
                                                                        digest):
    import random

    from jobs.merge import Merge
    from runner.files import outputs as outputs_module
    from runner.files.outputs import OutputLines
    monkeypatch.setattr(outputs_module, "READ_CHUNK", 97)  # lines cut across reads
    monkeypatch.setattr(outputs_module, "REREAD_SIZE", 64)  # a line read back in several tries
    rng = random.Random(3)
    for trial in range(15):
        outputs = random_outputs(rng, rng.randrange(1, 4), rng.randrange(0, 60), rng.randrange(1, 30))
        paths = []
        for k, lines in enumerate(outputs):
            path = tmp_path / f"{trial}.{k}.jsonl"
            breaks = [rng.choice([b"\n", b"\n", b"\r\n", b"\r"]) for _ in lines]
            if breaks and rng.random() < 0.5:
                breaks[-1] = b""  # a last line without its break
            write_output(path, lines, breaks)
            paths.append(path)
        expected = reference_merge([path.read_bytes().splitlines() for path in paths])
        with OutputLines(paths) as source:
            merge = Merge(source, digest=digest)
            assert list(merge.lines()) == expected
            assert len(merge) == len(expected)
            assert merge._table._slots.itemsize == 4  # narrow: line numbers and ranks
            numbered = [line for lines in source.lines() for line in lines]
            order = rng.sample(range(len(numbered)), len(numbered))
            assert [source.read(n) for n in order] == [numbered[n] for n in order]


def test_output_lines_are_the_files_splitlines_and_read_back_by_number(tmp_path, monkeypatch):
    from runner.files import outputs as outputs_module
    from runner.files.outputs import OutputLines
    monkeypatch.setattr(outputs_module, "READ_CHUNK", 5)
    monkeypatch.setattr(outputs_module, "REREAD_SIZE", 4)
    contents = [b"", b"a\nbb\r\nccc\rdd\n\n\r\r\neee", b"\n", b"x" * 40 + b"\n" + b"y" * 70,
                b"".join(b"%d\n" % i for i in range(100))]
    paths = []
    for k, data in enumerate(contents):
        paths.append(tmp_path / f"{k}.jsonl")
        paths[-1].write_bytes(data)
    with OutputLines(paths) as source:
        for k, data in enumerate(contents):
            assert [line for lines in source.output(k) for line in lines] == data.splitlines()
        everything = [line for data in contents for line in data.splitlines()]
        assert [line for lines in source.lines() for line in lines] == everything
        assert [source.read(n) for n in reversed(range(len(everything)))] == everything[::-1]
        paths[1].write_bytes(contents[1] + b"\nappended\n")
        # what the first reading found, no more
        assert [line for lines in source.lines() for line in lines] == everything


def test_merge_given_the_job_file_reports_each_missing_job_once_by_its_first_line(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"".join(_job(c) for c in "abcdefgha"))  # the second "a" is a duplicate
    part = tmp_path / "big.1.jsonl"
    part.write_bytes(_result("c"))
    result = _merge_cli(part, "-o", tmp_path / "all.jsonl", "--jobs", jobs)
    assert result.exit_code == 3, result.output
    assert ("7 jobs of" in result.output and "'a' (line 1), 'b' (line 2), 'd' (line 4), "
            "'e' (line 5), 'f' (line 6) and 2 more" in result.output)
    assert (tmp_path / "all.jsonl").read_bytes() == _result("c")


def test_an_output_that_cannot_be_read_is_named_with_the_reason(tmp_path):
    from runner.files.outputs import OutputLines, UnreadableOutput
    (tmp_path / "1.jsonl").write_bytes(_result("a"))
    with OutputLines([tmp_path / "1.jsonl", tmp_path / "gone.jsonl"]) as source:
        assert list(source.output(0)) == [[_result("a")[:-1]]]
        with pytest.raises(UnreadableOutput, match="cannot read .*gone.jsonl: No such file"):
            list(source.output(1))


def test_the_jobs_no_output_holds_are_the_same_read_once_or_twice(tmp_path):
    from jobs.reader import BOM
    from runner.files.missing import job_lines, missing_jobs
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(BOM + _job("a") + b"\n" + b"not json\n" + _job("b") + _job("a") + _job("c")
                     + b'{"custom_id": "d"}\n' + _job("e") + _job("c"))
    held = {"b"}
    twice = list(missing_jobs(str(jobs), held.__contains__, job_lines(str(jobs))))
    once = list(missing_jobs(str(jobs), held.__contains__, None))  # a pipe's way
    assert twice == once == [(1, "a"), (6, "c"), (8, "e")]


def test_merge_given_a_file_that_holds_no_jobs_writes_nothing_and_exits_2(tmp_path):
    part = tmp_path / "big.1.jsonl"
    part.write_bytes(_result("a"))
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"".join(b"line %d\n" % i for i in range(30)))
    result = _merge_cli(part, "-o", tmp_path / "all.jsonl", "--jobs", notes)
    assert result.exit_code == 2 and "does not look like a JSONL job file" in result.output
    assert not (tmp_path / "all.jsonl").exists()


def test_an_output_that_is_a_pipe_is_refused_not_merged_empty(tmp_path):
    # each output is read three times: a pipe (`runner merge <(cat a.jsonl) ...`) would read empty
    # the second time and the merge would lose every job
    line = orjson.dumps({"id": "r1", "custom_id": "j1",
                         "response": {"status_code": 200, "body": {}}, "error": None})
    read, write = os.pipe()
    os.write(write, line + b"\n")
    os.close(write)
    merged = tmp_path / "m.jsonl"
    try:
        result = CliRunner().invoke(main, ["merge", f"/dev/fd/{read}", "-o", str(merged)])
    finally:
        os.close(read)
    assert result.exit_code == 2 and "not a regular file" in result.output
    assert not merged.exists()

