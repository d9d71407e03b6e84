"""--metrics-file (issue 21, item 7): the Prometheus text format for node_exporter's textfile
collector, written atomically while the run goes and at its end; never the key."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from runner.cli.main import main
from runner.report.metrics import MetricsFile
from runner.report.prices import load_prices
from runner.report.stats import ModelUsage, RunStats
from runner.simulator.server import SimConfig, Simulator, run_in_thread
from tests.test_e2e import write_jobs

KEY = "sk-metrics-secret-0123456789abcdefXYZ"


def samples(path):
    """{(name, frozenset(labels)): value} of a metrics file, read by prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(found, name, **labels):
    wanted = {("output", "out.jsonl"), *labels.items()}
    return found[name, frozenset(wanted)]


def stats():
    s = RunStats(jobs=10, succeeded=6, already_done=1, requests=9, retries=2, rate_limited=1,
                 input_lines=10)
    s.failed["not_found"] = 2
    s.usage["gpt-4o-mini"] = ModelUsage(prompt_tokens=1000, completion_tokens=500, jobs=6)
    return s


def test_the_file_holds_jobs_requests_tokens_and_cost_by_model(tmp_path):
    now = [1_700_000_000.0]
    metrics = MetricsFile(tmp_path / "runner.prom", tmp_path / "out.jsonl", stats(),
                          prices=load_prices(), clock=lambda: now[0])
    now[0] += 60
    metrics.write()
    found = samples(tmp_path / "runner.prom")
    assert value(found, "runner_jobs", state="done") == 7
    assert value(found, "runner_jobs", state="failed") == 2
    assert value(found, "runner_jobs", state="pending") == 1
    assert value(found, "runner_jobs_failed_total", code="not_found") == 2
    assert value(found, "runner_requests_total") == 9
    assert value(found, "runner_rate_limited_total") == 1
    assert value(found, "runner_retries_total") == 2
    assert value(found, "runner_tokens_total", model="gpt-4o-mini", direction="prompt") == 1000
    assert value(found, "runner_cost_usd_total", model="gpt-4o-mini") > 0
    assert value(found, "runner_last_success_timestamp_seconds") == now[0]
    assert value(found, "runner_start_timestamp_seconds") == now[0] - 60
    assert value(found, "runner_running") == 1
    assert ("runner_exit_code", frozenset({("output", "out.jsonl")})) not in found
    metrics.finish(1)
    found = samples(tmp_path / "runner.prom")
    assert value(found, "runner_exit_code") == 1 and value(found, "runner_running") == 0


def test_last_success_moves_only_when_a_job_succeeds(tmp_path):
    now = [100.0]
    s = stats()
    metrics = MetricsFile(tmp_path / "m.prom", tmp_path / "out.jsonl", s, clock=lambda: now[0])
    metrics.write()
    now[0] = 1000.0
    metrics.write()  # nothing new succeeded
    assert value(samples(tmp_path / "m.prom"), "runner_last_success_timestamp_seconds") == 100.0
    s.succeeded += 1
    metrics.write()
    assert value(samples(tmp_path / "m.prom"), "runner_last_success_timestamp_seconds") == 1000.0


def test_the_file_is_replaced_whole_never_written_in_place(tmp_path):
    path = tmp_path / "m.prom"
    metrics = MetricsFile(path, tmp_path / "out.jsonl", stats())
    metrics.write()
    before = os.stat(path).st_ino
    metrics.write()
    assert os.stat(path).st_ino != before  # a new file renamed over the old: a scrape reads one whole
    assert [p.name for p in tmp_path.iterdir()] == ["m.prom"]  # no temporary file left


def test_an_unwritable_metrics_file_is_said_once_and_the_run_goes_on(tmp_path):
    said = []
    metrics = MetricsFile(tmp_path / "no" / "m.prom", tmp_path / "out.jsonl", stats(),
                          log=said.append)
    metrics.write()
    metrics.write()
    assert len(said) == 1 and "cannot write the metrics file" in said[0]


@pytest.fixture
def sim(monkeypatch):
    with run_in_thread(simulator=Simulator(SimConfig())) as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        yield base_url


def test_a_run_writes_its_metrics_with_the_exit_code_and_never_the_key(tmp_path, sim):
    write_jobs(tmp_path / "in.jsonl", 9)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o",
                                       str(tmp_path / "out.jsonl"), "--no-progress",
                                       "--metrics-file", str(tmp_path / "runner.prom")])
    assert result.exit_code == 0
    text = (tmp_path / "runner.prom").read_text()
    assert KEY not in text and "sk-" not in text
    found = samples(tmp_path / "runner.prom")
    assert value(found, "runner_exit_code") == 0
    assert value(found, "runner_jobs", state="done") == 9
    assert value(found, "runner_jobs", state="pending") == 0
    assert value(found, "runner_requests_total") >= 3


def test_a_run_that_cannot_start_still_leaves_its_exit_code(tmp_path, sim):
    write_jobs(tmp_path / "in.jsonl", 2)
    (tmp_path / "out.jsonl.lock").mkdir()  # an unusable OUTPUT: exit 2 before any job
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o",
                                       str(tmp_path / "in.jsonl"), "--no-progress",
                                       "--metrics-file", str(tmp_path / "runner.prom")])
    assert result.exit_code == 2
    found = samples(tmp_path / "runner.prom")
    assert found["runner_exit_code", frozenset({("output", "in.jsonl")})] == 2


def test_the_file_is_written_at_every_interval_while_the_run_goes(tmp_path):
    import asyncio
    from runner.clock import run_virtual
    metrics = MetricsFile(tmp_path / "m.prom", tmp_path / "out.jsonl", stats())
    writes = []
    metrics.write = lambda: writes.append(asyncio.get_running_loop().time())

    async def go():
        task = asyncio.create_task(metrics.run(15.0))
        await asyncio.sleep(40)
        task.cancel()
    run_virtual(go())
    assert writes == [0.0, 15.0, 30.0]


def test_a_batch_run_writes_its_metrics_while_it_waits_for_its_batches(tmp_path, loop):
    # a batch takes minutes: monitoring must see the run going (and its lines submitted) during
    # them, not only at its end
    from runner.api.endpoint import Endpoint
    from runner.batch.run import BatchRunConfig, run_batch
    from runner.simulator.batches import BatchConfig

    write_jobs(tmp_path / "in.jsonl", 30)
    sim = Simulator(SimConfig(), clock=loop.time,
                    batch=BatchConfig(lines_per_s=0.1, validate_s=2, finalize_s=1))
    loop.run_until_complete(sim.start())
    metrics = MetricsFile(tmp_path / "m.prom", tmp_path / "out.jsonl")
    seen = []
    write = metrics.write

    def record():
        write()
        found = samples(tmp_path / "m.prom")
        seen.append((loop.time(), value(found, "runner_running"),
                     value(found, "runner_requests_total")))

    metrics.write = record
    config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                            endpoint=Endpoint(base_url=sim.base_url, api_key=KEY), poll_every=5.0)
    try:
        stats = loop.run_until_complete(run_batch(config, progress=False, handle_signals=False,
                                                  log=lambda m: None, metrics=metrics))
    finally:
        loop.run_until_complete(sim.stop())
    assert stats.exit_code() == 0 and stats.succeeded == 30
    started = seen[0][0]
    during = [(t - started, requests) for t, running, requests in seen if running == 1]
    assert len(during) >= 5  # the batch took about two minutes: a write every 15 s
    assert during[-1][0] >= 60  # the lines submitted, seen while the batch was still running
    assert stats.requests > 0 and during[-1][1] == stats.requests
