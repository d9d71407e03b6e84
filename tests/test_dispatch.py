"""The dispatcher on virtual time with a scripted `send`: every job gets exactly its own result."""
import asyncio

import aiohttp
import orjson
import pytest

from jobs.job import Job
from jobs.reader import BadLine, Duplicate
from jobs.results import OutputState
from runner.clock import run_virtual
from runner.live.dispatch import DispatchConfig, Dispatcher, Slots
from runner.api.endpoint import Endpoint
from runner.pacing.limiters import Limiters
from runner.outcome import RATE_LIMIT_STALL_S, Backoff
from runner.simulator.answers import chat_prompt, completion_text
from runner.api.transport import HttpResponse
from tests.conftest import Script, error, ok, success_record

BASE = "http://api.test/v1"


def chat_job(i, content=None, **extra):
    return Job(f"job {i}", "/v1/chat/completions",
               {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content or f"question {i}"}],
                **extra}, i + 1)


async def items_of(seq):
    for item in seq:
        yield item


def dispatch(items, script, *, state=None, rpm=None, tpm=None, config=None, log=None):
    """Run a Dispatcher on virtual time; returns (records by custom_id list, stats, dispatcher)."""
    records = []

    async def main():
        limiters = Limiters(rpm=rpm, tpm=tpm, burst_s=1.0)
        d = Dispatcher(send=script, endpoint=Endpoint(base_url=BASE, api_key="sk-test"),
                       limiters=limiters, sink=records.append,
                       config=config or DispatchConfig(max_attempts=4, concurrency=16),
                       backoff=Backoff(rng=__import__("random").Random(1)),
                       log=(log.append if log is not None else (lambda m: None)))
        stats = await d.run(items_of(items), state or OutputState())
        return stats, d

    stats, d = run_virtual(main())
    return records, stats


def by_id(records):
    out = {}
    for r in records:
        out.setdefault(r["custom_id"], []).append(r)
    return out


def own_content(record):
    return record["response"]["body"]["choices"][0]["message"]["content"]


def test_every_job_gets_exactly_its_own_answer_through_faults():
    jobs = [chat_job(i) for i in range(60)]

    attempts = {}

    def rule(n, req, body):  # jobs meet a fault on their first two attempts, by job number
        content = body["messages"][0]["content"]
        attempt = attempts[content] = attempts.get(content, 0) + 1
        kind = int(content.split()[-1]) % 5 if attempt <= 2 else 4
        if kind == 0:
            return error(500, None, type_="server_error")
        if kind == 1:
            return aiohttp.ServerDisconnectedError()
        if kind == 2:
            return HttpResponse(200, {}, b'{"choices": [{"ind')
        if kind == 3:
            return HttpResponse(200, {}, orjson.dumps({"choices": []}))
        return None

    script = Script(rule)
    records, stats = dispatch(jobs, script)
    results = by_id(records)
    assert sorted(results) == sorted(j.custom_id for j in jobs)
    for job in jobs:
        [record] = results[job.custom_id]
        assert record["error"] is None and record["response"]["status_code"] == 200
        assert own_content(record) == completion_text(chat_prompt(job.body["messages"]), 0)
    assert stats.succeeded == 60 and stats.retries > 0 and stats.exit_code() == 0


def test_body_is_sent_unchanged_to_the_endpoint_url_with_the_key():
    job = chat_job(1, temperature=0.3, seed=4)
    script = Script()
    dispatch([job], script)
    [(_, req, body)] = script.calls
    assert req.url == BASE + "/chat/completions" and body == job.body
    assert req.headers["Authorization"] == "Bearer sk-test"


def test_a_400_fails_the_job_at_once_without_retry():
    script = Script(lambda n, req, body: error(400, "invalid_value", "bad temperature"))
    records, stats = dispatch([chat_job(1)], script)
    assert len(script.calls) == 1
    [record] = records
    assert record["error"]["code"] == "invalid_value" and record["response"]["status_code"] == 400
    assert record["response"]["body"]["error"]["message"] == "bad temperature"
    assert stats.exit_code() == 1


