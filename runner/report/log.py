"""The run log: where a run's messages go (the console, and the `--log-file`), always redacted.

On a terminal messages pass through a rich `Console`, so they scroll above the live progress
display; elsewhere (cron, a pipe, a file) they are plain lines and rich is never imported.
"""
from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from runner.redact import redact

if TYPE_CHECKING:
    from rich.console import Console


def terminal_console() -> Console | None:
    """A rich `Console` on stderr when stderr is a terminal as rich judges it (`FORCE_COLOR` and
    `TTY_COMPATIBLE` may say a pipe is one), else None, without importing rich."""
    if not (_isatty(sys.stderr) or "FORCE_COLOR" in os.environ or "TTY_COMPATIBLE" in os.environ):
        return None
    from rich.console import Console
    console = Console(stderr=True)
    return console if console.is_terminal else None


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # None (no stderr), or closed
        return False


def console_echo(console: Console | None) -> Callable[[str], None]:
    """How a message reaches stderr: through `console` (above its live display) when there is
    one, else as plain lines written to the `sys.stderr` of the moment. Either way the text is
    the message as given: no markup, emoji codes, highlighting or wrapping."""
    if console is not None:
        return lambda message: console.print(message, highlight=False, markup=False, emoji=False,
                                             soft_wrap=True)
    return _write_line


def _write_line(message: str) -> None:
    """One line on stderr; a stderr that is gone (a closed pipe: `runner ... 2>&1 | head`) is
    let be: the run, its output, log file and summary JSON do not depend on it."""
    stream = sys.stderr
    if stream is not None:
        try:
            stream.write(message + "\n")
            stream.flush()
        except (OSError, ValueError):  # BrokenPipeError; ValueError: closed
            pass


class RunLog:
    """Where a run's messages go: the console, and with timestamps the `--log-file` (appended).

    Every message passes `redact` first, so the API key never reaches a terminal or a log file.
    """

    def __init__(self, echo: Callable[[str], None], log_file: Path | None = None,
                 secrets: Iterable[str] = (), now: Callable[[], datetime.datetime] | None = None) -> None:
        self._echo = echo
        self._secrets = tuple(s for s in secrets if s)
        self._now = now or (lambda: datetime.datetime.now().astimezone())
        self._file: IO[str] | None = None
        if log_file is not None:
            self._file = open(log_file, "a", encoding="utf-8", buffering=1)

    def __call__(self, message: str, *, echo: bool = True) -> None:
        message = redact(message, self._secrets)
        if self._file is not None:  # first: the file keeps it even if stderr fails
            stamp = self._now().isoformat(timespec="seconds")
            for line in message.splitlines() or [""]:
                self._file.write(f"{stamp} {line}\n")
        if echo:
            self._echo(message)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
