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


# Off a terminal nothing is wrapped: a `file:line` note stays on one line for grep, whatever the
# length of the path (rich would wrap at 80 columns into a file or a pipe).
UNWRAPPED_WIDTH = 10_000


def print_report(renderable: Group, console: Console | None = None) -> None:
    """Print a report to stdout: on a terminal, tables wider than it wrap instead of being cut;
    into a file or a pipe, no line is wrapped."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=UNWRAPPED_WIDTH)
    console.print(renderable, highlight=False, soft_wrap=False)
