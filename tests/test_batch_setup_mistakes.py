"""A setup mistake never burns the file through the Batch API either: a base URL without /v1, an
Azure endpoint ending in /openai/, or nothing listening stops `runner run --via batch` (and
`runner cancel`, `runner status --refresh`) within seconds, naming the URL and the likely fix,
with exit 3, no result line, and no batch state that blocks the rerun with the fix. A server
that goes away after the run's first success is retried within the give-up clock, as before."""
from __future__ import annotations

import time

import orjson
import pytest

from runner.api.endpoint import Endpoint, batch_setup_hint
from runner.api.transport import HttpResponse
from runner.batch.run import CALL_GIVE_UP_S, BatchRunConfig, run_batch
from runner.batch.state import BatchState, read_state
from runner.errors import APIUnreachableError
from runner.exit_codes import EXIT_OK, EXIT_STOPPED
from runner.files.checkpoint import CheckpointError
from runner.simulator.batches import BatchConfig
from runner.simulator.server import SimConfig, Simulator, run_in_thread
from tests.test_batch_e2e import KEY, run_intercepted, sim_factory  # noqa: F401 (a fixture)
from tests.test_e2e import assert_exactly_once, cli, finish, read_results, write_jobs

FAST = BatchConfig(lines_per_s=2000, validate_s=0.05, finalize_s=0.05)


@pytest.mark.parametrize("endpoint, url, code, hint", [
    (Endpoint(base_url="http://host:8000"), "http://host:8000/files", "not_found",
     "http://host:8000/files answered 404 for the route itself: did you mean --base-url "
     "http://host:8000/v1?"),
    (Endpoint(base_url="http://host:8000/v1"), "http://host:8000/v1/batches/b1", "not_found",
     "http://host:8000/v1/batches/b1 answered 404 for the route itself: this server does not "
     "serve the Files and Batches API (check --base-url http://host:8000/v1)"),
    (Endpoint(base_url="https://x.openai.azure.com/openai/", azure=True, api_version="2024-10-21"),
     "https://x.openai.azure.com/openai/openai/files?api-version=2024-10-21", "404",
     "https://x.openai.azure.com/openai/openai/files answered 404: --azure-endpoint is the "
     "resource's address alone; did you mean https://x.openai.azure.com?"),
    (Endpoint(base_url="http://127.0.0.1:9/v1"), "http://127.0.0.1:9/v1/files", "connection_error",
     "cannot reach http://127.0.0.1:9/v1/files: is the server running at 127.0.0.1:9, and is "
     "--base-url right?"),
    (Endpoint(base_url="http://127.0.0.1:9/v1"), None, "connection_error",
     "cannot reach http://127.0.0.1:9/v1/files: is the server running at 127.0.0.1:9"),
])
def test_the_hint_names_the_url_called_and_the_likely_fix(endpoint, url, code, hint):
    assert batch_setup_hint(endpoint, url, code).startswith(hint)


def _batch_run(jobs_path, out, env):
    return cli("run", str(jobs_path), "-o", str(out), "--via", "batch", "--no-progress",
               "--poll-every", "0.1", env=env)


@pytest.mark.slow  # starts runner processes
@pytest.mark.parametrize("mistake, hint", [
    ("no_v1", "{base}/files answered 404 for the route itself: did you mean --base-url {base}/v1?"),
    ("azure_openai_suffix", "--azure-endpoint is the resource's address alone; did you mean {base}?"),
    ("dead_port", "cannot reach http://127.0.0.1:9/v1/files: is the server running at 127.0.0.1:9"),
])
def test_a_wrong_endpoint_stops_the_batch_run_within_seconds_and_the_fixed_rerun_completes(
        tmp_path, mistake, hint):
    jobs = write_jobs(tmp_path / "in.jsonl", 20)
    jobs_path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    sim = Simulator(SimConfig(), batch=FAST)
    with run_in_thread(simulator=sim) as base_url:
        base = base_url.removesuffix("/v1")
        if mistake == "azure_openai_suffix":
            env = {"AZURE_OPENAI_ENDPOINT": f"{base}/openai/", "OPENAI_API_VERSION": "2024-10-21",
                   "AZURE_OPENAI_API_KEY": "sk-test-key"}
            fixed = {**env, "AZURE_OPENAI_ENDPOINT": base}
        else:
            env = {"OPENAI_BASE_URL": base if mistake == "no_v1" else "http://127.0.0.1:9/v1"}
            fixed = {"OPENAI_BASE_URL": base_url}
        started = time.monotonic()
        code, _, err = finish(_batch_run(jobs_path, out, env))
        assert time.monotonic() - started < 10
        assert code == EXIT_STOPPED, err
        assert hint.format(base=base) in err
        assert "sk-test-key" not in err
        assert not out.exists() or read_results(out) == []  # no job paid for the mistake
        assert sim.batches.stats.created == 0
        state = read_state(out)
        assert state is not None and not state.open_chunks()  # nothing left to block a rerun
        code, _, err = finish(_batch_run(jobs_path, out, fixed))
    assert code == EXIT_OK, err
    assert_exactly_once(jobs, read_results(out))


