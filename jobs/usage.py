"""Reading an answer's `usage` block (token counts the API reports having spent)."""
from __future__ import annotations

from typing import Any


def usage_count(value: Any) -> int:
    """A token count from an answer's `usage`; 0 for anything that is not a count."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        return 0
    return int(value)
