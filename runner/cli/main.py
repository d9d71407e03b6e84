"""The command line: click parses and checks, builds a config, calls one function.

Start-up: what only one command runs (the batch backend, the reports of `estimate` and `status`,
`merge`, the simulator) is imported by that command, so `runner --help` and a live `runner run`
load none of it."""
from __future__ import annotations

import asyncio
import errno
import glob
import os
import stat
import sys
from pathlib import Path
from typing import NoReturn

import click

import orjson

from runner.errors import ChangedJobsError, RunnerError
from runner.exit_codes import EXIT_IN_PROGRESS, EXIT_STOPPED, EXIT_USAGE
from runner.files import PRIVATE_FILE
from runner.files.checkpoint import CheckpointError
from runner.live.dispatch import DEFAULT_CONCURRENCY, MAX_ATTEMPTS, DispatchConfig
from runner.api.endpoint import DEFAULT_BASE_URL, Endpoint, check_api_version
from runner.pacing.limiter import DEFAULT_BURST_S
from jobs.intake import ChangedPolicy
from jobs.shard import Shard, parse_shard
from runner.pacing.limiters import BUDGET_SCOPES
from runner.pacing.redis_state import DEFAULT_REDIS_TIMEOUT_S, RedisUnavailable
from runner.cli.execute import execute
from runner.cli.config import configurable, deployments as config_deployments
from runner.report.prices import PriceTable, PriceTableError, load_prices
from runner.report.progress import LOG_INTERVAL_S
from runner.live.run import RunConfig, run
from runner.files.inputs import UnreadableFormat, check_format
from runner.api.transport import READ_TIMEOUT_S
from runner.batch.plan import MAX_FILE_BYTES as BATCH_MAX_BYTES, MIN_FILE_BYTES

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


class CodeList(click.ParamType):
    """`a,b,c` -> frozenset of error codes (blank items dropped)."""

    name = "codes"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, frozenset):
            return value
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        items = [v.strip() for v in text.split(",")]
        for item in items:
            if item and not all(c.isalnum() or c in "_.-" for c in item):
                self.fail(f"{item!r} is not an error code (letters, digits, _ . -)", param, ctx)
        return frozenset(i for i in items if i)


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


