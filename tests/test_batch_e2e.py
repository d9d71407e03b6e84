"""`--via batch` end to end against the simulator's Batch API, in-process on virtual time: the
polling waits cost nothing, so a run over many batches takes milliseconds of real time."""
from __future__ import annotations

import os
import signal
from collections import Counter


import orjson
import pytest

from jobs.shard import Shard
from runner.api.endpoint import Endpoint
from runner.api.transport import HttpResponse
from runner.batch.run import BatchRunConfig, run_batch
from runner.batch.state import read_state, state_path
from runner.exit_codes import EXIT_IN_PROGRESS, EXIT_OK, EXIT_SOME_FAILED, EXIT_STOPPED
from runner.simulator.batches import BatchConfig
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator
from tests.test_e2e import assert_exactly_once, expected_ok, prompt_of, read_results, write_jobs

KEY = "sk-batch-secret-0123456789abcdefXYZ"


class Killed(BaseException):
    """Stands for SIGKILL inside one process: nothing after it runs, files stay as written."""


def run(loop, sim, tmp_path, jobs_file="in.jsonl", *, send=None, log=None, **kwargs):
    """One `run_batch` against `sim` (started on `loop`), polling every second."""
    handle_signals = kwargs.pop("handle_signals", False)
    config = BatchRunConfig(input=str(tmp_path / jobs_file), output=tmp_path / "out.jsonl",
                            endpoint=kwargs.pop("endpoint", None) or Endpoint(base_url=sim.base_url, api_key=KEY),
                            poll_every=kwargs.pop("poll_every", 1.0), **kwargs)
    return loop.run_until_complete(run_batch(config, send=send, progress=False,
                                             handle_signals=handle_signals,
                                             log=log or (lambda m: None)))


@pytest.fixture
def sim_factory(loop):
    started = []

    def make(config=SimConfig(), batch=BatchConfig(lines_per_s=200, validate_s=2, finalize_s=1)):
        sim = Simulator(config, clock=loop.time, batch=batch)
        loop.run_until_complete(sim.start())
        started.append(sim)
        return sim

    yield make
    for sim in started:
        loop.run_until_complete(sim.stop())


def run_intercepted(loop, sim, tmp_path, intercept, **kwargs):
    """One `run_batch` against `sim` over real HTTP whose every request passes `intercept` first:
    the `HttpResponse` it returns is the answer; None sends the request on."""
    from runner.api.transport import aiohttp_sender, open_session

    async def main():
        async with open_session(max_connections=4) as session:
            real = aiohttp_sender(session)

            async def send(request):
                answer = intercept(request)
                return answer if answer is not None else await real(request)

            config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                                    endpoint=Endpoint(base_url=sim.base_url, api_key=KEY),
                                    poll_every=1.0, **kwargs)
            return await run_batch(config, send=send, progress=False, handle_signals=False,
                                   log=lambda m: None)

    return main()


def refuse_creates(status, code, message):
    """An `intercept` answering every batch create with `status` and this error."""
    def refuse(request):
        if request.method == "POST" and request.url.endswith("/batches"):
            return HttpResponse(status, {}, orjson.dumps({"error": {
                "code": code, "type": "invalid_request_error", "param": None, "message": message}}))
        return None
    return refuse


def ran_twice(sim):
    """Jobs (by what they asked, packed or not) that two batches both answered 200: paid twice."""
    return {key: ids for key, ids in sim.batches.stats.paid.items() if len(ids) > 1}


def test_a_job_file_over_several_batches_with_faults_and_poison_gets_each_job_once(
        loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 240)
    poison = [j for j in jobs if j["url"] == "/v1/completions"][:3]
    for job in poison:  # a packed line with a poisoned prompt: bisected until only it fails
        job["body"]["prompt"] += " POISON"
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    sim = sim_factory(SimConfig(fault_rate=0.1, faults=("500", "503", "missing_choice"),
                                poison="POISON", seed=4))
    stats = run(loop, sim, tmp_path, max_requests=25, max_attempts=10)
    assert stats.exit_code() == EXIT_SOME_FAILED
    records = read_results(tmp_path / "out.jsonl")
    assert len(records) == len(jobs)  # one line per job, none twice
    last = {r["custom_id"]: r for r in records}
    for job in jobs:
        if job in poison:
            assert last[job["custom_id"]]["error"]["code"] == "context_length_exceeded"
        else:
            expected_ok(job, last[job["custom_id"]])
    assert sim.batches.stats.created >= 5 and stats.batches_created == sim.batches.stats.created
    assert stats.bisect_requests > 0 and stats.retries > 0
    assert not ran_twice(sim)
    assert sum(sim.stats.answered[prompt_of(j)] for j in jobs if j not in poison) == len(jobs) - 3
    # every uploaded input file deleted once its batch was collected
    assert sim.batches.stats.deleted == sim.batches.stats.uploaded
    assert not read_state(tmp_path / "out.jsonl").open_chunks()


