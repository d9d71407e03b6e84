"""Progress, summary and logs: on a fake clock, with the API key never shown."""
import asyncio
import datetime
import io
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from runner.clock import run_virtual
from runner.report.prices import load_prices
from runner.report.progress import ProgressReporter, Speed, fmt_duration, status_line
from runner.redact import redact
from runner.report.log import RunLog, console_echo, terminal_console
from runner.report.stats import ModelUsage, RunStats
from runner.report.summary import summary_dict, summary_lines
from runner.live.run import RunConfig, run
from runner.api.endpoint import Endpoint
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator, run_in_thread
from runner.api.transport import HttpResponse
from tests.conftest import Script

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-proj-SECRETSECRETSECRET1234"


def test_status_line_reports_counts_speed_eta_and_limits():
    stats = RunStats(succeeded=40, already_done=10, rate_limited=3, in_flight=5)
    stats.failed["invalid_request"] = 2
    speed = Speed()
    speed.sample(0.0, 0, 0)
    speed.sample(10.0, 50, 5000)
    line = status_line(stats, 100, speed, "gpt-4o 900 RPM / 240,000 TPM")
    assert "50/100 done" in line and "2 failed" in line and "48 pending" in line
    assert "5.0 jobs/s" in line and "500 tok/s" in line and "ETA 10s" in line
    assert "429s 3" in line and "gpt-4o 900 RPM" in line


def test_speed_follows_a_trailing_window():
    speed = Speed(window=30)
    for t in range(0, 100, 5):
        speed.sample(float(t), t * (10 if t < 60 else 1), 0)
    assert speed.rates()[0] == 1.0


def test_fmt_duration():
    assert [fmt_duration(x) for x in (None, 0, 59.6, 61, 3725)] == ["?", "0s", "1m00s", "1m01s", "1h02m05s"]


def test_non_tty_run_logs_one_status_line_per_interval_on_virtual_time():
    lines = []
    stats = RunStats()

    async def main():
        loop = asyncio.get_running_loop()
        reporter = ProgressReporter(stats, 1000, console=Console(file=io.StringIO()), clock=loop.time,
                                    tty=False, log_interval=30.0, log=lines.append)
        task = asyncio.create_task(reporter.run())
        await asyncio.sleep(0.5)  # counts change half-way between reports
        for _ in range(100):
            stats.succeeded += 2
            await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    run_virtual(main())
    assert len(lines) == 3
    assert lines[0].startswith("60/1,000 done") and "2.0 jobs/s" in lines[0] and "ETA 7m50s" in lines[0]


def test_tty_display_renders_a_bar_and_the_status_line():
    stats = RunStats(succeeded=5)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    now = [0.0]
    reporter = ProgressReporter(stats, 10, console=console, clock=lambda: now[0], tty=True)
    reporter.line()
    now[0], stats.succeeded = 5.0, 10
    console.print(reporter.renderable())
    text = console.file.getvalue()
    assert "10/10 done" in text and "1.0 jobs/s" in text and "━" in text


def summary_stats():
    stats = RunStats(started=0.0, finished=120.0, jobs=10, succeeded=8, requests=12, retries=2,
                     rate_limited=1)
    stats.failed["context_length_exceeded"] = 2
    stats.usage["gpt-4o-mini"] = ModelUsage(prompt_tokens=1_000_000, completion_tokens=500_000, jobs=8)
    stats.model_requests["gpt-4o-mini"] = 12
    stats.model_charged["gpt-4o-mini"] = 6000
    stats.limits["gpt-4o-mini"] = (900.0, 240_000.0)
    stats.sent("gpt-4o-mini", 0.0)
    stats.answered("gpt-4o-mini", 120.0)
    return stats


