"""The jobs of INPUT that no output holds (`runner merge --jobs`), found in flat memory.

INPUT is read twice: first by the job reader (`jobs.reader.read_jobs`: what is a job, and which
line of a repeated custom_id counts), keeping only a bit per line that holds a job; then, once the
merge is known, for the custom_id of each such line. So the reader's table of INPUT's ids and the
merge's table of the outputs' ids are never held at once. An INPUT that cannot be read twice (a
pipe, a FIFO) is read once, after the merge, with both tables held.
"""
from __future__ import annotations

import gc
import os
import stat
from collections.abc import Callable, Iterator

import orjson

from jobs.job import Job
from jobs.reader import BOM, read_jobs
from runner.files.inputs import Rereader, UnreadableInput, input_lines

__all__ = ["JobLines", "job_lines", "missing_jobs"]

JobLines = bytearray  # bit n set: line n (1-based) of INPUT is a job


def _rereadable(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _jobs(path: str) -> Iterator[Job]:
    with Rereader.of(path) as reread:
        for item in read_jobs(input_lines(path), path, reread=reread,
                              expected_lines=None if reread is None else reread.lines()):
            if isinstance(item, Job):
                yield item


def job_lines(path: str) -> JobLines | None:
    """The lines of INPUT that are jobs (not bad lines, not repeats of a custom_id), as bits;
    None when INPUT cannot be read twice. `UnreadableInput` or `NotAJobFile` as the reader."""
    if not _rereadable(path):
        return None
    bits = bytearray()
    for job in _jobs(path):
        if job.line >> 3 >= len(bits):
            bits.extend(bytes((job.line >> 3) + 1 - len(bits)))
        bits[job.line >> 3] |= 1 << (job.line & 7)
    gc.collect()  # the reader and its table of ids hold each other (the table recalls through
    # the reader): freed now, not whenever the collector next runs, before the merge makes its own
    return bits


def missing_jobs(path: str, holds: Callable[[str], bool],
                 lines: JobLines | None) -> Iterator[tuple[int, str]]:
    """(line, custom_id) of each job of INPUT that `holds` denies, in file order; `lines` from
    `job_lines` (None: INPUT is read by the job reader now)."""
    if lines is None:
        for job in _jobs(path):
            if not holds(job.custom_id):
                yield job.line, job.custom_id
        return
    for number, raw in enumerate(input_lines(path), 1):
        if number >> 3 < len(lines) and lines[number >> 3] & 1 << (number & 7):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                custom_id = orjson.loads(raw)["custom_id"]  # as the reader took it
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise UnreadableInput(f"{path} changed while it was read") from None
            if not holds(custom_id):
                yield number, custom_id