def test_a_journal_at_a_base_url_that_never_took_an_upload_gives_way_to_another(tmp_path):
    # a run at a wrong URL killed before its chunk was uploaded anywhere: the rerun at the right
    # URL plans the jobs again; a chunk uploaded somewhere still holds the output to that place
    out = tmp_path / "out.jsonl"
    state = BatchState(out)
    state.open("r1")
    state.use_endpoint("http://wrong:8000")
    state.dir.mkdir()
    for chunk_id in ("c00001", "c00002"):
        state.record({"event": "planned", "chunk": chunk_id, "url": "/v1/chat/completions",
                      "model": "m", "tokens": 1, "lines": ["a" if chunk_id == "c00001" else "b"]})
    state.close()

    again = BatchState(out)
    again.load()
    again.open("r2")
    again.use_endpoint("http://right:8000/v1")
    assert not again.open_chunks() and again.base_url == "http://right:8000/v1"
    again.record({"event": "planned", "chunk": "c00003", "url": "/v1/chat/completions",
                  "model": "m", "tokens": 1, "lines": ["a"]})
    again.record({"event": "uploaded", "chunk": "c00003", "file_id": "file-1"})
    with pytest.raises(CheckpointError, match="1 batch"):
        again.use_endpoint("http://elsewhere/v1")
    again.close()


def test_cancel_and_status_refresh_at_a_dead_port_stop_at_once_naming_it(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from runner.cli.main import main
    write_jobs(tmp_path / "in.jsonl", 10, kinds=("chat",))
    out = tmp_path / "out.jsonl"
    sim = Simulator(SimConfig(), batch=BatchConfig(lines_per_s=1, validate_s=0.05))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-key-0123456789")
    with run_in_thread(simulator=sim) as base_url:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        first = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o", str(out),
                                          "--via", "batch", "--no-progress", "--no-wait"])
        assert first.exit_code == 4, first.output
        base = base_url.removesuffix("/v1")
        monkeypatch.setenv("OPENAI_BASE_URL", base)  # /v1 forgotten
        status = CliRunner().invoke(main, ["status", str(tmp_path / "in.jsonl"), "-o", str(out),
                                           "--refresh"])
        assert status.exit_code == 2  # status's "cannot be read, or a usage error"
        assert f"did you mean --base-url {base}/v1?" in status.output, status.output
    # the server went away (the simulator stopped): cancel finds nothing listening at once
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    started = time.monotonic()
    cancel = CliRunner().invoke(main, ["cancel", str(tmp_path / "in.jsonl"), "-o", str(out)])
    assert time.monotonic() - started < 10
    assert cancel.exit_code == EXIT_STOPPED, cancel.output
    assert f"cannot reach {base_url}/batches/" in cancel.output
    status = CliRunner().invoke(main, ["status", str(tmp_path / "in.jsonl"), "-o", str(out),
                                       "--refresh"])
    assert f"cannot reach {base_url}/batches/" in status.output, status.output
    assert len(read_state(out).open_chunks()) == 1  # its batch is still open at the provider


def test_a_server_that_goes_away_after_the_first_success_is_retried_until_the_give_up_clock(
        loop, tmp_path, sim_factory):
    from runner.api.transport import aiohttp_sender, open_session
    write_jobs(tmp_path / "in.jsonl", 5, kinds=("chat",))
    sim = sim_factory()
    calls = []

    async def main():
        async with open_session(max_connections=4) as session:
            real = aiohttp_sender(session)

            async def send(request):  # the upload is answered, then nothing listens
                calls.append(loop.time())
                if len(calls) > 1:
                    raise APIUnreachableError("Cannot connect to host 127.0.0.1")
                return await real(request)

            config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                                    endpoint=Endpoint(base_url=sim.base_url, api_key=KEY))
            return await run_batch(config, send=send, progress=False, handle_signals=False,
                                   log=lambda m: None)

    started = loop.time()
    stats = loop.run_until_complete(main())
    assert stats.exit_code() == EXIT_STOPPED
    assert f"no usable answer for {CALL_GIVE_UP_S:.0f} s" in stats.stop_reason
    assert CALL_GIVE_UP_S <= loop.time() - started < CALL_GIVE_UP_S + 310
    assert 5 < len(calls) < 60  # backed off, not hammered
    out = tmp_path / "out.jsonl"
    assert not out.exists() or out.read_bytes() == b""  # no job failed for it
    [chunk] = read_state(out).open_chunks()
    assert chunk.file_id is not None  # uploaded: kept for the next run to carry on


def test_a_404_for_the_route_after_the_first_success_is_the_callers_to_judge(loop, tmp_path,
                                                                             sim_factory):
    # the batch is polled at a route that answers "Invalid URL" once the upload and create
    # worked: not a setup mistake, so the poll's 404 means what it always meant (the provider
    # lost the batch: its jobs go into a later batch) and the run still completes
    jobs = write_jobs(tmp_path / "in.jsonl", 5, kinds=("chat",))
    sim = sim_factory()
    polls = []

    def lost_once(request):
        if request.method == "GET" and "/batches/" in request.url and not polls:
            polls.append(request.url)
            return HttpResponse(404, {}, orjson.dumps({"error": {
                "message": "Invalid URL (GET /batches/x)", "type": "invalid_request_error",
                "param": None, "code": None}}))
        return None

    stats = loop.run_until_complete(run_intercepted(loop, sim, tmp_path, lost_once))
    assert stats.exit_code() == EXIT_OK, stats.stop_reason
    assert polls
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))
