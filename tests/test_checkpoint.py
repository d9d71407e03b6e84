"""The output file as checkpoint: torn tail cut, state read back, appends durable, one writer."""
import errno
import os
import subprocess
import sys

import orjson
import pytest

from jobs.results import OutputState
from runner.files import checkpoint
from runner.files.checkpoint import Checkpoint, CheckpointError, RunLock, load
from tests.conftest import error_record, success_record


def write_lines(path, records, tail=b""):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + tail)


def test_torn_last_line_is_cut_off_and_its_job_runs_again(tmp_path):
    out = tmp_path / "out.jsonl"
    write_lines(out, [success_record("a", {}, request_id=None)], tail=b'{"id": "batch_req_1", "custom_id": "b", "resp')
    state = OutputState()
    report = load(out, state)
    assert report.torn_bytes > 0 and report.lines == 1
    assert out.read_bytes().endswith(b"}\n") and out.read_bytes().count(b"\n") == 1
    assert not state.needs_run("a") and state.needs_run("b")


def test_load_reads_state_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr("runner.files.checkpoint.READ_CHUNK", 7)
    out = tmp_path / "out.jsonl"
    write_lines(out, [success_record(f"id-{i}", {"x": "y" * i}, request_id=None) for i in range(50)]
                + [error_record("bad", "invalid_request", "m", status=400)])
    state = OutputState()
    report = load(out, state)
    assert report.lines == 51 and report.torn_bytes == 0
    assert len(state.done) == 50 and "bad" in state.permanent


def test_non_json_lines_are_reported_and_skipped(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"not json\n" + orjson.dumps(success_record("a", {}, request_id=None)) + b"\n")
    state = OutputState()
    report = load(out, state)
    assert report.bad_lines == 1 and report.first_bad_lines == [1] and "a" in state.done


def test_missing_output_is_an_empty_checkpoint(tmp_path):
    state = OutputState()
    assert load(tmp_path / "nope.jsonl", state).lines == 0


async def test_appended_lines_are_written_at_once_and_synced(tmp_path):
    out = tmp_path / "sub" / "out.jsonl"
    out.parent.mkdir()
    synced = []
    cp = Checkpoint(out, fsync=synced.append)
    cp.open()
    cp.append(success_record("a", {"k": "ü"}, request_id=None))
    # on disk (in the OS) before any sync: a SIGKILL now loses nothing
    assert orjson.loads(out.read_bytes())["custom_id"] == "a"
    await cp.sync()
    await cp.sync()  # nothing new: no second fsync
    assert len(synced) == 1
    cp.close()


async def test_a_new_outputs_directory_entry_is_synced_with_its_first_lines_not_when_opened(
        tmp_path, monkeypatch):
    """Nothing waits on the disk before the first request; the name is durable with the lines."""
    dirs = []
    monkeypatch.setattr(checkpoint, "fsync_dir", dirs.append)
    cp = Checkpoint(tmp_path / "out.jsonl", fsync=lambda fd: None)
    cp.open()
    assert dirs == []
    cp.append(success_record("a", {}, request_id=None))
    await cp.sync()
    cp.append(success_record("b", {}, request_id=None))
    await cp.sync()
    assert dirs == [tmp_path]  # once
    cp.close()

    # A run that finds the file synced its name too: the run that created it may have ended
    # before syncing a line (killed; `--via batch --no-wait`), and then nobody else would.
    again = Checkpoint(tmp_path / "out.jsonl", fsync=lambda fd: None)
    again.open()
    again.append(success_record("c", {}, request_id=None))
    await again.sync()
    again.close()
    assert dirs == [tmp_path, tmp_path]

    unsynced = Checkpoint(tmp_path / "other.jsonl", fsync=lambda fd: None)
    unsynced.open()
    unsynced.append(success_record("d", {}, request_id=None))
    unsynced.close()  # closed before any sync: the entry is synced with the last lines
    assert dirs == [tmp_path] * 3

    nothing = Checkpoint(tmp_path / "none.jsonl", fsync=lambda fd: None)
    nothing.open()
    nothing.close()  # no line: nothing to make durable yet (a later run will)
    assert dirs == [tmp_path] * 3


def test_second_run_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    with RunLock(out):
        with pytest.raises(CheckpointError, match="another run"):
            RunLock(out).acquire()
    RunLock(out).acquire()  # released: free again