def test_summary_json_has_counts_tokens_rates_and_cost():
    data = summary_dict(summary_stats(), "out.jsonl", load_prices())
    assert data["exit_code"] == 1 and data["jobs"]["succeeded"] == 8
    assert data["failures_by_code"] == {"context_length_exceeded": 2}
    assert data["requests"] == {"sent": 12, "retries": 2, "rate_limited_429": 1, "bisect_extra": 0}
    m = data["models"]["gpt-4o-mini"]
    assert m["achieved_rpm"] == 6.0 and m["allowed_rpm"] == 900.0
    assert m["achieved_tpm"] == 3000.0 and m["allowed_tpm"] == 240_000.0
    price = load_prices().lookup("gpt-4o-mini")
    assert m["estimated_cost_usd"] == round(price.input + price.output / 2, 6)
    assert data["estimated_cost_usd"] == m["estimated_cost_usd"]
    assert any("failures: context_length_exceeded 2" in line for line in summary_lines(summary_stats(), "o"))


def test_rates_are_over_the_time_requests_were_sent_not_the_wall_time():
    stats = summary_stats()
    stats.finished = 600.0  # e.g. a long read of the input before the first request
    assert summary_dict(stats, "o")["models"]["gpt-4o-mini"]["achieved_rpm"] == 6.0


def test_a_model_whose_every_request_was_refused_gets_no_rate():
    # issue 21: a run answered 404 throughout reported "208,254 of ? RPM"
    stats = RunStats(started=0.0, finished=90.0, jobs=5000, requests=5000)
    stats.failed["not_found"] = 5000
    stats.model_requests["gpt-4o-mini"] = 5000
    stats.sent("gpt-4o-mini", 0.0)
    stats.answered("gpt-4o-mini", 90.0)
    data = summary_dict(stats, "o", load_prices())
    assert data["models"]["gpt-4o-mini"]["achieved_rpm"] is None
    text = "\n".join(summary_lines(stats, "o", load_prices()))
    assert "RPM" not in text and "of ?" not in text


def test_a_run_too_short_for_a_per_minute_rate_says_its_requests_and_time_instead():
    # issue 21: the demo's first screen showed "3,589 of 3,000 RPM"
    stats = summary_stats()
    stats.answered("gpt-4o-mini", 8.6)
    stats.model_sending["gpt-4o-mini"] = (0.0, 8.6)
    assert summary_dict(stats, "o")["models"]["gpt-4o-mini"]["achieved_rpm"] is None
    line = next(l for l in summary_lines(stats, "o") if l.startswith("gpt-4o-mini"))
    assert "12 requests over 8.6s" in line and "RPM" not in line


def test_an_unknown_limit_is_not_shown_as_of_question_mark():
    stats = summary_stats()
    stats.limits["gpt-4o-mini"] = (None, None)
    line = next(l for l in summary_lines(stats, "o") if l.startswith("gpt-4o-mini"))
    assert "6 RPM" in line and "?" not in line


def test_batch_submissions_get_no_rate_and_one_statement_of_their_prices():
    from runner.report.batches import batch_summary
    from runner.report.prices import batch_price_table
    from runner.batch.run import BatchStats
    stats = BatchStats(**{k: getattr(summary_stats(), k) for k in (
        "started", "finished", "jobs", "succeeded", "requests", "usage", "model_requests",
        "model_sending", "limits")}, live=False)
    prices = batch_price_table(load_prices())
    data = summary_dict(stats, "o", prices)
    assert data["models"]["gpt-4o-mini"]["achieved_rpm"] is None
    text = "\n".join(summary_lines(stats, "o", prices) + [batch_summary(stats)])
    assert "RPM" not in text and "list prices" not in text
    assert text.count("Batch API prices (0.5 x list)") == 1


def test_a_cancel_does_not_claim_an_empty_input():
    from runner.batch.run import BatchStats
    stats = BatchStats(live=False, reads_input=False, succeeded=3)
    assert "0 in input" not in summary_lines(stats, "o")[1]
    assert "INPUT not read" in summary_lines(stats, "o")[1]


def test_unknown_models_have_no_cost_rather_than_a_guess():
    stats = summary_stats()
    stats.usage["my-finetune"] = ModelUsage(prompt_tokens=10, completion_tokens=10, jobs=1)
    data = summary_dict(stats, "o", load_prices())
    assert data["models"]["my-finetune"]["estimated_cost_usd"] is None


