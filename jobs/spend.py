"""A spend cap (`--max-cost USD`): what one run has spent, what its requests on the wire may still
cost, and whether one more request fits.

    spent (answers, by their own `usage`)  +  held (requests on the wire, at their upper bound)
        +  the next request's upper bound   <=   cap          else the request is not sent

A request's upper bound is, per job, its true prompt tokens plus its completion budget (max tokens
x n) at the price table in use; a job without a max tokens field may answer up to its model's
context window. An image job costs its images at the per-image price, bound and answer alike.
Since an answer never costs more than its bound, `spent` never passes the cap. Pure: prices and
the token counter come in as arguments.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from jobs import tokens
from jobs.endpoints import images_requested, read_usage, spec_of
from jobs.estimate import has_completion_cap
from jobs.job import Job


class Prices(Protocol):
    """What a price table answers (`runner.report.prices.PriceTable`)."""

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None: ...

    def image_price(self, model: str, size: str | None, quality: str | None) -> float | None: ...


class Unpriceable(ValueError):
    """A job whose cost cannot be bounded: its model is not in the price table, or it sets no max
    tokens and its model's context window is unknown. A capped run cannot send it."""


def _image_cost(job: Job, prices: Prices) -> float:
    price = prices.image_price(job.model, job.body.get("size"), job.body.get("quality"))
    if price is None:
        raise Unpriceable(f"--max-cost: no per-image price for {job.model} at size "
                          f"{job.body.get('size')!r}, quality {job.body.get('quality')!r} "
                          f"(job {job.custom_id!r}); add it with --prices FILE")
    return price * images_requested(job.url, job.body)


def job_bound(job: Job, prices: Prices, counter: tokens.TokenCounter) -> float:
    """The most `job` can cost in USD (see the module docstring); `Unpriceable` when unknown."""
    if spec_of(job.url).images:
        return _image_cost(job, prices)
    prompt = tokens.prompt_tokens(job.url, job.body, counter)
    completion = tokens.max_completion_tokens(job.url, job.body)
    if not has_completion_cap(job):
        window = tokens.context_window(job.model)
        if window is None:
            raise Unpriceable(f"--max-cost: job {job.custom_id!r} sets no max tokens and the "
                              f"context window of {job.model} is unknown, so its cost has no "
                              "bound; give it max_tokens (or max_completion_tokens)")
        n = job.body.get("n") if isinstance(job.body.get("n"), int) else 1
        completion = max(0, window - prompt) * max(1, n)
    usd = prices.cost(job.model, prompt, completion)
    if usd is None:
        raise Unpriceable(f"--max-cost: no price for {job.model} (job {job.custom_id!r}), so "
                          "what it spends cannot be counted; add it with --prices FILE")
    return usd


def answer_cost(job: Job, usage: Mapping[str, Any] | None, prices: Prices) -> float:
    """What one job's answer cost in USD: its `usage` at the table's prices (an image job: its
    images at the per-image price). 0.0 for a model the table does not know (never admitted
    under a cap)."""
    if spec_of(job.url).images:
        try:
            return _image_cost(job, prices)
        except Unpriceable:
            return 0.0
    counts = read_usage(usage)
    return prices.cost(job.model, counts.input, counts.output) or 0.0


@dataclass(slots=True)
class Spend:
    """One run's money against its cap, in USD."""

    cap: float
    spent: float = 0.0   # answers received
    held: float = 0.0    # upper bounds of requests admitted and not yet answered
    holding: int = 0     # how many such requests (held is exactly 0.0 when none: no float residue)

    def __post_init__(self) -> None:
        if not self.cap > 0:
            raise ValueError("the spend cap must be a positive number of USD")

    def fits(self, bound: float) -> bool:
        """Whether a request costing at most `bound` may go without `spent` ever passing the cap."""
        return self.spent + self.held + bound <= self.cap

    def hold(self, bound: float) -> None:
        self.held += bound
        self.holding += 1

    def release(self, bound: float) -> None:
        """The request holding `bound` left the wire (what its answer cost is `pay`'s)."""
        self.holding -= 1
        self.held = max(0.0, self.held - bound) if self.holding else 0.0

    def pay(self, usd: float) -> None:
        self.spent += usd
