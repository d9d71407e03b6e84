"""The pure parts of the batch backend: splitting requests into batch files, rebuilding a line's
jobs, and the state journal (torn lines, what is open, what a job has spent)."""
from __future__ import annotations

import orjson
import pytest

from jobs.job import Job
from jobs.packing import pack, single
from jobs.tokens import rate_limit_charge
from runner.batch.plan import LineTooLarge, Splitter, job_requests
from runner.batch.state import BatchState, Chunk


def chat(i, model="gpt-4o-mini", text="hello"):
    body = {"model": model, "messages": [{"role": "user", "content": f"{text} {i}"}], "max_tokens": 5}
    return single(Job(f"c{i}", "/v1/chat/completions", body, i),
                  rate_limit_charge("/v1/chat/completions", body))


def splitter(**kwargs):
    return Splitter(wire_url=lambda u: u, wire_model=lambda m: m,
                    **{"max_lines": 1000, "max_bytes": 10**9, **kwargs})


def data(draft):
    """The lines of a draft's file (a `BytesIO` in these tests)."""
    return draft.out.getvalue().splitlines(keepends=True)


def drain(s, requests):
    out = []
    for r in requests:
        out.extend(s.add(r))
    return out + s.flush()


def test_a_file_holds_at_most_max_lines():
    files = drain(splitter(max_lines=4), [chat(i) for i in range(10)])
    assert [len(f.lines) for f in files] == [4, 4, 2]


def test_a_file_holds_at_most_max_bytes():
    files = drain(splitter(max_bytes=400), [chat(i) for i in range(10)])
    assert all(f.size <= 400 for f in files) and sum(len(f.lines) for f in files) == 10
    assert all(b"".join(data(f)).count(b"\n") == len(f.lines) for f in files)


def test_each_file_has_one_url_and_one_model():
    requests = [chat(i, model="gpt-4o-mini" if i % 2 else "gpt-4o") for i in range(6)]
    files = drain(splitter(), requests)
    assert sorted((f.model, len(f.lines)) for f in files) == [("gpt-4o", 3), ("gpt-4o-mini", 3)]
    for f in files:
        assert {orjson.loads(x)["body"]["model"] for x in data(f)} == {f.model}


def test_a_line_larger_than_the_file_limit_is_refused_at_once():
    s = splitter(max_bytes=50)
    with pytest.raises(LineTooLarge, match="over the batch file limit of 50 bytes") as raised:
        s.add(chat(0))
    assert raised.value.size > 50 and raised.value.request.jobs[0].custom_id
    assert s.flush() == []


def test_jobs_over_the_enqueued_token_room_are_held_back():
    charge = chat(0).charge
    s = splitter(room=lambda m: charge * 3, idle=lambda m: False)
    files = drain(s, [chat(i) for i in range(10)])
    assert sum(len(f.lines) for f in files) == 3 and s.held == 7


def test_a_job_too_large_for_the_room_still_goes_alone_when_nothing_is_enqueued():
    s = splitter(room=lambda m: 1, idle=lambda m: True)
    files = drain(s, [chat(0), chat(1)])
    assert [len(f.lines) for f in files] == [1] and s.held == 1


def test_azure_lines_carry_the_deployment_and_the_url_without_v1():
    s = Splitter(max_lines=10, max_bytes=10**6, wire_url=lambda u: u.removeprefix("/v1"),
                 wire_model=lambda m: "my-deployment")
    line = orjson.loads(data(drain(s, [chat(0)])[0])[0])
    assert line["url"] == "/chat/completions" and line["body"]["model"] == "my-deployment"
    assert line["custom_id"] == "c0"


def test_a_packed_line_is_rebuilt_into_its_jobs_in_order():
    jobs = [Job(f"j{i}", "/v1/completions", {"model": "m", "prompt": f"p{i}", "max_tokens": 3}, i)
            for i in range(3)]
    packed = pack(jobs, 30)
    files = drain(splitter(), [packed])
    line_id, ids = files[0].lines[0]
    assert line_id.startswith("runner-pack-") and ids == ("j0", "j1", "j2")
    rebuilt = job_requests("/v1/completions", orjson.loads(data(files[0])[0])["body"],
                           tuple(j.custom_id for j in jobs))
    assert [j.custom_id for j in rebuilt.jobs] == ["j0", "j1", "j2"]
    assert [j.body["prompt"] for j in rebuilt.jobs] == ["p0", "p1", "p2"]
    assert rebuilt.body["prompt"] == ["p0", "p1", "p2"]


