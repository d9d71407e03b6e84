"""The set of budgets of a run: one `RateLimiter` per (base URL, model), or one per base URL when
the server counts one budget for the key over every model. Built on first use."""
from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

from runner.api.headers import RateLimitInfo
from runner.pacing.limiter import DEFAULT_BURST_S, Permit, RateLimiter
from runner.pacing.state import BudgetState

__all__ = ["BUDGET_SCOPES", "KEY_BUDGET", "Limiters", "SHARED_429S", "SHARED_429_SPAN_S",
           "SHARED_EXCESS_MIN", "SHARED_EXCESS_SHARE"]

BUDGET_SCOPES = ("auto", "model", "key")
"""``model``: one budget per model (OpenAI, Azure deployments). ``key``: one budget for the key over
every model of a base URL (some gateways). ``auto``: per model until the server shows otherwise."""

KEY_BUDGET = "*"
"""The model name under which ``scope="key"`` keeps the one budget of a base URL's models."""

SHARED_EXCESS_MIN = 3  # see SHARED_EXCESS_SHARE
SHARED_EXCESS_SHARE = 0.05
"""A model's budget is taken for one shared with the run's other models of that base URL when the
server says more of it is spent than that model sent (its ``remaining`` below a bucket of its
limit that only that model's requests spend: `RateLimiter.unexplained_spend`) by at least this share
of the limit (and `SHARED_EXCESS_MIN` requests), and the other models sent at least that excess in
the last minute: no per-model budget is spent by requests we did not send to it. Only for a server
that has shown it holds a whole minute of the budget (OpenAI does); where it holds less, its
``remaining`` says too little. (Another client on the same key looks the same; pacing those models
together then is the safe side.)"""

SHARED_429S = 5  # see SHARED_429_SPAN_S
SHARED_429_SPAN_S = 10.0
"""The models of a base URL are also taken to share one budget when, each paced by our own bucket
at the limit its server announced, they meet `SHARED_429S` 429s among them within this many
seconds while more than one of them is sending: a budget paced at its own limit meets 429s only
when others spend it. (Counted over the models, not per model: where refused requests count
against the budget, each model slows down after its own 429s, and the others' keep coming.)
(Not for a gateway's count or a window: a window's edge draws 429s of its own.)"""


