"""What the `status` and `estimate` reports share: notes listing flagged lines, and printing."""
from __future__ import annotations

from rich.console import Console, Group
from rich.text import Text

from jobs.flags import FlagSample


def flag_notes(sample: FlagSample, what: str) -> list[Text]:
    """"N what:", then one line per flag kept and how many more there were; nothing when none."""
    if not sample.count:
        return []
    notes = [Text(f"{sample.count:,} {what}:")]
    notes += [Text(f"  {flag}") for flag in sample.first]
    if sample.count > len(sample.first):
        notes.append(Text(f"  ... and {sample.count - len(sample.first):,} more"))
    return notes


def print_report(renderable: Group, console: Console | None = None) -> None:
    """Print a report to stdout (tables wider than the terminal wrap instead of being cut)."""
    (console or Console()).print(renderable, highlight=False, soft_wrap=False)