def test_log_file_lines_are_timestamped_and_redacted(tmp_path):
    echoed = []
    stamp = datetime.datetime(2026, 11, 25, 3, 0, 0, tzinfo=datetime.timezone.utc)
    log = RunLog(echoed.append, tmp_path / "run.log", secrets=(KEY,), now=lambda: stamp)
    log(f"server said: Incorrect API key provided: {KEY}")
    log("quiet line", echo=False)
    log.close()
    assert echoed == ["server said: Incorrect API key provided: [REDACTED]"]
    assert (tmp_path / "run.log").read_text().splitlines() == [
        "2026-11-25T03:00:00+00:00 server said: Incorrect API key provided: [REDACTED]",
        "2026-11-25T03:00:00+00:00 quiet line"]
    assert redact("short", ("abc",)) == "short"


def test_off_a_terminal_messages_are_written_as_plain_lines_exactly_as_given(capsys, monkeypatch):
    """No rich there: nothing is replaced (":x:" is no emoji) and the stderr of the moment gets it."""
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    console = terminal_console()
    assert console is None
    echo = console_echo(console)
    echo("line 3: not JSON: 'a :x: [bold]b[/bold]'")
    echo("")
    assert capsys.readouterr().err == "line 3: not JSON: 'a :x: [bold]b[/bold]'\n\n"


def test_on_a_terminal_messages_pass_through_rich_as_given():
    out = io.StringIO()
    console_echo(Console(file=out, force_terminal=True, width=20))(
        "line 3: not JSON: 'a :x: [bold]b[/bold]' and more than twenty columns")
    assert out.getvalue() == "line 3: not JSON: 'a :x: [bold]b[/bold]' and more than twenty columns\n"