class Limiters:
    """Registry: the RateLimiter of each (base_url, model), created on first use with the
    configured defaults. With ``scope="key"`` every model of a base URL gets the same limiter;
    with ``scope="auto"`` each model gets its own until `notice` learns that the server counts
    them together (then they share the limiter of the model that showed it); ``"model"`` never
    shares. ``states(base_url, model)``, when given, builds the `BudgetState` of each new limiter
    (`runner.pacing.redis_state.RedisBudgets.state`: budgets shared with other processes; the
    key's one budget is asked for as `KEY_BUDGET`). ``key_budget``: the name that budget goes by
    once found shared (`BudgetState.rename`): what ``states`` names `KEY_BUDGET`'s (the image
    lanes', whose states are named apart, differs)."""

    def __init__(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        burst_s: float = DEFAULT_BURST_S,
        scope: str = "auto",
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
        states: Callable[[str, str], BudgetState] | None = None,
        key_budget: str = KEY_BUDGET,
    ) -> None:
        if scope not in BUDGET_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(BUDGET_SCOPES)}, got {scope!r}")
        self._defaults = dict(rpm=rpm, tpm=tpm, burst_s=burst_s, clock=clock, sleep=sleep)
        RateLimiter(**self._defaults)  # validate the defaults now, not on first use
        self.scope = scope
        self._states = states
        self._key_budget = key_budget
        self._limiters: dict[tuple[str, str], RateLimiter] = {}
        self._shared: dict[str, RateLimiter] = {}  # base URL -> its one limiter, once shared
        self._429s: dict[str, deque[float]] = {}  # recent 429 times of paced models, per base URL

    def get(self, key: tuple[str, str]) -> RateLimiter:
        """The limiter for ``(base_url, model)``; the same object on every call until `notice`
        makes the base URL's models share one."""
        limiter = self._limiters.get(key)
        if limiter is None:
            base_url = key[0]
            limiter = self._shared.get(base_url)
            if limiter is None:
                limiter = RateLimiter(**self._defaults, state=self._state(key))
                if self.scope == "key":
                    self._shared[base_url] = limiter
            self._limiters[key] = limiter
        return limiter

    def _state(self, key: tuple[str, str]) -> BudgetState | None:
        """Where a new limiter keeps its numbers: from `states` (a budget shared between
        processes, named by base URL and model, or `KEY_BUDGET` for the key's one budget), else
        in the limiter itself."""
        if self._states is None:
            return None
        return self._states(key[0], KEY_BUDGET if self.scope == "key" else key[1])

    def shared(self, base_url: str) -> bool:
        """Whether the models of `base_url` share one budget."""
        return base_url in self._shared

    def notice(self, key: tuple[str, str], info: RateLimitInfo, permit: Permit | None = None
               ) -> bool:
        """Learn from one answer for `key` whether its base URL's models share one budget: the
        headers say so (a gateway naming the key's budget), or they show more spent than this
        model sent while the others sent it (`SHARED_EXCESS_SHARE`). True when this answer made
        them share (the caller says so once and re-reads `get` for its other models)."""
        base_url = key[0]
        if self.scope != "auto" or base_url in self._shared or info.scope == "model":
            return False
        limiter = self.get(key)
        if info.scope != "key" and not self._spent_by_others(key, limiter, info, permit):
            return False
        return self._share(base_url, limiter)

    def notice_429(self, key: tuple[str, str]) -> bool:
        """Learn from one 429 for `key` whether its base URL's models share one budget: models
        paced at the limit their server announced keep meeting 429s (`SHARED_429S` among them
        within `SHARED_429_SPAN_S`) while the run's other models there are sending. True when this
        429 made them share, as for `notice`."""
        base_url = key[0]
        if self.scope != "auto" or base_url in self._shared:
            return False
        limiter = self.get(key)
        if not limiter.server_paced:
            return False
        times = self._429s.setdefault(base_url, deque(maxlen=SHARED_429S))
        now = limiter.now()
        times.append(now)
        if len(times) < SHARED_429S or now - times[0] > SHARED_429_SPAN_S:
            return False
        if not any(other.admitted_last_minute() for (url, _), other in self._limiters.items()
                   if url == base_url and other is not limiter):
            return False
        return self._share(base_url, limiter)

    def _share(self, base_url: str, limiter: RateLimiter) -> bool:
        self._shared[base_url] = limiter
        # Shared with other processes, the key's budget goes by the one name every process gives
        # it, whichever model showed it to each.
        limiter.rename_budget(self._key_budget)
        for other in self._limiters:
            if other[0] == base_url:
                self._limiters[other] = limiter
        return True

    def _spent_by_others(self, key: tuple[str, str], limiter: RateLimiter,
                         info: RateLimitInfo, permit: Permit | None) -> bool:
        limit = info.limit_requests
        if limit is None or limiter.held_most("requests") < (1 - SHARED_EXCESS_SHARE) * limit:
            return False  # a server that holds less than a minute's: remaining says too little
        excess = limiter.unexplained_spend(info, permit)
        if excess < max(SHARED_EXCESS_MIN, SHARED_EXCESS_SHARE * limit):
            return False
        others = sum(other.admitted_last_minute() for (base_url, _), other in self._limiters.items()
                     if base_url == key[0] and other is not limiter)
        return others >= excess

    def items(self) -> list[tuple[tuple[str, str], RateLimiter]]:
        """Every (key, limiter) created so far, in creation order (for stats reports); models that
        share a budget appear each with the same limiter."""
        return list(self._limiters.items())
