"""The partial resume index (issue 22): a run that has not ended saves `OUTPUT.resume` every
--index-every seconds and when it stops, saying what INPUT's lines read so far came to and how
long OUTPUT was. The next run hashes the two prefixes instead of parsing them, reads only the
lines of OUTPUT that follow, and decides every job as reading OUTPUT whole would have: no job
is sent twice, none is lost, a changed file leaves the index unused."""
from __future__ import annotations

import asyncio
import shutil

import orjson
import pytest

from jobs.reader import JobReader
from jobs.settled import DONE, PENDING
from runner.errors import ChangedJobsError
from runner.files import checkpoint as ckpt
from runner.files import resume_index
from runner.live import run as live_run
from tests.conftest import Script
from tests.test_resume_index import chat_jobs, counts, go, sent, stopping, write


def header(tmp_path):
    """OUTPUT's index: (its header, its states); None when there is none."""
    path = tmp_path / "out.jsonl.resume"
    if not path.exists():
        return None
    head, states = path.read_bytes().split(b"\n", 1)
    return orjson.loads(head), states


def results(tmp_path):
    return [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]


def each_once(tmp_path, n):
    ids = [r["custom_id"] for r in results(tmp_path) if r["error"] is None]
    return sorted(ids) == sorted(f"job-{i}" for i in range(n))


class Watch:
    """What a run parses (INPUT's lines given to `JobReader.feed` or read again by the settling
    pass), and where OUTPUT is read from."""

    def __init__(self, monkeypatch):
        self.parsed: list[int] = []
        self.output_from: list[int] = []
        from runner.files import inputs
        feed, parse, load = JobReader.feed, inputs.parse_line, ckpt.load

        def watched_feed(reader, raw):
            self.parsed.append(orjson.loads(raw)["custom_id"])
            return feed(reader, raw)

        def watched_parse(raw, line, path):
            self.parsed.append(orjson.loads(raw)["custom_id"])
            return parse(raw, line, path)

        def watched_load(path, state, *, start=0):
            self.output_from.append(start)
            return load(path, state, start=start)

        monkeypatch.setattr(JobReader, "feed", watched_feed)
        monkeypatch.setattr(inputs, "parse_line", watched_parse)
        monkeypatch.setattr(ckpt, "load", watched_load)


async def test_a_stopped_run_leaves_a_partial_index_and_the_next_reads_only_what_follows(
        tmp_path, monkeypatch):
    write(tmp_path / "in.jsonl", chat_jobs(10))
    stats = await go(tmp_path, Script(), limit=4)
    assert stats.exit_code() == 3
    head, states = header(tmp_path)
    size = (tmp_path / "out.jsonl").stat().st_size
    assert head["version"] == resume_index.PARTIAL and head["output_bytes"] == size
    assert head["input_bytes"] == (tmp_path / "in.jsonl").stat().st_size  # read ahead: all of it
    assert states[:4] == bytes([DONE] * 4) and PENDING in states[4:] + bytes([PENDING])
    watch = Watch(monkeypatch)
    script = Script()
    stats = await go(tmp_path, script)
    assert sent(script) == [4, 5, 6, 7, 8, 9]
    assert counts(stats) == (10, 4, 0, 6, {}, 0)
    assert watch.output_from == [size]  # OUTPUT's lines before the index: hashed, never parsed
    # the settling pass parses no line (nothing follows the index in OUTPUT); the run, the six
    assert sorted(watch.parsed) == [f"job-{i}" for i in range(4, 10)]
    assert header(tmp_path)[0]["version"] == resume_index.VERSION  # the run ended: a whole one
    assert each_once(tmp_path, 10)


async def test_lines_written_after_the_index_are_read_and_their_jobs_not_sent_again(
        tmp_path, monkeypatch):
    # as after a SIGKILL: the run wrote lines 5 to 8 after its last index
    write(tmp_path / "in.jsonl", chat_jobs(12))
    await go(tmp_path, Script(), limit=4)
    shutil.copy(tmp_path / "out.jsonl.resume", tmp_path / "older")
    await go(tmp_path, Script(), limit=4)  # --limit counts the jobs a run sends
    shutil.copy(tmp_path / "older", tmp_path / "out.jsonl.resume")
    watch = Watch(monkeypatch)
    script = Script()
    stats = await go(tmp_path, script)
    assert sent(script) == [8, 9, 10, 11]
    assert counts(stats) == (12, 8, 0, 4, {}, 0)
    # lines 1-4: settled, unparsed; 5-8: answered after the index, decided by the settling pass
    # (each parsed once); 9-12: read by the run
    assert sorted(watch.parsed) == sorted(f"job-{i}" for i in range(4, 12))
    assert each_once(tmp_path, 12)


