"""A setup mistake never burns the file: an endpoint that cannot work (a route that answers 404
for itself, nothing listening) stops the run within seconds, naming the URL and the likely fix,
with no failure line for any job; a job's own 404 stays that job's failure; a server that goes
away mid-run leaves its pending jobs pending."""
from __future__ import annotations

import time

import pytest

from runner.errors import APIConnectionError, APIUnreachableError
from runner.live.dispatch import DispatchConfig
from runner.outcome import Action, Attempts, Step, classify, decide
from runner.simulator.server import SimConfig, Simulator, run_in_thread
from tests.conftest import Script, error
from tests.test_dispatch import chat_job, dispatch
from tests.test_e2e import cli, finish, read_results, write_jobs


@pytest.mark.parametrize("body, fault", [
    (b'{"error": {"message": "Invalid URL (POST /chat/completions)", "type": '
     b'"invalid_request_error", "param": null, "code": null}}', True),     # OpenAI, no /v1
    (b'{"error": {"message": "Unknown request URL: POST /chat/completions. Please check the URL '
     b'for typos.", "type": "invalid_request_error", "param": null, "code": "unknown_url"}}', True),
    (b'{"error": {"code": "404", "message": "Resource not found"}}', True),  # Azure, wrong path
    (b'{"detail": "Not Found"}', True),                                   # FastAPI's default
    (b"404 page not found", True),                                        # Go's default
    (b"<html><body>Not Found</body></html>", True),                       # a proxy's page
    (b'{"error": {"code": "DeploymentNotFound", "message": "The API deployment for this '
     b'resource does not exist."}}', True),                               # Azure
    (b'{"error": {"message": "The model `gpt-5x` does not exist", "type": '
     b'"invalid_request_error", "code": "model_not_found"}}', False),     # the job's own model
    (b'{"object": "error", "message": "The model `foo` does not exist.", "type": '
     b'"NotFoundError", "code": 404}', False),                            # vLLM's unknown model
])
def test_a_404_for_the_route_itself_is_an_endpoint_fault_and_one_for_a_model_is_the_jobs(body, fault):
    verdict = classify(404, {}, body)
    assert verdict.action is Action.FAIL_JOB
    assert verdict.endpoint_fault is fault


def test_nothing_listening_is_an_endpoint_fault_and_a_reset_is_not():
    assert classify(None, {}, None, exc=APIUnreachableError("refused")).endpoint_fault
    reset = classify(None, {}, None, exc=APIConnectionError("reset by peer"))
    assert reset.action is Action.RETRY and not reset.endpoint_fault


def test_an_endpoint_fault_before_any_success_stops_the_run_and_after_one_fails_only_the_job():
    route = classify(404, {}, b'{"detail": "Not Found"}')
    assert decide(route, Attempts(), packed=True, max_attempts=6, answered=False).step is Step.STOP_RUN
    assert decide(route, Attempts(), packed=False, max_attempts=6).step is Step.FAIL
    gone = classify(None, {}, None, exc=APIUnreachableError("refused"))
    assert decide(gone, Attempts(), packed=False, max_attempts=6, answered=False).step is Step.STOP_RUN
    assert decide(gone, Attempts(), packed=False, max_attempts=6).step is Step.RETRY_AFTER_SLEEP
    spent = Attempts(sent=5, paced=0, counted=5)
    last = decide(gone, spent, packed=False, max_attempts=6)
    assert last.step is Step.STOP_RUN and "stopped answering" in last.message  # never FAIL


def test_a_server_that_goes_away_mid_run_leaves_the_jobs_it_did_not_answer_pending():
    def rule(n, req, body):
        return None if n <= 3 else APIUnreachableError("Cannot connect to host api.test:443")
    records, stats = dispatch([chat_job(i) for i in range(10)], Script(rule),
                              config=DispatchConfig(max_attempts=4, concurrency=1))
    assert stats.stop_reason is not None and "cannot reach" in stats.stop_reason
    assert stats.exit_code() == 3
    assert len(records) == 3 and all(r["error"] is None for r in records)  # no failure line


def test_a_404_on_one_model_after_successes_fails_only_its_jobs():
    def rule(n, req, body):
        if body["model"] == "gpt-5x":
            return error(404, "model_not_found", "The model `gpt-5x` does not exist")
        return None
    jobs = [chat_job(i) for i in range(4)]
    jobs.insert(2, chat_job(9, model="gpt-5x"))
    records, stats = dispatch(jobs, Script(rule))
    assert stats.stop_reason is None
    failed = [r for r in records if r["error"] is not None]
    assert [r["custom_id"] for r in failed] == ["job 9"] and failed[0]["error"]["code"] == "model_not_found"


@pytest.mark.slow  # starts runner processes
@pytest.mark.parametrize("mistake, hint", [
    ("no_v1", "did you mean --base-url {base}/v1?"),
    ("dead_port", "is the server running at 127.0.0.1:9"),
])
def test_a_wrong_base_url_stops_within_seconds_writes_no_failure_and_the_fixed_rerun_completes(
        tmp_path, mistake, hint):
    jobs_path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jobs(jobs_path, 200)
    with run_in_thread(simulator=Simulator(SimConfig())) as base_url:
        base = base_url.removesuffix("/v1")
        wrong = base if mistake == "no_v1" else "http://127.0.0.1:9/v1"
        started = time.monotonic()
        code, _, err = finish(cli("run", str(jobs_path), "-o", str(out), "--no-progress",
                                  env={"OPENAI_BASE_URL": wrong}))
        assert time.monotonic() - started < 10
        assert code == 3, err
        assert hint.format(base=base) in err
        assert "sk-test-key" not in err
        assert read_results(out) == []  # no job paid for the mistake
        code, _, err = finish(cli("run", str(jobs_path), "-o", str(out), "--no-progress",
                                  env={"OPENAI_BASE_URL": base_url}))
    assert code == 0, err
    assert len(read_results(out)) == 200
    assert all(r["error"] is None for r in read_results(out))


