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

from jobs import export as columns
from jobs.codes import DUPLICATE
from jobs.job import Job
from jobs.prepare import BadRow, Ids, Recipe
from jobs.reader import BOM, parse_line
from jobs.results import fingerprint
from runner.files.inputs import input_lines
from runner.files.keyindex import KeyIndex
from runner.files.tables import AtomicFile, TableWriter, existing_kind, read_rows

__all__ = ["DatasetError", "Prepared", "prepare", "Exported", "export", "ResultIndex",
           "MAX_SHOWN_ROWS"]

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


class ResultIndex:
    """The final line of each custom_id in a result file, read from disk when asked: only where
    each line is (offset, length) is kept, in a `KeyIndex`, so result files larger than memory
    are fine. The last line of an id wins; duplicate notes (`duplicate_custom_id`) are never a
    job's result. A missing file holds no results. Close it (or use ``with``)."""

    def __init__(self, path: Path) -> None:
        self._index = KeyIndex()
        self.lines = 0
        try:
            self._file = open(path, "rb")
        except FileNotFoundError:
            self._file = None
            return
        offset = 0
        for raw in self._file:
            custom_id = _result_id(raw)
            if custom_id is not None:
                self._index.put(custom_id, offset, len(raw))
                self.lines += 1
            offset += len(raw)

    def at(self, custom_id: str) -> int | None:
        """Where the final result line of `custom_id` starts (a byte offset); None: it has none."""
        found = self._index.get(custom_id)
        return None if found is None else found[0]

    def get(self, custom_id: str) -> dict[str, Any] | None:
        """The final result line of `custom_id`, parsed; None when it has none."""
        at = self._index.get(custom_id)
        if at is None or self._file is None:
            return None
        self._file.seek(at[0])
        return orjson.loads(self._file.read(at[1]))

    def close(self) -> None:
        self._index.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> ResultIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _result_id(raw: bytes) -> str | None:
    """The custom_id of a result line that is a job's result (not a duplicate note), else None."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # a torn last line: the run repairs it, export ignores it
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        return None
    error = line.get("error")
    if isinstance(error, dict) and error.get("code") == DUPLICATE:
        return None
    return line["custom_id"]


def read_job_file(path: Path) -> Iterator[Job]:
    """The jobs of a job file in order, streaming; bad lines and repeated custom_ids (only the
    first runs) are skipped, as a run skips them. Ids are remembered in a `KeyIndex`."""
    with KeyIndex() as seen:
        for number, raw in enumerate(input_lines(str(path)), 1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            job = parse_line(raw, number, str(path))
            if isinstance(job, Job) and seen.setdefault(job.custom_id, number)[0] == number:
                yield job


@dataclass(slots=True)
class Exported:
    """What `export` wrote: rows by status, data rows without a job (`--data`), and keys of
    expanded answers that came too late to get a column (`dropped`)."""

    rows: int = 0
    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(columns.STATUSES, 0))
    rows_without_job: int = 0
    dropped: set[str] = field(default_factory=set)


def _unique(name: str, taken: set[str], prefix: str) -> str:
    while name in taken:
        name = prefix + name
    return name


def export(jobs: Path, results: Path, table: Path, *, data: Path | None = None,
           id_column: str | None = None, expand_json: bool = False, force: bool = False,
           log: Callable[[str], None] = lambda line: None) -> Exported:
    """Write one row per job of `jobs`, in its order, to `table` (.csv, .jsonl or .parquet):
    `jobs.export.COLUMNS` from the job's final line in `results`, after the columns of its row
    of `data` when given (matched by the id `prepare` gave it: `id_column`'s value, else the
    row's number). Streaming: neither file is held in memory.

    A column of `data` keeps its name; one of runner's that `data` has too is prefixed
    `runner_`. With `expand_json`, an answer that is a JSON object adds its keys as columns
    (prefixed `answer.` where a name is taken). DatasetError when a job is not in `data` in the
    job file's order, or `table` must not be replaced; then nothing is written."""
    check_replaceable(table, "table", force=force,
                      inputs=tuple(p for p in (jobs, results, data) if p is not None))
    done = Exported()
    table_dir = table.resolve().parent
    results_dir = results.resolve().parent

    def image_path(file: str) -> str:
        return os.path.relpath(results_dir / file, table_dir)

    source = rows_with_ids(data, id_column) if data is not None else None
    names: dict[str, str] | None = None  # runner's column -> its name in the table
    with ResultIndex(results) as index, TableWriter(table) as writer:
        for job in read_job_file(jobs):
            record = index.get(job.custom_id)
            row = columns.export_row(job.custom_id, job.url, fingerprint(job.url, job.body),
                                     record, image_path)
            data_row: dict[str, Any] = {}
            if source is not None:
                data_row = _next_match(source, job.custom_id, done, data, jobs)
            if names is None:
                taken = set(data_row)
                names = {c: _unique(c, taken, "runner_") for c in columns.COLUMNS}
            out = {**data_row, **{names[c]: v for c, v in row.items()}}
            if expand_json:
                taken = set(out)
                fields = columns.expand(row["answer"]) or {}
                out.update({_unique(k, taken, "answer."): v for k, v in fields.items()})
            writer.write(out)
            done.rows += 1
            done.statuses[row["status"]] += 1
        if source is not None:
            done.rows_without_job += sum(1 for _ in source)
        writer.commit()
        done.dropped = writer.dropped
    return done


def _next_match(source: Iterator[tuple[str | None, dict[str, Any]]], custom_id: str,
                done: Exported, data: Path | None, jobs: Path) -> dict[str, Any]:
    """The next row of `source` whose id is `custom_id` (rows before it got no job: counted)."""
    for key, row in source:
        if key == custom_id:
            return row
        done.rows_without_job += 1
    raise DatasetError(
        f"job {custom_id!r} of {jobs} has no row in {data} after the rows matched before it: "
        "--data joins rows in the job file's order by the id prepare gave them (the same "
        "--id-column, else the row's number); nothing was written")