async def test_jobs_in_flight_at_a_stop_stay_pending_in_the_index(tmp_path):
    write(tmp_path / "in.jsonl", chat_jobs(6))
    stats = await go(tmp_path, stopping(stop_on={5}, hang={2}), concurrency=8, grace_s=0.1)
    assert stats.exit_code() == 3
    head, states = header(tmp_path)
    assert head["version"] == resume_index.PARTIAL and states[2] == PENDING
    script = Script()
    await go(tmp_path, script)
    assert 2 in sent(script) and each_once(tmp_path, 6)


async def run_taking_snapshots(tmp_path, monkeypatch, send, **options):
    """Run INPUT in `tmp_path` once, saving a partial index as each request is sent (jobs on the
    wire, INPUT read ahead of the decisions): each index, with OUTPUT's size then."""
    taken, made = [], []
    init = live_run._Snapshots.__init__

    def keep(snapshots, *args, **kwargs):
        init(snapshots, *args, **kwargs)
        made.append(snapshots)

    async def sending(req):
        if made and (write_it := made[-1].take()) is not None:
            write_it()
            taken.append(((tmp_path / "out.jsonl.resume").read_bytes(),
                          (tmp_path / "out.jsonl").stat().st_size))
        return await send(req)

    with monkeypatch.context() as patch:
        patch.setattr(live_run._Snapshots, "__init__", keep)
        await go(tmp_path, sending, **options)
    return taken


async def resumes_as_reading_output_whole(tmp_path, taken, outcome, *, lines_after=3):
    """For each snapshot: OUTPUT cut back `lines_after` lines after it (a kill), resumed once
    from the index and once without it; the snapshots whose two `outcome(folder)` differ."""
    output = (tmp_path / "out.jsonl").read_bytes()
    differ = []
    for k, (index, size) in enumerate(taken):
        end = size + len(b"".join(output[size:].splitlines(keepends=True)[:lines_after]))
        both = []
        for use in (True, False):
            folder = tmp_path / f"kill-{k}-{use}"
            folder.mkdir()
            shutil.copy(tmp_path / "in.jsonl", folder / "in.jsonl")
            (folder / "out.jsonl").write_bytes(output[:end])
            if use:
                (folder / "out.jsonl.resume").write_bytes(index)
            both.append(await outcome(folder))
        if both[0] != both[1]:
            differ.append((k, both))
    return differ


async def test_a_resume_from_any_snapshot_decides_and_counts_as_reading_output_whole(
        tmp_path, monkeypatch):
    # failures kept and transient, a BOM, a blank line, bad lines, no newline at the end
    from tests.test_resume_index import failing
    raws = [orjson.dumps(job) for job in chat_jobs(40)]
    raws[0] = b"\xef\xbb\xbf" + raws[0]
    raws[7:7] = [b"", b"not json"]
    raws.insert(15, b'{"custom_id":"bad-with-id"}')
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(raws))
    taken = await run_taking_snapshots(tmp_path, monkeypatch,
                                       failing(permanent={3, 17, 38}, transient={5, 21}),
                                       concurrency=4)
    assert len(taken) >= 20

    async def outcome(folder):
        script = failing()
        stats = await go(folder, script)
        return sent(script), counts(stats), stats.duplicates, header(folder)[1]  # its states

    assert await resumes_as_reading_output_whole(tmp_path, taken, outcome) == []


async def test_packed_jobs_resume_from_any_snapshot_as_reading_output_whole(tmp_path,
                                                                           monkeypatch):
    jobs = [{"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": "text-embedding-3-small", "input": f"t{i}"}} for i in range(300)]
    write(tmp_path / "in.jsonl", jobs)
    taken = await run_taking_snapshots(tmp_path, monkeypatch, Script(), concurrency=3, pack=True)
    assert len(taken) >= 2

    async def outcome(folder):
        script = Script()
        stats = await go(folder, script, pack=True)
        inputs = sorted(text for _, _, body in script.calls for text in (
            body["input"] if isinstance(body["input"], list) else [body["input"]]))
        return inputs, counts(stats), header(folder)[1]

    assert await resumes_as_reading_output_whole(tmp_path, taken, outcome, lines_after=70) == []