def test_a_rerun_of_a_finished_file_sends_nothing(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 30)
    sim = sim_factory()
    assert run(loop, sim, tmp_path).exit_code() == EXIT_OK
    calls = sim.stats.requests
    again = run(loop, sim, tmp_path)
    assert again.exit_code() == EXIT_OK and again.already_done == 30
    assert sim.stats.requests == calls
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_no_wait_exits_4_while_batches_run_then_0_once_collected(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 60)
    sim = sim_factory(batch=BatchConfig(lines_per_s=1, validate_s=5))  # 60 s of work
    first = run(loop, sim, tmp_path, wait=False)
    assert first.exit_code() == EXIT_IN_PROGRESS and first.batches_created >= 1
    assert not (tmp_path / "out.jsonl").read_bytes()
    second = run(loop, sim, tmp_path, wait=False)  # nothing new submitted, nothing finished yet
    assert second.exit_code() == EXIT_IN_PROGRESS and second.batches_created == 0
    loop.run_until_complete(__import__("asyncio").sleep(3600))  # cron comes back an hour later
    third = run(loop, sim, tmp_path, wait=False)
    assert third.exit_code() == EXIT_OK
    assert (third.succeeded, third.already_done, third.jobs) == (60, 0, 60)
    assert sim.batches.stats.created == first.batches_created
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_an_expired_batch_keeps_its_finished_lines_and_resubmits_the_rest(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 50, kinds=("chat",))
    sim = sim_factory(batch=BatchConfig(lines_per_s=100, expire_after_lines=20))
    stats = run(loop, sim, tmp_path)
    assert stats.exit_code() == EXIT_OK
    assert sim.batches.stats.by_status["expired"] >= 2  # 50 jobs, 20 per batch before it expires
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    assert not ran_twice(sim)


def test_a_validation_failure_fails_only_the_named_lines(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 30, kinds=("chat",))
    jobs[7]["body"]["messages"][0]["content"] = "INVALID here"
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    sim = sim_factory(batch=BatchConfig(invalid_marker="INVALID"))
    stats = run(loop, sim, tmp_path)
    assert stats.exit_code() == EXIT_SOME_FAILED
    records = read_results(tmp_path / "out.jsonl")
    assert len(records) == 30
    last = {r["custom_id"]: r for r in records}
    bad = last[jobs[7]["custom_id"]]
    assert bad["error"]["code"] == "invalid_request" and "simulated validation" in bad["error"]["message"]
    for job in jobs[:7] + jobs[8:]:
        expected_ok(job, last[job["custom_id"]])
    assert sim.batches.stats.by_status["failed"] == 1


def test_the_enqueued_token_limit_queues_batches_instead_of_failing_jobs(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 120, kinds=("chat",))
    # each chat job is charged ~7 tokens; 20-line files hold ~140: two fit under 300 at once
    sim = sim_factory(batch=BatchConfig(lines_per_s=20, enqueued_token_limit=300))
    logs = []
    stats = run(loop, sim, tmp_path, max_requests=20, log=logs.append)
    assert stats.exit_code() == EXIT_OK
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    assert sim.batches.stats.by_status["failed"] >= 1  # met the limit at least once ...
    assert read_state(tmp_path / "out.jsonl").token_limits == {"gpt-4o-mini": 300}  # ... and learned it
    assert sim.batches.stats.max_enqueued["gpt-4o-mini"] <= 300
    assert any("enqueued-token limit" in m for m in logs)


def test_azure_shapes_files_batches_and_deployment_names(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 30)
    sim = sim_factory()
    seen_urls = []
    from runner.api.transport import aiohttp_sender, open_session

    async def main():
        async with open_session(max_connections=4) as session:
            real = aiohttp_sender(session)

            async def send(request):
                seen_urls.append((request.method, request.url, dict(request.headers)))
                return await real(request)

            endpoint = Endpoint(base_url=sim.azure_endpoint, api_key=KEY, azure=True,
                                api_version="2024-10-21",
                                deployments={"gpt-4o-mini": "mini-batch-deployment"})
            config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                                    endpoint=endpoint, poll_every=1.0)
            return await run_batch(config, send=send, progress=False, handle_signals=False,
                                   log=lambda m: None)

    stats = loop.run_until_complete(main())
    assert stats.exit_code() == EXIT_OK
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    paths = {url.split("?")[0].removeprefix(sim.azure_endpoint) for _, url, _ in seen_urls}
    assert "/openai/files" in paths and "/openai/batches" in paths
    # each upload was waited on until Azure had processed it, before its batch was created
    assert any(method == "GET" and "/openai/files/file-" in url and "/content" not in url
               for method, url, _ in seen_urls)
    assert all("api-version=2024-10-21" in url for _, url, _ in seen_urls)
    assert all(h.get("api-key") == KEY and "Authorization" not in h for _, _, h in seen_urls)
    endpoints = {b["endpoint"] for b in sim.batches.batches.values()}
    assert endpoints == {"/chat/completions", "/completions", "/embeddings"}
    chat_batch = next(b for b in sim.batches.batches.values() if b["endpoint"] == "/chat/completions")
    # the input file was deleted after collect; the output file still names the deployment's answers
    lines = [orjson.loads(x) for x in sim.batches.contents[chat_batch["output_file_id"]].splitlines()]
    assert {line["response"]["body"]["model"] for line in lines} == {"mini-batch-deployment"}