def test_the_journal_survives_a_torn_last_line_and_knows_what_is_open(tmp_path):
    out = tmp_path / "out.jsonl"
    state = BatchState(out)
    state.load()
    state.open("0123456789abcdef")
    chunk = Chunk("c00001", "/v1/chat/completions", "m", 10, [("a", ("a",)), ("p1", ("b", "c"))])
    state.plan(chunk, b'{"custom_id": "a"}\n')
    state.record({"event": "uploaded", "chunk": "c00001", "file_id": "file-1"})
    state.record({"event": "created", "chunk": "c00001", "batch_id": "batch_1"})
    state.close()
    with open(state.path, "ab") as f:
        f.write(b'{"event": "closed", "chunk": "c00')  # killed mid-write
    again = BatchState(out)
    assert again.load() > 0
    assert [c.batch_id for c in again.open_chunks()] == ["batch_1"]
    busy = again.busy_jobs()
    assert all(cid in busy for cid in "abc") and "d" not in busy and again.tokens_in_flight("m") == 10
    assert again.planned(again.chunks["c00001"]).lines == [("a", ("a",)), ("p1", ("b", "c"))]
    assert again.run_id == "0123456789abcdef"
    again.open("ffffffffffffffff")  # an existing journal keeps its run id
    again.close_chunk(again.chunks["c00001"], "completed", retry=["b"], bisect=[["b"], ["c"]])
    again.close()
    third = BatchState(out)
    third.load()
    assert not third.open_chunks() and third.attempts["b"] == 1 and third.run_id == "0123456789abcdef"
    assert third.group_of() == {"b": 0, "c": 1}
    assert not state.chunk_file("c00001").exists()  # the local input file goes once closed
    third.open("ffffffffffffffff")
    third.plan(Chunk("c00002", "/v1/chat/completions", "m", 5, [("b", ("b",))]), b"{}\n")
    third.close_chunk(third.chunks["c00002"], "completed", retry=[], bisect=[], reset=["b"])
    assert third.attempts["b"] == 0  # given up on: a later run starts it afresh
    third.close()


# -- the command line --------------------------------------------------------------------------------

def test_estimate_via_batch_halves_the_cost_and_counts_batch_files(tmp_path):
    from click.testing import CliRunner
    from runner.cli.main import main
    from tests.test_e2e import write_jobs
    write_jobs(tmp_path / "in.jsonl", 30, kinds=("chat",))
    live = CliRunner().invoke(main, ["estimate", str(tmp_path / "in.jsonl"), "--json"])
    batch = CliRunner().invoke(main, ["estimate", str(tmp_path / "in.jsonl"), "--json", "--via",
                                      "batch", "--batch-max-requests", "7"])
    assert live.exit_code == batch.exit_code == 0, batch.output
    live_cost = orjson.loads(live.output)["total"]["cost_usd"]
    data = orjson.loads(batch.output)
    assert live_cost > 0 and data["total"]["cost_usd"] == pytest.approx(live_cost / 2)
    assert data["batch"]["files"] == 5  # 30 chat jobs, 7 lines a file


def test_status_lists_the_batches_of_an_output_and_exits_4_while_one_is_open(tmp_path):
    from click.testing import CliRunner
    from runner.cli.main import main
    from tests.test_e2e import write_jobs
    write_jobs(tmp_path / "in.jsonl", 3, kinds=("chat",))
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")
    state = BatchState(out)
    state.open("0123456789abcdef")
    state.plan(Chunk("c00001", "/v1/chat/completions", "gpt-4o-mini", 30,
                     [("job 0/ü", ("job 0/ü",))]), b"{}\n")
    state.record({"event": "created", "chunk": "c00001", "batch_id": "batch_abc"})
    state.record({"event": "polled", "chunk": "c00001", "status": "in_progress",
                  "counts": {"total": 1, "completed": 0, "failed": 0}})
    state.close()
    result = CliRunner().invoke(main, ["status", str(tmp_path / "in.jsonl"), "-o", str(out)])
    assert result.exit_code == 4, result.output
    assert "batches still open at the provider" in result.output and "(exit 4)" in result.output
    assert "--retry-failed (exit 1)" not in result.output  # no advice the exit code contradicts
    assert "batch_abc" in result.output and "in_progress" in result.output