async def test_an_answered_last_line_without_its_newline_is_not_sent_again(tmp_path):
    jobs = chat_jobs(6)
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(orjson.dumps(job) for job in jobs))
    stats = await go(tmp_path, stopping(stop_on={3}, hang={1}), concurrency=8, grace_s=0.1)
    assert stats.exit_code() == 3 and header(tmp_path)[0]["version"] == resume_index.PARTIAL
    assert "job-5" in {r["custom_id"] for r in results(tmp_path) if r["error"] is None}
    script = Script()
    await go(tmp_path, script)
    assert 5 not in sent(script) and each_once(tmp_path, 6)


async def test_a_duplicate_in_another_shard_does_not_hide_one_in_this_shard(tmp_path):
    # the settling pass ends at the first duplicate id, whichever shard's: the index is given up
    from jobs.shard import Shard, shard_of
    assert shard_of("job-1", 2) == 2 and shard_of("job-0", 2) == shard_of("job-2", 2) == 1
    jobs = {job["custom_id"]: job for job in chat_jobs(3)}
    write(tmp_path / "in.jsonl", [jobs["job-1"], jobs["job-1"], jobs["job-0"], jobs["job-2"],
                                  jobs["job-0"]])
    await go(tmp_path, Script(), limit=1, shard=Shard(1, 2))
    assert header(tmp_path)[0]["version"] == resume_index.PARTIAL
    script = Script()
    stats = await go(tmp_path, script, shard=Shard(1, 2))
    assert sent(script) == [2] and stats.duplicates == 1  # line 5 repeats job-0: not sent


async def test_a_line_added_after_the_index_for_a_job_it_settled_is_read_as_the_last_word(
        tmp_path):
    # a transient failure appended by another tool for job-0, done before the index: the last
    # line for an id decides, so job-0 runs again, as reading OUTPUT whole decides
    write(tmp_path / "in.jsonl", chat_jobs(6))
    await go(tmp_path, Script(), limit=3)
    failure = {"id": "x", "custom_id": "job-0", "response": {"status_code": 500, "body": {}},
               "error": {"code": "server_error", "message": "boom"}}
    with open(tmp_path / "out.jsonl", "ab") as f:
        f.write(orjson.dumps(failure) + b"\n")
    logged = []
    script = Script()
    await go(tmp_path, script, log=logged.append)
    assert sent(script) == [0, 3, 4, 5]
    assert any("answers a job it settled" in line for line in logged)


async def test_the_last_periodic_save_lands_before_the_index_the_run_ends_with(tmp_path,
                                                                             monkeypatch):
    # a save runs in a thread, which goes on when its task is cancelled: the run waits for it
    # before writing its last index, so a stale partial one never replaces that
    import threading
    import time
    real = resume_index.save_partial
    writing = threading.Event()
    written = threading.Event()

    def slow(*args, **kwargs):
        writing.set()
        time.sleep(0.2)  # a big index, a slow disk
        real(*args, **kwargs)
        written.set()

    monkeypatch.setattr(resume_index, "save_partial", slow)

    answered = []

    async def send(req):
        if answered:  # after a first line, the run ends while the first save is being written
            for _ in range(5000):
                if writing.is_set():
                    break
                await asyncio.sleep(0.001)
        answered.append(req)
        return await Script()(req)

    write(tmp_path / "in.jsonl", chat_jobs(3))
    stats = await go(tmp_path, send, index_interval=0.001, concurrency=1)
    assert stats.exit_code() == 0 and written.is_set()
    assert header(tmp_path)[0]["version"] == resume_index.VERSION


