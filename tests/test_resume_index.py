"""The resume index (issue 22): a run that decided every line of INPUT leaves `OUTPUT.resume`, and
the next run over the same two files takes each line's state from it, reading neither OUTPUT's
lines nor its finished jobs, and decides exactly as reading OUTPUT would have. Anything that makes
either file differ by a byte leaves the index unused."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from jobs.intake import ChangedPolicy

from jobs.reader import JobReader
from jobs.settled import DONE, KEPT, PENDING, Settled
from jobs.shard import Shard
from runner.api.endpoint import Endpoint
from runner.errors import ChangedJobsError
from runner.files import checkpoint as ckpt
from runner.files import resume_index
from runner.files.inputs import read_unsettled
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from tests.conftest import Script, error


def chat_jobs(n, prefix="job"):
    return [{"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}],
                      "max_tokens": 5}} for i in range(n)]


def write(path, jobs):
    path.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs))


def failing(permanent=(), transient=()):
    """A `send`: prompts `q{i}` for i in `permanent` are refused (400, permanent), in `transient`
    answered 500 (transient: the run gives up after one attempt), the others answered."""
    def rule(n, req, body):
        i = int(body["messages"][0]["content"][1:])
        if i in permanent:
            return error(400, "invalid_value", "bad")
        if i in transient:
            return error(500, None, "boom", type_="server_error")
        return None
    return Script(rule)


async def go(tmp_path, send, *, jobs_file="in.jsonl", log=None, index_interval=3600.0,
             pack=False, **dispatch):
    shard = dispatch.pop("shard", None)
    config = RunConfig(input=str(tmp_path / jobs_file), output=tmp_path / "out.jsonl",
                       endpoint=Endpoint(base_url="http://server.test/v1", api_key="sk-test"),
                       dispatch=DispatchConfig(max_attempts=1, **dispatch), pack=pack,
                       shard=shard, index_interval=index_interval)
    return await run(config, send=send, progress=False, handle_signals=False,
                     log=log or (lambda message: None))


def sent(script):
    return sorted(int(body["messages"][0]["content"][1:]) for _, _, body in script.calls)


def counts(stats):
    return (stats.jobs, stats.already_done, stats.kept_failed, stats.succeeded,
            dict(stats.failed), stats.exit_code())


async def both_ways(tmp_path, before, rerun):
    """`before(folder)` in two folders, then `rerun(folder)`: once with the index `before` left,
    once with it removed (the run reads OUTPUT); the two reruns' results."""
    results = []
    for use_index in (True, False):
        folder = tmp_path / ("index" if use_index else "no-index")
        folder.mkdir()
        await before(folder)
        if not use_index:
            (folder / "out.jsonl.resume").unlink(missing_ok=True)
        results.append(await rerun(folder))
    return results


async def test_a_finished_run_leaves_an_index_and_the_rerun_reads_neither_output_nor_its_jobs(
        tmp_path, monkeypatch):
    write(tmp_path / "in.jsonl", chat_jobs(30))
    first = await go(tmp_path, Script())
    assert first.exit_code() == 0 and (tmp_path / "out.jsonl.resume").exists()
    output = (tmp_path / "out.jsonl").read_bytes()
    parsed = []
    feed = JobReader.feed
    monkeypatch.setattr(JobReader, "feed", lambda self, raw: parsed.append(raw) or feed(self, raw))
    monkeypatch.setattr(ckpt, "load", lambda *a, **k: pytest.fail("OUTPUT was read"))
    again = Script()
    second = await go(tmp_path, again)
    assert again.calls == [] and parsed == []
    assert counts(second) == (30, 30, 0, 0, {}, 0)
    assert (tmp_path / "out.jsonl").read_bytes() == output


async def test_the_index_decides_each_line_as_reading_output_would(tmp_path):
    # done, kept failures and transient failures: the rerun with the index and the rerun without
    # it (the index removed) send the same jobs and count the same, with and without
    # --retry-failed (which does not use an index holding kept failures)
    jobs = chat_jobs(40)
    for retry_failed in (False, True):
        results = []
        for use_index in (True, False):
            folder = tmp_path / f"{retry_failed}-{use_index}"
            folder.mkdir()
            write(folder / "in.jsonl", jobs)
            await go(folder, failing(permanent={3, 17, 30}, transient={5, 6, 22}))
            assert (folder / "out.jsonl.resume").exists()
            if not use_index:
                (folder / "out.jsonl.resume").unlink()
            script = failing(permanent={30}, transient={6})
            stats = await go(folder, script, retry_failed=retry_failed)
            results.append((sent(script), counts(stats)))
        assert results[0] == results[1]
        expected = [3, 5, 6, 17, 22, 30] if retry_failed else [5, 6, 22]
        assert results[0][0] == expected


