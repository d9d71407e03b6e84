"""The run log: where a run's messages go (the console, and the `--log-file`), always redacted."""
from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from runner.redact import redact


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
        if echo:
            self._echo(message)
        if self._file is not None:
            stamp = self._now().isoformat(timespec="seconds")
            for line in message.splitlines() or [""]:
                self._file.write(f"{stamp} {line}\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