@pytest.mark.slow  # starts a subprocess
def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    out = tmp_path / "out.jsonl"
    code = (f"import sys, time; sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent.parent)!r});"
            f"from runner.files.checkpoint import RunLock; from pathlib import Path;"
            f"RunLock(Path({str(out)!r})).acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"locked"
    with pytest.raises(CheckpointError):
        RunLock(out).acquire()
    proc.kill()
    proc.wait()
    RunLock(out).acquire()


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(orjson.dumps(success_record("a", {}, request_id=None)))
    state = OutputState()
    report = load(out, state)
    assert report.torn_bytes == 0 and "a" in state.done
    assert out.read_bytes().endswith(b"}\n")


def test_a_full_disk_never_leaves_half_a_line(tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    cp = Checkpoint(out)
    cp.open()
    cp.append(success_record("a", {}, request_id=None))
    before = out.read_bytes()
    real_write = os.write
    calls = []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # the disk fills mid-line
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("runner.files.checkpoint.os.write", full_disk)
    with pytest.raises(CheckpointError, match="No space left"):
        cp.append(success_record("b", {"x": "y" * 100}, request_id=None))
    monkeypatch.undo()
    assert out.read_bytes() == before
    cp.append(success_record("c", {}, request_id=None))
    cp.close()
    assert [orjson.loads(line)["custom_id"] for line in out.read_bytes().splitlines()] == ["a", "c"]


def test_a_symlinked_output_name_shares_the_lock(tmp_path):
    out = tmp_path / "out.jsonl"
    out.touch()
    (tmp_path / "latest.jsonl").symlink_to(out)
    with RunLock(out):
        with pytest.raises(CheckpointError, match="another run"):
            RunLock(tmp_path / "latest.jsonl").acquire()


def test_an_output_in_a_missing_directory_is_a_clear_error_naming_the_folder(tmp_path):
    with pytest.raises(CheckpointError, match=f"folder of the output does not exist: "
                                              f"{tmp_path / 'nope'} "):
        RunLock(tmp_path / "nope" / "out.jsonl").acquire()


def test_a_released_lock_leaves_no_lock_file_and_a_stale_one_is_harmless(tmp_path):
    out = tmp_path / "out.jsonl"
    lock = RunLock(out)
    with lock:
        assert lock.path.exists()
    assert not lock.path.exists()
    lock.path.write_text("12345")  # left by a killed run: nobody holds it
    with RunLock(out):
        pass
    assert not lock.path.exists()


def test_a_run_waiting_on_a_lock_file_its_holder_removes_locks_the_file_that_is_there(tmp_path):
    """Between B's open and B's flock, A releases (removing the file) and C creates and locks a
    new one: B must not believe it holds the lock on the removed file."""
    out = tmp_path / "out.jsonl"
    a = RunLock(out)
    a.acquire()
    opened = os.open(a.path, os.O_RDWR)  # B's open of the old file, before A lets go
    a.release()
    c = RunLock(out)
    c.acquire()
    b = RunLock(out)
    first, real_open = iter([opened]), b._open
    b._open = lambda: next(first, None) or real_open()  # B's first open is the one made above
    with pytest.raises(CheckpointError, match="another run"):
        b.acquire()  # the old file locks, but the name holds C's: B tries that one and is refused
    c.release()


async def test_a_deleted_output_is_noticed_at_the_next_sync(tmp_path):
    out = tmp_path / "out.jsonl"
    cp = Checkpoint(out)
    cp.open()
    cp.append(success_record("a", {}, request_id=None))
    out.unlink()
    with pytest.raises(CheckpointError, match="deleted"):
        await cp.sync()
    cp.close()


async def test_a_run_lets_go_of_the_output_it_read_back_when_it_ends(tmp_path):
    """The session closes the files a loaded state reads its lines back from: a resumed run (or a
    notebook calling runner.run again and again) leaks no descriptor on OUTPUT."""
    from jobs.results import OutputState
    from runner.files.session import OutputSession
    out = tmp_path / "out.jsonl"
    out.write_bytes(orjson.dumps(success_record("a", {}, request_id=None)) + b"\n")
    (tmp_path / "in.jsonl").write_text("")

    def open_on_output() -> int:
        return sum(1 for fd in os.listdir("/proc/self/fd")
                   if os.path.realpath(f"/proc/self/fd/{fd}") == str(out.resolve()))
    before = open_on_output()
    async with OutputSession(str(tmp_path / "in.jsonl"), out, log=lambda m: None,
                             handle_signals=False) as session:
        state = OutputState()
        session.load(state)
        assert state.final("a") is not None  # reads the line back: a descriptor is open now
    assert open_on_output() == before