def test_transient_failures_that_outlast_max_attempts_are_written_as_transient():
    script = Script(lambda n, req, body: error(503, None, "overloaded", type_="server_error"))
    records, stats = dispatch([chat_job(1)], script, config=DispatchConfig(max_attempts=3))
    assert len(script.calls) == 3
    [record] = records
    assert record["error"]["code"] == "server_error" and "3 requests" in record["error"]["message"]
    state = OutputState()
    state.add(record)
    assert state.needs_run("job 1")  # a later run retries it


def test_quota_stops_the_run_and_writes_nothing_for_unfinished_jobs():
    quota = error(429, "insufficient_quota", "You exceeded your current quota", type_="insufficient_quota")
    script = Script(lambda n, req, body: quota if n > 5 else None, latency=0.01)
    jobs = [chat_job(i) for i in range(100)]
    records, stats = dispatch(jobs, script, config=DispatchConfig(concurrency=1))
    assert stats.stop_reason and "insufficient_quota" in stats.stop_reason
    assert stats.exit_code() == 3
    assert len(records) == 5 and all(r["error"] is None for r in records)


def test_rejected_key_stops_the_run():
    script = Script(lambda n, req, body: error(401, "invalid_api_key", "Incorrect API key provided: sk-te***st"))
    records, stats = dispatch([chat_job(i) for i in range(10)], script)
    assert stats.exit_code() == 3 and records == [] and "invalid_api_key" in stats.stop_reason


def test_429_waits_exactly_as_the_server_says_then_succeeds():
    limited = error(429, "rate_limit_exceeded", "Rate limit reached", headers={"retry-after-ms": "1500"},
                    type_="requests")
    script = Script(lambda n, req, body: limited if n == 1 else None)
    records, stats = dispatch([chat_job(1)], script)
    (t1, *_), (t2, *_) = script.calls
    assert t2 - t1 == pytest.approx(1.5, abs=0.01)
    assert stats.rate_limited == 1 and records[0]["error"] is None


def test_a_job_meeting_paced_429s_for_longer_than_the_stall_limit_succeeds_while_others_succeed():
    """Rule: paced 429s never count against --max-attempts while the run has a success within
    RATE_LIMIT_STALL_S; here one job meets 40 429s over 1,200 s (retry-after 30 s) on its own
    model while another model's jobs succeed every 10 s."""
    limited = error(429, "rate_limit_exceeded", "Rate limit reached", headers={"retry-after": "30"},
                    type_="requests")
    stubborn = chat_job(0, "stubborn")
    stubborn.body["model"] = "gpt-4o"
    script = Script(lambda n, req, body: limited if body["model"] == "gpt-4o" and
                    sum(b["model"] == "gpt-4o" for _, _, b in script.calls) <= 40 else None)
    others = [chat_job(i) for i in range(1, 131)]
    records, stats = dispatch([stubborn, *others], script, rpm=6, config=DispatchConfig(max_attempts=2))
    results = by_id(records)
    assert stats.rate_limited == 40 > 4 * 2 and stats.stop_reason is None
    assert results["job 0"][0]["error"] is None and stats.succeeded == 131
    assert script.calls[-1][0] > RATE_LIMIT_STALL_S * 3


def test_a_gateways_429s_without_a_delay_never_use_up_a_jobs_attempts():
    # LiteLLM on /v1/completions: a 429 with no retry-after and no rate-limit header; before,
    # each counted as an attempt ("gave up after 6 requests")
    bare = error(429, "429", "Rate limit exceeded for model_per_key: k:m.", type_="None")
    script = Script(lambda n, req, body: bare if n <= 10 else None)
    records, stats = dispatch([chat_job(1)], script, config=DispatchConfig(max_attempts=2))
    assert stats.rate_limited == 10 and len(script.calls) == 11
    assert [r["error"] for r in records] == [None]


def test_the_reset_time_a_gateway_writes_in_its_429_message_is_waited_out():
    # measured from the answer's date header: the run's clock and the server's may disagree
    limited = error(429, "429", "Rate limit exceeded for model_per_key: k:m. Limit type: "
                    "requests. Current limit: 60, Remaining: 0. Limit resets at: "
                    "2026-12-07 12:41:08 UTC", headers={"date": "Mon, 07 Dec 2026 12:40:48 GMT"},
                    type_="None")
    script = Script(lambda n, req, body: limited if n == 1 else None)
    records, stats = dispatch([chat_job(1)], script)
    (t1, *_), (t2, *_) = script.calls
    assert t2 - t1 == pytest.approx(20.0, abs=0.01)
    assert stats.rate_limited == 1 and records[0]["error"] is None


