"""The command line: click parses and checks, builds a config, calls one function.

Each command is thin: options shared by several commands are declared once
(`runner.cli.options`), configs are built from the parsed options (`runner.cli.build`), and one
function runs them. Start-up: what only one command runs (the batch backend, the reports of
`estimate` and `status`, `merge`, the simulator) is imported by that command, so `runner --help`
and a live `runner run` load none of it."""
from __future__ import annotations

import asyncio
import glob
import os
import stat
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from jobs.intake import ChangedPolicy
from runner.api.transport import READ_TIMEOUT_S
from runner.batch.plan import MAX_FILE_BYTES as BATCH_MAX_BYTES, MIN_FILE_BYTES
from runner.cli import build
from runner.cli.build import usage_error
from runner.cli.config import configurable
from runner.cli.options import (
    POSITIVE, CodeList, ShardType, batch_wait_options, endpoint_options, log_file_option,
)
from runner.cli.simulate import simulate
from runner.errors import RunnerError
from runner.exit_codes import EXIT_IN_PROGRESS, EXIT_STOPPED
from runner.files.checkpoint import CheckpointError
from runner.live.dispatch import DEFAULT_CONCURRENCY, MAX_ATTEMPTS, DispatchConfig
from runner.live.run import SNAPSHOT_INTERVAL_S, RunConfig
from runner.pacing.limiter import DEFAULT_BURST_S
from runner.pacing.limiters import BUDGET_SCOPES
from runner.pacing.redis_state import DEFAULT_REDIS_TIMEOUT_S
from runner.api.endpoint import Endpoint
from runner.report.prices import PriceTableError, load_prices
from runner.report.progress import LOG_INTERVAL_S

EXIT_CODES_HELP = """\b
Exit codes:
  0  every job succeeded
  1  the run finished but some jobs failed (their error lines are in OUTPUT)
  2  usage error, unreadable input or one that is not a job file, an
     output that must not receive results (the job file itself, another
     job file, a compressed file, or one in use by another run), jobs
     changed since their results (see --changed), or a setting that cannot
     work: the API redirected to another origin (the key is not sent there),
     a fresh Entra ID token refused; results kept
  3  stopped early and resumable: quota exhausted, key rejected, interrupted
     by a signal, or the output could no longer be written; run the same
     command again to resume
  4  --via batch: batches are still running at the provider (--no-wait);
     run the same command again later (every 30 minutes from cron, say)
  70 internal error (a bug)
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run JSONL batch jobs (OpenAI Batch API format) against an OpenAI-compatible API:
    paced to the rate limits, packed where the API allows, resumable after any interruption."""


main.add_command(simulate)


@configurable
@main.command("run", epilog=EXIT_CODES_HELP)
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Result file (Batch API output format); also the checkpoint a rerun resumes from.")
@click.option("--rpm", type=POSITIVE, help="Requests per minute allowed (default: learned from the API's headers).")
@click.option("--tpm", type=POSITIVE, help="Tokens per minute allowed (default: learned from the API's headers).")
@click.option("--burst", "burst_s", type=POSITIVE, default=DEFAULT_BURST_S, show_default=True,
              help="Seconds of budget the API lets you spend at once.")
@click.option("--budget-scope", type=click.Choice(BUDGET_SCOPES), default="auto", show_default=True,
              help="Whose budget the limits are: each model's (OpenAI, Azure), or the key's over "
                   "every model (some gateways); auto learns it from the answers.")
@click.option("--ipm", type=POSITIVE, help="Images per minute per image model (default: learned "
              "from the API's headers and 429 messages).")
@click.option("--images-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for image files (default: beside OUTPUT, named after it: out.images).")
@click.option("--inline-images", is_flag=True,
              help="Keep each image's b64_json in the result line too (files are saved anyway).")
@click.option("--shard", type=ShardType(), default=None,
              help="Run only the jobs whose custom_id falls in shard K of N (a stable hash): N "
                   "processes, each with its own OUTPUT, split one INPUT; see `runner merge`.")
@click.option("--redis", "redis_url", envvar="RUNNER_REDIS_URL", metavar="URL",
              help="Keep the rate-limit budgets in this Redis (redis:// or rediss://, user and "
                   "password in the URL), shared by every runner process on the same key.")