def test_a_frameworks_404_naming_a_model_is_the_jobs_own():
    assert not classify(404, {}, b'{"detail": "Model bad not found"}').endpoint_fault
    assert classify(404, {}, b'{"detail": "Not Found"}').endpoint_fault


def test_a_route_this_server_lacks_fails_only_its_jobs_when_other_routes_answer():
    """The embeddings job's 404 comes back at once, while the chat request is still on the wire:
    once that succeeds, the 404 is the job's own failure, not a wrong base URL."""
    import asyncio
    from jobs.job import Job
    chat = Script()

    async def send(req):
        if req.url.endswith("/embeddings"):
            return error(404, None, "Invalid URL (POST /v1/embeddings)")
        await asyncio.sleep(0.5)
        return await chat(req)
    embed = Job("embed", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, 1)
    records, stats = dispatch([chat_job(1), embed, *(chat_job(i) for i in range(2, 5))], send)
    assert stats.stop_reason is None
    failed = [r for r in records if r["error"] is not None]
    assert [r["custom_id"] for r in failed] == ["embed"]
    assert sum(r["error"] is None for r in records) == 4


def test_when_nothing_answers_the_route_fault_still_stops_the_run():
    records, stats = dispatch([chat_job(i) for i in range(6)],
                              Script(lambda n, req, body: error(404, None, "Invalid URL")))
    assert stats.exit_code() == 3 and "404 for the route itself" in stats.stop_reason
    assert records == []


# -- --retry-codes: send again only the failures a user can name ----------------------------------

def test_retry_codes_sends_again_only_jobs_whose_last_line_failed_with_those_codes():
    from jobs.intake import Intake, Pending, Skip
    from jobs.results import OutputState
    from tests.conftest import error_record
    state = OutputState()
    state.add(error_record("job 1", "not_found", "m", status=404))
    state.add(error_record("job 2", "invalid_request", "m", status=400))
    state.add(error_record("job 3", "context_length_exceeded", "m", status=400))
    intake = Intake(state, retry_codes=frozenset({"not_found", "invalid_request"}))
    kinds = [type(intake.decide(chat_job(i))) for i in (1, 2, 3)]
    assert kinds == [Pending, Pending, Skip]


def test_status_suggests_retry_codes_with_the_codes_it_sees_and_no_retry_for_bad_lines(tmp_path):
    import orjson
    from click.testing import CliRunner
    from runner.cli.main import main
    from tests.conftest import error_record
    jobs = tmp_path / "in.jsonl"
    write_jobs(jobs, 3, kinds=("chat",))
    with open(jobs, "ab") as f:
        f.write(b"not json\n")
    out = tmp_path / "out.jsonl"
    lines = [error_record("job 0/\u00fc", "not_found", "m", status=404),
             error_record("job 1/\u00fc", "model_not_found", "m", status=404),
             error_record("job 2/\u00fc", "not_found", "m", status=404)]
    out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    result = CliRunner().invoke(main, ["status", str(jobs), "-o", str(out)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "--retry-codes not_found,model_not_found" in text
    assert "fix the bad or duplicate input lines (no retry can" in text
    assert "--retry-failed" not in text


@pytest.mark.slow  # starts runner processes
def test_an_azure_endpoint_with_a_path_stops_at_once_naming_the_endpoint_to_use(tmp_path):
    jobs_path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jobs(jobs_path, 50, kinds=("chat",))
    with run_in_thread(simulator=Simulator(SimConfig())) as base_url:
        endpoint = base_url.removesuffix("/v1")
        env = {"AZURE_OPENAI_API_KEY": "azure-test-key", "OPENAI_API_VERSION": "2024-10-21"}
        code, _, err = finish(cli("run", str(jobs_path), "-o", str(out), "--no-progress",
                                  "--azure-endpoint", endpoint + "/openai/", env=env))
        assert code == 3, err
        assert f"did you mean {endpoint}?" in err and "azure-test-key" not in err
        assert read_results(out) == []
        code, _, err = finish(cli("run", str(jobs_path), "-o", str(out), "--no-progress",
                                  "--azure-endpoint", endpoint, env=env))
    assert code == 0, err
    assert len(read_results(out)) == 50


@pytest.mark.slow  # starts runner processes
def test_a_key_the_server_refuses_stops_the_run_naming_the_url_and_never_the_key(tmp_path):
    jobs_path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jobs(jobs_path, 30, kinds=("chat",))
    with run_in_thread(simulator=Simulator(SimConfig(api_key="sk-the-right-one"))) as base_url:
        code, _, err = finish(cli("run", str(jobs_path), "-o", str(out), "--no-progress",
                                  env={"OPENAI_BASE_URL": base_url}))
    assert code == 3, err
    assert f"{base_url}/chat/completions refused the key (401)" in err
    assert "sk-test-key" not in err and read_results(out) == []