def test_polls_answered_429_or_5xx_back_off_and_never_fail_the_run(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 20, kinds=("chat",))
    sim = sim_factory()
    refused = Counter()

    def busy(request):
        if request.method == "GET" and "/batches/" in request.url and refused["n"] < 6:
            refused["n"] += 1
            status = 429 if refused["n"] % 2 else 503
            return HttpResponse(status, {"retry-after": "2"} if status == 429 else {},
                                b'{"error": {"message": "busy", "code": null}}')
        return None

    stats = loop.run_until_complete(run_intercepted(loop, sim, tmp_path, busy))
    assert refused["n"] == 6 and stats.exit_code() == EXIT_OK
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def _killing_send(sim, loop, tmp_path, rule):
    """A run whose `send` raises `Killed` when `rule(n, request, response)` says so (after the
    answer arrived: the remote action happened, the run never learned it)."""
    from runner.api.transport import aiohttp_sender, open_session

    async def main():
        async with open_session(max_connections=4) as session:
            real = aiohttp_sender(session)
            calls = Counter()

            async def send(request):
                response = await real(request)
                calls["n"] += 1
                if rule(calls["n"], request, response):
                    raise Killed
                return response

            config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                                    endpoint=Endpoint(base_url=sim.base_url, api_key=KEY),
                                    poll_every=1.0, max_requests=15)
            try:
                return await run_batch(config, send=send, progress=False, handle_signals=False,
                                       log=lambda m: None)
            except Killed:
                return None

    return loop.run_until_complete(main())


def test_killed_between_create_and_its_record_the_rerun_finds_the_batch_and_creates_none(
        loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 30, kinds=("chat",))
    sim = sim_factory()
    killed = _killing_send(sim, loop, tmp_path,
                           lambda n, req, resp: req.method == "POST" and req.url.endswith("/batches"))
    assert killed is None and sim.batches.stats.created == 1
    state = read_state(tmp_path / "out.jsonl")
    assert [c.batch_id for c in state.chunks.values()] == [None]  # created, never recorded
    stats = run(loop, sim, tmp_path, max_requests=15)
    assert stats.exit_code() == EXIT_OK
    assert sim.batches.stats.created == 2  # the found one, and the second file's
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    assert not ran_twice(sim)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_sigkill_at_random_calls_three_times_then_a_final_run_pays_for_each_job_once(seed, 
        loop, tmp_path, sim_factory):
    import random
    rng = random.Random(seed)
    jobs = write_jobs(tmp_path / "in.jsonl", 90)
    sim = sim_factory(SimConfig(fault_rate=0.05, faults=("500",), seed=2))
    for top in (25, 8, 4):  # kills land in upload, create, list, poll, download and delete calls
        target = rng.randint(2, top)
        assert _killing_send(sim, loop, tmp_path, lambda n, req, resp, t=target: n == t) is None
        loop.run_until_complete(__import__("asyncio").sleep(rng.uniform(0, 1)))
    stats = run(loop, sim, tmp_path, max_requests=15)
    assert stats.exit_code() == EXIT_OK
    records = read_results(tmp_path / "out.jsonl")
    assert len(records) == len(jobs)
    assert_exactly_once(jobs, records)
    assert not ran_twice(sim)


def test_killed_half_way_through_appending_results_the_rerun_writes_each_line_once(
        loop, tmp_path, sim_factory, monkeypatch):
    from runner.batch import run as batch_run
    jobs = write_jobs(tmp_path / "in.jsonl", 40, kinds=("chat",))
    sim = sim_factory()
    real_sink = batch_run._Engine.sink
    written = Counter()

    def sink(self, record):
        written["n"] += 1
        if written["n"] == 13:
            raise Killed
        real_sink(self, record)

    monkeypatch.setattr(batch_run._Engine, "sink", sink)
    with pytest.raises(Killed):
        run(loop, sim, tmp_path)
    monkeypatch.setattr(batch_run._Engine, "sink", real_sink)
    assert len(read_results(tmp_path / "out.jsonl")) == 12
    stats = run(loop, sim, tmp_path)
    assert stats.exit_code() == EXIT_OK
    # counted as written: 28 lines by this run, 12 by the killed one
    assert (stats.succeeded, stats.already_done, stats.jobs) == (28, 12, 40)
    records = read_results(tmp_path / "out.jsonl")
    assert len(records) == 40 and sim.batches.stats.created == 1
    assert_exactly_once(jobs, records)


