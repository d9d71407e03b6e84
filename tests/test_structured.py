"""Structured outputs checked (jobs/structured.py): a job asking for JSON gets an answer that is
JSON and fits its schema, or is retried (counted) and finally fails `invalid_json` with the
validator's message; live and --via batch alike, against the simulator's broken-JSON mode."""
import random
from pathlib import Path

import orjson
import pytest

from jobs import codes
from jobs.estimate import estimate_lines
from jobs.job import Job
from jobs.packing import single
from jobs.results import is_transient
from jobs.structured import answer_problem, json_request
from runner.api.endpoint import Endpoint
from runner.batch.collect import judge_line
from runner.errors import InvalidJSONError
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.outcome import Action, Attempts, Step, classify, decide
from runner.simulator.answers import SimRequest, build_answer, schema_instance
from runner.simulator.completions import answer_for
from runner.simulator.config import SimConfig
from runner.simulator.server import run_in_thread

CHAT, RESPONSES = "/v1/chat/completions", "/v1/responses"
SCHEMA = {"type": "object", "required": ["label", "score"], "additionalProperties": False,
          "properties": {"label": {"enum": ["pos", "neg", "neutral"]}, "score": {"type": "number"}}}
WITH_SCHEMA = {"type": "json_schema", "json_schema": {"name": "sentiment", "schema": SCHEMA}}


def chat(content, refusal=None):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                 "refusal": refusal}, "finish_reason": "stop"}]}


def body(fmt=WITH_SCHEMA, text="hi"):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}],
            "response_format": fmt}


@pytest.mark.parametrize("job_body, answer, problem", [
    (body(), chat('{"label": "pos", "score": 0.5}'), None),
    (body(), chat('{"label": "pos", "sco'), "not valid JSON"),
    (body(), chat('{"label": "great", "score": 0.5}'), "at label: 'great' is not one of"),
    (body(), chat('{"label": "pos"}'), "'score' is a required property"),
    (body(), chat('{"label": "pos", "score": 1, "extra": 1}'), "Additional properties"),
    (body(), chat(None, refusal="I can't help with that"), None),  # a refusal is the answer
    (body({"type": "json_object"}), chat('{"anything": [1]}'), None),
    (body({"type": "json_object"}), chat("[1, 2]"), "not an object"),
    (body({"type": "json_object"}), chat("Sure! {"), "not valid JSON"),
    (body({"type": "text"}), chat("plain"), None),
    ({"model": "m", "messages": []}, chat("plain"), None),
])
def test_a_chat_answer_is_checked_against_what_the_job_asked(job_body, answer, problem):
    found = answer_problem(CHAT, job_body, answer)
    assert (found is None) == (problem is None), found
    if problem is not None:
        assert problem in found


def test_a_responses_answer_is_checked_unless_it_was_cut_short_as_asked():
    job_body = {"model": "m", "input": "x", "text": {"format": {"type": "json_schema",
                                                                  "name": "s", "schema": SCHEMA}}}
    assert json_request(RESPONSES, job_body) == (True, SCHEMA)

    def answer(text, status="completed"):
        return {"object": "response", "status": status, "output": [
            {"type": "message", "content": [{"type": "output_text", "text": text}]}]}
    assert answer_problem(RESPONSES, job_body, answer('{"label": "neg", "score": 0}')) is None
    assert "not valid JSON" in answer_problem(RESPONSES, job_body, answer("{"))
    assert answer_problem(RESPONSES, job_body, answer("{", status="incomplete")) is None


def test_invalid_json_is_a_counted_retry_then_a_transient_failure():
    verdict = classify(None, {}, None, exc=InvalidJSONError("the answer is not valid JSON"))
    assert (verdict.action, verdict.code) == (Action.RETRY, codes.INVALID_JSON)
    first = decide(verdict, Attempts(), packed=False, max_attempts=2)
    assert first.step is Step.RETRY_AFTER_SLEEP and first.counts
    last = decide(verdict, first.attempts, packed=False, max_attempts=2)
    assert last.step is Step.FAIL and last.code == codes.INVALID_JSON
    assert "not valid JSON" in last.message
    assert is_transient(codes.INVALID_JSON, 200)  # a later run tries again


