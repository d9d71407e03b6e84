"""Flagged input lines for reports: how many of one kind, and the first few to show.

Pure. A flag is a record of `jobs.reader` (`BadLine`, `Duplicate`) or one built like it: it says
where (path, line), which job (custom_id) and why (reason). Reports keep a bounded `FlagSample`
per kind, so memory stays flat however many lines are flagged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.reader import BadLine, Duplicate

MAX_FLAGGED = 20  # lines of each kind kept for a report; the rest are only counted

Flagged = BadLine | Duplicate  # a line flagged in a report: where it is (path, line) and why (reason)


@dataclass(slots=True)
class FlagSample:
    """How many lines of one kind were flagged, and the first `limit` of them."""

    limit: int = MAX_FLAGGED
    count: int = 0
    first: list[Flagged] = field(default_factory=list)

    def add(self, flag: Flagged) -> None:
        self.count += 1
        if len(self.first) < self.limit:
            self.first.append(flag)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count,
                "first": [{"line": f.line, "custom_id": f.custom_id, "reason": f.reason}
                          for f in self.first]}
