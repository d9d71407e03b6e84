"""`runner prepare` and `runner export`: a table to a job file, and a job file with its results
back to a table (`runner.dataset` does the work). Thin: click parses and checks, one call.

Start-up: Jinja2, pyarrow and the table code load only when one of these commands runs."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from runner.exit_codes import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE

URL_NAMES = ("chat", "completions", "embeddings", "moderations", "responses")

PREPARE_EXIT_CODES = """\b
Exit codes:
  0  every row became a job
  1  JOBS was written, but some rows got no job (an empty or repeated
     --id-column key, a body the API would refuse): each is named by row
  2  nothing was written: DATA unreadable, a template naming a column the
     data lacks, a bad option, or JOBS a result file (or no job file,
     without --force)
"""

EXPORT_EXIT_CODES = """\b
Exit codes:
  0  TABLE written, every job done
  1  TABLE written, some jobs failed, changed or pending (see `status`)
  2  nothing was written: a file unreadable, DATA not in the job file's
     order, or TABLE a job or result file
"""


def _fail(message: str) -> NoReturn:
    click.echo(f"runner: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _text(value: str | None, option: str) -> str | None:
    """An option's text, or the contents of FILE for `@FILE`."""
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"{option} {value}: cannot read {value[1:]}: {getattr(e, 'strerror', None) or e}")


def _url(value: str) -> str:
    from jobs.prepare import URLS
    from jobs.job import ENDPOINTS
    if value in URLS:
        return URLS[value]
    if value in ENDPOINTS and value in URLS.values():
        return value
    _fail(f"--url {value!r}: one of {', '.join(URL_NAMES)} (or their /v1/... paths)")


@click.command("prepare", epilog=PREPARE_EXIT_CODES)
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The job file to write (JSONL, Batch API input format).")
@click.option("--template", "-t", required=True, metavar="TEXT|@FILE",
              help="The prompt, a Jinja2 template over the row's columns: 'Classify: {{ text }}' "
                   "(a column whose name is no identifier: {{ row['first name'] }}); @FILE reads "
                   "it from FILE. A column it names that a row lacks stops prepare.")
@click.option("--system", metavar="TEXT|@FILE",
              help="A system message (chat; the Responses API's instructions), a template too.")
@click.option("--model", "-m", help="The model of every job (not needed for moderations).")
@click.option("--url", "url_name", default="chat", show_default=True, metavar="ENDPOINT",
              help=f"The endpoint: {', '.join(URL_NAMES)}.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A body parameter of every job, its value JSON when it parses as JSON: "
                   "--set max_tokens=64 --set temperature=0 (repeatable).")
@click.option("--response-format", "schema_path",
              type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
              help="A JSON schema the answer must fit (structured outputs; chat and responses): "
                   "sent as response_format json_schema, and checked when the answer comes back.")
@click.option("--id-column", metavar="COL",
              help="Each job's custom_id is the row's value in COL (default: the row's number, "
                   "1 for the first data row); an empty or repeated key is reported by row.")
@click.option("--force", is_flag=True,
              help="Replace OUTPUT even when it is not a job file (never a result file).")
def prepare_command(data: Path, output: Path, template: str, system: str | None,
                    model: str | None, url_name: str, settings: tuple[str, ...],
                    schema_path: Path | None, id_column: str | None, force: bool) -> None:
    """Write one job per row of DATA (a .csv, .jsonl or .parquet table, read streaming) to
    OUTPUT, a plain Batch API job file for `runner run`."""
    import orjson
    from jobs.prepare import Recipe, TemplateProblem, compile_template, parse_setting, response_format_of
    from runner.dataset import DatasetError, prepare
    from runner.files.tables import TableError
    url = _url(url_name)
    params: dict[str, Any] = {}
    for item in settings:
        try:
            key, value = parse_setting(item)
        except ValueError as e:
            _fail(f"--set: {e}")
        params[key] = value
    json_schema = None
    if schema_path is not None:
        try:
            schema = orjson.loads(schema_path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            _fail(f"--response-format {schema_path}: not a JSON file ({e})")
        if not isinstance(schema, dict):
            _fail(f"--response-format {schema_path}: a JSON schema is an object")
        json_schema = response_format_of(schema, schema_path.stem)
    try:
        recipe = Recipe(template=compile_template(_text(template, "--template") or ""),
                        system=None if system is None else compile_template(
                            _text(system, "--system") or "", "system message"),
                        url=url, model=model, params=params, json_schema=json_schema)
        done = prepare(data, output, recipe, id_column=id_column, force=force,
                       log=lambda line: click.echo(f"runner: {line}", err=True))
    except (TemplateProblem, TableError, DatasetError) as e:
        _fail(f"{e}; nothing was written")
    except ValueError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write {output}: {e.strerror or e}")
    more = done.bad_rows - len(done.bad)
    if more:
        click.echo(f"runner: ... and {more} more rows without a job", err=True)
    click.echo(f"runner: {done.jobs:,} jobs from {done.rows:,} rows of {data} -> {output}"
               + (f"; {done.bad_rows:,} rows got no job" if done.bad_rows else ""), err=True)
    sys.exit(EXIT_SOME_FAILED if done.bad_rows else EXIT_OK)


@click.command("export", epilog=EXPORT_EXIT_CODES)
@click.argument("jobs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "results", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The result file of `runner run` (a missing one: every job pending).")
@click.option("-o", "table", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The table to write: .csv, .jsonl or .parquet.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The table `prepare` read: its columns come first in each row, joined by "
                   "the id prepare gave the row.")
@click.option("--id-column", metavar="COL",
              help="With --data: the column prepare took the ids from (default: row numbers).")
@click.option("--expand-json", is_flag=True,
              help="An answer that is a JSON object (structured outputs, moderation scores) "
                   "adds its keys as columns.")
@click.option("--force", is_flag=True, help="Replace TABLE even when it is a job file.")
def export_command(jobs: Path, results: Path, table: Path, data: Path | None,
                   id_column: str | None, expand_json: bool, force: bool) -> None:
    """Write one row per job of JOBS, in its order, to TABLE: custom_id, status (done, failed,
    pending, changed), the answer, finish_reason, token counts and the error, from the job's
    last line in the result file (--output), streaming."""
    from runner.dataset import DatasetError, export
    from runner.files.tables import TableError
    from runner.files.inputs import UnreadableInput
    if id_column is not None and data is None:
        _fail("--id-column joins --data: give both, or neither")
    try:
        done = export(jobs, results, table, data=data, id_column=id_column,
                      expand_json=expand_json, force=force)
    except (TableError, DatasetError, UnreadableInput) as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write {table}: {e.strerror or e}")
    counts = ", ".join(f"{n:,} {status}" for status, n in done.statuses.items() if n)
    click.echo(f"runner: {done.rows:,} rows ({counts or 'no jobs'}) -> {table}", err=True)
    if done.rows_without_job:
        click.echo(f"runner: {done.rows_without_job:,} rows of {data} have no job (prepare "
                   "reported them) and are not in the table", err=True)
    if done.dropped:
        click.echo(f"runner: answer keys first seen after the first rows got no column: "
                   f"{', '.join(sorted(done.dropped)[:10])}", err=True)
    pending = done.rows - done.statuses["done"]
    sys.exit(EXIT_SOME_FAILED if pending else EXIT_OK)
