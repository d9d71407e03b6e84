"""Options of a command from the environment and a TOML file, below the command line.

Precedence, highest first:

    command-line flag  >  RUNNER_<OPTION> environment variable  >  config file  >  built-in default

`configurable(command)` is all a click command needs: it gives every option an environment
variable named after its long option (`--max-attempts` -> `RUNNER_MAX_ATTEMPTS`, `--burst` ->
`RUNNER_BURST`, whatever the Python parameter is called; an option's own `envvar`, such as
`OPENAI_BASE_URL`, is kept as a fallback after it) and adds `--config FILE` (env `RUNNER_CONFIG`,
default `./runner.toml` when that file exists). The file's values become click's `default_map`,
so click itself applies the precedence above (flag > env > default_map > default).

The file uses the long option names with underscores as keys, plus a `[deployments]` table
(model -> Azure deployment name)::

    rpm = 500
    max_attempts = 8
    output = "results.jsonl"     # relative paths are relative to this file's directory
    [deployments]
    gpt-4o-mini = "my-4o-mini-deployment"

It is checked when loaded: an unknown key, a wrong type or an out-of-range value is a usage error
(exit 2) naming the file and the key. It can hold no API key: keys come from the environment only.
Click's `auto_envvar_prefix` is not used because it names variables after Python parameter names
(`burst_s` -> RUNNER_RUN_BURST_S), not after the options users see.
"""
from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import click

ENV_PREFIX = "RUNNER"
DEFAULT_CONFIG = Path("runner.toml")  # looked up in the current directory
DEPLOYMENTS = "deployments"
CONFIG_OPTION = "config"
META_KEY = "runner.cli.config"  # where the loaded FileConfig sits in click's ctx.meta


class ConfigError(ValueError):
    """A config file is unreadable, not TOML, or has an unknown key or a bad value; the message
    names the file and the key."""


@dataclass(frozen=True, slots=True)
class FileConfig:
    """A checked config file: `defaults` maps click parameter names to values (a default_map)."""

    path: Path | None = None
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    deployments: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def option_key(option: click.Option) -> str:
    """The config key and env var stem of an option: its first long name, dashes as underscores."""
    longs = [o for o in option.opts if o.startswith("--")]
    return (longs[0][2:] if longs else option.name or "").replace("-", "_")


def _options(command: click.Command) -> dict[str, click.Option]:
    """Config key -> option, for every option a file may set (not --help, not --config)."""
    return {option_key(p): p for p in command.params
            if isinstance(p, click.Option) and p.name not in (CONFIG_OPTION, "help")
            and not p.hidden}


def read_config(path: Path, command: click.Command,
                schema: click.Command | None = None) -> FileConfig:
    """Read and check a config file for `command`; ConfigError on any problem.

    Keys are checked against the options of `schema` (default: `command` itself), so commands
    can share one file: a key `schema` knows but `command` lacks is ignored.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    known = _options(schema or command)
    own = _options(command)
    defaults: dict[str, Any] = {}
    deployments: dict[str, str] = {}
    for key, value in data.items():
        if key == DEPLOYMENTS:
            deployments = _deployments(path, value)
            continue
        if key not in known:
            raise ConfigError(_unknown(path, key, [*known, DEPLOYMENTS]))
        value = _check(path, key, known[key], value)  # the schema says what a key means
        option = own.get(key)
        if option is not None:
            defaults[option.name or key] = _check(path, key, option, value)
    return FileConfig(path=path, defaults=MappingProxyType(defaults),
                      deployments=MappingProxyType(deployments))


def _unknown(path: Path, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return f"{path}: unknown key {key!r}{hint}"


def _deployments(path: Path, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {DEPLOYMENTS} must be a table of model = \"deployment name\"")
    for model, name in value.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}: {DEPLOYMENTS}.{model} must be a non-empty string, "
                              f"got {name!r}")
    return dict(value)


def _expected(option: click.Option) -> tuple[type, ...]:
    """The TOML value types an option accepts."""
    kind = option.type
    if option.is_flag or isinstance(kind, click.types.BoolParamType):
        return (bool,)
    if isinstance(kind, click.types.IntParamType):
        return (int,)
    if isinstance(kind, click.types.FloatParamType):
        return (int, float)
    if isinstance(kind, (click.types.StringParamType, click.Path, click.Choice, click.File)):
        return (str,)
    return (str, int, float)  # a custom type: its convert() decides


def _type_name(types: tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if types == (int, float):
        return "a number"
    return " or ".join(names[t] for t in types)


def _check(path: Path, key: str, option: click.Option, value: Any) -> Any:
    """The value to put in the default_map, checked as click would check a flag's value."""
    if option.multiple or option.nargs != 1:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {key} must be a list, got {value!r}")
        return [_check_one(path, key, option, v) for v in value]
    return _check_one(path, key, option, value)