async def test_a_partial_index_of_files_that_changed_is_not_used(tmp_path, monkeypatch):
    jobs = chat_jobs(10)
    for change in ("edit a finished job", "cut OUTPUT short", "append jobs to INPUT"):
        folder = tmp_path / change.replace(" ", "-")
        folder.mkdir()
        write(folder / "in.jsonl", jobs)
        await go(folder, Script(), limit=4)
        index = header(folder)[0]
        if change == "edit a finished job":
            write(folder / "in.jsonl", [{**jobs[1], "body": {**jobs[1]["body"], "max_tokens": 6}},
                                        *jobs[:1], *jobs[2:]])
        elif change == "cut OUTPUT short":
            lines = (folder / "out.jsonl").read_bytes().splitlines(keepends=True)
            (folder / "out.jsonl").write_bytes(b"".join(lines[:2]))
        else:
            write(folder / "in.jsonl", [*jobs, *chat_jobs(3, prefix="more")])
        loaded = resume_index.load(folder / "out.jsonl", str(folder / "in.jsonl"), None,
                                   retrying=False)
        if change == "append jobs to INPUT" and index["input_bytes"] < (folder / "in.jsonl").stat().st_size:
            assert isinstance(loaded, resume_index.Partial)  # the lines it vouches for are intact
            loaded.close()
        else:
            assert loaded is None
    # and the runs over them decide as reading OUTPUT would
    with pytest.raises(ChangedJobsError, match="job-1"):
        await go(tmp_path / "edit-a-finished-job", Script())
    script = Script()
    await go(tmp_path / "cut-OUTPUT-short", script)
    assert sent(script) == [2, 3, 4, 5, 6, 7, 8, 9]
    script = Script()
    await go(tmp_path / "append-jobs-to-INPUT", script)
    assert sent(script) == [0, 1, 2, 4, 5, 6, 7, 8, 9]  # job-0..3, then more-0..2 (q0, q1, q2)


async def test_a_duplicate_of_a_settled_job_is_still_found(tmp_path):
    # INPUT gained a line repeating a job the index settled: the settling pass meets the id
    # twice and gives up the index; OUTPUT is read whole and the duplicate reported, not sent
    jobs = chat_jobs(10)
    write(tmp_path / "in.jsonl", jobs)
    await go(tmp_path, Script(), limit=4)
    write(tmp_path / "in.jsonl", [*jobs, jobs[1]])
    logged = []
    script = Script()
    stats = await go(tmp_path, script, log=logged.append)
    assert sent(script) == [4, 5, 6, 7, 8, 9] and stats.duplicates == 1
    assert any("reading it whole" in line for line in logged)


async def test_a_run_that_keeps_no_index_removes_a_partial_one_before_appending(tmp_path):
    # --retry-failed keeps none: left in place, the partial index would not know of its lines
    write(tmp_path / "in.jsonl", chat_jobs(6))
    await go(tmp_path, Script(), limit=3)
    assert header(tmp_path)[0]["version"] == resume_index.PARTIAL
    stop = stopping(stop_on={4})
    await go(tmp_path, stop, retry_failed=True)
    assert header(tmp_path) is None


async def test_a_job_changed_since_its_result_after_the_index_is_refused_before_any_is_sent(
        tmp_path):
    # an index vouching for INPUT's first 4 lines and OUTPUT's first 4 results (job-1's a
    # transient failure, to send again); job-6 is edited after its result, further on: the run
    # must refuse it before sending job-1, as the check before a run does without an index
    from tests.test_resume_index import failing
    jobs = chat_jobs(10)
    write(tmp_path / "in.jsonl", jobs)
    await go(tmp_path, failing(transient={1}), concurrency=1)
    assert [r["custom_id"] for r in results(tmp_path)] == [f"job-{i}" for i in range(10)]
    output = (tmp_path / "out.jsonl").read_bytes()
    input_bytes = len(b"".join(orjson.dumps(job) + b"\n" for job in jobs[:4]))
    output_bytes = len(b"".join(output.splitlines(keepends=True)[:4]))
    resume_index.save_partial(
        tmp_path / "out.jsonl", None, bytes([DONE, PENDING, DONE, DONE]), input_bytes=input_bytes,
        input_sha256=resume_index.file_sha256(tmp_path / "in.jsonl", input_bytes).hexdigest(),
        output_bytes=output_bytes,
        output_sha256=resume_index.file_sha256(tmp_path / "out.jsonl", output_bytes).hexdigest())
    write(tmp_path / "in.jsonl", [*jobs[:6], {**jobs[6], "body": {**jobs[6]["body"],
                                                                  "max_tokens": 9}}, *jobs[7:]])
    script = Script()
    with pytest.raises(ChangedJobsError, match="job-6"):
        await go(tmp_path, script)
    assert script.calls == []
    # with --changed rerun it runs: job-1 again, job-6 as it is now, nothing else
    script = Script()
    from jobs.intake import ChangedPolicy
    await go(tmp_path, script, changed=ChangedPolicy.RERUN)
    assert sent(script) == [1, 6]