def test_sigterm_exits_3_leaving_batches_running_and_the_next_run_collects_them(
        loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 40, kinds=("chat",))
    sim = sim_factory(batch=BatchConfig(lines_per_s=1))
    loop.call_later(5.0, os.kill, os.getpid(), signal.SIGTERM)
    started = loop.time()
    stats = run(loop, sim, tmp_path, handle_signals=True)
    assert stats.exit_code() == EXIT_STOPPED and "SIGTERM" in stats.stop_reason
    assert loop.time() - started < 7  # the next stop check, not the next poll
    assert len(read_state(tmp_path / "out.jsonl").open_chunks()) == 1
    assert sim.batches.stats.created == 1
    final = run(loop, sim, tmp_path, wait=True)
    assert final.exit_code() == EXIT_OK and sim.batches.stats.created == 1
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_cancel_collects_what_finished_and_leaves_the_rest_pending(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 40, kinds=("chat",))
    sim = sim_factory(batch=BatchConfig(lines_per_s=2, validate_s=1))
    assert run(loop, sim, tmp_path, wait=False).exit_code() == EXIT_IN_PROGRESS
    loop.run_until_complete(__import__("asyncio").sleep(6))  # some lines answered
    cancelled = run(loop, sim, tmp_path, cancel=True)
    assert cancelled.stop_reason is None and not cancelled.in_progress
    assert sim.batches.stats.by_status["cancelled"] == 1
    partial = read_results(tmp_path / "out.jsonl")
    assert 0 < len(partial) < 40
    final = run(loop, sim, tmp_path)
    assert final.exit_code() == EXIT_OK
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    assert not ran_twice(sim)


def test_the_key_is_never_in_the_state_file_the_log_or_the_output(loop, tmp_path, sim_factory):
    write_jobs(tmp_path / "in.jsonl", 20)
    sim = sim_factory(SimConfig(fault_rate=0.2, faults=("500",)))
    logs = []
    run(loop, sim, tmp_path, log=logs.append)
    out = tmp_path / "out.jsonl"
    for path in (out, state_path(out)):
        assert KEY.encode() not in path.read_bytes()
    assert not any(KEY in m for m in logs)


