"""`runner run --via batch` as a user runs it: the real command line in subprocesses against the
simulator's Batch API (marked slow: real time), SIGKILL at random moments, then cron-style
`--no-wait` runs until the work is done."""
from __future__ import annotations

import random
import signal
import time

import orjson
import pytest

from runner.simulator.batches import BatchConfig
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator, run_in_thread
from tests.test_e2e import assert_exactly_once, cli, finish, read_results, write_jobs


@pytest.mark.slow
def test_sigkill_three_times_across_submit_poll_and_collect_then_no_wait_runs_finish_it(tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    rng = random.Random(2027)
    # a batch of 20 lines takes 10 s (2 lines a second): every batch is still running when the
    # kills are over (at most ~8 s in), so the first --no-wait run finds batches open (exit 4)
    sim = Simulator(SimConfig(fault_rate=0.05, faults=("500", "503"), seed=9),
                    batch=BatchConfig(lines_per_s=2, validate_s=0.3, finalize_s=0.2))
    with run_in_thread(simulator=sim) as base_url:
        args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--via", "batch",
                "--base-url", base_url, "--poll-every", "0.2", "--batch-max-requests", "20",
                "--max-attempts", "10", "--no-progress"]
        for _ in range(3):
            proc = cli(*args)
            time.sleep(rng.uniform(0.3, 2.0))
            assert proc.poll() is None, finish(proc)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        codes = []
        for _ in range(60):  # cron, every few seconds here
            code, _, err = finish(cli(*args, "--no-wait"))
            codes.append(code)
            if code != 4:
                break
            time.sleep(0.5)
        batches = sim.batches.stats
    assert codes[-1] == 0, err
    assert codes[0] == 4 and codes[-1] == 0
    records = read_results(out)
    assert len(records) == len(jobs)
    assert_exactly_once(jobs, records)
    twice = {key: ids for key, ids in batches.paid.items() if len(ids) > 1}
    assert not twice  # no job answered by two batches
    state = [orjson.loads(x) for x in (tmp_path / "out.jsonl.batches").read_bytes().splitlines()]
    assert b"sk-test-key" not in (tmp_path / "out.jsonl.batches").read_bytes()
    assert {e["event"] for e in state} >= {"run", "planned", "uploaded", "created", "closed"}


@pytest.mark.slow  # real time: the simulator runs in a thread
def test_the_commands_no_wait_status_refresh_cancel_and_run_again(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from runner.cli.main import main
    jobs = write_jobs(tmp_path / "in.jsonl", 30, kinds=("chat",))
    out = tmp_path / "out.jsonl"
    sim = Simulator(SimConfig(), batch=BatchConfig(lines_per_s=2, validate_s=0.2))
    with run_in_thread(simulator=sim) as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-key-0123456789")
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--via", "batch", "--no-progress",
                "--poll-every", "0.2"]
        first = CliRunner().invoke(main, [*args, "--no-wait"])
        assert first.exit_code == 4, first.output
        status = CliRunner().invoke(main, ["status", str(tmp_path / "in.jsonl"), "-o", str(out),
                                           "--refresh"])
        assert status.exit_code == 4 and "batch_" in status.output, status.output
        assert "validating" in status.output or "in_progress" in status.output
        time.sleep(1.0)  # a line or two answered
        cancel = CliRunner().invoke(main, ["cancel", str(tmp_path / "in.jsonl"), "-o", str(out),
                                           "--poll-every", "0.2"])
        assert cancel.exit_code == 0, cancel.output
        assert sim.batches.stats.by_status["cancelled"] == 1
        sim.batches.config = BatchConfig(lines_per_s=1000, validate_s=0.2, finalize_s=0.1)
        final = CliRunner().invoke(main, args)
        assert final.exit_code == 0, final.output
    assert_exactly_once(jobs, read_results(out))


@pytest.mark.slow
def test_sigterm_exits_3_within_seconds_and_a_no_wait_run_carries_on(tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 40, kinds=("chat",))
    out, log = tmp_path / "out.jsonl", tmp_path / "runner.log"
    sim = Simulator(SimConfig(), batch=BatchConfig(lines_per_s=10, validate_s=0.5))
    with run_in_thread(simulator=sim) as base_url:
        args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--via", "batch",
                "--base-url", base_url, "--log-file", str(log)]
        proc = cli(*args)  # --wait, polling every 10 s by default
        deadline = time.monotonic() + 30  # signalled once its batch runs (a loaded machine is slow)
        while sim.batches.stats.created < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the create's answer on its way back, the journal line written
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc, timeout=30)
        assert code == 3, err
        assert time.monotonic() - started < 10
        assert sim.batches.stats.created == 1
        codes = []
        for _ in range(40):
            code, _, err = finish(cli(*args, "--no-wait", "--no-progress"))
            codes.append(code)
            if code != 4:
                break
            time.sleep(0.5)
    assert codes[-1] == 0, err
    assert sim.batches.stats.created == 1  # the batch left running was collected, not sent again
    assert_exactly_once(jobs, read_results(out))
    for path in (out, log, tmp_path / "out.jsonl.batches"):
        assert b"sk-test-key" not in path.read_bytes()


@pytest.mark.slow  # real time: the simulator runs in a thread
def test_via_and_wait_come_from_the_environment_and_the_config_file(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from runner.cli.main import main
    jobs = write_jobs(tmp_path / "in.jsonl", 6, kinds=("chat",))
    sim = Simulator(SimConfig(), batch=BatchConfig(lines_per_s=1000, validate_s=0.5, finalize_s=0.1))
    with run_in_thread(simulator=sim) as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key")
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        monkeypatch.setenv("RUNNER_VIA", "batch")
        monkeypatch.setenv("RUNNER_WAIT", "false")
        args = ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--no-progress"]
        assert CliRunner().invoke(main, args).exit_code == 4  # submitted, not waited for
        monkeypatch.delenv("RUNNER_VIA")
        monkeypatch.delenv("RUNNER_WAIT")
        (tmp_path / "runner.toml").write_text('via = "batch"\npoll_every = 0.2\n')
        done = CliRunner().invoke(main, [*args, "--config", str(tmp_path / "runner.toml")])
        assert done.exit_code == 0, done.output
    assert sim.batches.stats.created == 1
    assert_exactly_once(jobs, read_results(tmp_path / "out.jsonl"))


def test_a_batch_max_bytes_too_small_for_any_line_is_a_usage_error(tmp_path):
    from click.testing import CliRunner
    from runner.cli.main import main
    write_jobs(tmp_path / "in.jsonl", 3, kinds=("chat",))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o",
                                       str(tmp_path / "out.jsonl"), "--via", "batch",
                                       "--batch-max-bytes", "100", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "--batch-max-bytes" in result.output and "1024" in result.output
    assert not (tmp_path / "out.jsonl").exists()
