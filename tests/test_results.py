"""Result records and the resume rule: last line wins; success skipped; transient retried."""
import pytest

from jobs.results import DUPLICATE, Outcome, OutputState, RecordIds, record_outcome
from tests.conftest import error_record, success_record


def test_success_record_has_the_batch_api_output_shape():
    rec = success_record("x", {"choices": []}, request_id="req_1")
    assert rec["id"].startswith("batch_req_") and rec["custom_id"] == "x"
    assert rec["response"] == {"status_code": 200, "request_id": "req_1", "body": {"choices": []}}
    assert rec["error"] is None


def test_error_record_keeps_the_final_answer_and_a_code():
    rec = error_record("x", "invalid_request", "bad", status=400, body={"error": {}}, request_id="r")
    assert rec["response"]["status_code"] == 400 and rec["error"] == {"code": "invalid_request", "message": "bad"}
    assert error_record("x", "timeout", "t")["response"] is None


@pytest.mark.parametrize("record, outcome", [
    (success_record("x", {}, request_id=None), Outcome.DONE),
    (error_record("x", "rate_limit_exceeded", "m", status=429), Outcome.TRANSIENT),
    (error_record("x", "server_error", "m", status=503), Outcome.TRANSIENT),
    (error_record("x", "timeout", "m"), Outcome.TRANSIENT),
    (error_record("x", "insufficient_quota", "m", status=429), Outcome.TRANSIENT),
    (error_record("x", "invalid_request", "m", status=400), Outcome.PERMANENT),
    (error_record("x", "context_length_exceeded", "m"), Outcome.PERMANENT),
    # written by the hosted Batch API: a response with a status and no error object
    ({"custom_id": "x", "response": {"status_code": 500, "body": {}}, "error": None}, Outcome.TRANSIENT),
    ({"custom_id": "x", "response": {"status_code": 400, "body": {}}, "error": None}, Outcome.PERMANENT),
    ({"custom_id": "x", "response": None, "error": {"code": "batch_expired", "message": ""}}, Outcome.TRANSIENT),
    (error_record("x", DUPLICATE, "m"), None),
])
def test_record_outcome_table(record, outcome):
    assert record_outcome(record) is outcome


def test_last_line_for_an_id_wins_and_decides_resume():
    state = OutputState()
    for rec in [error_record("a", "server_error", "m", status=500), success_record("a", {}, request_id=None),
                success_record("b", {}, request_id=None), error_record("b", "timeout", "m"),
                error_record("c", "invalid_request", "m", status=400),
                error_record("d", "server_error", "m", status=500)]:
        state.add(rec)
    assert not state.needs_run("a")
    assert state.needs_run("b")  # transient after success: the last line is the result
    assert not state.needs_run("c") and state.needs_run("c", retry_failed=True)
    assert state.needs_run("d") and state.needs_run("new")


def test_duplicate_notes_never_count_as_a_jobs_result():
    state = OutputState()
    state.add(success_record("a", {}, request_id=None))
    state.add(error_record("a", DUPLICATE, "line 9 repeats line 1"))
    assert not state.needs_run("a") and "a" in state.noted_duplicates


def test_record_ids_keep_the_batch_api_format_and_never_repeat():
    ids = RecordIds("0123456789abcdef")
    first, second = ids(), ids()
    assert first == "batch_req_0123456789abcdef00000000"
    assert second == "batch_req_0123456789abcdef00000001"


@pytest.mark.parametrize("prefix", ["", "0123", "0123456789ABCDEF", "0123456789abcdeg",
                                    "0123456789abcdef0"])
def test_record_id_prefix_is_checked_when_built(prefix):
    with pytest.raises(ValueError):
        RecordIds(prefix)