def test_killed_between_upload_and_its_record_the_rerun_reuses_the_file(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 20, kinds=("chat",))
    sim = sim_factory()
    killed = _killing_send(sim, loop, tmp_path,
                           lambda n, req, resp: req.method == "POST" and req.url.endswith("/files"))
    assert killed is None and sim.batches.stats.uploaded == 1
    assert run(loop, sim, tmp_path, max_requests=15).exit_code() == EXIT_OK
    # the second file was uploaded fresh; the first one was found and used, not uploaded again
    assert sim.batches.stats.uploaded == sim.batches.stats.created == 2
    assert sim.batches.stats.deleted == 2 and not sim.batches.files.keys() - {
        b[k] for b in sim.batches.batches.values() for k in ("output_file_id", "error_file_id")}
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_a_run_at_another_base_url_is_refused_while_batches_sent_elsewhere_are_open(
        loop, tmp_path, sim_factory):
    from runner.files.checkpoint import CheckpointError
    write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    sim = sim_factory(batch=BatchConfig(lines_per_s=1))
    assert run(loop, sim, tmp_path, wait=False).exit_code() == EXIT_IN_PROGRESS
    with pytest.raises(CheckpointError, match="open at"):
        run(loop, sim, tmp_path, endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", api_key=KEY))
    assert sim.batches.stats.created == 1


def test_a_batch_the_provider_no_longer_knows_puts_its_jobs_back(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    sim = sim_factory(batch=BatchConfig(lines_per_s=1))
    assert run(loop, sim, tmp_path, wait=False).exit_code() == EXIT_IN_PROGRESS
    sim.batches.batches.clear()  # gone (deleted by an operator, or a provider's clean-up)
    logs = []
    assert run(loop, sim, tmp_path, log=logs.append).exit_code() == EXIT_OK
    assert any("not known to the provider" in m for m in logs)
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_a_rejected_key_stops_the_run_with_exit_3_before_anything_runs(loop, tmp_path, sim_factory):
    write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    sim = sim_factory(SimConfig(api_key="sk-the-right-one"))
    stats = run(loop, sim, tmp_path)
    assert stats.exit_code() == EXIT_STOPPED and "invalid_api_key" in stats.stop_reason
    assert sim.batches.stats.created == 0


def test_bad_input_lines_are_reported_by_file_and_line_and_the_rest_runs(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    with open(tmp_path / "in.jsonl", "ab") as f:
        f.write(b'{"custom_id": "broken", "url": "/v1/chat/completions"\n')
        f.write(orjson.dumps(jobs[-1]) + b"\n")  # its first line expires in the first batch
    sim = sim_factory(batch=BatchConfig(expire_after_lines=5))
    logs = []
    stats = run(loop, sim, tmp_path, log=logs.append)
    assert stats.exit_code() == EXIT_SOME_FAILED and stats.bad_lines == 1 and stats.duplicates == 1
    assert f"{tmp_path / 'in.jsonl'}:11: malformed or truncated JSON" in "\n".join(logs)
    assert f"{tmp_path / 'in.jsonl'}:12: duplicate custom_id" in "\n".join(logs)
    records = read_results(tmp_path / "out.jsonl")
    assert_exactly_once(jobs, [r for r in records if r["error"] is None])
    assert [r["error"]["code"] for r in records if r["error"]] == ["duplicate_custom_id"]


def test_a_file_that_is_not_a_job_file_stops_with_exit_2(loop, tmp_path, sim_factory):
    (tmp_path / "in.jsonl").write_bytes(b"not json\n" * 30)
    sim = sim_factory()
    stats = run(loop, sim, tmp_path)
    assert stats.exit_code() == 2 and "does not look like a JSONL job file" in stats.stop_reason
    assert sim.batches.stats.uploaded == 0


def test_jobs_refused_for_quota_held_by_other_batches_wait_and_go_once_it_frees(
        loop, tmp_path, sim_factory):
    from runner.api.transport import aiohttp_sender, open_session
    from runner.batch.client import BatchClient
    jobs = write_jobs(tmp_path / "in.jsonl", 20, kinds=("chat",))
    sim = sim_factory(batch=BatchConfig(lines_per_s=1, validate_s=1, enqueued_token_limit=150))

    async def someone_else():  # another tool's batch holds 120 of the 150 tokens for ~20 s
        async with open_session(max_connections=2) as session:
            client = BatchClient(aiohttp_sender(session), Endpoint(base_url=sim.base_url, api_key="other"))
            data = b"".join(orjson.dumps({"custom_id": f"x{i}", "method": "POST",
                                          "url": "/v1/chat/completions", "body": {
                                              "model": "gpt-4o-mini", "max_tokens": 11,
                                              "messages": [{"role": "user", "content": "x"}]}}) + b"\n"
                            for i in range(10))
            file = await client.upload("other.jsonl", data)
            await client.create(file["id"], "/v1/chat/completions", {})
            await __import__("asyncio").sleep(2)

    loop.run_until_complete(someone_else())
    logs = []
    stats = run(loop, sim, tmp_path, log=logs.append)  # refused while nothing of ours is open
    assert stats.exit_code() == EXIT_OK
    assert sim.batches.stats.by_status["failed"] >= 1
    assert any("wait for earlier batches" in m for m in logs)
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
    assert sim.batches.stats.max_enqueued["gpt-4o-mini"] <= 150


def test_cancel_finds_a_batch_created_but_not_recorded_and_cancels_it(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    sim = sim_factory(batch=BatchConfig(lines_per_s=1))
    assert _killing_send(sim, loop, tmp_path,
                         lambda n, req, resp: req.method == "POST" and req.url.endswith("/batches")) is None
    cancelled = run(loop, sim, tmp_path, cancel=True)
    assert cancelled.stop_reason is None and not cancelled.in_progress
    assert sim.batches.stats.created == 1 and sim.batches.stats.by_status["cancelled"] == 1
    assert not read_state(tmp_path / "out.jsonl").open_chunks()
    assert run(loop, sim, tmp_path).exit_code() == EXIT_OK
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_cancel_before_any_batch_was_created_creates_none_and_deletes_the_file(
        loop, tmp_path, sim_factory):
    write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    sim = sim_factory()
    assert _killing_send(sim, loop, tmp_path,
                         lambda n, req, resp: req.method == "POST" and req.url.endswith("/files")) is None
    cancelled = run(loop, sim, tmp_path, cancel=True)
    assert cancelled.exit_code() == EXIT_OK
    assert sim.batches.stats.created == 0 and not read_state(tmp_path / "out.jsonl").open_chunks()
    assert sim.batches.stats.uploaded == sim.batches.stats.deleted == 1 and not sim.batches.files
    assert not (tmp_path / "out.jsonl").read_bytes()  # nothing ran: every job still pending


def test_a_create_refused_for_the_token_limit_waits_instead_of_ending_the_run(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    sim = sim_factory()
    from runner.api.transport import aiohttp_sender, open_session
    refused = Counter()

    async def main(wait):
        async with open_session(max_connections=4) as session:
            real = aiohttp_sender(session)

            async def send(request):
                if request.method == "POST" and request.url.endswith("/batches") and refused["n"] < 2:
                    refused["n"] += 1
                    return HttpResponse(400, {}, orjson.dumps({"error": {
                        "code": "token_limit_exceeded", "type": "invalid_request_error", "param": None,
                        "message": "Enqueued token limit reached for gpt-4o-mini in organization "
                                   "org-x. Limit: 90,000 enqueued tokens. Please try again once "
                                   "some in_progress batches have been completed."}}))
                return await real(request)

            config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                                    endpoint=Endpoint(base_url=sim.base_url, api_key=KEY),
                                    poll_every=1.0, wait=wait)
            return await run_batch(config, send=send, progress=False, handle_signals=False,
                                   log=lambda m: None)

    first = loop.run_until_complete(main(False))
    assert first.exit_code() == EXIT_IN_PROGRESS  # no batch open, but the jobs wait for quota
    assert not read_state(tmp_path / "out.jsonl").open_chunks()
    assert loop.run_until_complete(main(True)).exit_code() == EXIT_OK
    assert refused["n"] == 2 and sim.batches.stats.created == 1
    assert read_state(tmp_path / "out.jsonl").token_limits == {"gpt-4o-mini": 90_000}
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_lines_failing_every_time_are_written_after_max_attempts_and_a_rerun_retries_them(
        loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 6, kinds=("chat",))
    sim = sim_factory(SimConfig(fault_rate=1.0, faults=("503",)))
    stats = run(loop, sim, tmp_path, max_attempts=3)
    assert stats.exit_code() == EXIT_SOME_FAILED and stats.failed == {"server_error": 6}
    assert sim.batches.stats.created == 3  # one batch per attempt
    records = read_results(tmp_path / "out.jsonl")
    assert len(records) == 6 and all("gave up after 3 requests" in r["error"]["message"] for r in records)
    assert all(r["response"]["status_code"] == 503 for r in records)
    healthy = sim_factory()  # a rerun retries transient failures with fresh attempts, as live
    stats = run(loop, healthy, tmp_path, max_attempts=3)
    assert stats.exit_code() == EXIT_OK and healthy.batches.stats.created == 1
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_permanent_failures_are_kept_unless_retry_failed(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 6, kinds=("chat",))
    jobs[2]["body"]["messages"][0]["content"] = "POISON"
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    sim = sim_factory(SimConfig(poison="POISON"))
    assert run(loop, sim, tmp_path).exit_code() == EXIT_SOME_FAILED
    kept = run(loop, sim, tmp_path)
    assert kept.kept_failed == 1 and kept.batches_created == 0
    again = run(loop, sim, tmp_path, retry_failed=True)
    assert again.batches_created == 1 and again.batch_lines == 1  # only the failed job goes again
    assert again.failed == {"context_length_exceeded": 1}


def test_a_single_job_over_the_whole_enqueued_token_limit_fails_instead_of_waiting(
        loop, tmp_path, sim_factory):
    write_jobs(tmp_path / "in.jsonl", 1, kinds=("chat",))
    sim = sim_factory(batch=BatchConfig(enqueued_token_limit=3))  # the job is charged ~6 tokens
    stats = run(loop, sim, tmp_path)
    assert stats.exit_code() == EXIT_SOME_FAILED and stats.failed == {"request_too_large": 1}
    (record,) = read_results(tmp_path / "out.jsonl")
    assert "Limit: 3 enqueued tokens" in record["error"]["message"]
    assert sim.batches.stats.created == 1


def test_a_provider_that_never_answers_stops_the_run_resumably_after_ten_minutes(loop, tmp_path):
    from runner.batch.run import CALL_GIVE_UP_S
    from runner.errors import APIConnectionError
    write_jobs(tmp_path / "in.jsonl", 5, kinds=("chat",))
    calls = []

    async def send(request):
        calls.append(loop.time())
        raise APIConnectionError("connection refused")

    config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                            endpoint=Endpoint(base_url="http://127.0.0.1:9/v1", api_key=KEY))
    started = loop.time()
    stats = loop.run_until_complete(run_batch(config, send=send, progress=False,
                                              handle_signals=False, log=lambda m: None))
    assert stats.exit_code() == EXIT_STOPPED and "no usable answer for 600 s" in stats.stop_reason
    assert CALL_GIVE_UP_S <= loop.time() - started < CALL_GIVE_UP_S + 310
    assert 5 < len(calls) < 60  # backed off, not hammered
    assert len(read_state(tmp_path / "out.jsonl").open_chunks()) == 1  # planned, resumable


def test_responses_and_moderations_jobs_run_through_batches_too(loop, tmp_path, sim_factory):
    from runner.simulator.responses import moderation_result
    from runner.simulator.answers import completion_text
    jobs = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
             "body": {"model": "gpt-4o-mini", "input": f"question {i}"}} for i in range(10)]
    jobs += [{"custom_id": f"m{i}", "method": "POST", "url": "/v1/moderations",
              "body": {"model": "omni-moderation-latest", "input": f"text number {i}"}}
             for i in range(50)]
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    sim = sim_factory(SimConfig(fault_rate=0.2, faults=("500", "missing_choice"), seed=8))
    stats = run(loop, sim, tmp_path, max_attempts=10)
    assert stats.exit_code() == EXIT_OK
    records = {r["custom_id"]: r for r in read_results(tmp_path / "out.jsonl")}
    assert len(records) == 60
    for i in range(10):
        output = records[f"r{i}"]["response"]["body"]["output"]
        assert output[0]["content"][0]["text"] == completion_text(f"question {i}", 0)
    for i in range(50):
        assert records[f"m{i}"]["response"]["body"]["results"] == [moderation_result(f"text number {i}")]
    assert {b["endpoint"] for b in sim.batches.batches.values()} == {"/v1/responses", "/v1/moderations"}
    assert stats.batch_lines < 60  # the moderations were packed


def test_a_job_larger_than_a_whole_batch_file_fails_alone_and_the_rest_runs(loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 12)
    big = jobs[4]  # a completions job, packed with others until the pack is found too large
    assert big["url"] == "/v1/completions"
    big["body"]["prompt"] = "x" * 3000
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    sim = sim_factory()
    stats = run(loop, sim, tmp_path, max_bytes=2048)
    assert stats.exit_code() == EXIT_SOME_FAILED
    records = read_results(tmp_path / "out.jsonl")
    [failed] = [r for r in records if r["error"]]
    assert failed["custom_id"] == big["custom_id"]
    assert failed["error"]["code"] == "request_too_large"
    assert "over the batch file limit of 2,048 bytes" in failed["error"]["message"]
    assert_exactly_once([j for j in jobs if j is not big], [r for r in records if not r["error"]])
    assert stats.failed["request_too_large"] == 1 and stats.succeeded == 11


def test_a_custom_id_with_the_pack_prefix_is_a_bad_line_and_cannot_take_a_packs_answer(
        loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 12, kinds=("completions",))
    jobs[5]["custom_id"] = "runner-pack-1-job 0/ü"  # the id the first pack line gets ...
    jobs[5]["body"]["max_tokens"] = 7  # ... in the same file, on a line of its own
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    sim = sim_factory()
    logs = []
    stats = run(loop, sim, tmp_path, log=logs.append)
    assert stats.bad_lines == 1
    assert f"{tmp_path / 'in.jsonl'}:6: custom_id 'runner-pack-1-job 0/ü' starts with " \
           "'runner-pack-'" in "\n".join(logs)
    records = read_results(tmp_path / "out.jsonl")
    assert_exactly_once([j for j in jobs if j is not jobs[5]], records)


@pytest.mark.parametrize("kill_at", ["close", "write"])
def test_a_batch_refused_at_create_gets_its_failure_lines_once_across_a_kill(
        loop, tmp_path, sim_factory, monkeypatch, kill_at):
    from runner.batch import run as batch_run
    from runner.batch.state import BatchState
    jobs = write_jobs(tmp_path / "in.jsonl", 5, kinds=("chat",))
    sim = sim_factory()

    def main():
        return run_intercepted(loop, sim, tmp_path, refuse_creates(400, "invalid_batch",
                                                                   "this batch is not acceptable"))

    real_close, real_sink = BatchState.close_chunk, batch_run._Engine.sink

    def close_chunk(self, *args, **kwargs):
        raise Killed

    def sink(self, record):
        if record["error"] is not None:
            raise Killed
        real_sink(self, record)

    if kill_at == "close":
        monkeypatch.setattr(BatchState, "close_chunk", close_chunk)
    else:
        monkeypatch.setattr(batch_run._Engine, "sink", sink)
    with pytest.raises(Killed):
        loop.run_until_complete(main())
    monkeypatch.setattr(BatchState, "close_chunk", real_close)
    monkeypatch.setattr(batch_run._Engine, "sink", real_sink)
    stats = loop.run_until_complete(main())
    assert stats.exit_code() == EXIT_SOME_FAILED
    records = read_results(tmp_path / "out.jsonl")
    assert sorted(r["custom_id"] for r in records) == sorted(j["custom_id"] for j in jobs)
    assert {r["error"]["code"] for r in records} == {"invalid_batch"}
    assert not read_state(tmp_path / "out.jsonl").open_chunks()


def test_shards_through_the_batch_api_then_merge_run_every_job_exactly_once(
        loop, tmp_path, sim_factory):
    jobs = write_jobs(tmp_path / "in.jsonl", 90)
    sim = sim_factory()
    records = []
    for k in (1, 2, 3):
        config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / f"{k}.jsonl",
                                endpoint=Endpoint(base_url=sim.base_url, api_key=KEY),
                                poll_every=1.0, shard=Shard(k, 3))
        stats = loop.run_until_complete(run_batch(config, progress=False, handle_signals=False,
                                                  log=lambda m: None))
        assert stats.exit_code() == EXIT_OK
        shard = read_results(tmp_path / f"{k}.jsonl")
        assert 15 < len(shard) < 45 and stats.jobs == len(shard)  # its own share, no more
        records += shard
    assert_exactly_once(jobs, records)
    assert not ran_twice(sim)