class ShardType(click.ParamType):
    name = "K/N"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, Shard):
            return value
        try:
            return parse_shard(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def entra_options(command):  # type: ignore[no-untyped-def]
    """--azure-ad-token-command and --azure-identity: Entra ID tokens that refresh themselves."""
    command = click.option(
        "--azure-identity", is_flag=True,
        help="Azure: Microsoft Entra ID tokens from DefaultAzureCredential (managed identity, "
             "workload identity, environment, Azure CLI), refreshed before they expire; needs "
             "the azure-identity extra.")(command)
    return click.option(
        "--azure-ad-token-command", metavar="CMD",
        help="Azure: a command printing a Microsoft Entra ID token (e.g. az account "
             "get-access-token --resource https://cognitiveservices.azure.com --query "
             "accessToken -o tsv), run at the start and again before the token expires.")(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run JSONL batch jobs (OpenAI Batch API format) against an OpenAI-compatible API:
    paced to the rate limits, packed where the API allows, resumable after any interruption."""


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
@click.option("--base-url", envvar="OPENAI_BASE_URL", default=DEFAULT_BASE_URL, show_default=True,
              help="API base URL [env: OPENAI_BASE_URL].")
@click.option("--api-key-env", default=None,
              help="Name of the environment variable holding the API key "
                   "[default: OPENAI_API_KEY, or AZURE_OPENAI_API_KEY with --azure-endpoint].")
@click.option("--azure-endpoint", envvar="AZURE_OPENAI_ENDPOINT",
              help="Azure OpenAI resource endpoint, e.g. https://NAME.openai.azure.com; "
                   "jobs go to its deployments [env: AZURE_OPENAI_ENDPOINT].")
@click.option("--api-version", envvar="OPENAI_API_VERSION",
              help="Azure OpenAI api-version, e.g. 2024-10-21 [env: OPENAI_API_VERSION].")
@click.option("--deployment", "deployments", multiple=True, metavar="MODEL=NAME",
              help="Azure: send jobs whose model is MODEL to deployment NAME (repeatable; "
                   "default: the deployment named like the model).")
@click.option("--azure-ad-token-env", metavar="NAME",
              help="Azure: name of the variable holding a Microsoft Entra ID token, sent as a "
                   "bearer token instead of an api-key.")
@entra_options
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
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Append timestamped messages, status lines and the summary to this file.")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the run summary as JSON to this file.")
@click.option("--prices", "prices_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A price table (TOML) whose entries replace the shipped ones, for cost estimates.")
@click.option("--via", type=click.Choice(["live", "batch"]), default="live", show_default=True,
              help="live: call the API as jobs are read; batch: the hosted Batch API (half price, "
                   "results within 24 h), same job and result files.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="--via batch: stay until every job has a result (--wait), or submit, collect "
                   "what finished, and exit 4 while batches still run (--no-wait, for cron).")
@click.option("--poll-every", type=POSITIVE, default=None,
              help="--via batch: seconds between polls [default: 10, growing to 300].")
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
                   "15 s and at exit: for node_exporter's textfile collector (name it *.prom).")
@click.option("--limit", type=click.IntRange(1), metavar="N",
              help="Run only the first N pending jobs (exit 3 when more remain): a check before "
                   "the long run.")
def run_command(input_path: str, output: Path, rpm: float | None, tpm: float | None, burst_s: float,
                budget_scope: str, concurrency: int, max_attempts: int, retry_failed: bool, base_url: str,
                api_key_env: str | None, azure_endpoint: str | None, api_version: str | None,
                deployments: tuple[str, ...], azure_ad_token_env: str | None, read_timeout: float,
                no_pack: bool, no_progress: bool, status_interval: float, log_file: Path | None,
                summary_json: Path | None, prices_file: Path | None, ipm: float | None = None,
                images_dir: Path | None = None, inline_images: bool = False, via: str = "live",
                wait: bool = True, poll_every: float | None = None,
                batch_max_requests: int | None = None,
                batch_max_bytes: int = BATCH_MAX_BYTES, redis_url: str | None = None,
                redis_timeout: float = DEFAULT_REDIS_TIMEOUT_S, shard: Shard | None = None,
                changed: str = "refuse", retry_codes: frozenset[str] = frozenset(),
                force_pack: bool = False,
                azure_ad_token_command: str | None = None,
                azure_identity: bool = False, max_cost: float | None = None,
                limit: int | None = None, metrics_file: Path | None = None) -> None:
    """Run the jobs of INPUT ("-" for stdin), appending one result line per job to OUTPUT.

    A rerun with the same OUTPUT skips jobs that succeeded, retries transient failures, and keeps
    permanent failures unless --retry-failed. Reruns match jobs by custom_id, so stdin is resumable
    when the same jobs are piped again; a job edited since its result is refused (see --changed). With --via batch the jobs go through the hosted Batch API
    instead (half price, within 24 h), recorded in OUTPUT.batches.
    """
    _warn_password_in_argv(redis_url)
    if force_pack and no_pack:
        _usage_error("--pack and --no-pack contradict each other: choose one")
    if input_path != "-":
        _check_readable(input_path)
    prices = _load_prices(prices_file)
    endpoint = _endpoint(base_url, api_key_env, azure_endpoint, api_version, deployments,
                         azure_ad_token_env, token_command=azure_ad_token_command,
                         identity=azure_identity)
    from runner.batch.state import open_batches
    if via == "live" and open_batches(output):
        _usage_error(f"{output} has {open_batches(output)} batch(es) open at the provider "
                     f"({output}.batches): carry on with --via batch, or `runner cancel` them "
                     "first; a job must not run both ways")
    if via == "batch":
        from runner.batch.cli import execute_batch
        from runner.batch.run import BatchRunConfig
        batch = BatchRunConfig(
            input=input_path, output=output, endpoint=endpoint, wait=wait, poll_every=poll_every,
            max_requests=batch_max_requests, max_bytes=batch_max_bytes, max_attempts=max_attempts,
            retry_failed=retry_failed, retry_codes=retry_codes, changed=ChangedPolicy(changed),
            pack=not no_pack,
            status_interval=status_interval, read_timeout=read_timeout, images_dir=images_dir,
            inline_images=inline_images, shard=shard, max_cost=max_cost, limit=limit)
        sys.exit(execute_batch(batch, progress=not no_progress, log_file=log_file,
                               summary_json=summary_json, prices=prices,
                               metrics=_metrics(metrics_file, output, prices)))
    config = RunConfig(
        input=input_path, output=output, endpoint=endpoint, rpm=rpm, tpm=tpm, burst_s=burst_s,
        budget_scope=budget_scope, dispatch=DispatchConfig(
            max_attempts=max_attempts, concurrency=concurrency, retry_failed=retry_failed,
            retry_codes=retry_codes, changed=ChangedPolicy(changed), trust_packs=force_pack,
            max_cost=max_cost, limit=limit),
        pack=not no_pack, read_timeout=read_timeout, status_interval=status_interval,
        ipm=ipm, images_dir=images_dir, inline_images=inline_images, redis=redis_url or None,
        redis_timeout=redis_timeout, shard=shard, prices=prices)
    sys.exit(_execute(config, progress=not no_progress, log_file=log_file,
                      summary_json=summary_json, prices=prices,
                      metrics=_metrics(metrics_file, output, prices)))


def _endpoint(base_url: str, api_key_env: str | None, azure_endpoint: str | None,
              api_version: str | None, deployments: tuple[str, ...],
              azure_ad_token_env: str | None, *, token_command: str | None = None,
              identity: bool = False) -> Endpoint:
    """The endpoint and its credentials from the options and the environment (exit 2 if missing)."""
    azure = bool(azure_endpoint)
    if not azure and (deployments or azure_ad_token_env or token_command or identity):
        _usage_error("--deployment, --azure-ad-token-env, --azure-ad-token-command and "
                     "--azure-identity need --azure-endpoint (or AZURE_OPENAI_ENDPOINT)")
    if sum(map(bool, (azure_ad_token_env, token_command, identity))) > 1:
        _usage_error("give one of --azure-ad-token-env, --azure-ad-token-command and --azure-identity")
    mapping: dict[str, str] = dict(config_deployments())  # [deployments] of the config file
    for item in deployments:
        model, sep, name = item.partition("=")
        if not sep or not model or not name:
            _usage_error(f"--deployment {item!r}: expected MODEL=DEPLOYMENT")
        mapping[model] = name
    try:
        check_api_version(azure, api_version)
    except ValueError as e:
        _usage_error(str(e))
    if token_command or identity:
        return Endpoint(base_url=azure_endpoint or "", azure=True, api_version=api_version,
                        bearer=True, deployments=mapping, tokens=_tokens(token_command))
    key_env = azure_ad_token_env or api_key_env or ("AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY")
    api_key = os.environ.get(key_env, "")
    if not api_key:
        what = "Microsoft Entra ID token" if azure_ad_token_env else "API key"
        _usage_error(f"no {what}: set the environment variable {key_env}"
                     + ("" if azure_ad_token_env else " (or name another one with --api-key-env)"))
    if azure:
        return Endpoint(base_url=azure_endpoint or "", api_key=api_key, azure=True,
                        api_version=api_version, bearer=bool(azure_ad_token_env),
                        deployments=mapping)
    return Endpoint(base_url=base_url, api_key=api_key)


def _warn_password_in_argv(redis_url: str | None) -> None:
    """A Redis URL with a password given as a flag is in every process listing: say so."""
    from click.core import ParameterSource
    from runner.redact import redact_url
    source = click.get_current_context().get_parameter_source("redis_url")
    if redis_url and source is ParameterSource.COMMANDLINE and redact_url(redis_url) != redis_url:
        click.echo("runner: warning: the --redis URL holds a password, which every user of this "
                   "machine can read in process listings; set RUNNER_REDIS_URL or `redis` in the "
                   "config file instead", err=True)


def _tokens(command: str | None):  # type: ignore[no-untyped-def]
    """The Entra ID token source of --azure-ad-token-command CMD, or of --azure-identity."""
    from runner.api.entra import TokenSource, command_provider, identity_provider
    from runner.redact import mask_secrets
    if command:
        return TokenSource(command_provider(command),
                           what=f"--azure-ad-token-command {mask_secrets(command)!r}")
    try:
        provider = identity_provider()
    except ImportError:
        _usage_error("--azure-identity needs the azure-identity package: "
                     "pip install 'runner[azure-identity]'")
    return TokenSource(provider, what="--azure-identity (DefaultAzureCredential)")


def _load_prices(path: Path | None) -> PriceTable:
    try:
        return load_prices(path)
    except PriceTableError as e:
        _usage_error(str(e))


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
    from runner.batch.cli import batch_files, batch_price_table, default_max_requests
    from runner.files.inputs import UnreadableInput
    from runner.report.estimate import estimate_file, estimate_json, estimate_table
    from runner.report.render import print_report
    try:
        prices = load_prices(prices_path)
        if via == "batch":
            prices = batch_price_table(prices)
        result = estimate_file(input_path, rpm=rpm, tpm=tpm, prices=prices, ipm=ipm, output=output)
    except (PriceTableError, UnreadableInput, NotAJobFile, CheckpointError) as e:
        _usage_error(str(e))
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
              help="--via batch outputs: also ask the provider for its open batches (key and URL "
                   "from the environment, as for `run`).")
@click.option("--changed", type=click.Choice([p.value for p in ChangedPolicy]), default="refuse",
              show_default=True,
              help="As for `run`: with keep, jobs edited since their result count as their old "
                   "result says (the old result is kept); otherwise they count as changed.")
@entra_options
def status_command(input_path: str, output: Path, as_json: bool, refresh_: bool = False,
                   azure_ad_token_command: str | None = None, azure_identity: bool = False,
                   changed: str = "refuse") -> None:
    """Show which jobs of INPUT are done, failed (by error code, permanent or transient) or still
    pending in OUTPUT, without calling the API. Safe to run while a run is writing OUTPUT."""
    from runner.batch.cli import batches_table, print_refresh, refresh
    from runner.batch.state import read_state
    from runner.report.render import print_report
    from runner.report.status import StatusError, status, status_table
    outputs = _outputs(output)
    output = outputs[0]  # a glob matching one file names that file
    try:
        result = status(input_path, outputs,
                        keep_changed=ChangedPolicy(changed) is ChangedPolicy.KEEP)
    except StatusError as e:
        _usage_error(str(e))
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
        endpoint = _endpoint(os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL), None,
                             os.environ.get("AZURE_OPENAI_ENDPOINT"),
                             os.environ.get("OPENAI_API_VERSION"), (), None,
                             token_command=azure_ad_token_command, identity=azure_identity)
        try:
            print_refresh(asyncio.run(refresh(output, endpoint)))
        except RunnerError as e:
            _usage_error(f"--refresh: {e}")
    sys.exit(EXIT_IN_PROGRESS if still_open else result.exit_code())  # 4 whenever one is open


def _outputs(output: Path) -> list[Path]:
    """OUTPUT, or the files its glob names (sorted) when it has wildcards and is no file itself."""
    text = str(output)
    if output.exists() or not any(c in text for c in "*?["):
        return [output]
    matches = sorted(Path(p) for p in glob.glob(text))
    if not matches:
        _usage_error(f"no output matches {text}")
    return matches


@main.command("merge", epilog="Exit codes: 0 written; 2 an OUTPUT unreadable, or -o names one of "
                              "them, the job file or another job file (nothing written); 3 with "
                              "--jobs: written, but jobs of INPUT have no line in any OUTPUT.")
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
    from jobs.merge import merge_outputs
    from runner.files.checkpoint import fsync_dir
    from runner.files.guard import check_output
    if merged.resolve() in {path.resolve() for path in outputs}:
        _usage_error(f"{merged} is one of the outputs merged: write the merge elsewhere")
    try:  # never over a job file (the one given, or any other), nor a compressed file
        check_output(jobs_path or "", merged)
    except CheckpointError as e:
        _usage_error(str(e))
    try:
        lines = merge_outputs(path.read_bytes().splitlines() for path in outputs)
    except OSError as e:
        _usage_error(f"cannot read {e.filename}: {e.strerror}")
    partial = merged.with_name(merged.name + ".merging")
    try:
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE), "wb") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, merged)
        fsync_dir(merged.resolve().parent)
    except OSError as e:
        _usage_error(f"cannot write {merged}: {e.strerror}")
    click.echo(f"runner: {len(lines):,} jobs from {len(outputs)} outputs -> {merged}", err=True)
    if jobs_path is not None:
        from jobs.job import Job
        from jobs.reader import read_jobs
        from runner.files.inputs import input_lines
        held = {orjson.loads(line).get("custom_id") for line in lines}
        missing = [item for item in read_jobs(input_lines(jobs_path), jobs_path)
                   if isinstance(item, Job) and item.custom_id not in held]
        if missing:
            shown = ", ".join(f"{m.custom_id!r} (line {m.line})" for m in missing[:5])
            more = f" and {len(missing) - 5:,} more" if len(missing) > 5 else ""
            click.echo(f"runner: {len(missing):,} jobs of {jobs_path} are in no output merged: "
                       f"{shown}{more} (a shard forgotten, or not run yet)", err=True)
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
@click.option("--base-url", envvar="OPENAI_BASE_URL", default=DEFAULT_BASE_URL, show_default=True,
              help="API base URL [env: OPENAI_BASE_URL].")
@click.option("--api-key-env", default=None, help="Name of the variable holding the API key.")
@click.option("--azure-endpoint", envvar="AZURE_OPENAI_ENDPOINT", help="Azure OpenAI endpoint.")
@click.option("--api-version", envvar="OPENAI_API_VERSION", help="Azure OpenAI api-version.")
@click.option("--deployment", "deployments", multiple=True, metavar="MODEL=NAME",
              help="Azure: MODEL's deployment NAME (repeatable).")
@click.option("--azure-ad-token-env", metavar="NAME", help="Azure: variable of an Entra ID token.")
@entra_options
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Append timestamped messages to this file.")
def cancel_command(input_path: str, output: Path, wait: bool, poll_every: float | None,
                   base_url: str, api_key_env: str | None, azure_endpoint: str | None,
                   api_version: str | None, deployments: tuple[str, ...],
                   azure_ad_token_env: str | None, log_file: Path | None,
                   azure_ad_token_command: str | None = None, azure_identity: bool = False) -> None:
    """Cancel every batch of OUTPUT still running at the provider (from OUTPUT.batches) and
    collect what they finished; their other jobs stay pending for a later `runner run`."""
    from runner.batch.cli import execute_batch
    from runner.batch.run import BatchRunConfig
    endpoint = _endpoint(base_url, api_key_env, azure_endpoint, api_version, deployments,
                         azure_ad_token_env, token_command=azure_ad_token_command,
                         identity=azure_identity)
    config = BatchRunConfig(input=input_path, output=output, endpoint=endpoint, wait=wait,
                            poll_every=poll_every, cancel=True)
    sys.exit(execute_batch(config, log_file=log_file))


def _check_readable(path: str) -> None:
    """Exit 2 unless `path` can be read; a FIFO is not opened (that would consume its writer)."""
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            if not os.access(path, os.R_OK):
                raise PermissionError(errno.EACCES, "Permission denied")
            return
        with open(path, "rb"):
            pass
        check_format(path)
    except UnreadableFormat as e:
        _usage_error(str(e))
    except OSError as e:
        _usage_error(f"cannot read input {path}: {e.strerror}")


def _usage_error(message: str) -> NoReturn:
    click.echo(f"runner: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _metrics(path: Path | None, output: Path, prices: PriceTable):  # type: ignore[no-untyped-def]
    """The --metrics-file writer (prometheus_client is imported only then)."""
    if path is None:
        return None
    from runner.report.metrics import MetricsFile
    return MetricsFile(path, output, prices=prices)


def _execute(config: RunConfig, *, progress: bool = True, log_file: Path | None = None,
             summary_json: Path | None = None, prices: PriceTable | None = None,
             metrics=None) -> int:  # type: ignore[no-untyped-def]
    if config.prices is None and prices is not None:  # the live display's spend so far
        import dataclasses
        config = dataclasses.replace(config, prices=prices)
    return execute(lambda console, log: run(config, console=console, log=log, progress=progress,
                                            metrics=metrics),
                   title=f"runner: {config.input} -> {config.output}", output=config.output,
                   api_key=config.endpoint.api_key,
                   usage_errors=(CheckpointError, OSError, RedisUnavailable, ChangedJobsError),
                   log_file=log_file, summary_json=summary_json, prices=prices, metrics=metrics)


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
@click.option("--list-prompts", type=click.Choice(["ok", "ignore", "error"]), default="ok",
              show_default=True,
              help="A list prompt/input of 2+ items: answered, only its first item answered (gateway "
                   "mock), or a blank 500 (one-prompt local server).")
@click.option("--honour-n/--ignore-n", "honour_n", default=True, show_default=True,
              help="--ignore-n: one choice whatever n asks.")
@click.option("--budget-scope", type=click.Choice(["model", "key"]), default="model",
              show_default=True, help="One RPM/TPM budget per model, or per API key across models.")
@click.option("--limiter", type=click.Choice(["bucket", "window", "minute"]), default="bucket",
              show_default=True,
              help="Refilling buckets (OpenAI), fixed 60 s windows from a window's first request "
                   "with retry-after 60 (gateways), or calendar minutes (LiteLLM's router).")
@click.option("--header-style", type=click.Choice(["openai", "litellm", "litellm-router", "ietf",
                                                   "none"]),
              default="openai", show_default=True, help="Which rate-limit headers to send.")
@click.option("--serial", is_flag=True,
              help="One request at a time, each taking --latency-ms; abandoned ones still worked on.")
@click.option("--batch-lines-per-s", type=POSITIVE, default=1000.0, show_default=True,
              help="Batch API: lines a batch answers per second.")
@click.option("--batch-validate-s", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Batch API: seconds a batch spends validating.")
@click.option("--batch-finalize-s", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Batch API: seconds a batch spends finalizing.")
@click.option("--batch-expire-after-lines", type=click.IntRange(0), default=None,
              help="Batch API: a batch expires after answering this many lines.")
@click.option("--batch-max-requests", "sim_batch_max_requests", type=click.IntRange(1), default=None,
              help="Batch API: lines per file validation accepts [default: 50,000; Azure 100,000].")
@click.option("--batch-max-bytes", "sim_batch_max_bytes", type=click.IntRange(1),
              default=200 * 1024 * 1024, show_default=True,
              help="Batch API: bytes per file validation accepts.")
@click.option("--batch-token-limit", type=click.IntRange(1), default=None,
              help="Batch API: enqueued tokens per model (token_limit_exceeded beyond).")
@click.option("--batch-invalid-marker", default=None,
              help="Batch API: lines containing this text fail validation.")
@click.option("--batch-file-processing-s", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Batch API, Azure URLs: seconds an upload stays pending before processed.")
@click.option("--ipm", type=click.IntRange(1), help="Images per minute per image model.")
@click.option("--fault-rates", default="",
              help="Each fault's own rate, e.g. 500=0.01,503=0.01,reset=0.005,truncated=0.005,"
                   "missing_choice=0.01 (instead of --fault-rate/--faults).")
@click.option("--partial-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Probability that an answer of several choices comes back without some "
                   "(the missing_choice fault's rate).")
@click.option("--max-dropped", type=click.IntRange(1), default=1, show_default=True,
              help="A partial answer drops 1 to this many choices (at least one kept).")
@click.option("--refused-count", is_flag=True,
              help="A request refused 429 still uses its request (and images) budget, as OpenAI "
                   "counts failed requests.")
@click.option("--image-budget-scope", type=click.Choice(["model", "key"]), default="model",
              show_default=True, help="One image budget per image model, or per key across them.")
@click.option("--url-error", type=click.Choice(["invalid_url", "unknown_url"]),
              default="invalid_url", show_default=True,
              help="OpenAI's 404 body for an unknown path: 'Invalid URL (POST /x)' (to 2023) or "
                   "'Unknown request URL' (2024 on).")
@click.option("--api-key", "sim_api_key", default=None,
              help="Accept only this key (401 invalid_api_key for another); default any key.")
@click.option("--models", default=None,
              help="Comma-separated models that exist; another answers 404 model_not_found.")
@click.option("--deployments", "sim_deployments", default=None,
              help="Comma-separated Azure deployments that exist; another answers 404 "
                   "DeploymentNotFound.")
def simulate(host: str, port: int, rpm: int | None, tpm: int | None, burst_s: float,
             latency_ms: float, fault_rate: float, faults: str, quota_requests: int | None,
             seed: int, list_prompts: str, honour_n: bool, budget_scope: str, limiter: str,
             header_style: str, serial: bool, ipm: int | None = None,
             batch_lines_per_s: float = 1000.0,
             batch_validate_s: float = 1.0, batch_finalize_s: float = 1.0,
             batch_expire_after_lines: int | None = None,
             sim_batch_max_requests: int | None = None,
             sim_batch_max_bytes: int = 200 * 1024 * 1024, batch_token_limit: int | None = None,
             batch_invalid_marker: str | None = None,
             batch_file_processing_s: float = 1.0, fault_rates: str = "",
             partial_rate: float = 0.0, max_dropped: int = 1, refused_count: bool = False,
             image_budget_scope: str = "model", url_error: str = "invalid_url",
             sim_api_key: str | None = None, models: str | None = None,
             sim_deployments: str | None = None) -> None:
    """Serve a simulated OpenAI-compatible API (and Azure OpenAI URL shapes), with the hosted
    Batch API's Files and Batches endpoints, for trying runner out."""
    from runner.simulator.config import SimConfig
    from runner.simulator.server import serve
    from runner.simulator.batches import BatchConfig
    try:
        batch = BatchConfig(lines_per_s=batch_lines_per_s, validate_s=batch_validate_s,
                            finalize_s=batch_finalize_s, expire_after_lines=batch_expire_after_lines,
                            max_requests=sim_batch_max_requests, max_bytes=sim_batch_max_bytes,
                            enqueued_token_limit=batch_token_limit,
                            invalid_marker=batch_invalid_marker,
                            file_processing_s=batch_file_processing_s)
        config = SimConfig(rpm=rpm, tpm=tpm, burst_s=burst_s, latency_ms=latency_ms,
                           fault_rate=fault_rate,
                           faults=tuple(f.strip() for f in faults.split(",") if f.strip()),
                           quota_requests=quota_requests, seed=seed, list_prompts=list_prompts,
                           honour_n=honour_n, budget_scope=budget_scope, limiter=limiter,
                           header_style=header_style, serial=serial, ipm=ipm,
                           fault_rates=_fault_rates(fault_rates, partial_rate),
                           max_dropped=max_dropped, refused_count=refused_count,
                           image_budget_scope=image_budget_scope, url_error=url_error,
                           api_key=sim_api_key, models=_names(models),
                           deployments=_names(sim_deployments))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    serve(config, host, port, batch=batch)


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip())


def _fault_rates(text: str, partial_rate: float) -> dict[str, float]:
    """`--fault-rates NAME=RATE,...` (and `--partial-rate`, the missing_choice rate) as a dict."""
    rates: dict[str, float] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, _, rate = item.partition("=")
        try:
            rates[name.strip()] = float(rate)
        except ValueError:
            raise ValueError(f"--fault-rates takes NAME=RATE items, got {item!r}") from None
    if partial_rate:
        rates["missing_choice"] = partial_rate
    return rates


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
        code = _execute(config, prices=load_prices())
    click.echo(f"runner demo: exit code {code}; results in {output}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