async def test_an_index_is_used_only_while_both_files_are_what_it_says(tmp_path, monkeypatch):
    jobs = chat_jobs(12)
    write(tmp_path / "in.jsonl", jobs)
    await go(tmp_path, Script())
    out = tmp_path / "out.jsonl"
    index = (tmp_path / "out.jsonl.resume").read_bytes()
    loads = []
    real_load = ckpt.load
    monkeypatch.setattr(ckpt, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))

    async def rerun():
        (tmp_path / "out.jsonl.resume").write_bytes(index)
        loads.clear()
        script = Script()
        stats = await go(tmp_path, script)
        return stats, sent(script), bool(loads)

    stats, calls, read = await rerun()
    assert (calls, read) == ([], False)

    original = out.read_bytes()
    # a byte of OUTPUT changed in place (same size): a success turned into a failure by hand
    edited = original.replace(b'"job-4"', b'"job-X"', 1)
    assert len(edited) == len(original)
    out.write_bytes(edited)
    stats, calls, read = await rerun()
    assert read and calls == [4]  # OUTPUT read again: job-4 has no result now
    out.write_bytes(original)

    # a line added to OUTPUT (by hand, or another backend)
    out.write_bytes(original + orjson.dumps({"custom_id": "other", "error": None}) + b"\n")
    stats, calls, read = await rerun()
    assert read and calls == []
    out.write_bytes(original)

    # a job of INPUT edited: the changed-job check must see it (the run refuses, exit 2)
    edited_jobs = [dict(job) for job in jobs]
    edited_jobs[7] = {**jobs[7], "body": {**jobs[7]["body"], "max_tokens": 6}}
    write(tmp_path / "in.jsonl", edited_jobs)
    with pytest.raises(Exception, match="changed"):
        await rerun()
    write(tmp_path / "in.jsonl", jobs)

    # OUTPUT truncated to its first 5 lines
    out.write_bytes(b"".join(original.splitlines(keepends=True)[:5]))
    stats, calls, read = await rerun()
    assert read and len(calls) == 7


async def test_no_index_is_written_for_duplicates_nor_for_a_run_that_did_not_read_everything(
        tmp_path):
    jobs = chat_jobs(10)
    write(tmp_path / "in.jsonl", jobs + [jobs[2]])
    await go(tmp_path, Script())
    assert not (tmp_path / "out.jsonl.resume").exists()

    write(tmp_path / "in.jsonl", jobs)
    (tmp_path / "out.jsonl").unlink()
    stats = await go(tmp_path, Script(), limit=4)  # --limit: the rest of INPUT not decided
    assert stats.exit_code() == 3 and index_version(tmp_path) == resume_index.PARTIAL
    stats = await go(tmp_path, Script())
    assert stats.succeeded == 6 and (tmp_path / "out.jsonl.resume").exists()


async def test_a_run_that_appends_without_writing_an_index_removes_the_stale_one(tmp_path):
    jobs = chat_jobs(10)
    write(tmp_path / "in.jsonl", jobs)
    await go(tmp_path, failing(transient={1}))
    assert (tmp_path / "out.jsonl.resume").exists()
    write(tmp_path / "in.jsonl", jobs + [jobs[0]])  # now with a duplicate: no index may be written
    stats = await go(tmp_path, Script())
    assert stats.succeeded == 1 and not (tmp_path / "out.jsonl.resume").exists()


async def test_a_shards_index_never_answers_another_shards_run(tmp_path):
    # an unsharded run answered every job; shard 1/2's run leaves an index in which the other
    # shard's lines are PENDING: shard 2/2's run must not take them for unanswered (paying twice)
    jobs = chat_jobs(20)
    write(tmp_path / "in.jsonl", jobs)
    await go(tmp_path, Script())
    (tmp_path / "out.jsonl.resume").unlink()
    first = Script()
    await go(tmp_path, first, shard=Shard(1, 2))
    assert first.calls == [] and (tmp_path / "out.jsonl.resume").exists()
    second = Script()
    stats = await go(tmp_path, second, shard=Shard(2, 2))
    assert second.calls == [] and stats.already_done > 0