@pytest.mark.parametrize("status, code, exit_code, failed_lines", [
    (401, "invalid_api_key", EXIT_STOPPED, 0),  # the key is refused: stop, resumable, no job failed
    (503, "server_error", EXIT_STOPPED, 0),  # never an answer: given up after a while, resumable
])
def test_a_create_refused_for_the_key_or_never_answered_stops_the_run_and_fails_no_job(
        loop, tmp_path, sim_factory, status, code, exit_code, failed_lines):
    write_jobs(tmp_path / "in.jsonl", 5, kinds=("chat",))
    sim = sim_factory()
    stats = loop.run_until_complete(run_intercepted(loop, sim, tmp_path,
                                                    refuse_creates(status, code, "no")))
    assert stats.exit_code() == exit_code
    out = tmp_path / "out.jsonl"
    assert (out.read_bytes().count(b"\n") if out.exists() else 0) == failed_lines
    assert sim.batches.stats.created == 0


def test_a_create_with_no_clear_answer_whose_lookup_fails_stops_rather_than_fail_its_jobs(
        loop, tmp_path, sim_factory):
    # The create may have worked (its answer was lost); looking for it fails: its jobs must not
    # be judged refused (failure lines, then a second batch on the next run: paid twice).
    write_jobs(tmp_path / "in.jsonl", 5, kinds=("chat",))
    sim = sim_factory()

    def unclear(request):
        if request.method == "POST" and request.url.endswith("/batches"):
            return HttpResponse(503, {}, b'{"error": {"message": "busy", "code": null}}')
        if request.method == "GET" and "/batches?" in request.url:
            return HttpResponse(404, {}, b'{"error": {"message": "no list here", "code": null}}')
        return None

    stats = loop.run_until_complete(run_intercepted(loop, sim, tmp_path, unclear))
    assert stats.exit_code() == EXIT_STOPPED and "cannot tell whether" in stats.stop_reason
    assert "runner cancel" in stats.stop_reason  # the way on, for a provider that cannot list
    out = tmp_path / "out.jsonl"
    assert not out.exists() or out.read_bytes() == b""
    again = loop.run_until_complete(run_intercepted(loop, sim, tmp_path, unclear))
    assert again.exit_code() == EXIT_STOPPED and "runner cancel" in again.stop_reason
    loop.run_until_complete(run_intercepted(loop, sim, tmp_path, unclear, cancel=True))
    stats = loop.run_until_complete(run_intercepted(loop, sim, tmp_path, lambda request: None))
    assert stats.exit_code() == EXIT_OK and sim.batches.stats.created == 1


