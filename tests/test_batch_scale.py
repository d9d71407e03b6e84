"""The batch backend at scale (issue 22): what it remembers of each job stays on disk or in 8-byte
digests, and a digest that collides delays a job, never sends it twice."""
from __future__ import annotations

from pathlib import Path

import orjson

from jobs.digests import DigestSet
from runner.batch import state as batch_state
from runner.batch.state import BatchState, Chunk, state_path
from runner.exit_codes import EXIT_IN_PROGRESS, EXIT_OK
from runner.simulator.batches import BatchConfig
from tests.test_batch_e2e import ran_twice, run, sim_factory  # noqa: F401 (a fixture)
from tests.test_e2e import assert_exactly_once, read_results, write_jobs


class Colliding(DigestSet):
    """Every string has the same digest: once one job is in, every job is."""

    def __init__(self, items=(), *, digest=None, expected=0):
        super().__init__(items, digest=lambda text: 7, expected=expected)


def test_a_loaded_journal_keeps_no_job_of_an_open_chunk_and_reads_them_back_exactly(tmp_path):
    state = BatchState(tmp_path / "out.jsonl")
    state.open("0123456789abcdef")
    lines = [(f"j{i}", (f"j{i}",)) for i in range(500)] + [("runner-pack-1-x", ("x", "y"))]
    state.plan(Chunk("c1", "/v1/embeddings", "m", 10, lines, fingerprints={"x": "f1", "j3": "f2"}),
               b"{}\n")
    state.record({"event": "uploaded", "chunk": "c1", "file_id": "file-1"})
    state.plan(Chunk("c2", "/v1/embeddings", "m", 10, [("z", ("z",))]), b"{}\n")
    state.close()
    again = BatchState(tmp_path / "out.jsonl")
    again.load()
    chunk = again.chunks["c1"]
    assert (chunk.lines, chunk.fingerprints, chunk.line_count, chunk.job_count) == ([], {}, 501, 502)
    planned = again.planned(chunk)
    assert planned.lines == lines and planned.fingerprints == {"x": "f1", "j3": "f2"}
    assert again.planned(again.chunks["c2"]).lines == [("z", ("z",))]
    busy = again.busy_jobs()
    assert all(f"j{i}" in busy for i in range(500)) and "x" in busy and "y" in busy
    assert "j500" not in busy and busy.nbytes < 8 * 4 * 503  # 8 bytes a slot, not a str a job


def test_a_journal_edited_under_a_run_is_refused_rather_than_misread(tmp_path):
    state = BatchState(tmp_path / "out.jsonl")
    state.open("0123456789abcdef")
    state.plan(Chunk("c1", "/v1/embeddings", "m", 10, [("a", ("a",))]), b"{}\n")
    path = state_path(tmp_path / "out.jsonl")
    path.write_bytes(b"\n" + path.read_bytes())  # every line one byte further on
    try:
        state.planned(state.chunks["c1"])
    except batch_state.CheckpointError as e:
        assert "c1" in str(e)
    else:
        raise AssertionError("a moved planned line was read")


def test_jobs_whose_digest_collides_with_an_open_batch_wait_for_it_and_run_once(
        loop, tmp_path, sim_factory, monkeypatch):
    jobs = write_jobs(tmp_path / "in.jsonl", 60, kinds=("chat",))
    sim = sim_factory(batch=BatchConfig(lines_per_s=1, validate_s=5))
    first = run(loop, sim, tmp_path, wait=False, limit=20)  # c00001: 20 jobs, still running
    assert first.exit_code() == EXIT_IN_PROGRESS and first.batches_created == 1
    monkeypatch.setattr(batch_state, "DigestSet", Colliding)  # every job looks busy while c00001 is open
    second = run(loop, sim, tmp_path)
    assert second.exit_code() == EXIT_OK
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    assert not ran_twice(sim) and sim.batches.stats.created == 2
    events = [orjson.loads(line) for line in state_path(tmp_path / "out.jsonl").read_bytes().splitlines()]
    order = [(e["event"], e.get("chunk")) for e in events if e["event"] in ("planned", "closed")]
    assert order == [("planned", "c00001"), ("closed", "c00001"), ("planned", "c00002"),
                     ("closed", "c00002")]  # the other 40 jobs waited for c00001 to close


def test_draft_files_never_planned_are_removed_on_close_or_by_the_next_run(tmp_path):
    state = BatchState(tmp_path / "out.jsonl")
    state.open("0123456789abcdef")
    planned, cut_short = state.draft_file(), state.draft_file()
    planned.write(b'{"custom_id": "a"}\n')
    cut_short.write(b'{"custom_id": "b"}\n')
    state.plan(Chunk("c1", "/v1/embeddings", "m", 1, [("a", ("a",))]), planned)
    assert state.chunk_file("c1").read_bytes() == b'{"custom_id": "a"}\n'
    state.close()  # a plan stopped half way: its draft goes
    assert sorted(p.name for p in state.dir.iterdir()) == ["c1.jsonl"]
    (state.dir / "left-by-a-kill.draft").write_bytes(b"{}\n")
    again = BatchState(tmp_path / "out.jsonl")
    again.load()
    again.open("ffffffffffffffff")
    assert sorted(p.name for p in again.dir.iterdir()) == ["c1.jsonl"]
    again.close()