def test_the_simulator_answers_json_that_fits_and_breaks_it_at_the_rate_asked():
    assert answer_problem(CHAT, body(), answer_for(CHAT, body())) is None
    assert answer_problem(CHAT, body({"type": "json_object"}),
                          answer_for(CHAT, body({"type": "json_object"}))) is None
    rng = random.Random(1)
    req = SimRequest("chat", "m", ("p",), n=1, response_format=WITH_SCHEMA)
    broken = sum(answer_problem(CHAT, body(), build_answer(
        req, rng=rng, shuffle=False, created=0, response_id="x", break_json=0.3)) is not None
        for _ in range(400))
    assert 80 < broken < 160
    assert all(answer_problem(CHAT, body(), build_answer(
        req, rng=rng, shuffle=False, created=0, response_id="x", break_json=1.0)) for _ in range(20))
    assert schema_instance(SCHEMA, "s")["label"] in ("pos", "neg", "neutral")
    with pytest.raises(ValueError):
        SimConfig(json_fault_rate=1.5)


def jobs_file(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"custom_id": f"j{i}", "method": "POST", "url": CHAT,
                                            "body": body(text=f"review {i}")}) + b"\n"
                              for i in range(n)))
    return path


@pytest.mark.parametrize("rate, attempts, all_valid", [(0.3, 12, True), (1.0, 2, False)])
@pytest.mark.slow  # over a second of real time
async def test_a_live_run_retries_broken_json_and_fails_it_as_invalid_json_at_last(
        tmp_path, rate, attempts, all_valid):
    with run_in_thread(SimConfig(json_fault_rate=rate, seed=5)) as url:
        config = RunConfig(input=str(jobs_file(tmp_path / "jobs.jsonl", 40)),
                           output=tmp_path / "out.jsonl",
                           endpoint=Endpoint(base_url=url, api_key="sk-test"),
                           dispatch=DispatchConfig(max_attempts=attempts),
                           connect_timeout=5, read_timeout=10)
        stats = await run(config, progress=False, handle_signals=False, log=lambda line: None)
    lines = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert len(lines) == 40
    if all_valid:
        assert stats.succeeded == 40 and stats.retries > 0  # broken ones were retried
        for line in lines:
            assert answer_problem(CHAT, body(), line["response"]["body"]) is None
    else:
        assert stats.failed == {codes.INVALID_JSON: 40} and stats.requests == 80
        assert all(line["error"]["code"] == "invalid_json" for line in lines)
        assert all("gave up after 2 requests" in line["error"]["message"] for line in lines)


def test_a_batch_line_with_broken_json_is_retried_then_fails_as_invalid_json():
    request = single(Job("a", CHAT, body(), 1), 5)
    broken = chat('{"label": "pos", "sco')
    answer = {"id": "batch_req_1", "custom_id": "a",
              "response": {"status_code": 200, "request_id": "r", "body": broken}, "error": None}
    again = judge_line("L", ("a",), request, answer, spent=0, max_attempts=3, fallback_id="f")
    assert again.retry == ("a",) and not again.records
    final = judge_line("L", ("a",), request, answer, spent=2, max_attempts=3, fallback_id="f")
    assert final.gave_up == ("a",) and final.code == codes.INVALID_JSON
    assert final.records[0]["error"]["code"] == "invalid_json"
    assert final.records[0]["response"]["body"] == broken  # the bad answer is kept to look at
    good = dict(answer, response={"status_code": 200, "request_id": "r",
                                  "body": chat('{"label": "pos", "score": 1}')})
    assert judge_line("L", ("a",), request, good, spent=0, max_attempts=3,
                      fallback_id="f").records[0]["error"] is None


def test_estimate_counts_the_jobs_whose_answers_will_be_checked(tmp_path):
    lines = jobs_file(tmp_path / "jobs.jsonl", 3).read_bytes().splitlines()
    lines.append(orjson.dumps({"custom_id": "plain", "url": CHAT, "body": {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}}))
    est = estimate_lines(lines, "jobs.jsonl", counter=lambda model: None)  # chars / 4
    assert est.structured == 3 and est.to_json()["structured_jobs"] == 3