@click.option("--redis-timeout", type=POSITIVE, default=DEFAULT_REDIS_TIMEOUT_S, show_default=True,
              help="Seconds a lost Redis may stay away before the run stops (exit 3, resumable).")
@click.option("--concurrency", type=click.IntRange(1, 4096), default=DEFAULT_CONCURRENCY,
              show_default=True, help="Most requests in flight (and open connections).")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=MAX_ATTEMPTS, show_default=True,
              help="Attempts per request before a transient failure is written (a rerun retries it).")
@click.option("--retry-failed", is_flag=True, help="Also retry jobs that failed permanently (400, 404, ...) before.")
@click.option("--retry-codes", type=CodeList(), default="", metavar="CODE[,CODE...]",
              help="Also retry jobs whose last line failed permanently with one of these error "
                   "codes (as `runner status` lists them: not_found, invalid_request, ...).")
@click.option("--changed", type=click.Choice([p.value for p in ChangedPolicy]), default="refuse",
              show_default=True,
              help="Jobs edited since OUTPUT got their result (same custom_id, another method, url "
                   "or body): refuse to start and name them, rerun them (the new result "
                   "supersedes the old), or keep the old results.")
@endpoint_options
@click.option("--timeout", "read_timeout", type=POSITIVE, default=READ_TIMEOUT_S, show_default=True,
              help="Seconds to wait for an answer before retrying.")
@click.option("--no-pack", is_flag=True,
              help="Send every job alone (by default completions and embeddings that differ only "
                   "in prompt/input share requests).")
@click.option("--pack", "force_pack", is_flag=True,
              help="Keep packing on whatever the answers look like (by default a lane whose first "
                   "packs are answered for their first prompt only sends its jobs alone).")
@click.option("--no-progress", is_flag=True, help="No live progress display or status lines.")
@click.option("--status-every", "status_interval", type=POSITIVE, default=LOG_INTERVAL_S,
              show_default=True, help="Seconds between status lines when stderr is not a terminal (cron).")
@click.option("--index-every", "index_interval", type=POSITIVE, default=SNAPSHOT_INTERVAL_S,
              show_default=True, help="Seconds between saves of the resume index while a run goes "
                                      "(a killed run's resume reads only what followed the last).")
@log_file_option
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the run summary as JSON to this file.")
@click.option("--prices", "prices_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A price table (TOML) whose entries replace the shipped ones, for cost estimates.")
@click.option("--via", type=click.Choice(["live", "batch"]), default="live", show_default=True,
              help="live: call the API as jobs are read; batch: the hosted Batch API (half price, "
                   "results within 24 h), same job and result files.")
@batch_wait_options
@click.option("--batch-max-requests", type=click.IntRange(1), default=None,
              help="--via batch: lines per batch file [default: 50,000; Azure 100,000].")
@click.option("--batch-max-bytes", type=click.IntRange(MIN_FILE_BYTES), default=BATCH_MAX_BYTES,
              show_default=True, help="--via batch: bytes per batch file.")
@click.option("--max-cost", type=POSITIVE, metavar="USD",
              help="Stop (exit 3, resumable) before this run's spend passes USD, counting each "
                   "request on the wire at its most (prompt tokens + max tokens, at the price "
                   "table in use; --via batch: what is submitted). Per run: a rerun may spend "
                   "USD again.")
@click.option("--metrics-file", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Write the run's metrics (jobs, requests, 429s, tokens and cost by model, last "
                   "success, exit code) in the Prometheus text format to PATH, atomically, every "
                   "15 s and at exit: for node_exporter's textfile "
                   "collector (name it *.prom).")
@click.option("--limit", type=click.IntRange(1), metavar="N",
              help="Run only the first N pending jobs (exit 3 when more remain): a check before "
                   "the long run.")