def test_a_server_answering_only_429s_stops_the_run_after_the_stall_limit():
    limited = error(429, "rate_limit_exceeded", "Rate limit reached", headers={"retry-after": "20"},
                    type_="requests")
    script = Script(lambda n, req, body: limited)
    records, stats = dispatch([chat_job(i) for i in range(50)], script, rpm=60,
                              config=DispatchConfig(max_attempts=2))
    assert records == [] and stats.exit_code() == 3  # resumable: no job is failed for pacing
    assert stats.stop_reason.startswith("rate_limit_exceeded: only 429s and no success anywhere in the run")
    assert RATE_LIMIT_STALL_S <= stats.finished - stats.started <= RATE_LIMIT_STALL_S + 30
    assert stats.rate_limited > 4 * 2


def test_resume_skips_done_and_permanently_failed_jobs_without_calls():
    state = OutputState()
    state.add(success_record("job 0", {}, request_id=None))
    state.add({"custom_id": "job 1", "response": {"status_code": 400}, "error": {"code": "invalid_request", "message": ""}})
    script = Script()
    records, stats = dispatch([chat_job(0), chat_job(1), chat_job(2)], script, state=state)
    assert [body["messages"][0]["content"] for _, _, body in script.calls] == ["question 2"]
    assert stats.already_done == 1 and stats.kept_failed == 1 and stats.exit_code() == 1


def test_retry_failed_reruns_permanent_failures():
    state = OutputState()
    state.add({"custom_id": "job 1", "response": {"status_code": 400}, "error": {"code": "invalid_request", "message": ""}})
    script = Script()
    records, stats = dispatch([chat_job(1)], script, state=state,
                              config=DispatchConfig(retry_failed=True))
    assert len(script.calls) == 1 and stats.exit_code() == 0


def test_bad_lines_and_duplicates_are_reported_and_the_rest_runs():
    log = []
    dup = Duplicate("in.jsonl", 3, 1, "job 0")
    bad = BadLine("in.jsonl", 2, "not JSON: 'x'")
    records, stats = dispatch([chat_job(0), bad, dup, chat_job(5)], Script(), log=log)
    assert "in.jsonl:2: not JSON: 'x'" in log and str(dup) in log
    codes = [r["error"]["code"] if r["error"] else "ok" for r in records]
    assert sorted(codes) == ["duplicate_custom_id", "ok", "ok"]
    assert stats.exit_code() == 1


def test_prompt_over_the_context_window_fails_without_a_call():
    huge = "word " * 140_000
    script = Script()
    records, _ = dispatch([chat_job(1, content=huge)], script)
    assert script.calls == [] and records[0]["error"]["code"] == "context_length_exceeded"


def test_rpm_pacing_on_virtual_time():
    script = Script()
    jobs = [chat_job(i) for i in range(31)]
    dispatch(jobs, script, rpm=600, tpm=10_000_000)  # 10/s, 1 s burst = 10 at once
    times = sorted(t for t, *_ in script.calls)
    assert times[9] == pytest.approx(0.0, abs=1e-6)
    assert times[30] == pytest.approx(2.1, abs=1e-3)


def test_stop_gives_requests_on_the_wire_a_grace_period_and_drops_the_rest():
    records = []

    async def main():
        script = Script(latency=2.0)
        d = Dispatcher(send=script, endpoint=Endpoint(base_url=BASE, api_key="k"),
                       limiters=Limiters(rpm=60, tpm=None, burst_s=1.0), sink=records.append,
                       config=DispatchConfig(concurrency=4, grace_s=5.0))
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, d.stop, "interrupted by SIGTERM")
        stats = await d.run(items_of([chat_job(i) for i in range(50)]), OutputState())
        return stats, loop.time()

    stats, ended = run_virtual(main())
    assert stats.stop_reason == "interrupted by SIGTERM" and stats.exit_code() == 3
    # one request fits the 1 s burst at t=0; the stop at t=1 comes before the budget admits the
    # next (timers due at the same virtual time run in the order they were set): one answer
    assert len(records) == 1 and records[0]["error"] is None
    assert ended == pytest.approx(2.0, abs=0.01)