# -- the pieces ----------------------------------------------------------------------------------

def test_noting_lines_remembers_their_ids_for_the_duplicate_check_without_reading_the_jobs(
        tmp_path):
    from jobs.reader import LINES_PER_MARK
    from runner.files.inputs import Rereader
    jobs = chat_jobs(300)
    raws = [orjson.dumps(job) for job in jobs]
    raws[0] = b"\xef\xbb\xbf" + raws[0]  # a BOM: the id read all the same
    raws[5] = b'{"custom_id":"b","anything":1}'  # not a job: its id counts all the same
    raws[6] = b"not json"
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(raw + b"\n" for raw in raws) + b'{"custom_id":"b"}\n')
    with open(path, "rb") as source:
        reader = JobReader("in.jsonl", reread=Rereader(source.fileno()))
        assert reader.note_many(raws[:100]) is None
        assert reader.note_many(raws[100:]) is None and reader.line == 300
        # each id is read back from INPUT at its line (the offsets noted) to confirm a repeat
        for line in (1, 2, LINES_PER_MARK, LINES_PER_MARK + 1, 130, 251, 300):
            again = reader.feed(orjson.dumps(jobs[line - 1]))
            assert type(again).__name__ == "Duplicate"
            assert (again.line, again.first_line) == (reader.line, line)
        noted = reader.note_many([b"x", b'{"custom_id":"b"}'])
        assert (noted.line, noted.first_line, noted.custom_id) == (reader.line, 6, "b")
        assert reader.note_many([b"not json", b'{"custom_id":7}']) is None  # no id: left out


async def test_the_settling_pass_parses_only_lines_a_result_after_the_index_answers(tmp_path):
    import hashlib

    from jobs.settled import Settled
    from runner.files.inputs import settle_lines
    jobs = chat_jobs(8)
    path = tmp_path / "in.jsonl"

    async def settling(answered, states=(DONE, DONE, PENDING), vouched=None):
        settled = Settled(bytearray(states))
        digest = hashlib.sha256()
        data = path.read_bytes()
        end = len(b"".join(data.splitlines(keepends=True)[:3]))
        vouched = vouched or (end, hashlib.sha256(data[:end]).hexdigest())
        with open(path, "rb") as source:
            items = [(type(i).__name__, i.line) async for i in settle_lines(
                str(path), source, len(data), settled, answered, hasher=digest,
                vouched=vouched)]
        return items, settled.void, digest.hexdigest() == hashlib.sha256(data).hexdigest()

    write(path, jobs)
    # "gone" is not in INPUT: jobs 2 and 5 are read, in file order; INPUT hashed whole
    answered = {"job-5", "job-2", "gone"}
    assert await settling(answered) == ([("Job", 3), ("Job", 6)], None, True)
    assert answered == {"gone"}  # the ids met are taken out: "gone" answers no line of INPUT
    items, void, _ = await settling({"job-5", "job-1"})  # job-1 was settled: answered again
    assert "answers a job it settled" in void
    items, void, _ = await settling(set(), vouched=(10, "0" * 64))
    assert (items, void) == ([], "INPUT changed since its partial index was checked")
    write(path, [*jobs, jobs[1]])
    items, void, _ = await settling({"job-7"})
    assert items == [] and void == "duplicate custom_ids"


