"""From parsed options to what runs: the endpoint and its credentials, one config per backend, and
the checks made at the edge (an unreadable INPUT, a bad price file): each a usage error (exit 2)
named once, before anything starts. Commands pass their options through as a mapping; each
builder takes the keys it knows."""
from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from jobs.intake import ChangedPolicy
from runner.api.endpoint import Endpoint, check_api_version
from runner.cli.config import deployments as config_deployments
from runner.cli.execute import execute
from runner.errors import ChangedJobsError
from runner.exit_codes import EXIT_USAGE
from runner.files.checkpoint import CheckpointError
from runner.files.inputs import UnreadableFormat, check_format
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig
from runner.pacing.redis_state import RedisUnavailable
from runner.report.prices import PriceTable, PriceTableError, load_prices

if TYPE_CHECKING:
    from runner.batch.run import BatchRunConfig


def endpoint_from(options: Mapping[str, Any]) -> Endpoint:
    """The endpoint of `runner.cli.options.endpoint_options` (exit 2 when unusable)."""
    return endpoint(options["base_url"], options["api_key_env"], options["azure_endpoint"],
                    options["api_version"], options["deployments"], options["azure_ad_token_env"],
                    token_command=options.get("azure_ad_token_command"),
                    identity=bool(options.get("azure_identity")))


def live_config(input_path: str, output: Path, endpoint: Endpoint,
                o: Mapping[str, Any], *, prices: PriceTable | None = None) -> RunConfig:
    """A live run's config from `runner run`'s options (`prices`: for --max-cost)."""
    return RunConfig(
        input=input_path, output=output, endpoint=endpoint, rpm=o["rpm"], tpm=o["tpm"],
        burst_s=o["burst_s"], budget_scope=o["budget_scope"],
        dispatch=DispatchConfig(
            max_attempts=o["max_attempts"], concurrency=o["concurrency"],
            retry_failed=o["retry_failed"], retry_codes=o["retry_codes"],
            changed=ChangedPolicy(o["changed"]), trust_packs=o["force_pack"],
            max_cost=o["max_cost"], limit=o["limit"]),
        pack=not o["no_pack"], read_timeout=o["read_timeout"],
        status_interval=o["status_interval"], ipm=o["ipm"], images_dir=o["images_dir"],
        inline_images=o["inline_images"], redis=o["redis_url"] or None,
        redis_timeout=o["redis_timeout"], shard=o["shard"], prices=prices,
        index_interval=o["index_interval"])


def batch_config(input_path: str, output: Path, endpoint: Endpoint,
                 o: Mapping[str, Any]) -> BatchRunConfig:
    """A `--via batch` run's config from `runner run`'s options."""
    from runner.batch.run import BatchRunConfig
    return BatchRunConfig(
        input=input_path, output=output, endpoint=endpoint, wait=o["wait"],
        poll_every=o["poll_every"], max_requests=o["batch_max_requests"],
        max_bytes=o["batch_max_bytes"], max_attempts=o["max_attempts"],
        retry_failed=o["retry_failed"], retry_codes=o["retry_codes"],
        changed=ChangedPolicy(o["changed"]), pack=not o["no_pack"],
        status_interval=o["status_interval"], read_timeout=o["read_timeout"],
        images_dir=o["images_dir"], inline_images=o["inline_images"], shard=o["shard"],
        max_cost=o["max_cost"], limit=o["limit"])


def metrics_file(path: Path | None, output: Path, prices: PriceTable):  # type: ignore[no-untyped-def]
    """The --metrics-file writer, or None (prometheus_client is imported only then)."""
    if path is None:
        return None
    from runner.report.metrics import MetricsFile
    return MetricsFile(path, output, prices=prices)


def endpoint(base_url: str, api_key_env: str | None, azure_endpoint: str | None,
              api_version: str | None, deployments: tuple[str, ...],
              azure_ad_token_env: str | None, *, token_command: str | None = None,
              identity: bool = False) -> Endpoint:
    """The endpoint and its credentials from the options and the environment (exit 2 if missing)."""
    azure = bool(azure_endpoint)
    if not azure and (deployments or azure_ad_token_env or token_command or identity):
        usage_error("--deployment, --azure-ad-token-env, --azure-ad-token-command and "
                     "--azure-identity need --azure-endpoint (or AZURE_OPENAI_ENDPOINT)")
    if sum(map(bool, (azure_ad_token_env, token_command, identity))) > 1:
        usage_error("give one of --azure-ad-token-env, --azure-ad-token-command and --azure-identity")
    mapping: dict[str, str] = dict(config_deployments())  # [deployments] of the config file
    for item in deployments:
        model, sep, name = item.partition("=")
        if not sep or not model or not name:
            usage_error(f"--deployment {item!r}: expected MODEL=DEPLOYMENT")
        mapping[model] = name
    try:
        check_api_version(azure, api_version)
    except ValueError as e:
        usage_error(str(e))
    if token_command or identity:
        return Endpoint(base_url=azure_endpoint or "", azure=True, api_version=api_version,
                        bearer=True, deployments=mapping, tokens=_tokens(token_command))
    key_env = azure_ad_token_env or api_key_env or ("AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY")
    api_key = os.environ.get(key_env, "")
    if not api_key:
        what = "Microsoft Entra ID token" if azure_ad_token_env else "API key"
        usage_error(f"no {what}: set the environment variable {key_env}"
                     + ("" if azure_ad_token_env else " (or name another one with --api-key-env)"))
    if azure:
        return Endpoint(base_url=azure_endpoint or "", api_key=api_key, azure=True,
                        api_version=api_version, bearer=bool(azure_ad_token_env),
                        deployments=mapping)
    return Endpoint(base_url=base_url, api_key=api_key)


def warn_password_in_argv(redis_url: str | None) -> None:
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
        usage_error("--azure-identity needs the azure-identity package: "
                     "pip install 'runner[azure-identity]'")
    return TokenSource(provider, what="--azure-identity (DefaultAzureCredential)")


def load_prices_or_exit(path: Path | None) -> PriceTable:
    try:
        return load_prices(path)
    except PriceTableError as e:
        usage_error(str(e))


def check_readable(path: str) -> None:
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
        usage_error(str(e))
    except OSError as e:
        usage_error(f"cannot read input {path}: {e.strerror}")


def usage_error(message: str) -> NoReturn:
    click.echo(f"runner: {message}", err=True)
    sys.exit(EXIT_USAGE)


def execute_live(config: RunConfig, *, progress: bool = True, log_file: Path | None = None,
                 summary_json: Path | None = None, prices: PriceTable | None = None,
                 metrics: Any = None) -> int:
    if config.prices is None and prices is not None:  # the live display's spend so far
        import dataclasses
        config = dataclasses.replace(config, prices=prices)
    from runner.client import run_engine  # the Python API's engine: one path for both
    return execute(lambda console, log: run_engine(config, console=console, log=log,
                                                   progress=progress, handle_signals=True,
                                                   metrics=metrics),
                   title=f"runner: {config.input} -> {config.output}", output=config.output,
                   api_key=config.endpoint.api_key,
                   usage_errors=(CheckpointError, OSError, RedisUnavailable, ChangedJobsError),
                   log_file=log_file, summary_json=summary_json, prices=prices, metrics=metrics)