def test_stop_cancels_answers_that_outlast_the_grace_period():
    records = []

    async def main():
        d = Dispatcher(send=Script(latency=600.0), endpoint=Endpoint(base_url=BASE, api_key="k"),
                       limiters=Limiters(rpm=None, tpm=None), sink=records.append,
                       config=DispatchConfig(grace_s=5.0))
        asyncio.get_running_loop().call_later(1.0, d.stop, "interrupted")
        await d.run(items_of([chat_job(i) for i in range(3)]), OutputState())
        return asyncio.get_running_loop().time()

    assert run_virtual(main()) == pytest.approx(6.0, abs=0.01)
    assert records == []


async def test_slots_limit_can_change_while_held_and_survive_cancellation():
    slots = Slots(1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    cancelled = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    cancelled.cancel()
    slots.set_limit(2)
    await waiter
    assert slots.used == 2
    await asyncio.gather(cancelled, return_exceptions=True)
    slots.release()
    slots.release()
    assert slots.used == 0


def comp_job(i, prompt=None):
    return Job(f"c{i}", "/v1/completions",
               {"model": "gpt-3.5-turbo-instruct", "prompt": prompt or f"prompt number {i:04d}", "max_tokens": 8}, i + 1)


def test_partial_packs_are_sent_as_soon_as_the_input_pauses():
    async def slow_items():
        for i in range(3):
            yield comp_job(i)
        await asyncio.sleep(10.0)  # a slow writer on stdin
        for i in range(3, 6):
            yield comp_job(i)

    script = Script()
    records = []

    async def main():
        d = Dispatcher(send=script, endpoint=Endpoint(base_url=BASE, api_key="k"),
                       limiters=Limiters(rpm=600, tpm=1_000_000), sink=records.append)
        return await d.run(slow_items(), OutputState())

    run_virtual(main())
    (t1, _, first), (t2, _, second) = script.calls
    assert t1 < 0.1 and first["prompt"] == [f"prompt number {i:04d}" for i in range(3)]
    assert 10.0 <= t2 < 10.1 and len(second["prompt"]) == 3
    assert len(records) == 6 and all(r["error"] is None for r in records)


def test_a_pack_found_too_large_for_the_learned_tpm_is_split_not_failed():
    def rule(n, req, body):  # the server announces a small TPM on its first answer
        path = req.url.split("?")[0]
        return ok(path, body, headers={"x-ratelimit-limit-tokens": "400", "x-ratelimit-limit-requests": "6000"})

    script = Script(rule)
    records, stats = dispatch([comp_job(i) for i in range(128)], script)  # limits unknown: packs of 64
    assert all(r["error"] is None for r in records) and len(records) == 128
    sizes = [len(body["prompt"]) if isinstance(body["prompt"], list) else 1 for _, _, body in script.calls]
    assert sizes[0] == 64 and max(sizes[1:]) * 14 <= 400
    assert sum(sizes) == 128


def test_a_refusal_naming_another_field_fails_the_whole_pack_without_bisecting():
    refusal = error(400, "invalid_value", "temperature too high")
    refusal = refusal.__class__(400, {}, orjson.dumps({"error": {"message": "bad", "type": "invalid_request_error",
                                                                 "param": "temperature", "code": "invalid_value"}}))
    script = Script(lambda n, req, body: refusal)
    records, stats = dispatch([comp_job(i) for i in range(20)], script, rpm=600, tpm=1_000_000)
    assert len(script.calls) == 1 and stats.bisect_requests == 0
    assert len(records) == 20 and {r["error"]["code"] for r in records} == {"invalid_value"}


def test_an_unreadable_input_stops_the_run_instead_of_hanging():
    async def broken_items():
        yield chat_job(0)
        raise OSError(5, "Input/output error")

    script = Script()
    records = []

    async def main():
        d = Dispatcher(send=script, endpoint=Endpoint(base_url=BASE, api_key="k"),
                       limiters=Limiters(rpm=600, tpm=None), sink=records.append)
        return await d.run(broken_items(), OutputState())

    stats = run_virtual(main())
    assert stats.exit_code() == 3 and "cannot read the input" in stats.stop_reason
    assert "Input/output error" in stats.stop_reason


def test_an_output_that_cannot_be_written_stops_the_run_once_resumably():
    from runner.files.checkpoint import CheckpointError
    log = []

    def sink(record):
        raise CheckpointError("cannot write to the output out.jsonl: No space left on device")

    async def main():
        d = Dispatcher(send=Script(), endpoint=Endpoint(base_url=BASE, api_key="k"),
                       limiters=Limiters(rpm=None, tpm=None), sink=sink, log=log.append,
                       config=DispatchConfig(concurrency=4))
        return await d.run(items_of([chat_job(i) for i in range(20)]), OutputState())

    stats = run_virtual(main())
    assert stats.exit_code() == 3 and "No space left" in stats.stop_reason
    assert sum("No space left" in line for line in log) == 1


def test_a_refusal_shared_by_every_job_is_not_bisected():
    unknown = HttpResponse(400, {}, orjson.dumps({"error": {
        "message": "Unrecognized request argument supplied: foo", "type": "invalid_request_error",
        "param": None, "code": None}}))
    script = Script(lambda n, req, body: unknown)
    records, stats = dispatch([comp_job(i) for i in range(40)], script, rpm=600, tpm=1_000_000)
    assert len(script.calls) == 1 and stats.bisect_requests == 0 and len(records) == 40


def test_a_prompt_level_refusal_is_bisected_to_the_guilty_job():
    def rule(n, req, body):
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        if any("0007" in p for p in prompts):
            return HttpResponse(400, {}, orjson.dumps({"error": {
                "message": "maximum context length", "type": "invalid_request_error",
                "param": "prompt", "code": "context_length_exceeded"}}))
        return None

    script = Script(rule)
    records, stats = dispatch([comp_job(i) for i in range(16)], script, rpm=6000, tpm=10_000_000)
    failed = [r["custom_id"] for r in records if r["error"]]
    assert failed == ["c7"] and len(records) == 16
    assert stats.bisect_requests == 8  # two halves at each of log2(16) levels


async def test_a_slot_granted_to_a_waiter_cancelled_at_that_moment_passes_on():
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()      # granted to `first` ...
    first.cancel()       # ... which is cancelled before it runs again
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)  # the slot went on to `second`
    assert slots.used == 1


