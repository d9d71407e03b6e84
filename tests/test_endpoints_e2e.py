"""Responses, moderations and the classifier case end to end against the simulator, on virtual time."""

import orjson
import pytest

from jobs.job import Job
from jobs.packing import MissingChoices, pack, split_response
from runner.api.endpoint import Endpoint
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.outcome import Action, classify
from runner.simulator.responses import moderation_result, response_answer
from runner.simulator.answers import completion_logprobs, completion_text
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator


def write(path, jobs):
    path.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))


def run_file(loop, tmp_path, jobs, sim_config, *, rpm=600, tpm=1_000_000, retry_failed=False):
    write(tmp_path / "in.jsonl", jobs)
    out = tmp_path / "out.jsonl"

    async def main():
        async with Simulator(sim_config, clock=loop.time) as sim:
            stats = await run(RunConfig(input=str(tmp_path / "in.jsonl"), output=out,
                                        endpoint=Endpoint(base_url=sim.base_url, api_key="k"),
                                        rpm=rpm, tpm=tpm,
                                        dispatch=DispatchConfig(max_attempts=10,
                                                                retry_failed=retry_failed)),
                              progress=False, handle_signals=False, log=lambda m: None)
        return stats, sim

    stats, sim = loop.run_until_complete(main())
    records = {}
    for line in out.read_bytes().splitlines():
        record = orjson.loads(line)
        records[record["custom_id"]] = record
    return records, stats, sim


def responses_job(i, **extra):
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
            "body": {"model": "gpt-4o-mini", "input": f"question {i}", **extra}}


