"""`judge_line`: one batch line's answer in, what to do about its jobs out, as a table."""
from __future__ import annotations

import pytest

from jobs.job import Job
from jobs.packing import pack, single
from runner.batch.collect import judge_line
from runner.simulator.completions import answer_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ONE = single(Job("a", "/v1/chat/completions", CHAT, 1), 5)
PACK = pack([Job(c, "/v1/completions", {"model": "m", "prompt": p}, i)
             for i, (c, p) in enumerate([("p", "x"), ("q", "y"), ("r", "z"), ("s", "w")])], 40)


def line(status=None, body=None, error=None, id_="batch_req_1"):
    response = None if status is None else {"status_code": status, "request_id": "req_1", "body": body}
    return {"id": id_, "custom_id": "L", "response": response, "error": error}


def err(code, message="m", param=None):
    return {"error": {"code": code, "message": message, "type": "invalid_request_error", "param": param}}


OK_ONE = line(200, answer_for("/v1/chat/completions", CHAT))
OK_PACK = line(200, answer_for("/v1/completions", PACK.body))


@pytest.mark.parametrize("request_, answer, spent, expect", [
    # a success: one line per job, ids from the provider's line id
    (ONE, OK_ONE, 0, {"records": ["a:ok"], "ids": ["batch_req_1"]}),
    (PACK, OK_PACK, 0, {"records": ["p:ok", "q:ok", "r:ok", "s:ok"],
                        "ids": ["batch_req_1-0", "batch_req_1-1", "batch_req_1-2", "batch_req_1-3"]}),
    # a line that never ran: pending, nothing counted
    (ONE, line(error={"code": "batch_expired", "message": "x"}), 0, {}),
    (ONE, line(error={"code": "batch_cancelled", "message": "x"}), 3, {}),
    # transient: into a later batch, an attempt counted ...
    (ONE, line(500, err(None)), 0, {"retry": ["a"], "retried": True}),
    (ONE, line(error={"code": "server_error", "message": "x"}), 0, {"retry": ["a"], "retried": True}),
    # ... until --max-attempts (3 here): then a final failure line
    # a 429 is pacing, never an attempt: into a later batch, nothing counted, even at the last
    (ONE, line(429, err("rate_limit_exceeded")), 2, {"retried": True}),
    (ONE, line(503, err(None)), 2, {"records": ["a:server_error"], "gave_up": ["a"]}),
    # permanent: a failure line at once
    (ONE, line(400, err("invalid_request")), 0, {"records": ["a:invalid_request"], "gave_up": ["a"]}),
    # a pack refused for one prompt: halves; for anything else: every job fails
    (PACK, line(400, err("context_length_exceeded")), 0, {"halves": [("p", "q"), ("r", "s")]}),
    (PACK, line(400, err("invalid_request", param="temperature")), 0,
     {"records": ["p:invalid_request", "q:invalid_request", "r:invalid_request", "s:invalid_request"],
      "gave_up": ["p", "q", "r", "s"]}),
    # a 200 missing a choice: the jobs answered in full are kept, only the other goes again
    # (never a hole, never a choice paid twice)
    (PACK, line(200, {**OK_PACK["response"]["body"],
                      "choices": [c for c in OK_PACK["response"]["body"]["choices"]
                                  if c["index"] != 3]}), 0,
     {"records": ["p:ok", "q:ok", "r:ok"], "retry": ["s"], "retried": True}),
    # ... and the first prompt's choices alone (a list not taken) answer the first job; the
    # others go alone
    (PACK, line(200, {**OK_PACK["response"]["body"],
                      "choices": [c for c in OK_PACK["response"]["body"]["choices"]
                                  if c["index"] == 0]}), 0,
     {"records": ["p:ok"], "halves": [("q",), ("r",), ("s",)], "retried": True}),
    # the line's request unknown (its local file gone): retried, not guessed
    (None, OK_ONE, 0, {"retry": ["a"], "retried": True}),
])
def test_judge_line(request_, answer, spent, expect):
    ids = tuple(j.custom_id for j in (request_ or ONE).jobs)
    out = judge_line("L", ids, request_, answer, spent=spent, max_attempts=3, fallback_id="c1-L")
    got = {}
    if out.records:
        got["records"] = [f"{r['custom_id']}:{'ok' if r['error'] is None else r['error']['code']}"
                          for r in out.records]
        if "ids" in expect:
            got["ids"] = [r["id"] for r in out.records]
    if out.retry:
        got["retry"] = list(out.retry)
    if out.retried:
        got["retried"] = True
    if out.gave_up:
        got["gave_up"] = list(out.gave_up)
    if out.halves:
        got["halves"] = list(out.halves)
    assert got == expect


def test_a_packed_line_answered_in_part_writes_the_jobs_answered_and_sends_only_the_others():
    body = answer_for("/v1/completions", PACK.body)
    body["choices"] = [c for c in body["choices"] if c["index"] != 2]  # r's only choice
    outcome = judge_line("L", ("p", "q", "r", "s"), PACK, line(200, body), spent=0,
                         max_attempts=3, fallback_id="f")
    assert [r["custom_id"] for r in outcome.records] == ["p", "q", "s"]
    assert [r["id"] for r in outcome.records] == ["batch_req_1-0", "batch_req_1-1", "batch_req_1-3"]
    assert all(r["error"] is None for r in outcome.records) and len(outcome.usage) == 3
    assert outcome.retry == ("r",) and outcome.retried and not outcome.gave_up