async def test_the_mark_says_how_far_input_was_read_at_the_end_of_a_line(tmp_path, monkeypatch):
    import hashlib

    from jobs.settled import Settled
    from runner.files import inputs
    path = tmp_path / "in.jsonl"
    write(path, chat_jobs(30))
    with open(path, "ab") as f:
        f.write(b'{"custom_id":"last"}')  # no newline at the end
    data = path.read_bytes()
    monkeypatch.setattr(inputs, "CHUNK", 500)
    mark = inputs.ReadMark(hashlib.sha256())
    seen = []
    with open(path, "rb") as source:
        async for item in inputs.read_unsettled(str(path), source, None, Settled(),
                                                duplicates=True, mark=mark):
            assert mark.lines >= item.line - 1
            assert data[:mark.size].count(b"\n") == mark.lines - (mark.size == len(data))
            assert mark.hasher.copy().hexdigest() == hashlib.sha256(data[:mark.size]).hexdigest()
            seen.append(mark.lines)
    # the last line too, without its newline (an index checks no byte was added to it)
    assert (mark.lines, mark.size) == (31, len(data)) and len(set(seen)) > 5


def test_scanning_output_from_an_offset_accounts_only_the_lines_after_it(tmp_path):
    from jobs.results import OutputState
    from tests.conftest import error  # noqa: F401  (the records below are written by hand)
    lines = [orjson.dumps({"id": f"r{i}", "custom_id": f"job-{i}", "response": {
        "status_code": 200, "body": {}}, "error": None}) + b"\n" for i in range(6)]
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"".join(lines[:3]) + b"garbage\n" + b"".join(lines[3:]))
    start = len(b"".join(lines[:2]))
    state = OutputState()
    report = ckpt.scan(path, state, start=start)
    assert sorted(state.done) == ["job-2", "job-3", "job-4", "job-5"]
    assert report.first_bad_lines == [4]  # numbered in the whole file
    assert state.final("job-4") is not None and state.final("job-0") is None


def test_bytes_added_to_a_last_line_without_its_newline_leave_the_index_unused(tmp_path):
    # an index vouching for INPUT to its end, its last line without a newline: bytes appended
    # to the file change that line, so the index must not answer for it any more
    jobs = chat_jobs(6)
    path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    out.write_bytes(b"x\n")
    for ending, usable in ((b"", False), (b"\n", True)):
        path.write_bytes(b"\n".join(orjson.dumps(job) for job in jobs[:5]) + ending)
        size = path.stat().st_size
        resume_index.save_partial(
            out, None, bytes([DONE] * 5), input_bytes=size,
            input_sha256=resume_index.file_sha256(path, size).hexdigest(), output_bytes=2,
            output_sha256=resume_index.file_sha256(out, 2).hexdigest(), grows=True)
        with open(path, "ab") as f:
            f.write(b"\n" + orjson.dumps(jobs[5]) + b"\n")
        loaded = resume_index.load(out, str(path), None, retrying=False)
        assert (loaded is not None) == usable
        if loaded is not None:
            loaded.close()


async def test_opening_output_for_a_backend_that_keeps_no_partial_index_removes_one(tmp_path):
    # `--via batch` appends through the same session: a partial index would not know its lines
    from runner.files.session import OutputSession
    write(tmp_path / "in.jsonl", chat_jobs(6))
    await go(tmp_path, Script(), limit=3)
    assert header(tmp_path)[0]["version"] == resume_index.PARTIAL
    for keeps in (True, False):
        async with OutputSession(str(tmp_path / "in.jsonl"), tmp_path / "out.jsonl",
                                 log=lambda m: None, handle_signals=False) as session:
            session.open(keeps_partial_index=keeps)
        assert (tmp_path / "out.jsonl.resume").exists() == keeps
    await go(tmp_path, Script())  # a whole index is left alone: it answers OUTPUT's exact size
    async with OutputSession(str(tmp_path / "in.jsonl"), tmp_path / "out.jsonl",
                             log=lambda m: None, handle_signals=False) as session:
        session.open()
    assert header(tmp_path)[0]["version"] == resume_index.VERSION


async def test_a_resume_of_a_shard_or_a_limited_one_from_any_snapshot_is_as_reading_whole(
        tmp_path, monkeypatch):
    from jobs.shard import Shard
    from tests.test_resume_index import failing
    for name, run_options, resume_options in (("shard", {"shard": Shard(1, 2)},
                                               {"shard": Shard(1, 2)}),
                                              ("limit", {}, {"limit": 2})):
        folder = tmp_path / name
        folder.mkdir()
        write(folder / "in.jsonl", chat_jobs(40))
        taken = await run_taking_snapshots(folder, monkeypatch, failing(
            permanent={3, 17, 38}, transient={5, 21}), concurrency=4, **run_options)
        assert len(taken) >= 5

        async def outcome(at, options=resume_options):
            script = failing()
            stats = await go(at, script, **options)
            return sent(script), counts(stats), stats.duplicates, header(at)

        def without_digests(result):  # record ids differ from run to run
            *rest, (head, states) = result
            return (*rest, head["version"], states)

        differ = await resumes_as_reading_output_whole(folder, taken, outcome)
        assert [(k, [without_digests(r) for r in both]) for k, both in differ
                if without_digests(both[0]) != without_digests(both[1])] == []