def run_command(input_path: str, output: Path, **options: Any) -> None:
    """Run the jobs of INPUT ("-" for stdin), appending one result line per job to OUTPUT.

    A rerun with the same OUTPUT skips jobs that succeeded, retries transient failures, and keeps
    permanent failures unless --retry-failed. Reruns match jobs by custom_id, so stdin is resumable
    when the same jobs are piped again; a job edited since its result is refused (see --changed).
    With --via batch the jobs go through the hosted Batch API instead (half price, within 24 h),
    recorded in OUTPUT.batches.
    """
    build.warn_password_in_argv(options["redis_url"])
    if options["force_pack"] and options["no_pack"]:
        build.usage_error("--pack and --no-pack contradict each other: choose one")
    if input_path != "-":
        build.check_readable(input_path)
    prices = build.load_prices_or_exit(options["prices_file"])
    endpoint = build.endpoint_from(options)
    report = dict(progress=not options["no_progress"], log_file=options["log_file"],
                  summary_json=options["summary_json"], prices=prices,
                  metrics=build.metrics_file(options["metrics_file"], output, prices))
    from runner.batch.state import open_batches
    if options["via"] == "batch":
        from runner.cli.batch import execute_batch
        sys.exit(execute_batch(build.batch_config(input_path, output, endpoint, options), **report))
    if open_batches(output):
        build.usage_error(f"{output} has {open_batches(output)} batch(es) open at the provider "
                          f"({output}.batches): carry on with --via batch, or `runner cancel` "
                          "them first; a job must not run both ways")
    sys.exit(build.execute_live(build.live_config(input_path, output, endpoint, options,
                                                  prices=prices), **report))


STATUS_EXIT_CODES_HELP = """\b
Exit codes (the same meanings as `runner run`):
  0  every job of INPUT succeeded
  1  nothing left for a rerun, but some jobs failed permanently or INPUT has
     bad/duplicate lines: fix them, or rerun with --retry-failed
  2  INPUT or OUTPUT cannot be read, or a usage error
  3  jobs remain (no result yet, or failed transiently): run the same
     `runner run` command again to resume
"""


@configurable(schema=run_command)
@main.command(epilog="Nothing is sent. Exit codes: 0 estimated; 2 unreadable INPUT or price file.")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--rpm", type=POSITIVE, help="Requests per minute per model, for the time estimate.")
@click.option("--tpm", type=POSITIVE, help="Tokens per minute per model, for the time estimate.")
@click.option("--ipm", type=POSITIVE, help="Images per minute per image model, for the time estimate.")
@click.option("--prices", "prices_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML price file (format of runner/report/prices.toml); its entries replace the built-in ones.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Estimate only what a rerun into this OUTPUT would send: jobs with their result "
                   "there are left out, jobs changed since their result counted.")
@click.option("--via", type=click.Choice(["live", "batch"]), default="live", show_default=True,
              help="batch: Batch API prices (half the list price) and the number of batch files.")
@click.option("--batch-max-requests", type=click.IntRange(1), default=None,
              help="--via batch: lines per batch file [default: 50,000; Azure 100,000].")
def estimate(input_path: str, rpm: float | None, tpm: float | None, prices_path: Path | None,
             as_json: bool, ipm: float | None = None, via: str = "live",
             batch_max_requests: int | None = None, output: Path | None = None) -> None:
    """Report what INPUT will take before spending anything: jobs, bad and duplicate lines,
    requests after packing, tokens, time under --rpm/--tpm, an upper bound on the cost per model,
    and prompts over their model's context window."""
    from jobs.reader import NotAJobFile
    from runner.batch.plan import default_max_requests
    from runner.report.batches import batch_files
    from runner.report.prices import batch_price_table
    from runner.files.inputs import UnreadableInput
    from runner.report.estimate import estimate_file, estimate_json, estimate_table
    from runner.report.render import print_report
    try:
        prices = load_prices(prices_path)
        if via == "batch":
            prices = batch_price_table(prices)
        result = estimate_file(input_path, rpm=rpm, tpm=tpm, prices=prices, ipm=ipm, output=output)
    except (PriceTableError, UnreadableInput, NotAJobFile, CheckpointError) as e:
        usage_error(str(e))
    files = batch_files(result, batch_max_requests or default_max_requests(False))
    if as_json:
        data = estimate_json(result, prices)
        if via == "batch":
            data["batch"] = {"files": files, "max_requests_per_file": batch_max_requests
                             or default_max_requests(False), "price_factor": 0.5}
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(estimate_table(result, prices))
        if via == "batch":
            click.echo(f"via batch: {files:,} batch file(s) (one model and endpoint each, at most "
                       f"{batch_max_requests or default_max_requests(False):,} lines); costs at "
                       "Batch API prices (half the list price)")