async def test_settled_lines_are_numbered_but_never_parsed(tmp_path):
    jobs = chat_jobs(5000)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs[:4000]) + b"not json\n\n"
                     + b"".join(orjson.dumps(job) + b"\n" for job in jobs[4000:]))
    states = bytearray([DONE]) * 4000 + bytearray([PENDING, PENDING]) + bytearray([KEPT]) * 1000
    states[1234] = PENDING
    states[4500] = PENDING
    with open(path, "rb") as source:
        items = [item async for item in read_unsettled(str(path), source, path.stat().st_size,
                                                       Settled(states))]
    assert [(type(i).__name__, i.line) for i in items] == [
        ("Job", 1235), ("BadLine", 4001), ("Job", 4501)]
    assert items[0].custom_id == "job-1234" and items[2].custom_id == "job-4498"


def stopping(stop_on=(), hang=()):
    """A `send`: prompts `q{i}` for i in `stop_on` answered 401 (the run stops) a little late,
    once the run has read all of INPUT; in `hang` never answered (in flight at the stop); the
    others answered."""
    class Send(Script):
        async def __call__(self, req):
            body = orjson.loads(req.body)
            i = int(body["messages"][0]["content"][1:])
            if i in hang:
                self.calls.append((0, req, body))
                await asyncio.sleep(3600)
            if i in stop_on:
                await asyncio.sleep(0.05)
            return await super().__call__(req)

    return Send(lambda n, req, body: error(401, "invalid_api_key", "no")
                if int(body["messages"][0]["content"][1:]) in stop_on else None)


async def test_a_run_stopped_with_jobs_started_leaves_no_index(tmp_path):
    # --retry-failed sends kept failures again; stopped while they are on the wire, their lines in
    # OUTPUT are still the kept failures: a later plain run must keep them, not send them
    async def before(folder):
        write(folder / "in.jsonl", chat_jobs(10))
        await go(folder, failing(permanent={3, 7}))
        stopped = await go(folder, stopping(stop_on={3}, hang={7}), retry_failed=True,
                           grace_s=0.01)
        assert stopped.stop_reason is not None and stopped.input_read

    async def rerun(folder):
        script = Script()
        return sent(script), counts(await go(folder, script))

    results = await both_ways(tmp_path, before, rerun)
    assert results[0] == results[1] == ([], (10, 8, 2, 0, {}, 1))


@pytest.mark.parametrize("policy", [ChangedPolicy.KEEP, ChangedPolicy.REFUSE])
async def test_a_changed_job_stopped_on_the_wire_is_decided_as_reading_output_would(tmp_path,
                                                                                  policy):
    jobs = chat_jobs(10)
    edited = [dict(job) for job in jobs]
    edited[4] = {**jobs[4], "body": {**jobs[4]["body"], "max_tokens": 6}}

    async def before(folder):
        write(folder / "in.jsonl", jobs)
        await go(folder, Script())
        write(folder / "in.jsonl", edited)
        stopped = await go(folder, stopping(stop_on={4}), changed=ChangedPolicy.RERUN)
        assert stopped.stop_reason is not None and stopped.input_read

    async def rerun(folder):
        script = Script()
        try:
            outcome = counts(await go(folder, script, changed=policy))
        except ChangedJobsError:
            outcome = "refused"
        return sent(script), outcome

    results = await both_ways(tmp_path, before, rerun)
    assert results[0] == results[1]
    assert results[0][0] == []


async def test_a_limited_rerun_counts_only_the_lines_it_read(tmp_path):
    async def before(folder):
        write(folder / "in.jsonl", chat_jobs(10))
        await go(folder, failing(transient={1, 2}))

    async def rerun(folder):
        script = Script()
        stats = await go(folder, script, limit=1)
        return sent(script), counts(stats), stats.input_read

    results = await both_ways(tmp_path, before, rerun)
    assert results[0] == results[1]
    assert results[0][:2] == ([1], (2, 1, 0, 1, {}, 3))


async def test_bom_crlf_blank_bad_and_unterminated_lines_are_decided_as_reading_output_would(
        tmp_path):
    jobs = chat_jobs(8)
    raw = (b"\xef\xbb\xbf" + b"\r\n".join(orjson.dumps(j) for j in jobs[:4])
           + b"\r\n\r\n  \nnot json\r\n" + b"\n".join(orjson.dumps(j) for j in jobs[4:]))

    async def before(folder):
        (folder / "in.jsonl").write_bytes(raw)
        await go(folder, failing(transient={0, 7}, permanent={5}))
        assert (folder / "out.jsonl.resume").exists()

    async def rerun(folder):
        script = failing(transient={7})
        stats = await go(folder, script)
        return sent(script), counts(stats), stats.bad_lines

    results = await both_ways(tmp_path, before, rerun)
    assert results[0] == results[1]
    assert results[0][0] == [0, 7]


