"""The set of budgets of a run: one `RateLimiter` per (base URL, model), built on first use."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from runner.pacing.limiter import DEFAULT_BURST_S, RateLimiter

__all__ = ["Limiters"]


class Limiters:
    """Registry: one RateLimiter per (base_url, model) key, created on first use with the
    configured defaults (all keys share them; each learns its own limits from headers)."""

    def __init__(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        burst_s: float = DEFAULT_BURST_S,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        self._defaults = dict(rpm=rpm, tpm=tpm, burst_s=burst_s, clock=clock, sleep=sleep)
        RateLimiter(**self._defaults)  # validate the defaults now, not on first use
        self._limiters: dict[tuple[str, str], RateLimiter] = {}

    def get(self, key: tuple[str, str]) -> RateLimiter:
        """The limiter for ``(base_url, model)``; the same object on every call."""
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = RateLimiter(**self._defaults)
        return limiter

    def items(self) -> list[tuple[tuple[str, str], RateLimiter]]:
        """Every (key, limiter) created so far, in creation order (for stats reports)."""
        return list(self._limiters.items())