def test_a_batch_file_is_uploaded_from_its_chunk_file_not_from_memory(loop, tmp_path, sim_factory):
    from runner.api.transport import FileBody
    from tests.test_batch_e2e import run_intercepted
    jobs = write_jobs(tmp_path / "in.jsonl", 30, kinds=("chat",))
    sim = sim_factory()
    uploads = []

    def look(request):
        if request.method == "POST" and request.url.endswith("/files"):
            body = request.body
            assert isinstance(body, FileBody)  # streamed by the sender: never read whole
            chunk_file = Path(body.path)
            assert chunk_file.parent == tmp_path / "out.jsonl.batches.d"
            assert body.size == chunk_file.stat().st_size
            uploads.append(body.read())
        return None

    stats = loop.run_until_complete(run_intercepted(loop, sim, tmp_path, look, max_requests=12))
    assert stats.exit_code() == EXIT_OK and len(uploads) == 3
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    sent = b"".join(uploads)
    assert all(f'"custom_id":"{job["custom_id"]}"'.encode() in sent for job in jobs)


def test_input_is_read_again_only_when_a_closed_batch_left_jobs_without_their_line(
        loop, tmp_path, sim_factory, monkeypatch):
    from runner.batch import run as batch_run
    reads = []
    items = batch_run._items

    def counted(config):
        reads.append(config.input)
        return items(config)

    monkeypatch.setattr(batch_run, "_items", counted)
    jobs = write_jobs(tmp_path / "in.jsonl", 30, kinds=("chat",))
    sim = sim_factory()
    assert run(loop, sim, tmp_path, max_requests=12).exit_code() == EXIT_OK  # 3 batches
    assert len(reads) == 1  # every job answered: nothing to plan again
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))

    reads.clear()
    other = tmp_path / "expiring"
    other.mkdir()
    jobs = write_jobs(other / "in.jsonl", 30, kinds=("chat",))
    sim = sim_factory(batch=BatchConfig(lines_per_s=100, expire_after_lines=8))
    assert run(loop, sim, other).exit_code() == EXIT_OK
    assert len(reads) > 1  # lines of expired batches never ran: planned again
    assert_exactly_once(jobs, read_results(other / "out.jsonl"))


def test_the_view_of_output_grows_once_to_hold_every_job_of_input(loop, tmp_path, sim_factory,
                                                                  monkeypatch):
    # every result a batch run writes is accounted in its view of OUTPUT: a table grown by
    # doubling held 67 + 134 MB at once at 10,000,000 jobs; told INPUT's size, it grows once
    from jobs.idtable import RESERVE_LOAD, IdTable
    from runner.batch import run as batch_run
    views, grown = [], []
    seen_state, grow = batch_run._SeenState, IdTable._grow

    def spy(*args, **kwargs):
        views.append(seen_state(*args, **kwargs))
        return views[-1]

    def growing(table):
        grown.append(table)
        grow(table)

    monkeypatch.setattr(batch_run, "_SeenState", spy)
    monkeypatch.setattr(IdTable, "_grow", growing)
    jobs = write_jobs(tmp_path / "in.jsonl", 3000, kinds=("embedding",))
    sim = sim_factory()
    assert run(loop, sim, tmp_path, pack=False).exit_code() == EXIT_OK
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    table = views[0]._results
    assert len(table) == 3000 and grown.count(table) == 1  # once, from its least size to all
    assert table.nbytes >= 8 * int(3000 / RESERVE_LOAD)


def test_a_run_expects_no_more_results_than_limit_max_cost_and_its_shard_allow(tmp_path):
    from jobs.shard import Shard
    from runner.batch.run import BatchRunConfig, _expected_jobs
    write_jobs(tmp_path / "in.jsonl", 400, kinds=("embedding",))

    def expected(**options) -> int:
        return _expected_jobs(BatchRunConfig(input=str(tmp_path / "in.jsonl"),
                                             output=tmp_path / "out.jsonl", **options))

    assert 360 <= expected() <= 440  # estimated from a sample of INPUT
    assert expected(limit=50) == 50  # a slice of a large file: no table for all of it
    assert expected(max_cost=1.0) == 0  # may stop anywhere: the table doubles as it fills
    assert expected(shard=Shard(1, 4)) == expected() // 4


def test_a_journal_loads_its_chunks_without_their_fingerprints_and_reads_them_back(tmp_path):
    # the fingerprints (an id and a digest a job) are half a planned line's objects: loading the
    # journal parses each line up to them; a chunk collected reads them back whole
    tricky = 'x","fingerprints":{"y'  # the key's bytes, escaped inside an id
    state = BatchState(tmp_path / "out.jsonl")
    state.open("0123456789abcdef")
    lines = [(f"j{i}", (f"j{i}",)) for i in range(100)] + [(tricky, (tricky,))]
    printed = {f"j{i}": f"f{i}" for i in range(100)} | {tricky: "ft"}
    state.plan(Chunk("c1", "/v1/embeddings", "m", 10, lines, fingerprints=printed), b"{}\n")
    state.close()
    raw = state_path(tmp_path / "out.jsonl").read_bytes().splitlines()
    planned = next(line for line in raw if line.startswith(batch_state.PLANNED_HEAD))
    event = batch_state._event(planned)
    assert "fingerprints" not in event and len(event["lines"]) == 101
    assert batch_state._event(b'{"event":"planned","chunk":"c2","lines":[],"fingerprints":{') is None
    again = BatchState(tmp_path / "out.jsonl")
    again.load()
    chunk = again.chunks["c1"]
    assert (chunk.line_count, chunk.job_count) == (101, 101)
    back = again.planned(chunk)
    assert back.lines == lines and back.fingerprints == printed