def _check_one(path: Path, key: str, option: click.Option, value: Any) -> Any:
    expected = _expected(option)
    if getattr(option.type, "accepts_list", False) and isinstance(value, list) \
            and all(isinstance(v, str) for v in value):
        value = ",".join(value)  # a list of codes, as the flag's comma-separated text
    if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
        raise ConfigError(f"{path}: {key} must be {_type_name(expected)}, got {value!r}")
    if isinstance(option.type, click.Path) and isinstance(value, str):
        value = str(path.parent / Path(value).expanduser())
    try:
        # Convert the text form, as from an environment variable, so custom types check fully.
        option.type.convert(value if isinstance(value, (str, bool)) else str(value), option, None)
    except click.BadParameter as e:
        raise ConfigError(f"{path}: {key} = {value!r}: {e.message}") from None
    return value


def _loader(schema: click.Command | None) -> Callable[[click.Context, click.Parameter, Any], None]:
    def load(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
        path = value
        if path is None and DEFAULT_CONFIG.is_file():
            path = DEFAULT_CONFIG
        if path is None:
            ctx.meta[META_KEY] = FileConfig()
            return
        try:
            loaded = read_config(path, ctx.command, schema)
        except ConfigError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
        ctx.default_map = {**(ctx.default_map or {}), **loaded.defaults}
        ctx.meta[META_KEY] = loaded
    return load


def configurable(command: click.Command | None = None, *, schema: click.Command | None = None,
                 prefix: str = ENV_PREFIX) -> Any:
    """Give `command` RUNNER_* environment variables and a --config FILE option (see module doc).

    Use as the outermost decorator, above `@group.command(...)`: `@configurable`, or
    `@configurable(schema=run_command)` for a command that shares `run`'s config file and
    takes only the keys it has options for. The command's function does not receive the config:
    its values arrive as the options' values; `deployments()` gives the table.
    """
    if command is None:
        return lambda cmd: configurable(cmd, schema=schema, prefix=prefix)
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            own = param.envvar if isinstance(param.envvar, (list, tuple)) else (
                [param.envvar] if param.envvar else [])
            param.envvar = [f"{prefix}_{option_key(param).upper()}", *own]
    config = click.Option(
        ["--config", CONFIG_OPTION], type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar=f"{prefix}_CONFIG", is_eager=True, expose_value=False, callback=_loader(schema),
        help=f"TOML file of option defaults (keys: long option names with underscores) "
             f"[env: {prefix}_CONFIG; default: ./{DEFAULT_CONFIG} if present]. "
             f"Flags beat {prefix}_* environment variables, which beat the file.")
    command.params.insert(0, config)
    return command


def loaded_config(ctx: click.Context | None = None) -> FileConfig:
    """The config file loaded for the current command (empty when there is none)."""
    ctx = ctx or click.get_current_context()
    return ctx.meta.get(META_KEY, FileConfig())


def deployments(ctx: click.Context | None = None) -> dict[str, str]:
    """The config file's `[deployments]` table (model -> Azure deployment name)."""
    return dict(loaded_config(ctx).deployments)
