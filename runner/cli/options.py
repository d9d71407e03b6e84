"""The command line's vocabulary: parameter types checked at the edge, and the option groups that
several commands share (click's way: a decorator that adds them), so an option is written once."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from jobs.shard import Shard, parse_shard
from runner.api.endpoint import DEFAULT_BASE_URL

F = TypeVar("F", bound=Callable[..., Any])


class CodeList(click.ParamType):
    """`a,b,c` -> frozenset of error codes (blank items dropped)."""

    name = "codes"
    accepts_list = True  # a config file may give a TOML list of codes

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


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying `decorators` so that the options show in the order given."""
    def apply(command: F) -> F:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


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


endpoint_options = _options(
    click.option("--base-url", envvar="OPENAI_BASE_URL", default=DEFAULT_BASE_URL,
                 show_default=True, help="API base URL [env: OPENAI_BASE_URL]."),
    click.option("--api-key-env", default=None,
                 help="Name of the environment variable holding the API key "
                      "[default: OPENAI_API_KEY, or AZURE_OPENAI_API_KEY with --azure-endpoint]."),
    click.option("--azure-endpoint", envvar="AZURE_OPENAI_ENDPOINT",
                 help="Azure OpenAI resource endpoint, e.g. https://NAME.openai.azure.com; "
                      "jobs go to its deployments [env: AZURE_OPENAI_ENDPOINT]."),
    click.option("--api-version", envvar="OPENAI_API_VERSION",
                 help="Azure OpenAI api-version, e.g. 2024-10-21 [env: OPENAI_API_VERSION]."),
    click.option("--deployment", "deployments", multiple=True, metavar="MODEL=NAME",
                 help="Azure: send jobs whose model is MODEL to deployment NAME (repeatable; "
                      "default: the deployment named like the model)."),
    click.option("--azure-ad-token-env", metavar="NAME",
                 help="Azure: name of the variable holding a Microsoft Entra ID token, sent as a "
                      "bearer token instead of an api-key."),
    entra_options,
)
"""Where requests go and how they authenticate: `run`, `cancel`, `status --refresh`
(`runner.cli.build.endpoint_from` reads them)."""

batch_wait_options = _options(
    click.option("--wait/--no-wait", default=True, show_default=True,
                 help="--via batch: stay until every job has a result (--wait), or submit, "
                      "collect what finished, and exit 4 while batches still run (--no-wait, for "
                      "cron)."),
    click.option("--poll-every", type=POSITIVE, default=None,
                 help="--via batch: seconds between polls [default: 10, growing to 300]."),
)
"""How `run --via batch` waits (`cancel` says it in its own words)."""

log_file_option = click.option(
    "--log-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Append timestamped messages, status lines and the summary to this file.")