def test_each_responses_job_gets_its_own_answer_and_usage_is_counted(loop, tmp_path):
    jobs = [responses_job(i) for i in range(40)]
    jobs.append({"custom_id": "items", "method": "POST", "url": "/v1/responses",
                 "body": {"model": "gpt-4o-mini", "instructions": "be brief",
                          "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}})
    sim = SimConfig(rpm=600, tpm=1_000_000, burst_s=2, fault_rate=0.2, faults=("500", "truncated"), seed=3)
    records, stats, server = run_file(loop, tmp_path, jobs, sim)
    assert stats.exit_code() == 0 and len(records) == 41
    for i in range(40):
        body = records[f"r{i}"]["response"]["body"]
        assert body["output"][0]["content"][0]["text"] == completion_text(f"question {i}", 0)
    assert records["items"]["response"]["body"]["output"][0]["content"][0]["text"] == \
        completion_text("be briefhi", 0)
    usage = stats.usage["gpt-4o-mini"]
    assert usage.jobs == 41 and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert server.stats.faults and stats.retries > 0


def test_incomplete_for_max_output_tokens_is_a_success_and_failed_is_retried_then_written(loop, tmp_path):
    long_answer = {"custom_id": "cut", "method": "POST", "url": "/v1/responses",
                   "body": {"model": "o4-mini", "input": "x", "max_output_tokens": 16}}
    failed = responses_job(1, instructions="<<fail>>")
    records, stats, _ = run_file(loop, tmp_path, [long_answer, failed], SimConfig())
    cut = records["cut"]
    assert cut["error"] is None
    assert cut["response"]["body"]["status"] == "incomplete"
    assert cut["response"]["body"]["incomplete_details"] == {"reason": "max_output_tokens"}
    bad = records["r1"]
    assert bad["error"]["code"] == "server_error" and "gave up after 10 requests" in bad["error"]["message"]
    assert bad["response"]["body"]["status"] == "failed"


@pytest.mark.parametrize("body, action, code", [
    ({"object": "response", "status": "completed"}, Action.OK, "ok"),
    ({"object": "response", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}, Action.OK, "ok"),
    ({"object": "response", "status": "incomplete", "incomplete_details": {"reason": "content_filter"}}, Action.FAIL_JOB, "content_filter"),
    ({"object": "response", "status": "failed", "error": {"code": "server_error", "message": "m"}}, Action.RETRY, "server_error"),
    ({"object": "response", "status": "failed", "error": {"code": "invalid_prompt", "message": "m"}}, Action.FAIL_JOB, "invalid_prompt"),
    ({"object": "response", "status": "in_progress"}, Action.FAIL_JOB, "unexpected_status"),
    ({"object": "list", "status": "failed"}, Action.OK, "ok"),  # not a Responses object
])
def test_classify_reads_the_responses_api_status(body, action, code):
    verdict = classify(200, {}, body)
    assert (verdict.action, verdict.code) == (action, code)


def test_responses_usage_reads_cached_and_reasoning_tokens():
    from runner.report.stats import RunStats
    stats = RunStats()
    body = response_answer("o3", "y" * 5000, None, response_id="r", created=0)
    stats.add_usage("o3", body["usage"])
    usage = stats.usage["o3"]
    assert usage.prompt_tokens == 1250 and usage.cached_tokens == 625 and usage.reasoning_tokens == 64


# -- moderations -----------------------------------------------------------------------------------

def moderation_job(i):
    return {"custom_id": f"m{i}", "method": "POST", "url": "/v1/moderations",
            "body": {"model": "omni-moderation-latest", "input": f"text number {i}"}}


def test_moderations_are_packed_and_each_job_gets_the_result_at_its_position(loop, tmp_path):
    jobs = [moderation_job(i) for i in range(300)]
    sim = SimConfig(rpm=600, tpm=20_000, burst_s=2, fault_rate=0.3, faults=("missing_choice",), seed=5)
    records, stats, server = run_file(loop, tmp_path, jobs, sim, tpm=20_000)
    assert stats.exit_code() == 0 and len(records) == 300
    for i in range(300):
        [result] = records[f"m{i}"]["response"]["body"]["results"]
        assert result == moderation_result(f"text number {i}")
    assert stats.requests < 60  # packed
    assert server.stats.faults["missing_choice"] > 0 and stats.retries > 0  # short answers retried whole


def test_a_moderation_answer_with_a_result_missing_is_refused_never_shifted():
    jobs = [Job(f"m{i}", "/v1/moderations", {"model": "omni-moderation-latest", "input": f"t{i}"}, i + 1)
            for i in range(3)]
    request = pack(jobs, 3)
    results = [moderation_result("t0"), moderation_result("t2")]  # the middle one dropped
    with pytest.raises(MissingChoices, match="2 results for 3 inputs"):
        split_response(request, {"id": "modr", "model": "m", "results": results})


def test_moderations_without_a_model_are_valid_and_priced_free():
    from jobs.reader import parse_line
    from runner.report.prices import packaged_prices
    job = parse_line(b'{"custom_id":"a","url":"/v1/moderations","body":{"input":"x"}}', 1, "f")
    assert isinstance(job, Job) and job.model == "omni-moderation-latest"
    assert packaged_prices().cost("omni-moderation-latest", 1000, 0) == 0.0


# -- the classifier case ---------------------------------------------------------------------------

def classifier_job(i, bias):
    return {"custom_id": f"k{i}", "method": "POST", "url": "/v1/completions",
            "body": {"model": "ft:babbage-002:acme:cls:1", "prompt": f"review {i} ->", "max_tokens": 1,
                     "logprobs": 2, "temperature": 0, "logit_bias": bias}}


def test_packed_classifier_jobs_get_their_own_logprobs_and_biases_keep_packs_apart(loop, tmp_path):
    biases = [{"16": 100, "17": 0}, {"16": 0, "17": 100}, {"16": 5, "17": 5}]
    jobs = [classifier_job(i, biases[i % 3]) for i in range(90)]
    records, stats, server = run_file(loop, tmp_path, jobs, SimConfig(rpm=600, tpm=1_000_000, seed=1))
    assert stats.exit_code() == 0
    for i, job in enumerate(jobs):
        [choice] = records[f"k{i}"]["response"]["body"]["choices"]
        text, logprobs = completion_logprobs(job["body"]["prompt"], 0, 2, biases[i % 3])
        assert choice["text"] == text and choice["logprobs"] == logprobs
        assert choice["index"] == 0
    assert stats.requests == 3  # one pack per bias: never one pack with two biases
    assert {records[f"k{i}"]["response"]["body"]["choices"][0]["text"] for i in range(0, 90, 3)} == {" t16"}
    assert {records[f"k{i}"]["response"]["body"]["choices"][0]["text"] for i in range(1, 90, 3)} == {" t17"}


def test_azure_responses_go_to_the_v1_surface_with_the_deployment_as_model(loop, tmp_path):
    write(tmp_path / "in.jsonl", [responses_job(i) for i in range(3)])
    out = tmp_path / "out.jsonl"

    async def main():
        async with Simulator(SimConfig(rpm=100), clock=loop.time) as sim:
            endpoint = Endpoint(base_url=sim.azure_endpoint, api_key="k", azure=True,
                                api_version="2024-10-21", deployments={"gpt-4o-mini": "mini-prod"})
            stats = await run(RunConfig(input=str(tmp_path / "in.jsonl"), output=out, endpoint=endpoint),
                              progress=False, handle_signals=False, log=lambda m: None)
            return stats, sim

    stats, sim = loop.run_until_complete(main())
    assert stats.exit_code() == 0
    bodies = [orjson.loads(line)["response"]["body"] for line in out.read_bytes().splitlines()]
    assert {b["model"] for b in bodies} == {"mini-prod"}
    assert "mini-prod" in sim.service.budgets


def test_moderations_and_responses_share_a_keys_budget_on_a_gateway(loop, tmp_path):
    jobs = [moderation_job(i) for i in range(20)] + [responses_job(i) for i in range(200)]
    records, stats, server = run_file(loop, tmp_path, jobs,
                                      SimConfig(rpm=120, budget_scope="key", header_style="litellm"),
                                      rpm=None, tpm=None)
    assert stats.exit_code() == 0 and len(records) == 220
    assert stats.budget_shared and stats.rate_limited == 0  # learned from LiteLLM's key headers
    # 201 requests: the key's bucket of 120 at once, then 2 a second
    assert stats.finished - stats.started == pytest.approx((stats.requests - 120) / 2, abs=1.0)
