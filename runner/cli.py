"""The command line: click parses and checks, builds a config, calls one function."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from runner import report
from runner.checkpoint import CheckpointError
from runner.dispatch import DEFAULT_CONCURRENCY, MAX_ATTEMPTS, DispatchConfig
from runner.endpoint import DEFAULT_BASE_URL, Endpoint
from runner.limiter import DEFAULT_BURST_S
from runner.run import RunConfig, run
from runner.transport import READ_TIMEOUT_S

EXIT_CODES_HELP = """\b
Exit codes:
  0  every job succeeded
  1  the run finished but some jobs failed (their error lines are in OUTPUT)
  2  usage error or unreadable input
  3  stopped early and resumable: quota exhausted, key rejected, or interrupted
     by a signal; run the same command again to resume
"""


class PositiveFloat(click.ParamType):
    name = "number"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, float):
            return value
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)
        if not number > 0 or number == float("inf"):
            self.fail(f"{value!r} must be a positive number", param, ctx)
        return number


POSITIVE = PositiveFloat()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run JSONL batch jobs (OpenAI Batch API format) against an OpenAI-compatible API:
    paced to the rate limits, packed where the API allows, resumable after any interruption."""


@main.command("run", epilog=EXIT_CODES_HELP)
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Result file (Batch API output format); also the checkpoint a rerun resumes from.")
@click.option("--rpm", type=POSITIVE, help="Requests per minute allowed (default: learned from the API's headers).")
@click.option("--tpm", type=POSITIVE, help="Tokens per minute allowed (default: learned from the API's headers).")
@click.option("--burst", "burst_s", type=POSITIVE, default=DEFAULT_BURST_S, show_default=True,
              help="Seconds of budget the API lets you spend at once.")
@click.option("--concurrency", type=click.IntRange(1, 4096), default=DEFAULT_CONCURRENCY,
              show_default=True, help="Most requests in flight (and open connections).")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=MAX_ATTEMPTS, show_default=True,
              help="Attempts per request before a transient failure is written (a rerun retries it).")
@click.option("--retry-failed", is_flag=True, help="Also retry jobs that failed permanently (400, 404, ...) before.")
@click.option("--base-url", envvar="OPENAI_BASE_URL", default=DEFAULT_BASE_URL, show_default=True,
              help="API base URL [env: OPENAI_BASE_URL].")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Name of the environment variable holding the API key.")
@click.option("--timeout", "read_timeout", type=POSITIVE, default=READ_TIMEOUT_S, show_default=True,
              help="Seconds to wait for an answer before retrying.")
@click.option("--no-pack", is_flag=True,
              help="Send every job alone (by default completions and embeddings that differ only "
                   "in prompt/input share requests).")
@click.option("--no-progress", is_flag=True, help="No live progress display or status lines.")
def run_command(input_path: str, output: Path, rpm: float | None, tpm: float | None, burst_s: float,
                concurrency: int, max_attempts: int, retry_failed: bool, base_url: str,
                api_key_env: str, read_timeout: float, no_pack: bool, no_progress: bool) -> None:
    """Run the jobs of INPUT ("-" for stdin), appending one result line per job to OUTPUT.

    A rerun with the same OUTPUT skips jobs that succeeded, retries transient failures, and keeps
    permanent failures unless --retry-failed. Reruns match jobs by custom_id, so stdin is resumable
    when the same jobs are piped again.
    """
    if input_path != "-":
        _check_readable(input_path)
    api_key = os.environ.get(api_key_env, "")
    if not api_key:
        _usage_error(f"no API key: set the environment variable {api_key_env} "
                     f"(or name another one with --api-key-env)")
    config = RunConfig(
        input=input_path, output=output, endpoint=Endpoint(base_url=base_url, api_key=api_key),
        rpm=rpm, tpm=tpm, burst_s=burst_s,
        dispatch=DispatchConfig(max_attempts=max_attempts, concurrency=concurrency,
                                retry_failed=retry_failed),
        pack=not no_pack, read_timeout=read_timeout)
    sys.exit(_execute(config, progress=not no_progress))


def _check_readable(path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        _usage_error(f"cannot read input {path}: {e.strerror}")


def _usage_error(message: str) -> None:
    click.echo(f"runner: {message}", err=True)
    sys.exit(report.EXIT_USAGE)


def _execute(config: RunConfig, *, progress: bool = True) -> int:
    console = Console(stderr=True)
    try:
        stats = asyncio.run(run(config, console=console, progress=progress))
    except CheckpointError as e:
        click.echo(f"runner: {e}", err=True)
        return report.EXIT_USAGE
    for line in report.summary_lines(stats, str(config.output)):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    return stats.exit_code()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--rpm", type=click.IntRange(1), help="Requests per minute per model.")
@click.option("--tpm", type=click.IntRange(1), help="Tokens per minute per model.")
@click.option("--burst", "burst_s", type=POSITIVE, default=60.0, show_default=True,
              help="Bucket capacity in seconds of budget.")
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Probability that a request meets an injected fault.")
@click.option("--faults", default="500,503,reset,truncated", show_default=True,
              help="Comma-separated fault kinds: 500, 503, hang, reset, truncated, missing_choice.")
@click.option("--quota", "quota_requests", type=click.IntRange(0),
              help="Answer insufficient_quota after this many successful requests.")
@click.option("--seed", type=int, default=0, show_default=True)
def simulate(host: str, port: int, rpm: int | None, tpm: int | None, burst_s: float,
             latency_ms: float, fault_rate: float, faults: str, quota_requests: int | None,
             seed: int) -> None:
    """Serve a simulated OpenAI-compatible API (and Azure OpenAI URL shapes) for trying runner out."""
    from runner.simulator import SimConfig, serve
    try:
        config = SimConfig(rpm=rpm, tpm=tpm, burst_s=burst_s, latency_ms=latency_ms,
                           fault_rate=fault_rate,
                           faults=tuple(f.strip() for f in faults.split(",") if f.strip()),
                           quota_requests=quota_requests, seed=seed)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    serve(config, host, port)


DEMO_INPUT = Path(__file__).resolve().parent.parent / "examples" / "demo.jsonl"


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("demo-results.jsonl"), show_default=True,
              help="Where the demo writes its results (replaced on each demo run).")
def demo(output: Path) -> None:
    """Run examples/demo.jsonl against the built-in simulated API: no key, no network."""
    from runner.simulator import SimConfig, run_in_thread
    if not DEMO_INPUT.exists():
        _usage_error(f"demo job file not found: {DEMO_INPUT}")
    output.unlink(missing_ok=True)
    sim = SimConfig(rpm=1200, tpm=400_000, burst_s=2.0, latency_ms=80, fault_rate=0.03, seed=7)
    click.echo(f"runner demo: simulated API with RPM {sim.rpm}, TPM {sim.tpm:,}, "
               f"{sim.fault_rate:.0%} injected faults; jobs {DEMO_INPUT.name} -> {output}", err=True)
    with run_in_thread(sim) as base_url:
        config = RunConfig(input=str(DEMO_INPUT), output=output,
                           endpoint=Endpoint(base_url=base_url, api_key="sk-demo"),
                           dispatch=DispatchConfig(max_attempts=8))
        code = _execute(config)
    click.echo(f"runner demo: exit code {code}; results in {output}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
