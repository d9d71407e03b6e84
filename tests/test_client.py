"""runner from Python (runner/client.py): the same engine as `runner run`, blocking, as a
coroutine, and from inside a running event loop (a notebook's); results read back as typed
records; a second call resumes (an orchestrator's retry)."""
import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import runner
from runner.client import RunOptions, RunSummary
from runner.simulator.answers import chat_prompt, completion_text, embedding_vector
from runner.simulator.config import SimConfig
from runner.simulator.server import run_in_thread

ROOT = Path(__file__).resolve().parent.parent


def jobs(n, prefix="q"):
    for i in range(n):
        if i % 3 == 2:
            yield {"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": "text-embedding-3-small", "input": f"e{i}"}}
        else:
            yield {"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "gpt-4o-mini", "max_tokens": 5,
                            "messages": [{"role": "user", "content": f"question {i}"}]}}


def expected(job):
    if job["url"] == "/v1/embeddings":
        return pytest.approx(embedding_vector(job["body"]["input"]))
    return completion_text(chat_prompt(job["body"]["messages"]), 0)


@pytest.fixture(scope="module")
def simulator():
    with run_in_thread(SimConfig(rpm=100_000, tpm=10_000_000)) as url:
        yield url


@pytest.mark.slow  # starts a process
def test_runner_exports_the_api_without_loading_it_at_import():
    code = ("import sys, runner\nassert 'runner.client' not in sys.modules\n"
            "assert runner.run is __import__('runner.client').client.run\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr


def test_run_from_job_dicts_writes_the_output_and_results_read_back_in_job_order(tmp_path, simulator):
    output = tmp_path / "results.jsonl"
    summary = runner.run(jobs(30), output, base_url=simulator, api_key="sk-test", log=None)
    assert isinstance(summary, RunSummary) and summary.ok and summary.succeeded == 30
    job_file = tmp_path / "results.jobs.jsonl"  # where job dicts go by default
    back = list(runner.results(output, jobs=job_file))
    assert [r.custom_id for r in back] == [j["custom_id"] for j in jobs(30)]
    assert all(r.ok for r in back)
    assert [r.answer for r in back] == [expected(j) for j in jobs(30)]
    unordered = {r.custom_id: r for r in runner.results(output)}  # without the job file
    assert unordered["q0"].answer == back[0].answer and unordered["q2"].answer == back[2].answer


def test_a_second_run_resumes_sending_only_what_is_pending(tmp_path, simulator):
    job_file = tmp_path / "jobs.jsonl"
    job_file.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs(12)))
    output = tmp_path / "out.jsonl"
    first = list(jobs(12))[:5]
    output.write_bytes(b"")
    partial = runner.run(first, output, jobs_file=tmp_path / "first.jsonl",
                         options=RunOptions(base_url=simulator, api_key="sk-test"), log=None)
    assert partial.succeeded == 5
    again = runner.run(job_file, output, base_url=simulator, api_key="sk-test", log=None)
    assert (again.already_done, again.succeeded, again.exit_code) == (5, 7, 0)
    assert len(output.read_bytes().splitlines()) == 12


async def test_run_works_inside_a_running_event_loop_like_a_notebooks(tmp_path, simulator):
    asyncio.get_running_loop()  # as in Jupyter: a loop is running in this thread
    summary = runner.run(jobs(9), tmp_path / "out.jsonl", base_url=simulator, api_key="sk-test",
                         log=None)
    assert summary.ok and summary.succeeded == 9
    coroutine = await runner.run_async(jobs(6, "a"), tmp_path / "more.jsonl", base_url=simulator,
                                       api_key="sk-test", log=None)
    assert coroutine.ok and coroutine.succeeded == 6


def test_pending_and_failed_jobs_come_back_as_such(tmp_path, simulator):
    output = tmp_path / "out.jsonl"
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "gpt-4o-mini", "messages": "not a list"}}
    summary = runner.run([*jobs(2), bad], output, base_url=simulator, api_key="sk-test", log=None)
    assert summary.exit_code == 1 and sum(summary.failed.values()) == 1
    job_file = tmp_path / "all.jsonl"
    job_file.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in [*jobs(2), bad, *jobs(1, "new")]))
    statuses = {r.custom_id: (r.status, r.error_code) for r in runner.results(output, jobs=job_file)}
    assert statuses["bad"][0] == "failed" and statuses["bad"][1]
    assert statuses["new0"] == ("pending", None) and statuses["q0"] == ("done", None)


def test_options_are_checked_and_a_missing_key_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        runner.run(jobs(1), tmp_path / "o.jsonl", log=None)
    with pytest.raises(TypeError, match="unknown option 'rpn'"):
        runner.run(jobs(1), tmp_path / "o.jsonl", rpn=5)
    with pytest.raises(ValueError):
        RunOptions(changed="sometimes")


def test_the_python_api_takes_the_spend_cap_and_the_limit():
    from runner.client import RunOptions
    options = RunOptions(api_key="k", max_cost=5.0, limit=10)
    config = options.config("jobs.jsonl", __import__("pathlib").Path("out.jsonl"))
    assert config.dispatch.max_cost == 5.0 and config.dispatch.limit == 10
    assert config.prices is not None
    batch = RunOptions(api_key="k", max_cost=5.0, via="batch").config(
        "jobs.jsonl", __import__("pathlib").Path("out.jsonl"))
    assert batch.max_cost == 5.0 and "Batch API" in batch.prices.basis