def test_concurrency_caps_requests_in_flight_across_all_models_together():
    in_flight = [0, 0]  # now, max

    async def send(req):
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            await asyncio.sleep(1.0)
            return ok("/v1/chat/completions", orjson.loads(req.body))
        finally:
            in_flight[0] -= 1

    jobs = [Job(f"j{i}", "/v1/chat/completions",
                {"model": f"model-{i % 4}", "messages": [{"role": "user", "content": f"q{i}"}]}, i + 1)
            for i in range(200)]
    records, stats = dispatch(jobs, send, rpm=60_000, tpm=None, config=DispatchConfig(concurrency=16))
    assert len(records) == 200 and stats.exit_code() == 0
    assert in_flight[1] == 16


def test_a_partial_answer_keeps_the_jobs_answered_and_sends_only_the_others_again():
    from jobs.job import Job as J
    jobs = [J(f"c{i}", "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": f"p{i}",
                                          "n": 2, "max_tokens": 3}, i + 1) for i in range(4)]
    sent = []

    def rule(n, req, body):
        sent.append(body["prompt"])
        if n == 1:
            answer = orjson.loads(ok("/v1/completions", body).body)
            answer["choices"] = [c for c in answer["choices"] if c["index"] != 5]  # p2's second
            return HttpResponse(200, {}, orjson.dumps(answer))
        return None
    log = []
    records, stats = dispatch(jobs, Script(rule), log=log)
    assert sent[0] == ["p0", "p1", "p2", "p3"] and sent[1:] == ["p2"]  # only c2 again
    assert sorted(r["custom_id"] for r in records) == ["c0", "c1", "c2", "c3"]
    assert all(r["error"] is None and len(r["response"]["body"]["choices"]) == 2 for r in records)
    assert stats.partial_answers == 1 and not stats.packing_off
    assert any("lacked the choices of 1" in m for m in log)
