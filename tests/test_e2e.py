"""End to end against the simulated API: in-process runs, and the real CLI in subprocesses
(SIGKILL at random moments, SIGTERM, quota, bad input, locking)."""
import asyncio
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from runner.live.dispatch import GRACE_S, DispatchConfig
from runner.api.endpoint import Endpoint
from runner.live.run import RunConfig, run
from runner.simulator.answers import chat_prompt, completion_text, embedding_vector
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator, run_in_thread

ROOT = Path(__file__).resolve().parent.parent

# docs/resume.md promises that SIGINT and SIGTERM end a run with exit 3 "well within 10 s": the run
# waits at most GRACE_S for answers already on the wire, then exits (a fsync, closing sockets, the
# interpreter's shutdown: well under a second on an idle machine, unbounded on a loaded one). The
# wall-clock checks below give that exit work a margin no loaded machine should exceed, and each
# test arranges that a broken stop would take far longer (answers that hang for ten minutes, an
# input that never ends), so they still fail when the feature breaks.
STOP_PROMISE_S = 10.0
EXIT_MARGIN_S = 25.0
HANG_S = 600.0


def write_jobs(path, n, *, kinds=("chat", "completions", "embeddings"), prefix="job"):
    lines = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        cid = f"{prefix} {i}/ü"
        if kind == "chat":
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 5}
            url = "/v1/chat/completions"
        elif kind == "completions":
            body = {"model": "gpt-3.5-turbo-instruct", "prompt": f"p{i}", "max_tokens": 4, "n": 2}
            url = "/v1/completions"
        else:
            body = {"model": "text-embedding-3-small", "input": f"e{i}"}
            url = "/v1/embeddings"
        lines.append(orjson.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return [orjson.loads(line) for line in lines]


def read_results(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def expected_ok(job, record):
    """The record is a success holding exactly this job's own answer."""
    assert record["error"] is None and record["response"]["status_code"] == 200, record
    body, answer = job["body"], record["response"]["body"]
    if job["url"] == "/v1/chat/completions":
        assert answer["choices"][0]["message"]["content"] == completion_text(chat_prompt(body["messages"]), 0)
    elif job["url"] == "/v1/completions":
        assert [c["text"] for c in answer["choices"]] == [completion_text(body["prompt"], j) for j in range(2)]
        assert [c["index"] for c in answer["choices"]] == [0, 1]
    else:
        assert answer["data"][0]["embedding"] == pytest.approx(embedding_vector(body["input"]))


def assert_exactly_once(jobs, records):
    successes = Counter(r["custom_id"] for r in records if r["error"] is None)
    assert set(successes) == {j["custom_id"] for j in jobs}
    assert max(successes.values()) == 1, [k for k, v in successes.items() if v > 1][:5]
    last = {r["custom_id"]: r for r in records}
    for job in jobs:
        expected_ok(job, last[job["custom_id"]])


@pytest.mark.slow  # real time: hangs outlast a 0.5 s read timeout
async def test_faults_on_every_job_gets_exactly_its_own_answer(tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    config = SimConfig(rpm=3000, tpm=2_000_000, burst_s=2.0, fault_rate=0.15,
                       faults=("500", "503", "reset", "truncated", "missing_choice", "hang"),
                       hang_s=5.0, seed=11)
    async with Simulator(config) as sim:
        stats = await run(RunConfig(input=str(tmp_path / "in.jsonl"), output=out,
                                    endpoint=Endpoint(base_url=sim.base_url, api_key="sk-x"),
                                    dispatch=DispatchConfig(max_attempts=10, concurrency=32),
                                    read_timeout=0.5),
                          progress=False, handle_signals=False, log=lambda m: None)
    assert stats.exit_code() == 0, stats
    assert stats.retries > 0 and sum(sim.stats.faults.values()) > 0
    records = read_results(out)
    assert len(records) == 300
    assert_exactly_once(jobs, records)


async def test_rerunning_a_finished_file_makes_no_calls_and_exits_0(tmp_path):
    write_jobs(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out.jsonl"
    async with Simulator(SimConfig()) as sim:
        cfg = RunConfig(input=str(tmp_path / "in.jsonl"), output=out,
                        endpoint=Endpoint(base_url=sim.base_url, api_key="k"))
        first = await run(cfg, progress=False, handle_signals=False, log=lambda m: None)
        calls = sim.stats.requests
        second = await run(cfg, progress=False, handle_signals=False, log=lambda m: None)
    assert first.exit_code() == second.exit_code() == 0
    assert sim.stats.requests == calls and second.already_done == 20
    assert len(read_results(out)) == 20


# -- the real command line, in subprocesses (marked slow) ------------------------------------------

def cli(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT,
                            env={**os.environ, "OPENAI_API_KEY": "sk-test-key", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def count_lines(path):
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def prompt_of(job):
    body = job["body"]
    return chat_prompt(body["messages"]) if "messages" in body else body.get("prompt", body.get("input"))


def stop_and_wait(proc):
    """SIGTERM `proc` and wait for it to end, its stdin left as it is; (exit code, stderr). Fails,
    killing it, when it outlives GRACE_S + EXIT_MARGIN_S."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=GRACE_S + EXIT_MARGIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"still running {GRACE_S + EXIT_MARGIN_S:.0f} s after SIGTERM") from None
    _, err = proc.communicate()
    return proc.returncode, err.decode()


def snapshot(counter):
    for _ in range(100):  # the simulator's thread may be updating it
        try:
            return {k for k, v in dict(counter).items() if v > 0}
        except RuntimeError:
            time.sleep(0.001)
    raise AssertionError("could not read the simulator's counter")


@pytest.mark.slow
@pytest.mark.parametrize("index_every", [None, 0.05], ids=["no-partial-index", "partial-index"])
def test_sigkill_three_times_then_resume_gives_each_job_exactly_one_success(tmp_path, index_every):
    # with partial resume indexes saved every 50 ms, each resume starts from the last one
    n, concurrency = 400, 8
    jobs = write_jobs(tmp_path / "in.jsonl", n)  # chat (alone), completions and embeddings (packed)
    out = tmp_path / "out.jsonl"
    rng = random.Random(2026)
    sim = Simulator(SimConfig(latency_ms=40, seed=3))
    prompt_id = {prompt_of(j): j["custom_id"] for j in jobs}
    in_flight_at_kills = set()  # jobs the API answered that had no line in the output at a kill
    with run_in_thread(simulator=sim) as base_url:
        args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", base_url,
                "--concurrency", str(concurrency), "--no-progress",
                "--index-every", str(index_every or 3600)]
        kills = partial_indexes = 0
        for target in sorted(rng.sample(range(20, n - 40), 3)):
            index = out.with_name(out.name + ".resume")
            partial_indexes += index.exists() and index.read_bytes().startswith(b'{"version":2')
            proc = cli(*args)
            deadline = time.monotonic() + 60
            while count_lines(out) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.001, 0.02))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=30)
            time.sleep(0.2)  # let the server finish what was on the wire
            written = {orjson.loads(line)["custom_id"] for line in out.read_bytes().splitlines()
                       if line.endswith(b"}")}
            answered = {prompt_id[p] for p in snapshot(sim.stats.answered) if p in prompt_id}
            lost = answered - written
            assert len(lost) <= concurrency * 64  # requests in flight x the largest pack
            in_flight_at_kills |= lost
        index = out.with_name(out.name + ".resume")
        partial_indexes += index.exists() and index.read_bytes().startswith(b'{"version":2')
        code, _, err = finish(cli(*args))
    assert kills == 3
    assert partial_indexes == (3 if index_every else 0)  # each resume after a kill began there
    assert code == 0, err
    records = read_results(out)
    assert_exactly_once(jobs, records)
    assert len(records) == n
    # no duplicate API work beyond what was in flight at each kill
    repeated = {prompt_id[p] for p, count in sim.stats.answered.items() if count > 1 and p in prompt_id}
    assert repeated <= in_flight_at_kills


def test_the_grace_period_leaves_half_the_stop_promise_for_exiting():
    assert DispatchConfig().grace_s == GRACE_S <= STOP_PROMISE_S / 2


@pytest.mark.slow
def test_sigterm_stops_after_at_most_the_grace_period_with_exit_3_and_the_next_run_resumes(tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    sim = Simulator(SimConfig(latency_ms=100, seed=5))
    answering = sim.config
    with run_in_thread(simulator=sim) as base_url:
        args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", base_url,
                "--concurrency", "4", "--no-progress"]
        proc = cli(*args)
        while count_lines(out) < 10:
            time.sleep(0.01)
        # from now on no answer comes back for ten minutes: only the grace period ends the wait
        sim.config = dataclasses.replace(answering, fault_rate=1.0, faults=("hang",), hang_s=HANG_S)
        while sim.stats.faults["hang"] < 1:
            time.sleep(0.01)
        code, err = stop_and_wait(proc)
        assert code == 3, err
        assert "interrupted by SIGTERM" in err and "Traceback" not in err
        partial = read_results(out)
        assert 10 <= len(partial) < 300 and all(r["error"] is None for r in partial)
        sim.config = answering
        code, _, err = finish(cli(*args))
    assert code == 0, err
    assert_exactly_once(jobs, read_results(out))


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [1, 32])  # also under load: many requests in flight
def test_quota_exhaustion_exits_3_and_a_later_run_finishes(tmp_path, concurrency):
    jobs = write_jobs(tmp_path / "in.jsonl", 120, kinds=("chat",))
    out = tmp_path / "out.jsonl"
    with run_in_thread(SimConfig(quota_requests=20, latency_ms=20, seed=1)) as base_url:
        code, _, err = finish(cli("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url",
                                  base_url, "--concurrency", str(concurrency), "--no-progress"))
    assert code == 3 and "insufficient_quota" in err and "resume" in err
    records = read_results(out)
    assert len(records) == 20 and all(r["error"] is None for r in records)
    with run_in_thread(SimConfig()) as base_url:  # quota topped up
        code, _, err = finish(cli("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url",
                                  base_url, "--no-progress"))
    assert code == 0, err
    assert_exactly_once(jobs, read_results(out))


@pytest.mark.slow
def test_bad_input_lines_are_reported_by_file_and_line_and_the_rest_runs(tmp_path):
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join([
        orjson.dumps(good), b"{not json", b"", b"   ", b"[1,2]", b"\xff\xfe bad utf8",
        orjson.dumps({**good, "custom_id": 5}), orjson.dumps({**good, "url": "/v1/images"}),
        orjson.dumps({**good, "custom_id": "b"}), orjson.dumps(good),
        b'{"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "bo',
    ]))
    out = tmp_path / "out.jsonl"
    with run_in_thread(SimConfig()) as base_url:
        code, _, err = finish(cli("run", str(src), "-o", str(out), "--base-url", base_url, "--no-progress"))
    assert code == 1 and "Traceback" not in err
    for lineno in (2, 5, 6, 7, 8, 10, 11):
        assert f"{src}:{lineno}:" in err, err
    records = read_results(out)
    ok = {r["custom_id"] for r in records if r["error"] is None}
    assert ok == {"a", "b"}
    [dup] = [r for r in records if r["error"] and r["error"]["code"] == "duplicate_custom_id"]
    assert dup["custom_id"] == "a" and "line 10" in dup["error"]["message"] and "line 1" in dup["error"]["message"]


@pytest.mark.slow
def test_missing_key_exits_2_naming_the_variable(tmp_path):
    write_jobs(tmp_path / "in.jsonl", 1)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "runner", "run", str(tmp_path / "in.jsonl"), "-o",
                           str(tmp_path / "o.jsonl")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "OPENAI_API_KEY" in proc.stderr


@pytest.mark.slow
def test_unreadable_input_exits_2(tmp_path):
    code, _, err = finish(cli("run", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")))
    assert code == 2 and "missing.jsonl" in err


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    write_jobs(tmp_path / "in.jsonl", 200, kinds=("chat",))
    out = tmp_path / "out.jsonl"
    with run_in_thread(SimConfig(latency_ms=200)) as base_url:
        args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", base_url,
                "--concurrency", "2", "--no-progress"]
        first = cli(*args)
        while not (tmp_path / "out.jsonl.lock").exists() or count_lines(out) < 1:
            time.sleep(0.01)
        code, _, err = finish(cli(*args))
        first.send_signal(signal.SIGTERM)
        finish(first)
    assert code == 2 and "another run" in err


@pytest.mark.slow
def test_stdin_input_runs_and_resumes_by_custom_id(tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    data = (tmp_path / "in.jsonl").read_bytes()
    with run_in_thread(SimConfig()) as base_url:
        for _ in range(2):
            proc = cli("run", "-", "-o", str(out), "--base-url", base_url, "--no-progress",
                       stdin=subprocess.PIPE)
            _, err = proc.communicate(data, timeout=60)
            assert proc.returncode == 0, err
    records = read_results(out)
    assert len(records) == 30
    assert_exactly_once(jobs, records)


@pytest.mark.slow
def test_a_slow_stdin_is_processed_as_it_arrives_and_sigterm_still_ends_the_run(tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 30)
    lines = (tmp_path / "in.jsonl").read_bytes().splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    with run_in_thread(SimConfig()) as base_url:
        proc = cli("run", "-", "-o", str(out), "--base-url", base_url, "--no-progress",
                   stdin=subprocess.PIPE)
        proc.stdin.write(b"".join(lines[:20]))
        proc.stdin.flush()  # ... and the writer pauses, keeping stdin open
        deadline = time.monotonic() + 20
        while count_lines(out) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert count_lines(out) == 20  # all of it done before any EOF
        code, err = stop_and_wait(proc)  # stdin still open: the stop must not wait for EOF
        assert code == 3, err
    assert_exactly_once(jobs[:20], read_results(out))


@pytest.mark.slow
def test_input_from_a_fifo_is_read_once_with_progress_on(tmp_path):
    write_jobs(tmp_path / "in.jsonl", 12)
    fifo = tmp_path / "jobs.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    with run_in_thread(SimConfig()) as base_url:
        proc = cli("run", str(fifo), "-o", str(out), "--base-url", base_url)  # progress on
        with open(fifo, "wb") as f:
            f.write((tmp_path / "in.jsonl").read_bytes())
        code, _, err = finish(proc)
    assert code == 0, err
    assert len(read_results(out)) == 12


@pytest.mark.slow
def test_a_key_that_does_not_look_like_one_is_still_kept_out_of_every_file(tmp_path):
    """An Azure-style hex key echoed by a server in its 401 message."""
    import threading
    from aiohttp import web

    key = "0123456789abcdef0123456789abcdef"

    async def reject(request):
        return web.json_response({"error": {"code": "401", "message": f"invalid subscription key {key}"}},
                                 status=401)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", reject)
    loop = asyncio.new_event_loop()
    runner_ = web.AppRunner(app)
    loop.run_until_complete(runner_.setup())
    site = web.TCPSite(runner_, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        write_jobs(tmp_path / "in.jsonl", 3, kinds=("chat",))
        proc = subprocess.run([sys.executable, "-m", "runner", "run", str(tmp_path / "in.jsonl"),
                               "-o", str(tmp_path / "out.jsonl"), "--base-url", f"http://127.0.0.1:{port}/v1",
                               "--log-file", str(tmp_path / "run.log"), "--summary-json", str(tmp_path / "s.json")],
                              cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": key}, capture_output=True, text=True,
                              timeout=60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
    assert proc.returncode == 3
    for text in (proc.stdout, proc.stderr, (tmp_path / "run.log").read_text(), (tmp_path / "s.json").read_text()):
        assert key not in text
    assert "[REDACTED]" in (tmp_path / "s.json").read_text()
