"""A job edited under the same custom_id is never passed off as done: every result carries its
job's fingerprint, and a run with changed jobs refuses before sending anything unless told
--changed rerun or --changed keep (live and --via batch alike); status and estimate count them."""
from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from jobs.intake import (
    ChangedPolicy, Duplicate, Intake, Pending, Refuse, Reject, Run, Skip, SkipReason, changed_jobs,
)
from jobs.job import Job
from jobs.reader import BadLine, Duplicate as DuplicateLine
from jobs.results import OutputState, error_record, fingerprint, success_record
from runner.cli.main import main
from runner.simulator.batches import BatchConfig
from runner.simulator.server import SimConfig, Simulator, run_in_thread
from tests.test_e2e import cli, finish, read_results, write_jobs

URL = "/v1/chat/completions"


def body(prompt: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}


def job(cid: str, prompt: str, line: int = 1) -> Job:
    return Job(custom_id=cid, url=URL, body=body(prompt), line=line)


# -- the fingerprint -------------------------------------------------------------------------------

def test_a_fingerprint_ignores_key_order_and_custom_id_and_changes_with_any_edit():
    a = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    reordered = {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    assert fingerprint(URL, a) == fingerprint(URL, reordered)
    assert len(fingerprint(URL, a)) == 32
    for edited in ({**a, "temperature": 1}, {**a, "model": "n"},
                   {**a, "messages": [{"role": "user", "content": "hi!"}]}):
        assert fingerprint(URL, edited) != fingerprint(URL, a)
    assert fingerprint("/v1/completions", a) != fingerprint(URL, a)


def test_the_last_final_line_decides_the_fingerprint_and_a_transient_failure_has_none():
    state = OutputState()
    state.add(success_record("a", {}, record_id="1", request_id=None, fingerprint="f1"))
    state.add(success_record("a", {}, record_id="2", request_id=None, fingerprint="f2"))
    state.add(error_record("b", "invalid_request", "m", record_id="3", status=400, fingerprint="f3"))
    state.add(success_record("c", {}, record_id="4", request_id=None, fingerprint="f4"))
    state.add(error_record("c", "server_error", "m", record_id="5", status=500, fingerprint="f5"))
    state.add(success_record("d", {}, record_id="6", request_id=None))  # an older runner's line
    assert state.fingerprints == {"a": "f2", "b": "f3"}
    assert state.changed("a", "f1") and not state.changed("a", "f2")
    assert not state.changed("d", "anything")  # no fingerprint: counts as unchanged
    assert not state.changed("new", "anything")


# -- the intake: one decision per item, for both backends ------------------------------------------

def state_with(**results: tuple[str, str | None]) -> OutputState:
    """custom_id=(outcome, prompt its result answered, or None for no fingerprint)."""
    state = OutputState()
    for n, (cid, (outcome, prompt)) in enumerate(results.items()):
        printed = None if prompt is None else fingerprint(URL, body(prompt))
        if outcome == "done":
            state.add(success_record(cid, {}, record_id=str(n), request_id=None, fingerprint=printed))
        else:
            code = "invalid_request" if outcome == "permanent" else "server_error"
            state.add(error_record(cid, code, "m", record_id=str(n), status=400 if outcome == "permanent"
                                   else 500, fingerprint=printed))
    return state


@pytest.mark.parametrize("outcome, answered, now, policy, expected", [
    ("done", "p", "p", ChangedPolicy.REFUSE, Skip),
    ("done", "p", "q", ChangedPolicy.REFUSE, Refuse),
    ("done", "p", "q", ChangedPolicy.RERUN, Pending),
    ("done", "p", "q", ChangedPolicy.KEEP, Skip),
    ("done", None, "q", ChangedPolicy.REFUSE, Skip),       # before fingerprints: unchanged
    ("permanent", "p", "p", ChangedPolicy.REFUSE, Skip),
    ("permanent", "p", "q", ChangedPolicy.REFUSE, Refuse),
    ("permanent", "p", "q", ChangedPolicy.RERUN, Pending),
    ("transient", "p", "q", ChangedPolicy.REFUSE, Pending),  # no final result: it runs anyway
    (None, None, "q", ChangedPolicy.REFUSE, Pending),
])
def test_the_intake_decides_from_the_output_and_the_changed_policy(outcome, answered, now, policy,
                                                                   expected):
    state = state_with(**({"a": (outcome, answered)} if outcome else {}))
    decision = Intake(state, changed=policy).decide(job("a", now))
    assert type(decision) is expected
    assert decision.job.fingerprint == fingerprint(URL, body(now))
    if expected is Pending:
        assert decision.changed == (outcome in ("done", "permanent"))
    if expected is Skip and outcome == "done" and answered != now and answered is not None:
        assert decision.why is SkipReason.KEPT_CHANGED


def test_the_intake_reports_bad_lines_and_notes_a_duplicate_once_per_id():
    state = OutputState()
    intake = Intake(state)
    bad = BadLine("in.jsonl", 3, "not JSON")
    assert intake.decide(bad) == Reject(bad)
    dup = DuplicateLine("in.jsonl", 4, 1, "a")
    assert intake.decide(dup) == Duplicate(dup, note=True)
    state.add(error_record("a", "duplicate_custom_id", "m", record_id="x"))
    assert intake.decide(dup) == Duplicate(dup, note=False)


def test_ready_prepares_the_job_keeping_its_fingerprint_and_charges_it():
    def prepare(j: Job) -> Job | BadLine:
        if j.custom_id == "bad":
            return BadLine("in.jsonl", j.line, "upload missing", j.custom_id)
        return Job(custom_id=j.custom_id, url=j.url, body={**j.body, "user": "x"}, line=j.line,
                   fingerprint=j.fingerprint)
    intake = Intake(OutputState(), prepare=prepare, counter=lambda enc, text: len(text.split()))
    ready = intake.ready(intake.decide(job("a", "hello there")))
    assert isinstance(ready, Run) and ready.charge > 0
    assert ready.job.body["user"] == "x"
    assert ready.job.fingerprint == fingerprint(URL, body("hello there"))  # the file's job
    assert isinstance(intake.ready(intake.decide(job("bad", "x"))), Reject)


def test_changed_jobs_lists_how_many_and_the_first_by_line():
    state = state_with(a=("done", "p"), b=("done", "p"), c=("done", "p"), d=("done", None))
    items = [job("a", "p", 1), job("b", "edited", 2), job("c", "edited", 3), job("d", "x", 4),
             job("e", "new", 5)]
    report = changed_jobs(items, state)
    assert report.count == 2 and report.first == [("b", 2), ("c", 3)]
    message = report.message("in.jsonl", "out.jsonl")
    assert "2 jobs have changed in in.jsonl since out.jsonl" in message
    assert "'b' (line 2)" in message and "Nothing was sent" in message
    assert "--changed rerun" in message and "--changed keep" in message


# -- the command line, both backends ---------------------------------------------------------------

def edit(path, ids: set[str]) -> None:
    """Rewrite the prompts of `ids` in the job file at `path` (same custom_ids)."""
    lines = []
    for raw in path.read_bytes().splitlines():
        job_ = orjson.loads(raw)
        if job_["custom_id"] in ids:
            job_["body"]["messages"][-1]["content"] += " (edited)"
        lines.append(orjson.dumps(job_))
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("via", ["live", "batch"])
def test_an_edited_job_file_is_refused_before_anything_is_sent_then_rerun_or_kept(
        tmp_path, monkeypatch, via):
    jobs_path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jobs(jobs_path, 8, kinds=("chat",))
    sim = Simulator(SimConfig(), batch=BatchConfig(lines_per_s=1000, validate_s=0.0, finalize_s=0.0))
    with run_in_thread(simulator=sim) as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        args = ["run", str(jobs_path), "-o", str(out), "--no-progress", "--via", via,
                "--poll-every", "0.1"]
        first = CliRunner().invoke(main, args)
        assert first.exit_code == 0, first.output
        assert all(len(r["fingerprint"]) == 32 for r in read_results(out))
        edit(jobs_path, {"job 2/ü", "job 5/ü"})
        before, sent = out.read_bytes(), sim.stats.requests + sim.batches.stats.created

        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 2, refused.output
        assert "2 jobs have changed" in refused.output
        assert "'job 2/ü' (line 3)" in refused.output and "'job 5/ü' (line 6)" in refused.output
        assert "--changed rerun" in refused.output and "--changed keep" in refused.output
        assert out.read_bytes() == before  # nothing written ...
        assert sim.stats.requests + sim.batches.stats.created == sent  # ... nothing sent
        assert not (tmp_path / "out.jsonl.lock").exists()  # a run that ends removes its lock

        status = CliRunner().invoke(main, ["status", str(jobs_path), "-o", str(out), "--json"])
        assert status.exit_code == 3
        assert orjson.loads(status.output)["changed"]["count"] == 2

        kept = CliRunner().invoke(main, [*args, "--changed", "keep"])
        assert kept.exit_code == 0, kept.output
        assert out.read_bytes() == before
        assert "2 kept with their old results" in kept.output
        kept_status = CliRunner().invoke(main, ["status", str(jobs_path), "-o", str(out),
                                                "--changed", "keep"])
        assert kept_status.exit_code == 0, kept_status.output  # as the kept run sees it

        rerun = CliRunner().invoke(main, [*args, "--changed", "rerun"])
        assert rerun.exit_code == 0, rerun.output
        assert "2 sent again" in rerun.output
        again = CliRunner().invoke(main, args)
        assert again.exit_code == 0, again.output  # the new results answer the jobs as they are
    last = {r["custom_id"]: r for r in read_results(out)}
    for line in jobs_path.read_bytes().splitlines():
        job_ = orjson.loads(line)
        assert last[job_["custom_id"]]["fingerprint"] == fingerprint(job_["url"], job_["body"])
    status = CliRunner().invoke(main, ["status", str(jobs_path), "-o", str(out), "--json"])
    assert status.exit_code == 0, status.output
    assert len(read_results(out)) == 10  # 8 first answers + 2 new ones that supersede theirs


def run_once(tmp_path, jobs: int):
    """A job file of `jobs` chat jobs run once into out.jsonl: (job file, output)."""
    jobs_path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jobs(jobs_path, jobs, kinds=("chat",))
    result = CliRunner().invoke(main, ["run", str(jobs_path), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return jobs_path, out


def test_results_written_before_fingerprints_count_as_unchanged_and_the_run_says_so(
        tmp_path, simulated):
    jobs_path, out = run_once(tmp_path, 4)
    old = [{k: v for k, v in r.items() if k != "fingerprint"} for r in read_results(out)]
    out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in old))
    edit(jobs_path, {"job 1/ü"})
    result = CliRunner().invoke(main, ["run", str(jobs_path), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "4 results carry no job fingerprint" in result.output
    assert "4 already done" in result.output


@pytest.mark.slow  # starts runner processes
def test_a_changed_job_read_from_stdin_stops_the_run_with_exit_2(tmp_path):
    jobs_path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jobs(jobs_path, 6, kinds=("chat",))
    with run_in_thread(simulator=Simulator(SimConfig())) as base_url:
        def run_stdin():
            with open(jobs_path, "rb") as stdin:
                return finish(cli("run", "-", "-o", str(out), "--no-progress", stdin=stdin,
                                  env={"OPENAI_BASE_URL": base_url}))
        assert run_stdin()[0] == 0
        edit(jobs_path, {"job 3/ü"})
        code, _, err = run_stdin()
    assert code == 2, err
    assert "'job 3/ü' (line 4)" in err and "--changed rerun" in err
    assert len(read_results(out)) == 6


def test_estimate_against_an_output_counts_only_what_a_rerun_sends_and_the_changed_jobs(
        tmp_path, simulated):
    jobs_path, out = run_once(tmp_path, 6)
    edit(jobs_path, {"job 0/ü", "job 4/ü"})
    result = CliRunner().invoke(main, ["estimate", str(jobs_path), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.output)
    assert data["jobs"] == 2 and data["kept_from_output"] == 4
    assert data["changed"]["count"] == 2
    assert [f["custom_id"] for f in data["changed"]["first"]] == ["job 0/ü", "job 4/ü"]


def test_a_fixed_permanent_failure_is_retried_with_retry_failed_not_refused():
    state = state_with(a=("permanent", "p"))
    for policy in ChangedPolicy:
        decision = Intake(state, retry_failed=True, changed=policy).decide(job("a", "fixed"))
        assert isinstance(decision, Pending) and decision.changed


@pytest.mark.parametrize("via", ["live", "batch"])
@pytest.mark.parametrize("retry", [["--retry-failed"], ["--retry-codes", "invalid_request"]])
def test_a_failed_job_edited_then_retried_runs_and_is_not_refused(tmp_path, monkeypatch, via,
                                                                  retry):
    jobs_path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jobs(jobs_path, 3, kinds=("chat",))
    old = orjson.loads(jobs_path.read_bytes().splitlines()[1])
    out.write_bytes(orjson.dumps(error_record(
        "job 1/ü", "invalid_request", "m", record_id="b", status=400,
        fingerprint=fingerprint(old["url"], old["body"]))) + b"\n")
    edit(jobs_path, {"job 1/ü"})  # the user fixes the failed prompt, then retries it
    sim = Simulator(SimConfig(), batch=BatchConfig(lines_per_s=1000, validate_s=0.0, finalize_s=0.0))
    with run_in_thread(simulator=sim) as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        result = CliRunner().invoke(main, ["run", str(jobs_path), "-o", str(out), "--no-progress",
                                           "--via", via, "--poll-every", "0.1", *retry])
    assert result.exit_code == 0, result.output
    last = {r["custom_id"]: r for r in read_results(out)}
    assert all(r["error"] is None for r in last.values()) and len(last) == 3


def test_retry_codes_from_the_command_line_reruns_only_those_failures(tmp_path, monkeypatch):
    jobs_path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jobs(jobs_path, 3, kinds=("chat",))
    lines = [error_record("job 0/ü", "not_found", "m", record_id="a", status=404),
             error_record("job 1/ü", "invalid_request", "m", record_id="b", status=400)]
    out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    with run_in_thread(simulator=Simulator(SimConfig())) as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        result = CliRunner().invoke(main, ["run", str(jobs_path), "-o", str(out), "--no-progress",
                                           "--retry-codes", "not_found, bogus"])
        assert result.exit_code == 1, result.output  # job 1 is still kept failed
        last = {r["custom_id"]: r for r in read_results(out)}
        assert last["job 0/ü"]["error"] is None and last["job 2/ü"]["error"] is None
        assert last["job 1/ü"]["error"]["code"] == "invalid_request"
        bad = CliRunner().invoke(main, ["run", str(jobs_path), "-o", str(out), "--retry-codes", "a b"])
        assert bad.exit_code == 2
