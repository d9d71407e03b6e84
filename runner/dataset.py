"""From a dataset and back: `prepare` turns a table into a job file, `export` turns a job file
and its results back into a table, both streaming (memory stays flat however long the table).

    data.csv ──prepare──► jobs.jsonl ──runner run──► results.jsonl
                                │                        │
                                └──────export────────────┴──► answers.csv (+ --data: data's columns)

What a row becomes is `jobs.prepare`'s, what a result line says is `jobs.export`'s (both pure);
this module reads and writes the files (`runner.files.tables`) and keeps the ids it must
remember on disk when there are many (`runner.files.keyindex`). Both refuse to write over a
result file, and over anything that is not their own kind of output without `force`; both write
their output atomically (complete, or not at all).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from jobs.prepare import BadRow, Ids, Recipe
from runner.files.keyindex import KeyIndex
from runner.files.tables import AtomicFile, existing_kind, read_rows

__all__ = ["DatasetError", "Prepared", "prepare", "MAX_SHOWN_ROWS"]

MAX_SHOWN_ROWS = 20  # bad rows named one by one; the rest are counted


class DatasetError(Exception):
    """prepare or export cannot go on (an output it must not replace, the same file twice); the
    message says what to do. Nothing was written."""


@dataclass(slots=True)
class Prepared:
    """What `prepare` did: `rows` read, `jobs` written, `bad` rows that got no job (the first
    `MAX_SHOWN_ROWS` kept, all counted in `bad_rows`)."""

    rows: int = 0
    jobs: int = 0
    bad_rows: int = 0
    bad: list[BadRow] = field(default_factory=list)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_replaceable(path: Path, own: str, *, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """DatasetError unless `path` may be (re)written by a command whose output is of kind `own`
    ("job" for prepare, "table" for export): never an input of the command, never a result file,
    and anything else but its own kind only with `force`."""
    for source in inputs:
        if _same_file(path, source):
            raise DatasetError(f"{path} is also an input of this command; choose another output")
    kind = existing_kind(path)
    if kind == "result":
        raise DatasetError(f"{path} holds results (it is a run's output and checkpoint): it is "
                           "never written over; choose another output")
    if kind in ("missing", "empty") or force:
        return
    if own == "job" and kind == "job":
        return  # prepare again: the same jobs, or edited ones that the run tells apart
    if own == "table" and kind == "other":
        return
    what = "a job file" if kind == "job" else "a file that is no job file"
    raise DatasetError(f"{path} exists and is {what}; --force replaces it")


def prepare(data: Path, jobs: Path, recipe: Recipe, *, id_column: str | None = None,
            force: bool = False, log: Callable[[str], None] = lambda line: None) -> Prepared:
    """Write one job per row of `data` to `jobs` (a Batch API input file), streaming.

    A row that gets no job (an empty or repeated key in `id_column`, a body the API would
    refuse) is logged with its number and counted; a template naming a column a row lacks
    raises `TemplateProblem` (and `TableError` an unreadable table, `DatasetError` an output it
    must not replace): then nothing is written, `jobs` stays as it was."""
    check_replaceable(jobs, "job", force=force, inputs=(data,))
    done = Prepared()
    with KeyIndex() as seen, AtomicFile(jobs) as out:
        ids = Ids(id_column, seen=lambda key, row: seen.setdefault(key, row)[0])
        checked = False
        for number, row in read_rows(data):
            done.rows += 1
            if not checked:
                recipe.check_columns(list(row), number)
                checked = True
            custom_id = ids(row, number)
            if not isinstance(custom_id, BadRow):
                try:
                    job = recipe.job(custom_id, row, number)
                except ValueError as e:
                    if type(e) is not ValueError:
                        raise  # TemplateProblem: stops everything
                    custom_id = BadRow(number, str(e))
                else:
                    out.file.write(orjson.dumps(job) + b"\n")
                    done.jobs += 1
                    continue
            done.bad_rows += 1
            if len(done.bad) < MAX_SHOWN_ROWS:
                done.bad.append(custom_id)
                log(f"{data}: {custom_id}")
        out.commit()
    return done


def rows_with_ids(data: Path, id_column: str | None) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(custom_id prepare gave the row, or None when it gave it none; row) for each row of
    `data`, in order: the join key of `export --data`."""
    with KeyIndex() as seen:
        ids = Ids(id_column, seen=lambda key, row: seen.setdefault(key, row)[0])
        for number, row in read_rows(data):
            custom_id = ids(row, number)
            yield (None if isinstance(custom_id, BadRow) else custom_id), row
