"""runner against a real third-party OpenAI-compatible server: llmock (PyPI), started by the
fixtures in conftest.py on a free loopback port. What llmock does and does not do is in
docs/real-servers.md; its journal (`Llmock.requests()`) counts what reached it."""
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from runner.api.endpoint import Endpoint
from runner.live.run import RunConfig, run
from tests.conftest import LLMOCK_RPM, started
from tests.servers import ServerDidNotStart, _Process, echo_text

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-realservers-test"
FULL_MINUTE_S = 60.0  # llmock's buckets hold a whole minute of budget: runner's --burst 60 matches


def job(i: int, kind: str, *, model: str = "gpt-4o-mini", n: int = 1) -> dict:
    if kind == "chat":
        body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": 5}
        if n > 1:
            body["n"] = n
        url = "/v1/chat/completions"
    elif kind == "completions":
        body, url = {"model": "gpt-3.5-turbo-instruct", "prompt": f"prompt {i}", "max_tokens": 5}, "/v1/completions"
    else:
        body, url = {"model": "text-embedding-3-small", "input": f"text {i} ü"}, "/v1/embeddings"
    return {"custom_id": f"{kind} {i}", "method": "POST", "url": url, "body": body}


def write(path: Path, jobs: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    return path


def records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def config(tmp_path: Path, jobs: list[dict], server, **kwargs) -> RunConfig:
    return RunConfig(input=str(write(tmp_path / "in.jsonl", jobs)), output=tmp_path / "out.jsonl",
                     endpoint=Endpoint(base_url=server.base_url, api_key=KEY), **kwargs)


async def quiet_run(cfg: RunConfig):
    return await run(cfg, progress=False, handle_signals=False, log=lambda m: None)


def assert_each_job_has_its_own_answer_once(jobs: list[dict], lines: list[dict]) -> None:
    """One line per job, a success, holding llmock's answer to that job's own prompt."""
    from llmock.simulation import build_mock_embedding  # here: collecting never loads llmock
    assert sorted(r["custom_id"] for r in lines) == sorted(j["custom_id"] for j in jobs)
    by_id = {r["custom_id"]: r for r in lines}
    for j in jobs:
        record = by_id[j["custom_id"]]
        assert record["error"] is None and record["response"]["status_code"] == 200, record
        body, answer = j["body"], record["response"]["body"]
        if j["url"] == "/v1/chat/completions":
            texts = [c["message"]["content"] for c in answer["choices"]]
            assert texts == [echo_text(body["messages"][0]["content"])] * body.get("n", 1)
        else:
            assert [d["index"] for d in answer["data"]] == [0]
            assert answer["data"][0]["embedding"] == build_mock_embedding(body["input"], 1536)


async def test_chat_and_embedding_jobs_each_get_their_own_answer_once_and_a_rerun_sends_nothing(
        tmp_path, llmock_echo):
    llmock_echo.reset()
    jobs = [job(i, "chat", n=2 if i % 5 == 0 else 1) for i in range(30)]
    jobs += [job(i, "embeddings") for i in range(30)]
    cfg = config(tmp_path, jobs, llmock_echo)

    first = await quiet_run(cfg)
    served = llmock_echo.requests()
    second = await quiet_run(cfg)

    assert first.exit_code() == 0 and first.succeeded == 60 and first.rate_limited == 0
    assert_each_job_has_its_own_answer_once(jobs, records(cfg.output))
    paths = Counter(r["path"] for r in served)
    assert paths["/v1/chat/completions"] == 30
    assert 1 <= paths["/v1/embeddings"] < 30  # list inputs: llmock answers every item, in order
    assert all(r["status"] == 200 for r in served)
    assert second.exit_code() == 0 and second.already_done == 60 and second.requests == 0
    assert len(llmock_echo.requests()) == len(served)
    assert len(records(cfg.output)) == 60


async def test_completion_jobs_get_one_not_found_line_each_and_are_kept_on_rerun(tmp_path, llmock_echo):
    """llmock serves no /v1/completions: a permanent 404, written once per job, never retried."""
    llmock_echo.reset()
    jobs = [job(i, "completions") for i in range(12)]
    cfg = config(tmp_path, jobs, llmock_echo)

    first = await quiet_run(cfg)
    second = await quiet_run(cfg)

    lines = records(cfg.output)
    assert sorted(r["custom_id"] for r in lines) == sorted(j["custom_id"] for j in jobs)
    assert {r["error"]["code"] for r in lines} == {"not_found"}
    assert {r["response"]["status_code"] for r in lines} == {404}
    assert first.exit_code() == 1 and first.failed == Counter(not_found=12)
    assert first.requests == len(llmock_echo.requests()) <= 12
    assert second.kept_failed == 12 and second.requests == 0


OVER_THE_LIMIT = 20  # jobs beyond a full bucket: 2 s of llmock's refill


@pytest.mark.slow  # about 4 s: the jobs outlast the first minute's budget
async def test_over_a_per_key_limit_every_job_is_done_once_with_the_limit_learned(tmp_path, llmock_rpm):
    llmock_rpm.reset()
    jobs = [job(i, "chat") for i in range(LLMOCK_RPM + OVER_THE_LIMIT)]
    cfg = config(tmp_path, jobs, llmock_rpm, burst_s=FULL_MINUTE_S)

    stats = await quiet_run(cfg)

    assert stats.exit_code() == 0 and stats.succeeded == len(jobs) and not stats.failed
    assert_each_job_has_its_own_answer_once(jobs, records(cfg.output))
    assert stats.limits["gpt-4o-mini"] == (LLMOCK_RPM, None)  # from x-ratelimit-limit-requests
    served = Counter(r["status"] for r in llmock_rpm.requests())
    assert served[200] == len(jobs) and served[429] == stats.rate_limited


@pytest.mark.slow  # about 4 s
async def test_two_models_sharing_one_key_budget_still_get_every_job_done_once(tmp_path, llmock_rpm):
    """llmock's budget is per key, runner's per model: each model learns the whole key's limit,
    so together they overrun it and meet 429s (counted in the bench, not held to a number here);
    what must hold is that every job ends done, once."""
    llmock_rpm.reset()
    jobs = [job(i, "chat", model=("gpt-4o-mini", "gpt-4o")[i % 2]) for i in range(LLMOCK_RPM + OVER_THE_LIMIT)]
    cfg = config(tmp_path, jobs, llmock_rpm, burst_s=FULL_MINUTE_S)

    stats = await quiet_run(cfg)

    assert stats.exit_code() == 0 and stats.succeeded == len(jobs) and not stats.failed
    assert_each_job_has_its_own_answer_once(jobs, records(cfg.output))
    served = Counter(r["status"] for r in llmock_rpm.requests())
    assert served[200] == len(jobs) and served[429] == stats.rate_limited


@pytest.mark.slow  # starts the CLI
def test_the_command_line_runs_a_job_file_against_llmock(tmp_path, llmock_rpm):
    llmock_rpm.reset()
    jobs = [job(i, "chat") for i in range(10)] + [job(i, "embeddings") for i in range(10)]
    source, out = write(tmp_path / "in.jsonl", jobs), tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(source), "-o", str(out), "--no-progress",
         "--base-url", llmock_rpm.base_url, "--summary-json", str(tmp_path / "summary.json")],
        cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": KEY}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_each_job_has_its_own_answer_once(jobs, records(out))
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["requests"]["rate_limited_429"] == 0
    assert summary["models"]["gpt-4o-mini"]["allowed_rpm"] == LLMOCK_RPM
    assert KEY not in out.read_text() and KEY not in proc.stderr


# -- the fixtures' failure path: a server that cannot start fails the test, with its output ----------

class _Exits(_Process):
    name = "exits"

    def command(self):
        return [sys.executable, "-c", "import sys; print('cannot bind, say'); sys.exit(3)"]


class _Silent(_Process):
    name = "silent"

    def command(self):
        return ["sh", "-c", "echo starting...; exec sleep 60"]


@pytest.mark.slow  # starts a process
def test_a_server_that_exits_is_reported_with_its_exit_code_and_output():
    with pytest.raises(ServerDidNotStart, match=r"(?s)exits exited with code 3.*cannot bind, say"):
        _Exits().start()


@pytest.mark.slow  # starts a process
def test_a_server_that_never_answers_is_stopped_and_reported_after_the_wait():
    server = _Silent()
    with pytest.raises(ServerDidNotStart, match=r"(?s)did not answer /health within 0.5 s.*starting"):
        server.start(timeout=0.5)
    assert server.proc.returncode is not None  # stopped, not left running


@pytest.mark.slow  # starts a process
def test_a_fixture_whose_server_cannot_start_fails_the_test_rather_than_skipping_it():
    with pytest.raises(pytest.fail.Exception, match="pip install -e '.\\[test\\]'"):
        started(_Exits())
