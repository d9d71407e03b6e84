"""Tables in and out: the rows of a CSV, JSONL or Parquet file, read streaming, and a table
written streaming and atomically (`runner prepare` reads one, `runner export` writes one).

    data.csv / .jsonl / .parquet (.csv.gz, .jsonl.gz too)  ──read_rows──►  (row number, {column: value})
    {column: value} ...  ──TableWriter──►  .NAME.tmp-PID  ──commit: fsync, rename──►  table.csv / ...

The format is the file name's extension. CSV is read as text (every value a string; the header
names the columns; a quoted field may hold commas and newlines; a UTF-8 byte order mark is
dropped), JSONL one object a line, Parquet through `pyarrow` (the optional `parquet` extra; a
clear `TableError` says how to install it when it is missing), one record batch at a time. Rows
are numbered from 1, the first data row (a CSV header is row 0).

Writing keeps memory bounded too: rows are buffered only until the columns are known (the first
`BUFFER_ROWS`: their keys, in the order first seen, make the header of a CSV and the schema of a
Parquet file; a key first seen later is dropped, and counted in `dropped`). A value CSV cannot
hold as text (a list, an object) is written as JSON text. The file appears complete or not at all:
it is written beside its final name and renamed when `commit` succeeds.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from runner.files import PRIVATE_FILE

__all__ = ["FORMATS", "TableError", "table_format", "read_rows", "TableWriter", "AtomicFile",
           "existing_kind"]

FORMATS = ("csv", "jsonl", "parquet")
BUFFER_ROWS = 1024  # rows held before a table's columns are fixed; Parquet's rows per write
PARQUET_BATCH_ROWS = 4096  # rows of a Parquet file read at once
PARQUET_HINT = "reading and writing Parquet needs pyarrow: pip install 'runner[parquet]' (or pyarrow)"
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
             ".pq": "parquet"}


class TableError(Exception):
    """A table cannot be read or written: unknown format, unreadable, a bad JSONL line, no
    pyarrow for Parquet. The message names the file and says what to do."""


def table_format(path: str | Path) -> str:
    """"csv", "jsonl" or "parquet", by the extension (before a `.gz`); TableError otherwise."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    kind = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if kind is None:
        raise TableError(f"{path}: the format is told by the extension: .csv, .jsonl (.ndjson) or "
                         ".parquet (.csv.gz and .jsonl.gz are read too)")
    return kind


def _pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise TableError(PARQUET_HINT) from None
    return pq


def _open_text(path: Path) -> IO[str]:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(number, row) for each row of the table at `path`, streaming; TableError when it cannot
    be read (the message names the file and, for a bad line, its number)."""
    path = Path(path)
    kind = table_format(path)
    try:
        if kind == "parquet":
            yield from _parquet_rows(path)
        elif kind == "csv":
            yield from _csv_rows(path)
        else:
            yield from _jsonl_rows(path)
    except OSError as e:
        raise TableError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TableError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(sys.maxsize)  # a long document in one cell is a normal row
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                return
            if len(set(header)) != len(header):
                twice = sorted({c for c in header if header.count(c) > 1})
                raise TableError(f"{path}: the header names column {twice[0]!r} twice")
            for number, cells in enumerate(reader, 1):
                if not cells:
                    continue  # a blank line
                if len(cells) > len(header):
                    raise TableError(f"{path}: row {number} (line {reader.line_num}) has "
                                     f"{len(cells)} fields, the header {len(header)}")
                yield number, dict(zip(header, cells + [""] * (len(header) - len(cells))))
        except csv.Error as e:
            raise TableError(f"{path}: line {reader.line_num}: {e}") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as f:
        number = 0
        for line_number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise TableError(f"{path}: line {line_number} is not JSON ({e})") from None
            if not isinstance(row, dict):
                raise TableError(f"{path}: line {line_number} is not a JSON object")
            number += 1
            yield number, row


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    pq = _pyarrow()
    try:
        parquet = pq.ParquetFile(path)
    except OSError:
        raise
    except Exception as e:  # pyarrow.ArrowInvalid: not a Parquet file
        raise TableError(f"cannot read {path} as Parquet: {e}") from None
    number = 0
    with parquet:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield number, row


def existing_kind(path: Path) -> str:
    """What is at `path` now: "missing", "empty", "job" (its first line is a job line), "result"
    (a result line) or "other" (anything else: a table, a binary file, a folder)."""
    from jobs.reader import _looks_like_result, parse_line  # noqa: PLC0415
    from jobs.job import Job  # noqa: PLC0415
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except FileNotFoundError:
        return "missing"
    except IsADirectoryError:
        return "other"
    first = next((line for line in head.splitlines() if line.strip()), None)
    if first is None:
        return "empty"
    if _looks_like_result(first):
        return "result"
    return "job" if isinstance(parse_line(first, 1, str(path)), Job) else "other"


def _cell(value: Any) -> Any:
    """A value as a CSV cell: text as it is, None empty, a list or object as JSON text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return orjson.dumps(value).decode()
    return value


