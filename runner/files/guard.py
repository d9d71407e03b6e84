"""Refusing an output that would damage the user's data, before anything is written.

A slip such as `runner run jobs.jsonl -o jobs.jsonl` would append result lines to the job file
itself. `check_output` refuses, naming both paths, when OUTPUT

- is INPUT: the same file by device and inode, so through a symlink or a hard link too, and
  stdin redirected from it (`runner run - -o jobs.jsonl < jobs.jsonl`);
- holds job lines rather than result lines (another job file);
- is compressed (results are plain JSONL: appending them would corrupt it);
- is `-` or not a regular file (`/dev/stdout`, a pipe): the output is the checkpoint a rerun
  reads back, so it must be a file.

It only reads: the file, its lock and its contents are left exactly as they were.
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import orjson

from runner.files.checkpoint import CheckpointError
from runner.files.compression import MAGIC_BYTES, sniff

STDIN = "-"
PEEK_BYTES = 64 * 1024  # how much of OUTPUT's start is read to tell job lines from result lines
PEEK_LINES = 5  # complete non-blank lines looked at


class OutputRefused(CheckpointError):
    """OUTPUT must not receive results (it is INPUT, or a job file, or compressed): it cannot
    serve as a checkpoint either."""


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _input_stat(input_path: str) -> os.stat_result | None:
    try:
        return os.fstat(sys.stdin.fileno()) if input_path == STDIN else os.stat(input_path)
    except (OSError, ValueError):
        return None


def _is_job_line(raw: bytes) -> bool:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return (isinstance(obj, dict) and "custom_id" in obj and ("body" in obj or "url" in obj)
            and "response" not in obj and "error" not in obj)


def check_output(input_path: str, output: Path) -> None:
    """Raise `OutputRefused` when results must not be appended to `output` (see the module
    docstring); return quietly when it is absent or holds result lines."""
    shown_input = "<stdin>" if input_path == STDIN else input_path
    if str(output) == STDIN or str(output).startswith(("/dev/", "/proc/")):
        raise OutputRefused(f"-o {output} is not an output file: the output is the checkpoint a rerun resumes "
                            "from, so it must be a file (read it with `cat` or `runner merge` "
                            "afterwards); nothing was written")
    try:
        out_stat = os.stat(output)
    except OSError:
        return  # absent (or unreadable: the run lock reports that)
    in_stat = _input_stat(input_path)
    if in_stat is not None and _identity(in_stat) == _identity(out_stat):
        if input_path == STDIN:
            what = f"standard input is read from the output {output}"
        elif os.path.abspath(output) == os.path.abspath(input_path):
            what = f"the output {output} is the job file {input_path} itself"
        else:
            what = f"the output {output} is the job file {input_path} (the same file, through a link)"
        raise OutputRefused(f"{what}: results would be appended to your jobs. Name another "
                            "output file; nothing was written")
    if not stat.S_ISREG(out_stat.st_mode):
        if stat.S_ISDIR(out_stat.st_mode):
            return  # the lock and the load say so
        raise OutputRefused(f"the output {output} is not a regular file (a terminal, pipe or "
                            "device): the output is the checkpoint a rerun resumes from, so it "
                            "must be a file; nothing was written")
    try:
        with open(output, "rb") as f:
            head = f.read(PEEK_BYTES)
    except OSError:
        return
    kind = sniff(head[:MAGIC_BYTES])
    if kind is not None:
        raise OutputRefused(
            f"the output {output} is a {kind}-compressed file: results are written as plain "
            f"JSONL and would corrupt it. Name another output file (the job file is {shown_input}); "
            "nothing was written")
    lines = [line for line in head.split(b"\n")[:-1] if line.strip()][:PEEK_LINES]
    for number, raw in enumerate(lines, 1):
        if _is_job_line(raw):
            raise OutputRefused(
                f"the output {output} holds job lines, not result lines (its line {number} is a "
                f"job): is it a job file? Results are never written into one. Name another output "
                f"file (the job file is {shown_input}); nothing was written")