def test_a_download_that_cannot_be_written_stops_the_run_and_leaves_no_partial_file(
        loop, tmp_path, sim_factory, monkeypatch):
    from runner.batch.client import BatchClient
    from runner.errors import StopRunError
    write_jobs(tmp_path / "in.jsonl", 5, kinds=("chat",))
    sim = sim_factory()

    async def full_disk(self, file_id, path):
        path.write_bytes(b'{"custom_id": "half')  # part of it, then the disk is full
        raise StopRunError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(BatchClient, "content_to", full_disk)
    stats = loop.run_until_complete(run_intercepted(loop, sim, tmp_path, lambda request: None))
    assert stats.exit_code() == EXIT_STOPPED and "No space left" in stats.stop_reason
    assert not list((tmp_path / "out.jsonl.batches.d").glob("*.download"))
    assert read_state(tmp_path / "out.jsonl").open_chunks()  # still open: collected on resume
    monkeypatch.undo()
    stats = loop.run_until_complete(run_intercepted(loop, sim, tmp_path, lambda request: None))
    assert stats.exit_code() == EXIT_OK and sim.batches.stats.created == 1  # not paid twice


def test_a_chunk_whose_file_is_gone_before_its_upload_has_its_jobs_planned_again(
        loop, tmp_path, sim_factory, monkeypatch):
    from runner.batch import state as batch_state
    planned = batch_state.BatchState.plan

    def plan(self, chunk, data):
        planned(self, chunk, data)
        if chunk.chunk == "c00002":
            self.chunk_file(chunk.chunk).unlink()  # gone between planning and uploading

    monkeypatch.setattr(batch_state.BatchState, "plan", plan)
    jobs = write_jobs(tmp_path / "in.jsonl", 30, kinds=("chat",))
    stats = run(loop, sim_factory(), tmp_path, max_requests=12)
    assert stats.exit_code() == EXIT_OK
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_a_chunk_whose_file_goes_between_upload_attempts_is_planned_again_not_a_crash(
        loop, tmp_path, sim_factory):
    from pathlib import Path
    jobs = write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    calls = []

    def look(request):
        if request.method == "POST" and request.url.endswith("/files") and not calls:
            calls.append(1)
            Path(request.body.path).unlink()
            return HttpResponse(503, {}, b'{"error": {"message": "busy"}}')
        return None

    stats = loop.run_until_complete(run_intercepted(loop, sim_factory(), tmp_path, look))
    assert calls and stats.exit_code() == EXIT_OK
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_with_no_wait_a_chunk_given_up_before_its_upload_leaves_the_run_in_progress(
        loop, tmp_path, sim_factory, monkeypatch):
    from runner.batch import state as batch_state
    planned = batch_state.BatchState.plan

    def plan(self, chunk, data):
        planned(self, chunk, data)
        if chunk.chunk == "c00001":
            self.chunk_file(chunk.chunk).unlink()

    monkeypatch.setattr(batch_state.BatchState, "plan", plan)
    jobs = write_jobs(tmp_path / "in.jsonl", 6, kinds=("chat",))
    sim = sim_factory()
    first = run(loop, sim, tmp_path, wait=False)
    assert first.exit_code() == EXIT_IN_PROGRESS  # not 0: its jobs have no line yet
    monkeypatch.undo()
    assert run(loop, sim, tmp_path).exit_code() == EXIT_OK
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
