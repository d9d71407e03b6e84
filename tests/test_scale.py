"""Issue 22: the compact structures stay exact. Digests of a few bits (or none) force collisions:
every answer must still be the one a set of strings would give."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from jobs.idtable import RESERVE_LOAD, IdTable
from jobs.intake import Intake, Pending, Skip, SkipReason
from jobs.job import Job
from jobs.results import (
    FINGERPRINT, LineFacts, Outcome, OutputState, error_record, fingerprint, line_facts,
    record_facts, success_record,
)
from runner.files.checkpoint import scan

COLLIDE = [lambda cid: 0, lambda cid: hash(cid) & 3, lambda cid: (hash(cid) & 3) << 62]


def table_of(ids: list[str], digest) -> tuple[IdTable, list[str]]:
    written: list[str] = []
    table = IdTable(lambda position: written[position], digest=digest)
    for cid in ids:
        written.append(cid)
        table.put(cid, len(written) - 1)
    return table, written


@pytest.mark.parametrize("digest", COLLIDE)
@pytest.mark.slow  # over a second of real time
def test_an_id_table_with_colliding_digests_finds_exactly_the_ids_put(digest):
    ids = [f"job-{i}" for i in range(3000)]  # past two doublings
    table, written = table_of(ids + ids[:10], digest)  # the first ten put again: last wins
    assert len(table) == 3000
    assert all(table.find(cid) == i for i, cid in enumerate(ids[10:], 10))
    assert all(table.find(cid) == 3000 + i for i, cid in enumerate(ids[:10]))
    assert table.find("job-3000") == -1 and table.find("") == -1 and table.find("job-01") == -1
    assert sorted(table.positions()) == list(range(10, 3010))


def test_marks_name_exactly_the_ids_not_marked_even_when_digests_collide():
    table, written = table_of(["a", "b", "c", "d"], lambda cid: 7)
    assert table.mark("b") == 1 and table.mark("zz") == -1
    assert sorted(written[p] for p in table.unmarked()) == ["a", "c", "d"]


def lines_state(records: list[dict], digest) -> OutputState:
    state = OutputState(digest=digest)
    for record in records:
        state.add(record)
    return state


def ok(cid: str, printed: str | None = None) -> dict:
    return success_record(cid, {"x": 1}, record_id=f"r-{cid}", request_id=None, fingerprint=printed)


def failed(cid: str, code: str, status: int) -> dict:
    return error_record(cid, code, "m", record_id=f"e-{cid}", status=status)


@pytest.mark.parametrize("digest", COLLIDE)
def test_a_collision_never_makes_a_job_done_and_the_last_line_still_wins(digest):
    state = lines_state([ok("a"), failed("b", "server_error", 500), ok("b"),
                         failed("c", "invalid_request", 400), ok("d"),
                         failed("d", "server_error", 500)], digest)
    assert not state.needs_run("a") and not state.needs_run("b")
    assert not state.needs_run("c") and state.needs_run("c", retry_failed=True)
    assert state.needs_run("d")  # transient after success: the last line is the result
    for absent in ("e", "aa", "A", "a ", "job-1"):  # every digest equal to a done id's
        assert state.needs_run(absent) and state.final(absent) is None
    assert (len(state.done), len(state.transient), len(state.permanent)) == (2, 1, 1)
    assert set(state.done) == {"a", "b"} and dict(state.permanent) == {"c": "invalid_request"}


@pytest.mark.parametrize("digest", COLLIDE)
def test_fingerprints_and_changed_jobs_survive_collisions(digest):
    url, body = "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    now = fingerprint(url, body)
    other = fingerprint(url, {**body, "n": 2})
    state = lines_state([ok("same", now), ok("edited", other), ok("old"),
                         ok("x", now)], digest)
    intake = Intake(state)

    def decide(cid: str):
        return intake.decide(Job(custom_id=cid, url=url, body=body, line=1))

    same = decide("same")
    assert isinstance(same, Skip) and same.why is SkipReason.DONE and not same.unprinted
    assert type(decide("edited")).__name__ == "Refuse"
    assert decide("old").unprinted  # no fingerprint: taken as the answer to the job as it is
    assert isinstance(decide("new"), Pending)
    assert dict(state.fingerprints) == {"same": now, "edited": other, "x": now}


def test_noted_duplicates_are_exact_under_collisions():
    note = error_record("a", "duplicate_custom_id", "m", record_id="n1")
    state = lines_state([note, ok("b")], lambda cid: 0)
    assert "a" in state.noted_duplicates and "b" not in state.noted_duplicates
    assert state.needs_run("a")  # a note is not a result


TRICKY = [
    ok("plain", "0123456789abcdef0123456789abcdef"),
    ok("no-print"),
    ok('quote"inside', "0123456789abcdef0123456789abcdef"),
    ok("back\\slash"),
    ok("ünïcode ✓", "0123456789abcdef0123456789abcdef"),
    ok("short-print", "f1"),
    failed("failed", "invalid_request", 400),
    failed("later", "server_error", 500),
    error_record("dup", "duplicate_custom_id", "m", record_id="n"),
    {"custom_id": "other-order", "error": None, "response": {"status_code": 200, "body": {}}},
    {"id": "x", "custom_id": "fake-tail", "response": {"status_code": 200, "body": {
        "text": '},"error":null,"fingerprint":"0123456789abcdef0123456789abcdef"}'}},
     "error": {"code": "server_error"}},
]


@pytest.mark.parametrize("record", TRICKY, ids=lambda r: r["custom_id"])
def test_reading_a_line_without_parsing_it_gives_what_parsing_gives(record):
    raw = orjson.dumps(record)
    assert line_facts(raw) == record_facts(record)
    assert line_facts(raw + b"\r") == record_facts(record)


def test_a_file_scanned_with_colliding_digests_gives_exact_counts_and_bad_lines(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    records = [ok(f"job-{i}", "0123456789abcdef0123456789abcdef") for i in range(300)]
    records += [failed("job-5", "server_error", 500), ok("job-7"), failed("z", "invalid_request", 400)]
    data = b"".join(orjson.dumps(r) + b"\n" for r in records[:100]) + b"not json\n\n"
    data += b"".join(orjson.dumps(r) + b"\n" for r in records[100:])
    out.write_bytes(data)
    state = OutputState(digest=lambda cid: hash(cid) & 1)
    report = scan(out, state)
    assert (report.lines, report.bad_lines, report.first_bad_lines) == (305, 1, [101])
    assert (len(state.done), len(state.transient), len(state.permanent)) == (299, 1, 1)
    assert len(state.fingerprints) == 298  # job-5 failed transiently, job-7's last line has none
    assert state.needs_run("job-5") and not state.needs_run("job-7") and state.needs_run("job-300")
    assert state.final("job-7") == LineFacts("job-7", Outcome.DONE, None, None)


# -- the reader's duplicate check -------------------------------------------------------------------

def job_line(cid: str) -> bytes:
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "m", "messages": [{"role": "user", "content": cid}]}})


@pytest.mark.parametrize("digest", COLLIDE)
def test_duplicates_are_reported_by_line_and_only_they_whatever_the_digests(digest):
    from jobs.reader import BOM, Duplicate, JobReader
    ids = [f"j{i}" for i in range(200)] + ["j7", "j150", "j199"]
    lines = [BOM + job_line(ids[0])] + [job_line(cid) for cid in ids[1:100]] + [b"", b"  "] + \
        [job_line(cid) for cid in ids[100:]]
    data = b"\n".join(lines) + b"\n"
    reader = JobReader("in.jsonl", reread=lambda offset, size: data[offset:offset + size],
                       digest=digest)
    items = [reader.feed(raw) for raw in data.split(b"\n")[:-1]]
    duplicates = [(d.line, d.first_line, d.custom_id) for d in items if isinstance(d, Duplicate)]
    assert duplicates == [(203, 8, "j7"), (204, 153, "j150"), (205, 202, "j199")]
    assert sum(isinstance(i, Job) for i in items) == 200


# -- the batch journal -------------------------------------------------------------------------------

def test_a_closed_chunk_keeps_nothing_of_its_jobs_and_tokens_in_flight_follow_the_events(tmp_path):
    from runner.batch.state import BatchState, Chunk
    state = BatchState(tmp_path / "out.jsonl")
    state.open("0123456789abcdef")
    for n, model in enumerate(["a", "a", "b"], 1):
        chunk = Chunk(f"c{n}", "/v1/chat/completions", model, 100 * n,
                      [(f"j{n}-{i}", (f"j{n}-{i}",)) for i in range(1000)],
                      fingerprints={f"j{n}-{i}": "f" for i in range(1000)})
        state.plan(chunk, b"{}\n")
    state.record({"event": "created", "chunk": "c1", "batch_id": "b1"})
    state.record({"event": "created", "chunk": "c2", "batch_id": "b2"})
    assert (state.tokens_in_flight("a"), state.tokens_in_flight("b")) == (300, 0)
    state.close_chunk(state.chunks["c1"], "completed", retry=[], bisect=[])
    state.close_chunk(state.chunks["c3"], "failed", retry=[], bisect=[])  # never created
    assert (state.tokens_in_flight("a"), state.tokens_in_flight("b")) == (200, 0)
    closed = state.chunks["c1"]
    assert closed.lines == [] and closed.fingerprints == {} and closed.job_count == 1000
    busy = state.busy_jobs()
    assert all(f"j2-{i}" in busy for i in range(1000)) and len(busy) == 1000
    state.close()
    again = BatchState(tmp_path / "out.jsonl")
    again.load()  # read back as a stream: the same state
    assert again.tokens_in_flight("a") == 200 and again.chunks["c1"].lines == []
    busy = again.busy_jobs()
    assert again.chunks["c1"].line_count == 1000 and all(f"j2-{i}" in busy for i in range(1000))


@pytest.mark.parametrize("digest", [lambda cid: hash(cid) & 3, None])
def test_a_reserved_table_holds_its_ids_in_one_allocation_and_stays_exact(digest):
    # sized once: no doubling on the way, whose last step would hold old and new slots at once
    written: list[str] = []
    kwargs = {} if digest is None else {"digest": digest}
    table = IdTable(lambda position: written[position], **kwargs)
    table.reserve(600)
    slots = table.nbytes
    for i in range(600):
        written.append(f"job-{i}")
        table.put(f"job-{i}", i)
    assert table.nbytes == slots == 8 * 1024
    assert all(table.find(f"job-{i}") == i for i in range(600)) and table.find("job-600") == -1
    with pytest.raises(ValueError):
        table.reserve(10)  # only while empty


def test_a_files_lines_are_estimated_from_its_head_within_its_shortest_line():
    from runner.files.lines import estimate_lines
    assert estimate_lines(b"a" * 99 + b"\n" + b"b" * 99 + b"\n", 10_000, 64) == 100
    assert estimate_lines(b"x\n" * 50, 10_000, 64) == 156  # lines of 2 bytes: capped at 64
    assert estimate_lines(b"no newline yet", 10_000, 64) == 0 and estimate_lines(b"", 0, 64) == 0


def test_the_readers_and_outputs_tables_are_sized_once_for_a_file(tmp_path):
    from runner.files.inputs import Rereader
    jobs = tmp_path / "in.jsonl"
    jobs.write_bytes(b"".join(b'{"custom_id":"job-%d","method":"POST","url":"/v1/embeddings",'
                              b'"body":{"model":"m","input":"w%d"}}\n' % (i, i)
                              for i in range(5000)))
    from jobs.reader import JobReader
    with Rereader.of(str(jobs)) as reread:
        reader = JobReader("in.jsonl", reread=reread, expected_lines=reread.lines())
        first = reader._first_line.nbytes
        for raw in jobs.read_bytes().splitlines():
            reader.feed(raw)
        # line numbers: a narrow table, 4 bytes a slot
        assert reader._first_line.nbytes == first == 4 * (int(5000 / RESERVE_LOAD) + 1)
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(orjson.dumps(success_record(f"job-{i}", {"data": []}, record_id="r",
                                                         request_id=None)) + b"\n"
                             for i in range(5000)))
    state = OutputState()
    scan(out, state)
    assert len(state.done) == 5000 and state._results.nbytes == 8 * (int(5000 / RESERVE_LOAD) + 1)


def test_a_files_lines_are_estimated_from_all_along_it_not_its_head_alone(tmp_path):
    # long jobs first, short ones after: the head alone says a third of the lines, so a narrow
    # table sized from it would grow twice, reading every id back each time
    from runner.files.inputs import Rereader
    path = tmp_path / "in.jsonl"
    long = [b'{"custom_id":"a%d","method":"POST","url":"/v1/embeddings","body":{"model":"m",'
            b'"input":"%s"}}\n' % (i, b"x" * 300) for i in range(10_000)]
    short = [b'{"custom_id":"b%d","method":"POST","url":"/v1/embeddings","body":{"model":"m",'
             b'"input":"w"}}\n' % i for i in range(60_000)]
    path.write_bytes(b"".join(long + short))
    with Rereader.of(str(path)) as reread:
        assert abs(reread.lines() - 70_000) < 70_000 * 0.1


@pytest.mark.slow
@pytest.mark.parametrize("via", [[], ["--via", "batch"]], ids=["live", "batch"])
def test_a_resume_with_nothing_to_send_never_loads_the_http_client(tmp_path, via):
    # aiohttp is ~10 MB of a process: a resume of a finished file must not pay for it
    import subprocess
    import sys
    jobs, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    body = {"model": "text-embedding-3-small", "input": "w"}
    jobs.write_bytes(b"".join(orjson.dumps({"custom_id": f"j{i}", "method": "POST",
                                            "url": "/v1/embeddings", "body": body}) + b"\n"
                              for i in range(3)))
    out.write_bytes(b"".join(orjson.dumps(success_record(
        f"j{i}", {"data": []}, record_id=f"r{i}", request_id=None,
        fingerprint=fingerprint("/v1/embeddings", body))) + b"\n" for i in range(3)))
    code = ("import sys\nfrom runner.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n    print('exit', e.code, 'aiohttp' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, "run", str(jobs), "-o", str(out),
                           "--base-url", "http://127.0.0.1:9/v1", "--no-progress", *via],
                          capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "OPENAI_API_KEY": "sk-test"})
    assert done.stdout.strip().splitlines()[-1] == "exit 0 False", done.stdout + done.stderr
    assert out.read_bytes().count(b"\n") == 3


def test_a_readers_duplicate_table_goes_with_the_reader_not_at_a_later_full_collection(tmp_path):
    # the table read ids back through a method of the reader: a cycle, so a check's table (53 MB
    # at 10,000,000 lines) stayed beside the plan's until the cyclic collector ran
    import asyncio
    import gc

    from runner.files.inputs import read_items
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(b'{"custom_id":"j%d","method":"POST","url":"/v1/embeddings",'
                              b'"body":{"model":"m","input":"w"}}\n' % i for i in range(500)))

    def tables() -> int:
        return sum(isinstance(o, IdTable) for o in gc.get_objects())

    async def read_all() -> int:
        return len([item async for item in read_items(str(path))])

    gc.collect()
    before = tables()
    gc.disable()
    try:
        assert asyncio.run(read_all()) == 500
        assert tables() == before
    finally:
        gc.enable()