class AtomicFile:
    """A new file for `path`, written under a temporary name beside it (private to its owner)
    and renamed to `path` by `commit()` once durable; `abort()` (or leaving a `with` block
    without committing) removes it, leaving `path` as it was."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        self.file: IO[bytes] = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.file.closed:
            self.abort()


class TableWriter:
    """Writes rows (dicts) to a CSV, JSONL or Parquet file (by `path`'s extension), streaming,
    into a temporary file renamed to `path` by `commit()`; leaving the `with` block without
    committing removes it. `columns`: the columns in order, when known up front (else the
    first `BUFFER_ROWS` rows' keys). `dropped`: keys first seen after the columns were fixed."""

    def __init__(self, path: str | Path, columns: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.format = table_format(self.path)
        if self.path.suffix.lower() == ".gz":
            raise TableError(f"{self.path}: export writes plain .csv, .jsonl or .parquet files")
        if self.format == "parquet":
            self._pq = _pyarrow()
        self.columns: list[str] | None = list(columns) if columns is not None else None
        self.dropped: set[str] = set()
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []
        self._atomic = AtomicFile(self.path)
        self._file = self._atomic.file
        self._csv: Any = None
        self._parquet: Any = None
        self._schema: Any = None

    def write(self, row: dict[str, Any]) -> None:
        """Add one row (its keys are column names; a missing one is an empty cell)."""
        self.rows += 1
        self._buffer.append(row)
        if len(self._buffer) >= BUFFER_ROWS:
            self._flush()

    def _fix_columns(self) -> list[str]:
        if self.columns is None:
            seen: dict[str, None] = {}
            for row in self._buffer:
                seen.update(dict.fromkeys(row))
            self.columns = list(seen)
        return self.columns

    def _flush(self) -> None:
        if not self._buffer:
            return
        columns = self._fix_columns()
        known = set(columns)
        for row in self._buffer:
            if not known.issuperset(row):
                self.dropped.update(k for k in row if k not in known)
        rows = [{c: row.get(c) for c in columns} for row in self._buffer]
        self._buffer = []
        if self.format == "jsonl":
            self._file.writelines(orjson.dumps(r) + b"\n" for r in rows)
        elif self.format == "csv":
            self._write_csv(columns, rows)
        else:
            self._write_parquet(columns, rows)

    def _write_csv(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        if self._csv is None:
            self._csv = True
            writer.writerow(columns)
        writer.writerows([_cell(r[c]) for c in columns] for r in rows)
        self._file.write(text.getvalue().encode("utf-8"))

    def _write_parquet(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa  # noqa: PLC0415  (only with Parquet: checked in __init__)
        if self._schema is None:
            table = pa.Table.from_pylist(rows)
            fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f
                      for f in table.schema]
            self._schema = pa.schema(fields)
            self._parquet = self._pq.ParquetWriter(self._file, self._schema)
        try:
            table = pa.Table.from_pylist(rows, schema=self._schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # a later row's value of another type: text columns take it as JSON, others fail
            for f in self._schema:
                if pa.types.is_string(f.type):
                    for r in rows:
                        if r[f.name] is not None and not isinstance(r[f.name], str):
                            r[f.name] = _cell(r[f.name])
            try:
                table = pa.Table.from_pylist(rows, schema=self._schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise TableError(f"{self.path}: a column's values change type past the first "
                                 f"{BUFFER_ROWS} rows ({e}); write .jsonl or .csv instead") from None
        self._parquet.write_table(table)

    def commit(self) -> None:
        """Write what is buffered, make the file durable, and give it its name."""
        if self.format == "csv" and self._csv is None and not self._buffer:
            self._buffer = []
            self._fix_columns()
            self._write_csv(self.columns or [], [])
        self._flush()
        if self.format == "parquet":
            if self._parquet is None:
                import pyarrow as pa  # noqa: PLC0415
                self._schema = pa.schema([pa.field(c, pa.string()) for c in self.columns or []])
                self._parquet = self._pq.ParquetWriter(self._file, self._schema)
            self._parquet.close()
        self._atomic.commit()

    def abort(self) -> None:
        """Forget the table: the temporary file is removed, `path` is left as it was."""
        try:
            if self._parquet is not None:
                self._parquet.close()
        except Exception:
            pass
        self._atomic.abort()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if not self._file.closed:
            self.abort()