@configurable(schema=run_command)
@main.command("status", epilog=STATUS_EXIT_CODES_HELP)
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The result file of `runner run` (only read, never changed; no lock taken); "
                   "a quoted glob such as 'big.shard-*.jsonl' reads the shards of --shard K/N "
                   "together.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--refresh", "refresh_", is_flag=True,
              help="--via batch outputs: also ask the provider for its open batches (where and "
                   "how: the endpoint options below, as for `run`).")
@click.option("--changed", type=click.Choice([p.value for p in ChangedPolicy]), default="refuse",
              show_default=True,
              help="As for `run`: with keep, jobs edited since their result count as their old "
                   "result says (the old result is kept); otherwise they count as changed.")
@endpoint_options
def status_command(input_path: str, output: Path, as_json: bool, refresh_: bool = False,
                   changed: str = "refuse", **options: Any) -> None:
    """Show which jobs of INPUT are done, failed (by error code, permanent or transient) or still
    pending in OUTPUT, without calling the API. Safe to run while a run is writing OUTPUT."""
    from runner.cli.batch import refresh
    from runner.report.batches import batches_table, print_refresh
    from runner.batch.state import read_state
    from runner.report.render import print_report
    from runner.report.status import StatusError, status, status_table
    outputs = _outputs(output)
    output = outputs[0]  # a glob matching one file names that file
    try:
        result = status(input_path, outputs,
                        keep_changed=ChangedPolicy(changed) is ChangedPolicy.KEEP)
    except StatusError as e:
        usage_error(str(e))
    if len(outputs) > 1:  # shards: their jobs together; batches are per output
        if as_json:
            click.echo(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
        else:
            print_report(status_table(result))
        sys.exit(result.exit_code())
    state = read_state(output)
    still_open = len(state.open_chunks()) if state is not None else 0
    if as_json:
        data = result.to_json()
        if state is not None:
            data["batches"] = {"open": still_open, "total": len(state.chunks)}
            if still_open:
                data["exit_code"] = EXIT_IN_PROGRESS
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(status_table(result, open_batches=still_open))
        if state is not None:
            print_report(batches_table(state))
    if refresh_ and state is not None:
        endpoint = build.endpoint_from(options)
        try:
            print_refresh(asyncio.run(refresh(output, endpoint)))
        except RunnerError as e:
            usage_error(f"--refresh: {e}")
    sys.exit(EXIT_IN_PROGRESS if still_open else result.exit_code())  # 4 whenever one is open


def _outputs(output: Path) -> list[Path]:
    """OUTPUT, or the files its glob names (sorted) when it has wildcards and is no file itself."""
    text = str(output)
    if output.exists() or not any(c in text for c in "*?["):
        return [output]
    matches = sorted(Path(p) for p in glob.glob(text))
    if not matches:
        usage_error(f"no output matches {text}")
    return matches


@main.command("merge", epilog="Exit codes: 0 written; 2 an OUTPUT or INPUT unreadable, an OUTPUT not "
                              "a regular file (a pipe), or -o names one of them, the job file or "
                              "another job file (nothing written); 3 "
                              "with --jobs: written, but jobs of INPUT have no line in any OUTPUT.")
@click.argument("outputs", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "-o", "merged", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Where the merged output goes.")
@click.option("--jobs", "jobs_path", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="INPUT", help="The job file the outputs answer: jobs that no output holds (a "
                                    "shard forgotten) are reported, and the exit code is 3.")
def merge_command(outputs: tuple[Path, ...], merged: Path, jobs_path: str | None = None) -> None:
    """Write one output with each job's final line once, from the OUTPUTS of several runs (the
    shards of one input: `runner run --shard K/N`). A success beats a failure whichever output
    holds it; torn, blank and non-JSON lines are dropped. The merge is written atomically (a
    temporary file renamed over -o, its folder synced)."""
    from jobs.merge import Merge
    from runner.files.atomic import write_atomically
    from runner.files.guard import check_output
    from runner.files.outputs import OutputLines, UnreadableOutput
    if merged.resolve() in {path.resolve() for path in outputs}:
        usage_error(f"{merged} is one of the outputs merged: write the merge elsewhere")
    for path in outputs:  # each is read three times: a pipe would be empty the second time
        if not stat.S_ISREG(os.stat(path).st_mode):
            usage_error(f"{path} is not a regular file: runner merge reads each output three "
                        "times; save it to a file first")
    try:  # never over a job file (the one given, or any other), nor a compressed file
        check_output(jobs_path or "", merged)
    except CheckpointError as e:
        usage_error(str(e))
    jobs = None
    if jobs_path is not None:  # read first: the reader's table is gone before the merge's is made
        from jobs.reader import NotAJobFile
        from runner.files.inputs import UnreadableInput
        from runner.files.missing import job_lines, missing_jobs
        try:
            jobs = job_lines(jobs_path)
        except (UnreadableInput, NotAJobFile) as e:
            usage_error(str(e))
    with OutputLines(outputs) as source:
        try:
            merge = Merge(source)
            write_atomically(merged, merge.lines())
        except UnreadableOutput as e:
            usage_error(str(e))
        except OSError as e:
            usage_error(f"cannot write {merged}: {e.strerror}")
        click.echo(f"runner: {len(merge):,} jobs from {len(outputs)} outputs -> {merged}", err=True)
        if jobs_path is not None:
            shown, count = [], 0
            try:
                for line, custom_id in missing_jobs(jobs_path, merge.holds, jobs):
                    count += 1
                    if len(shown) < 5:
                        shown.append(f"{custom_id!r} (line {line})")
            except (UnreadableInput, NotAJobFile) as e:
                usage_error(str(e))
            if count:
                more = f" and {count - 5:,} more" if count > 5 else ""
                click.echo(f"runner: {count:,} jobs of {jobs_path} are in no output merged: "
                           f"{', '.join(shown)}{more} (a shard forgotten, or not run yet)", err=True)
                sys.exit(EXIT_STOPPED)


@configurable(schema=run_command)
@main.command("cancel", epilog="Exit codes: 0 every open batch cancelled and its finished lines "
                               "collected (other jobs stay pending); 1 some collected lines are "
                               "failures; 2, 3 as `runner run`; 4 with --no-wait while batches "
                               "are still cancelling.")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The result file of a `runner run --via batch`.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Stay until every cancelled batch is collected, or exit 4 while some cancel.")
@click.option("--poll-every", type=POSITIVE, default=None, help="Seconds between polls.")
@endpoint_options
@log_file_option
def cancel_command(input_path: str, output: Path, wait: bool, poll_every: float | None,
                   log_file: Path | None, **options: Any) -> None:
    """Cancel every batch of OUTPUT still running at the provider (from OUTPUT.batches) and
    collect what they finished; their other jobs stay pending for a later `runner run`."""
    from runner.batch.run import BatchRunConfig
    from runner.cli.batch import execute_batch
    config = BatchRunConfig(input=input_path, output=output, endpoint=build.endpoint_from(options),
                            wait=wait, poll_every=poll_every, cancel=True)
    sys.exit(execute_batch(config, log_file=log_file))


DEMO_JOBS = "demo.jsonl"  # package data of runner.cli: 500 chat, completion and embedding jobs


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("demo-results.jsonl"), show_default=True,
              help="Where the demo writes its results (replaced on each demo run).")
def demo(output: Path) -> None:
    """Run the demo jobs shipped with runner against the built-in simulated API: no key, no network."""
    from importlib import resources
    from runner.simulator.config import SimConfig
    from runner.simulator.server import run_in_thread
    output.unlink(missing_ok=True)
    sim = SimConfig(rpm=3000, tpm=1_000_000, burst_s=2.0, latency_ms=80, fault_rate=0.03, seed=7)
    click.echo(f"runner demo: simulated API with RPM {sim.rpm}, TPM {sim.tpm:,}, "
               f"{sim.fault_rate:.0%} injected faults; jobs {DEMO_JOBS} -> {output}", err=True)
    with resources.as_file(resources.files("runner.cli") / DEMO_JOBS) as demo_input, \
            run_in_thread(sim) as base_url:
        config = RunConfig(input=str(demo_input), output=output,
                           endpoint=Endpoint(base_url=base_url, api_key="sk-demo"),
                           dispatch=DispatchConfig(max_attempts=8), status_interval=1.0)
        code = build.execute_live(config, prices=load_prices())
    click.echo(f"runner demo: exit code {code}; results in {output}", err=True)
    sys.exit(code)


from runner.cli.dataset import export_command, prepare_command  # noqa: E402  (light)

main.add_command(prepare_command)
main.add_command(export_command)


if __name__ == "__main__":
    main()