@pytest.mark.parametrize("change", ["append a done job again", "rename a new file over INPUT"])
async def test_input_changed_after_the_check_is_not_read_by_that_run(tmp_path, monkeypatch,
                                                                      change):
    # the run reads the very bytes it checked (the file it opened, up to the size it hashed): a
    # producer's later edit waits for the next run, which reads OUTPUT; no job is paid twice
    jobs = chat_jobs(10)
    renamed = [*jobs[:3], {**jobs[3], "custom_id": "new-3"}, *jobs[4:]]  # the same size
    write(tmp_path / "in.jsonl", jobs)
    await go(tmp_path, Script())
    real_load = resume_index.load

    def load_then_change(output, input_path, *args, **kwargs):
        found = real_load(output, input_path, *args, **kwargs)
        if change.startswith("append"):
            with open(input_path, "ab") as f:
                f.write(orjson.dumps(jobs[0]) + b"\n")
        else:
            write(tmp_path / "next.jsonl", renamed)
            (tmp_path / "next.jsonl").replace(input_path)
        return found

    monkeypatch.setattr(resume_index, "load", load_then_change)
    script = Script()
    stats = await go(tmp_path, script)
    assert script.calls == [] and stats.exit_code() == 0
    monkeypatch.setattr(resume_index, "load", real_load)
    script = Script()
    stats = await go(tmp_path, script)
    if change.startswith("append"):
        assert script.calls == [] and stats.duplicates == 1
    else:
        assert sent(script) == [3]


# -- without an index: the check before the run settles the finished jobs ---------------------------

async def test_without_an_index_each_finished_job_is_parsed_once_by_the_check_and_not_again(
        tmp_path, monkeypatch):
    write(tmp_path / "in.jsonl", chat_jobs(30))
    await go(tmp_path, failing(permanent={4}))
    (tmp_path / "out.jsonl.resume").unlink()  # as after a SIGKILL: OUTPUT must be read
    write(tmp_path / "in.jsonl", [*chat_jobs(30), *chat_jobs(5, prefix="more")])
    parsed = []
    feed = JobReader.feed
    monkeypatch.setattr(JobReader, "feed", lambda self, raw: parsed.append(raw) or feed(self, raw))
    script = Script()
    stats = await go(tmp_path, script)
    assert sent(script) == [0, 1, 2, 3, 4]  # the new jobs, prompts q0..q4
    assert counts(stats) == (35, 29, 1, 5, {}, 1)
    assert len(parsed) == 35 + 5  # every line by the check, then only the 5 it left to run
    parsed.clear()  # the index it left (INPUT's digest: the check's) answers the next run
    assert counts(await go(tmp_path, Script())) == (35, 34, 1, 0, {}, 1) and parsed == []


async def test_without_an_index_the_run_decides_as_reading_every_job_twice_would(tmp_path,
                                                                               monkeypatch):
    # done, kept, transient failures, new, bad and blank lines, with and without --retry-failed:
    # the run settling from its check and the run deciding each line again agree
    jobs = [*chat_jobs(20), "not json", "", *chat_jobs(4, prefix="more")]
    text = b"".join((j if isinstance(j, str) else orjson.dumps(j).decode()).encode() + b"\n"
                    for j in jobs)
    results = []
    for reuse in (True, False):
        for retry_failed in (False, True):
            folder = tmp_path / f"{reuse}-{retry_failed}"
            folder.mkdir()
            write(folder / "in.jsonl", chat_jobs(20))
            await go(folder, failing(permanent={3, 11}, transient={5}))
            (folder / "out.jsonl.resume").unlink()
            (folder / "in.jsonl").write_bytes(text)
            if not reuse:
                monkeypatch.setattr("runner.live.run._checked_input", lambda *a: None)
            script = failing(permanent={11})
            stats = await go(folder, script, retry_failed=retry_failed)
            monkeypatch.undo()
            results.append((reuse, retry_failed, sent(script), counts(stats), stats.bad_lines))
    assert [r[2:] for r in results[:2]] == [r[2:] for r in results[2:]]
    assert results[0][2] == [0, 1, 2, 3, 5] and results[1][2] == [0, 1, 2, 3, 3, 5, 11]