def test_a_live_run_is_refused_while_batches_of_its_output_are_open(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from runner.cli.main import main
    from tests.test_e2e import write_jobs
    write_jobs(tmp_path / "in.jsonl", 3, kinds=("chat",))
    out = tmp_path / "out.jsonl"
    state = BatchState(out)
    state.open("0123456789abcdef")
    state.plan(Chunk("c00001", "/v1/chat/completions", "gpt-4o-mini", 30,
                     [("job 0/ü", ("job 0/ü",))]), b"{}\n")
    state.close()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o", str(out),
                                       "--base-url", "http://127.0.0.1:9/v1", "--no-progress"])
    assert result.exit_code == 2 and "open at the provider" in result.output
    assert not out.exists()


def test_an_embeddings_file_holds_at_most_50000_inputs_however_they_are_packed():
    from runner.batch.plan import MAX_EMBEDDING_INPUTS
    jobs = [Job(f"e{i}", "/v1/embeddings", {"model": "m", "input": f"x{i}"}, i) for i in range(2048 * 30)]
    packs = [pack(jobs[i:i + 2048], 2048) for i in range(0, len(jobs), 2048)]
    files = drain(splitter(), packs)
    assert [f.inputs for f in files] == [2048 * 24, 2048 * 6]
    assert all(f.inputs <= MAX_EMBEDDING_INPUTS for f in files)


def test_status_exits_4_while_a_batch_is_open_even_when_some_jobs_failed(tmp_path):
    from click.testing import CliRunner
    from jobs.results import error_record, success_record
    from runner.cli.main import main
    from tests.test_e2e import write_jobs
    write_jobs(tmp_path / "in.jsonl", 3, kinds=("chat",))
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in (
        success_record("job 0/ü", {"ok": 1}, record_id="r0", request_id=None),
        success_record("job 1/ü", {"ok": 1}, record_id="r1", request_id=None),
        error_record("job 2/ü", "invalid_request", "no", record_id="r2", status=400))))
    state = BatchState(out)
    state.open("0123456789abcdef")  # job 2 retried (--retry-failed) in a batch still open
    state.plan(Chunk("c00001", "/v1/chat/completions", "gpt-4o-mini", 30,
                     [("job 2/ü", ("job 2/ü",))]), b"{}\n")
    state.record({"event": "created", "chunk": "c00001", "batch_id": "batch_abc"})
    state.close()
    result = CliRunner().invoke(main, ["status", str(tmp_path / "in.jsonl"), "-o", str(out)])
    assert result.exit_code == 4, result.output
    assert "batches still open at the provider" in result.output and "(exit 4)" in result.output
    assert "--retry-failed (exit 1)" not in result.output  # no advice the exit code contradicts


def test_a_draft_keeps_each_jobs_id_and_fingerprint_and_writes_its_bytes_as_they_come():
    jobs = [Job(f"j{i}", "/v1/completions", {"model": "m", "prompt": f"p{i}"}, i, fingerprint=f"f{i}")
            for i in range(3)]
    s = splitter()
    assert s.add(pack(jobs[:2], 20), 0.5) == [] and s.add(single(jobs[2], 10), 0.25) == []
    [draft] = s.drafts()
    assert draft.lines[1] == ("j2", ("j2",)) and draft.lines[0][1] == ("j0", "j1")
    assert draft.fingerprints == {"j0": "f0", "j1": "f1", "j2": "f2"} and draft.cost == 0.75
    assert len(data(draft)) == 2 and draft.size == len(draft.out.getvalue())  # written already
