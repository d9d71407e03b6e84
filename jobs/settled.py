"""What each line of INPUT came to in a run, by line number: the content of the resume index
(`runner.files.resume_index`), which spares the next run over the same two files reading OUTPUT
again or parsing a finished job. Pure: one byte a line, no I/O.

    line k of INPUT ─► states[k - 1]:   PENDING  nothing in OUTPUT answers it (no line, a
                                                  transient failure, a bad line, a blank one,
                                                  another shard's job): read it again
                                        DONE     a success answers this very job
                                        KEPT     a permanent failure answers it (kept unless
                                                  --retry-failed or --retry-codes)

A run fills it as the intake decides each line and as each line of OUTPUT is written (the same
decisions as reading OUTPUT would give: `jobs.intake` made them). It is worth saving only when
every line of INPUT was decided (`read_all`) and nothing left a decision that depends on more
than the line's own state (`void` says what: duplicate ids, a job changed since its kept result),
since a run trusting it reads the PENDING lines alone, with an empty view of OUTPUT.
"""
from __future__ import annotations

__all__ = ["DONE", "KEPT", "PENDING", "Settled"]

PENDING = 0
DONE = 1
KEPT = 2


class Settled:
    """The state of each line of INPUT (see the module docstring); `states` as loaded from an
    index, or empty for a run that reads OUTPUT."""

    __slots__ = ("states", "void", "read_all")

    def __init__(self, states: bytearray | None = None) -> None:
        self.states = states if states is not None else bytearray()
        self.void: str | None = None  # why no index may be written, once something says so
        self.read_all = False  # every line of INPUT was decided

    def set(self, line: int, state: int) -> None:
        """Line `line` (1-based) came to `state`."""
        states = self.states
        if line > len(states):
            states.extend(bytes(line - len(states)))
        states[line - 1] = state

    def spoil(self, why: str) -> None:
        """No index may be written for this run (the first reason is kept)."""
        if self.void is None:
            self.void = why

    def settled_from(self, first: int, count: int) -> bool:
        """Whether lines `first` .. `first + count - 1` are all DONE or KEPT (none to read)."""
        end = first - 1 + count
        return end <= len(self.states) and self.states.find(PENDING, first - 1, end) < 0

    def is_settled(self, line: int) -> bool:
        """Whether line `line` is DONE or KEPT (nothing to read)."""
        return line <= len(self.states) and self.states[line - 1] != PENDING