async def test_a_torn_line_after_the_index_is_cut_off_and_its_job_decided_as_reading_whole(
        tmp_path, monkeypatch):
    from tests.test_resume_index import failing
    write(tmp_path / "in.jsonl", chat_jobs(30))
    taken = await run_taking_snapshots(tmp_path, monkeypatch, failing(permanent={3}),
                                       concurrency=4)
    output = (tmp_path / "out.jsonl").read_bytes()
    differ = []
    for k, (index, size) in enumerate(taken):
        lines = output[size:].splitlines(keepends=True)
        if len(lines) < 3:
            continue
        killed = output[:size + len(b"".join(lines[:2]))] + lines[2][:len(lines[2]) // 2]
        both = []
        for use in (True, False):
            folder = tmp_path / f"torn-{k}-{use}"
            folder.mkdir()
            shutil.copy(tmp_path / "in.jsonl", folder / "in.jsonl")
            (folder / "out.jsonl").write_bytes(killed)
            if use:
                (folder / "out.jsonl.resume").write_bytes(index)
            first, second = failing(), failing()
            stats = await go(folder, first, limit=3)
            kind = header(folder)[0]["version"]
            loaded = resume_index.load(folder / "out.jsonl", str(folder / "in.jsonl"), None,
                                       retrying=False)
            usable = loaded is not None  # the index this resume left answers the next one
            if loaded is not None:
                loaded.close()
            again = await go(folder, second)
            both.append((sent(first), counts(stats), kind, usable, sent(second), counts(again)))
        if both[0] != both[1]:
            differ.append((k, both))
    assert len(taken) >= 5 and differ == []


async def test_a_chain_of_kills_resumes_as_reading_output_whole(tmp_path, monkeypatch):
    # killed, resumed from a snapshot (saving its own), killed again, resumed again
    from tests.test_resume_index import failing
    write(tmp_path / "in.jsonl", chat_jobs(30))
    taken = await run_taking_snapshots(tmp_path, monkeypatch,
                                       failing(permanent={3, 12}, transient={5}), concurrency=4)
    output = (tmp_path / "out.jsonl").read_bytes()
    checked = 0
    for k, (index, size) in enumerate(taken[::3]):
        base = tmp_path / f"chain-{k}"
        base.mkdir()
        shutil.copy(tmp_path / "in.jsonl", base / "in.jsonl")
        (base / "out.jsonl").write_bytes(
            output[:size + len(b"".join(output[size:].splitlines(keepends=True)[:2]))])
        (base / "out.jsonl.resume").write_bytes(index)
        second = await run_taking_snapshots(base, monkeypatch, failing(transient={7}),
                                            concurrency=3)

        async def outcome(folder):
            script = failing()
            stats = await go(folder, script)
            return sent(script), counts(stats), header(folder)[1]

        assert await resumes_as_reading_output_whole(base, second, outcome, lines_after=1) == []
        checked += len(second)
    assert checked >= 5


@pytest.mark.parametrize("edited", [False, True], ids=["as-it-was", "edited"])
async def test_a_job_added_again_whose_result_is_before_the_index_is_decided_by_it(tmp_path,
                                                                                 edited):
    # OUTPUT holds job-9's result from when INPUT had it; a run from the check (INPUT without
    # job-9) leaves a partial index; job-9 is added back at the end. Reading OUTPUT whole: done
    # (or, edited, refused): the index of a run from another index does not cover added lines
    async def case(use):
        folder = tmp_path / f"{use}"
        folder.mkdir()
        jobs = chat_jobs(20)
        write(folder / "in.jsonl", jobs[:10])
        await go(folder, Script())
        write(folder / "in.jsonl", jobs[:9] + jobs[10:])
        await go(folder, Script(), limit=3)
        assert header(folder)[0]["version"] == resume_index.PARTIAL
        again = {**jobs[9], "body": {**jobs[9]["body"], "max_tokens": 7}} if edited else jobs[9]
        with open(folder / "in.jsonl", "ab") as f:
            f.write(orjson.dumps(again) + b"\n")
        if not use:
            (folder / "out.jsonl.resume").unlink()
        script = Script()
        try:
            stats = await go(folder, script)
        except ChangedJobsError:
            return "refused", sent(script)
        return sent(script), counts(stats)

    with_index = await case(True)
    assert with_index == await case(False)
    assert with_index == ("refused", []) if edited else 9 not in with_index[0]


async def test_input_cut_short_since_the_index_was_checked_is_caught_by_the_settling_pass(
        tmp_path):
    import hashlib

    from jobs.settled import Settled
    from runner.files.inputs import settle_lines
    path = tmp_path / "in.jsonl"
    write(path, chat_jobs(8))
    data = path.read_bytes()
    end = len(b"".join(data.splitlines(keepends=True)[:6]))
    with open(path, "rb") as source:
        write(path, chat_jobs(3, prefix="new"))  # rewritten in place, shorter
        settled = Settled(bytearray([DONE, DONE, PENDING, DONE, DONE, DONE]))
        [item async for item in settle_lines(
            str(path), source, len(data), settled, set(), hasher=hashlib.sha256(),
            vouched=(end, hashlib.sha256(data[:end]).hexdigest()))]
    assert settled.void == "INPUT changed since its partial index was checked"


def test_an_index_whose_states_were_damaged_is_not_used(tmp_path):
    # written without a sync: after a power cut its bytes may be anything
    path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(path, chat_jobs(3))
    out.write_bytes(b"x\n")
    resume_index.save_partial(
        out, None, bytes([DONE] * 3), input_bytes=path.stat().st_size,
        input_sha256=resume_index.file_sha256(path, path.stat().st_size).hexdigest(),
        output_bytes=2, output_sha256=resume_index.file_sha256(out, 2).hexdigest())
    loaded = resume_index.load(out, str(path), None, retrying=False)
    assert isinstance(loaded, resume_index.Partial)
    loaded.close()
    index = tmp_path / "out.jsonl.resume"
    index.write_bytes(index.read_bytes()[:-3] + bytes(3))  # zeroed: PENDING, PENDING, PENDING
    assert resume_index.load(out, str(path), None, retrying=False) is None


async def test_an_index_stops_vouching_for_added_lines_once_output_answers_a_job_gone(tmp_path):
    # a first run's index (lines added to INPUT allowed) vouching for 4 lines; OUTPUT after it
    # answers jobs 4-9; job-7 is then replaced in INPUT: its result answers no line. The resume's
    # own index must not vouch for added lines any more, or job-7 added back would run again
    jobs = chat_jobs(12)
    path = tmp_path / "in.jsonl"
    write(path, jobs[:10])
    await go(tmp_path, Script(), concurrency=1)
    output = (tmp_path / "out.jsonl").read_bytes()
    input_bytes = len(b"".join(orjson.dumps(job) + b"\n" for job in jobs[:4]))
    output_bytes = len(b"".join(output.splitlines(keepends=True)[:4]))
    resume_index.save_partial(
        tmp_path / "out.jsonl", None, bytes([DONE] * 4), input_bytes=input_bytes,
        input_sha256=resume_index.file_sha256(path, input_bytes).hexdigest(),
        output_bytes=output_bytes,
        output_sha256=resume_index.file_sha256(tmp_path / "out.jsonl", output_bytes).hexdigest(),
        grows=True)
    write(path, [*jobs[:7], *chat_jobs(1, prefix="new"), *jobs[8:10], jobs[10], jobs[11]])
    script = Script()
    await go(tmp_path, script, limit=2)  # new-0 and job-10 sent; job-11 left: a partial index
    assert header(tmp_path)[0]["version"] == resume_index.PARTIAL
    with open(path, "ab") as f:
        f.write(orjson.dumps(jobs[7]) + b"\n")  # job-7 back, its result still in OUTPUT
    script = Script()
    await go(tmp_path, script)
    assert sent(script) == [11]