def test_force_color_makes_a_pipe_a_terminal_as_rich_says(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert terminal_console() is not None
    monkeypatch.setenv("FORCE_COLOR", "")
    assert terminal_console() is None


def test_the_key_never_reaches_output_lines_even_if_a_server_echoes_it(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": "gpt-4o-mini", "messages": []}}) + b"\n")
    echo = HttpResponse(400, {}, orjson.dumps({"error": {"message": f"bad key {KEY}", "code": "x", "param": None}}))
    logged = []
    stats = asyncio.run(run(RunConfig(input=str(src), output=tmp_path / "out.jsonl",
                                      endpoint=Endpoint(base_url="http://x/v1", api_key=KEY)),
                            send=Script(lambda n, req, body: echo), progress=False,
                            handle_signals=False, log=logged.append))
    assert stats.failed_total == 1
    out = (tmp_path / "out.jsonl").read_text()
    assert KEY not in out and "[REDACTED]" in out


@pytest.mark.slow  # starts a subprocess
def test_cli_never_shows_the_key_in_stderr_log_summary_or_output(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"custom_id": f"j{i}", "method": "POST", "url": "/v1/chat/completions",
                                           "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}}) + b"\n"
                             for i in range(5)))
    with run_in_thread(SimConfig(api_key="sk-the-right-key-000000")) as base_url:  # ours is rejected: 401
        proc = subprocess.run([sys.executable, "-m", "runner", "run", str(src), "-o", str(tmp_path / "out.jsonl"),
                               "--base-url", base_url, "--log-file", str(tmp_path / "run.log"),
                               "--summary-json", str(tmp_path / "summary.json"), "--no-progress"],
                              cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": KEY}, capture_output=True, text=True)
    assert proc.returncode == 3 and "invalid_api_key" in proc.stderr
    for text in (proc.stdout, proc.stderr, (tmp_path / "run.log").read_text(),
                 (tmp_path / "summary.json").read_text(), (tmp_path / "out.jsonl").read_text()):
        assert KEY not in text and KEY[:12] + "" not in text.replace("[REDACTED]", "")


@pytest.mark.slow  # starts a subprocess
def test_azure_deployments_end_to_end_with_api_key_header(tmp_path):
    src = tmp_path / "in.jsonl"
    jobs = [{"custom_id": f"a{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}} for i in range(30)]
    jobs += [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "text-embedding-3-small", "input": f"t{i}"}} for i in range(30)]
    src.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    sim = Simulator(SimConfig(rpm=600, tpm=100_000, burst_s=1, api_key="azure-key-123456789"))
    with run_in_thread(simulator=sim) as base_url:
        endpoint = base_url.removesuffix("/v1")
        env = {**os.environ, "AZURE_OPENAI_API_KEY": "azure-key-123456789", "OPENAI_API_VERSION": "2024-10-21"}
        env.pop("OPENAI_API_KEY", None)
        proc = subprocess.run([sys.executable, "-m", "runner", "run", str(src), "-o", str(tmp_path / "out.jsonl"),
                               "--azure-endpoint", endpoint, "--deployment", "gpt-4o-mini=chat-prod",
                               "--rpm", "600", "--tpm", "100000",
                               "--summary-json", str(tmp_path / "s.json"), "--no-progress"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    records = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert len(records) == 60 and all(r["error"] is None for r in records)
    assert sim.budget("chat-prod") is not None  # the deployment, not the model, was addressed
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert summary["requests"]["rate_limited_429"] <= 1


@pytest.mark.slow  # starts a subprocess
def test_azure_without_api_version_is_a_usage_error(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_VERSION"}
    env["AZURE_OPENAI_API_KEY"] = "k" * 10
    proc = subprocess.run([sys.executable, "-m", "runner", "run", str(src), "-o", str(tmp_path / "o"),
                           "--azure-endpoint", "http://127.0.0.1:9"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "api-version" in proc.stderr


def test_a_short_runs_rate_above_the_limit_is_explained_by_the_opening_burst():
    stats = summary_stats()
    stats.model_sending["gpt-4o-mini"] = (0.0, 72.0)  # 12 requests in 72 s: 10 a minute, of 8
    stats.limits["gpt-4o-mini"] = (8.0, 240_000.0)
    [line] = [line for line in summary_lines(stats, "o") if line.startswith("gpt-4o-mini")]
    assert "10 of 8 RPM" in line and "opening burst" in line
    [line] = [line for line in summary_lines(summary_stats(), "o") if line.startswith("gpt-4o-mini")]
    assert "opening burst" not in line
    stats.model_sending["gpt-4o-mini"] = (0.0, 600.0)  # a long run above a limit lowered on the way
    stats.model_requests["gpt-4o-mini"] = 1200
    stats.limits["gpt-4o-mini"] = (90.0, 240_000.0)
    [line] = [line for line in summary_lines(stats, "o") if line.startswith("gpt-4o-mini")]
    assert "120 of 90 RPM" in line and "opening burst" not in line


def test_a_stderr_that_is_gone_does_not_stop_the_log_file_or_the_run(tmp_path, monkeypatch):
    from runner.report.log import RunLog, console_echo

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stderr", ClosedPipe())
    log = RunLog(console_echo(None), tmp_path / "run.log")
    log("first")  # `runner ... 2>&1 | head -1` has gone away
    log("summary: 60 succeeded")
    log.close()
    assert (tmp_path / "run.log").read_text().count("\n") == 2


def test_status_lines_show_tokens_and_spend_so_far():
    from runner.report.progress import ProgressReporter
    stats = summary_stats()
    reporter = ProgressReporter(stats, 10, console=None, clock=lambda: 0.0, tty=False,
                                prices=load_prices())
    price = load_prices().lookup("gpt-4o-mini")
    assert "tokens 1,000,000 in / 500,000 out" in reporter.line()
    assert f"~${price.input + price.output / 2:,.4f} spent" in reporter.line()


def test_status_lines_under_a_cap_show_spend_against_it():
    from jobs.spend import Spend
    from runner.report.progress import ProgressReporter
    spend = Spend(5.0)
    spend.pay(1.25)
    reporter = ProgressReporter(summary_stats(), 10, console=None, clock=lambda: 0.0, tty=False,
                                prices=load_prices(), spend=spend)
    assert "$1.2500 spent of the $5 cap" in reporter.line()


def test_image_lanes_show_images_per_minute_against_their_limit():
    from runner.report.progress import ProgressReporter
    stats, now = RunStats(), [0.0]
    reporter = ProgressReporter(stats, 100, console=None, clock=lambda: now[0], tty=False,
                                image_limit=lambda model: 120.0)
    stats.model_images["dall-e-2"] = 10
    reporter.line()
    now[0], stats.model_images["dall-e-2"] = 30.0, 70  # 60 images in 30 s
    assert "dall-e-2 120 of 120 IPM" in reporter.line()