async def test_a_limited_rerun_counts_the_settled_jobs_before_the_one_it_holds_back(tmp_path,
                                                                                 monkeypatch):
    # job-1 done between job-0 (sent, the --limit) and job-2 (held back): counted as reached,
    # from the check's states as from reading every line
    results = []
    for reuse in (True, False):
        folder = tmp_path / str(reuse)
        folder.mkdir()
        write(folder / "in.jsonl", chat_jobs(3))
        await go(folder, failing(transient={0, 2}))
        (folder / "out.jsonl.resume").unlink(missing_ok=True)
        if not reuse:
            monkeypatch.setattr("runner.live.run._checked_input", lambda *a: None)
        script = Script()
        stats = await go(folder, script, limit=1)
        monkeypatch.undo()
        results.append((sent(script), counts(stats)))
    assert results[0] == results[1] == ([0], (2, 1, 0, 1, {}, 3))


async def test_the_eta_plans_the_lines_left_numbered_as_in_the_file(tmp_path):
    # 20 bad lines among settled jobs are not "20 bad lines at the start" of a non-job file
    from types import SimpleNamespace
    from jobs.results import OutputState
    from runner.live.run import _plan_work
    rows = []
    for job in chat_jobs(20):
        rows += [orjson.dumps(job), b"not json"]
    rows += [orjson.dumps(job) for job in chat_jobs(3, prefix="new")]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    settled = Settled()
    for line in range(1, 41, 2):
        settled.set(line, DONE)
    config = RunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                       endpoint=Endpoint(base_url="http://server.test/v1", api_key="sk-test"))
    eta = SimpleNamespace(plan=None)
    await _plan_work(config, OutputState(), eta, settled)
    assert eta.plan is not None and eta.plan["gpt-4o-mini"].jobs == 3


@pytest.mark.parametrize("change", ["same size and time", "touch"])
async def test_input_changed_after_the_check_stops_the_run_resumable_only_if_its_bytes_did(
        tmp_path, monkeypatch, change):
    # the check settled job-0 as done; the producer edits job-0 (same size, the modification
    # time put back) before the run reads INPUT again: the run's own digest of what it read
    # differs from the check's: exit 3, and the next run refuses job-0. A touch changes nothing.
    import os
    from runner.files.session import OutputSession
    write(tmp_path / "in.jsonl", chat_jobs(5))
    await go(tmp_path, Script())
    (tmp_path / "out.jsonl.resume").unlink()
    path = tmp_path / "in.jsonl"
    write(path, [*chat_jobs(5), *chat_jobs(2, prefix="more")])
    check = OutputSession.check_changed

    async def check_then_edit(self, *args, **kwargs):
        await check(self, *args, **kwargs)
        st = os.stat(path)
        if change == "touch":
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        else:
            path.write_bytes(path.read_bytes().replace(b'"q0"', b'"x0"', 1))
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    monkeypatch.setattr(OutputSession, "check_changed", check_then_edit)
    script = Script()
    stats = await go(tmp_path, script)
    monkeypatch.undo()
    assert sent(script) == [0, 1]  # the two new jobs, in either case
    assert not (tmp_path / "out.jsonl.resume").exists()
    if change == "touch":
        assert stats.exit_code() == 0
        assert (await go(tmp_path, Script())).exit_code() == 0
    else:
        assert stats.exit_code() == 3 and "changed while this run read it" in stats.stop_reason
        with pytest.raises(ChangedJobsError, match="job-0"):
            await go(tmp_path, Script())


def test_the_index_names_its_shard_and_both_files_digests(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(b'{"a":1}\n')
    (tmp_path / "out.jsonl").write_bytes(b"x\n")
    settled = Settled(bytearray([DONE]))
    hasher = resume_index.file_sha256(tmp_path / "out.jsonl", 2)
    resume_index.save(tmp_path / "out.jsonl", str(tmp_path / "in.jsonl"), Shard(1, 3), settled,
                      input_sha256=None, output_bytes=2, output_hasher=hasher)
    found = resume_index.load(tmp_path / "out.jsonl", str(tmp_path / "in.jsonl"), Shard(1, 3),
                              retrying=False)
    assert found is not None and found.settled.states == bytearray([DONE])
    assert resume_index.load(tmp_path / "out.jsonl", str(tmp_path / "in.jsonl"), None,
                             retrying=False) is None


def index_version(tmp_path) -> int | None:
    """The version of OUTPUT's index (None when there is none)."""
    path = tmp_path / "out.jsonl.resume"
    return orjson.loads(path.read_bytes().split(b"\n", 1)[0])["version"] if path.exists() else None
