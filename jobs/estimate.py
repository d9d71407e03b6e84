"""What a job file will take before anything is spent: requests, tokens, time and cost per model.

Pure: an `Estimator` is fed the items of `jobs.reader.read_jobs` (jobs, bad lines, duplicates) one
at a time and keeps only per-model sums and a bounded sample of flagged lines, so memory stays
flat however large the file (the packer's open packs are bounded by `MAX_OPEN_PACKS`).

It counts what a run would do with the file: duplicates and jobs over their model's context window
are never sent (the dispatcher fails them at once), every other job is packed by the same
`jobs.packing.Packer` the run uses and charged with the same `jobs.tokens` functions. Prices and
true token counts come in as functions (`cost`, `counter`), so this module knows nothing of price
tables or tokenizers.

The numbers:

- `prompt_tokens`: true prompt tokens (by the `counter` given), what input is billed on;
- `max_completion_tokens`: the completion budget (max tokens x n), an upper bound on output;
- `charge`: what the API's rate limiter counts against TPM (ceil(chars / 4) + budget);
- `minutes`: max(requests / RPM, charge / TPM) per model, a lower bound on wall time (retries,
  latency and a smaller server-side limit only add to it); models run in parallel, so the whole
  run takes the longest model's time; None when neither limit is known;
- `cost`: prompt tokens x input price + max completion tokens x output price, an upper bound,
  except for chat and Responses jobs without a max tokens field, whose output is unbounded and not included
  (counted in `uncapped`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jobs import tokens
from jobs.endpoints import images_requested, spec_of
from jobs.flags import MAX_FLAGGED, FlagSample
from jobs.intake import ChangedPolicy, Intake, Pending, Skip
from jobs.job import Job
from jobs.packing import Budget, Packer, Request
from jobs.reader import BadLine, Duplicate, read_jobs
from jobs.results import OutputState
from jobs.structured import json_request


CostFn = Callable[[str, int, int], "float | None"]  # (model, prompt, completion) -> USD or None
ImagePriceFn = Callable[[str, "str | None", "str | None"], "float | None"]  # (model, size, quality)


def _no_image_prices(model: str, size: str | None, quality: str | None) -> float | None:
    return None


def _no_prices(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    return None


@dataclass(slots=True)
class ModelEstimate:
    """Sums for one model. Token and request counts cover only jobs a run would send."""

    model: str
    jobs: int = 0                   # valid, unique jobs naming this model
    over_context: int = 0           # of those, never sent: over the context window
    requests: int = 0               # API calls after packing
    packed_jobs: int = 0            # jobs that share a request with others
    prompt_tokens: int = 0
    max_completion_tokens: int = 0
    charge: int = 0                 # rate-limit tokens
    uncapped: int = 0               # chat/Responses jobs without max tokens: output not bounded
    cost: float | None = None       # USD, filled in by `Estimator.finish`; None = unknown price
    images: int = 0                 # images asked for (image endpoints: n per job)
    image_cost: float | None = 0.0  # USD for them by the per-image table; None = some unpriced
    structured: int = 0             # jobs asking for JSON: their answers are checked (jobs.structured)

    def minutes(self, budget: Budget, ipm: float | None = None) -> float | None:
        """max(requests / RPM, charge / TPM) over the limits known; for an image model
        max(requests / RPM, images / IPM); None when none is."""
        second = (self.images, ipm) if self.images else (self.charge, budget.tpm)
        terms = [n / limit for n, limit in ((self.requests, budget.rpm), second) if limit]
        return max(terms) if terms else None

    def to_json(self, budget: Budget, ipm: float | None = None) -> dict[str, Any]:
        return {"model": self.model, "jobs": self.jobs, "over_context": self.over_context,
                "requests": self.requests, "packed_jobs": self.packed_jobs,
                "prompt_tokens": self.prompt_tokens,
                "max_completion_tokens": self.max_completion_tokens,
                "rate_limit_charge": self.charge, "uncapped_jobs": self.uncapped,
                "images": self.images, "minutes": self.minutes(budget, ipm),
                "cost_usd": self.cost}


@dataclass(frozen=True, slots=True)
class Estimate:
    """The whole file: per-model sums, flagged lines, and the limits the times assume."""

    path: str
    budget: Budget
    models: tuple[ModelEstimate, ...]
    bad_lines: FlagSample
    duplicates: FlagSample
    over_context: FlagSample
    ipm: float | None = None
    # Against an OUTPUT (`runner estimate -o`): jobs a rerun leaves alone (their final result is
    # there), and jobs changed since their result (counted in the estimate: --changed rerun)
    kept: int = 0
    changed: FlagSample = field(default_factory=FlagSample)

    @property
    def images(self) -> int:
        return sum(m.images for m in self.models)

    @property
    def structured(self) -> int:
        """Jobs asking for JSON (response_format): each answer is checked, a broken one retried."""
        return sum(m.structured for m in self.models)

    @property
    def jobs(self) -> int:
        """Valid, unique jobs (over-context ones included: they get an error line)."""
        return sum(m.jobs for m in self.models)

    @property
    def requests(self) -> int:
        return sum(m.requests for m in self.models)

    @property
    def minutes(self) -> float | None:
        """Models run in parallel: the longest model's time; None without any limit."""
        times = [t for m in self.models if (t := m.minutes(self.budget, self.ipm)) is not None]
        return max(times) if times else None

    @property
    def cost(self) -> float:
        """USD for the models with a known price (see `unpriced`)."""
        return sum(m.cost for m in self.models if m.cost is not None)

    @property
    def unpriced(self) -> list[str]:
        """Models sent to the API whose price is unknown: not in `cost`."""
        return [m.model for m in self.models if m.cost is None and m.requests]

    @property
    def uncapped(self) -> int:
        return sum(m.uncapped for m in self.models)

    def to_json(self) -> dict[str, Any]:
        """Everything, as plain JSON types (for `--json`)."""
        return {
            "input": self.path,
            "limits": {"rpm": self.budget.rpm, "tpm": self.budget.tpm, "ipm": self.ipm},
            "jobs": self.jobs, "requests": self.requests, "images": self.images,
            "structured_jobs": self.structured,
            "bad_lines": self.bad_lines.to_json(), "duplicates": self.duplicates.to_json(),
            "over_context": self.over_context.to_json(),
            "kept_from_output": self.kept, "changed": self.changed.to_json(),
            "models": [m.to_json(self.budget, self.ipm) for m in self.models],
            "total": {"minutes": self.minutes, "cost_usd": self.cost,
                      "cost_is_upper_bound": self.uncapped == 0,
                      "uncapped_jobs": self.uncapped, "unpriced_models": self.unpriced},
        }


def has_completion_cap(job: Job) -> bool:
    """Whether the job's output is bounded: chat needs max_completion_tokens or max_tokens,
    Responses max_output_tokens; completions default to 16 tokens; embeddings, moderations and
    images have no token output (`jobs.endpoints`)."""
    spec = spec_of(job.url)
    if not spec.output_fields or spec.default_output:
        return True
    return any(isinstance(job.body.get(k), int) and not isinstance(job.body.get(k), bool)
               for k in spec.output_fields)


class Estimator:
    """Feeds on reader items in file order; `finish()` returns the `Estimate`. `counter` gives
    true token counts (`jobs.tokens.TokenCounter`); `cost` prices them."""

    def __init__(self, path: str, *, counter: tokens.TokenCounter, rpm: float | None = None,
                 tpm: float | None = None, cost: CostFn = _no_prices,
                 max_flagged: int = MAX_FLAGGED, ipm: float | None = None,
                 image_price: ImagePriceFn = _no_image_prices,
                 output: OutputState | None = None) -> None:
        self.path = path
        # with `output`: only what a rerun into it would send (changed jobs included)
        self._intake = None if output is None else Intake(output, changed=ChangedPolicy.RERUN)
        self._kept = 0
        self._changed = FlagSample(max_flagged)
        self.ipm = ipm
        self._image_price = image_price
        self._counter = counter
        self.budget = Budget(rpm=rpm, tpm=tpm)
        self._cost = cost
        has_limits = rpm is not None or tpm is not None
        self._packer = Packer(budget=(lambda model: self.budget) if has_limits else (lambda model: None))
        self._models: dict[str, ModelEstimate] = {}
        self._bad = FlagSample(max_flagged)
        self._duplicates = FlagSample(max_flagged)
        self._over = FlagSample(max_flagged)

    def _model(self, name: str) -> ModelEstimate:
        entry = self._models.get(name)
        if entry is None:
            entry = self._models[name] = ModelEstimate(name)
        return entry

    def feed(self, item: Job | BadLine | Duplicate) -> None:
        if isinstance(item, BadLine):
            self._bad.add(item)
            return
        if isinstance(item, Duplicate):
            self._duplicates.add(item)
            return
        if self._intake is not None:
            decision = self._intake.decide(item)
            if isinstance(decision, Skip):
                self._kept += 1
                return
            if isinstance(decision, Pending) and decision.changed:
                self._changed.add(BadLine(self.path, item.line, "changed since its result was "
                                          "written", item.custom_id))
        model = self._model(item.model)
        model.jobs += 1
        overflow = tokens.context_overflow(item.url, item.body, self._counter)
        if overflow is not None:
            model.over_context += 1
            self._over.add(BadLine(self.path, item.line, overflow, item.custom_id))  # never sent
            return
        charge = tokens.rate_limit_charge(item.url, item.body)
        model.structured += json_request(item.url, item.body) is not None
        model.prompt_tokens += tokens.prompt_tokens(item.url, item.body, self._counter)
        model.max_completion_tokens += tokens.max_completion_tokens(item.url, item.body)
        model.charge += charge
        images = images_requested(item.url, item.body)
        if images:
            model.images += images
            price = self._image_price(item.model, item.body.get("size"), item.body.get("quality"))
            model.image_cost = None if price is None or model.image_cost is None \
                else model.image_cost + price * images
        if not has_completion_cap(item):
            model.uncapped += 1
        self._count(self._packer.add(item, charge))

    def _count(self, requests: Iterable[Request]) -> None:
        for request in requests:
            model = self._model(request.jobs[0].model)
            model.requests += 1
            if request.packed:
                model.packed_jobs += len(request.jobs)

    def finish(self) -> Estimate:
        """The estimate of everything fed so far (flushes partial packs; call once)."""
        self._count(self._packer.flush())
        for model in self._models.values():
            model.cost = self._cost(model.model, model.prompt_tokens, model.max_completion_tokens)
            if model.images:  # priced per image (gpt-image-1: the table's per-image equivalents)
                model.cost = model.image_cost
        return Estimate(path=self.path, budget=self.budget, ipm=self.ipm,
                        models=tuple(sorted(self._models.values(), key=lambda m: m.model)),
                        bad_lines=self._bad, duplicates=self._duplicates, over_context=self._over,
                        kept=self._kept, changed=self._changed)


def estimate_lines(lines: Iterable[bytes], path: str, *, counter: tokens.TokenCounter,
                   rpm: float | None = None, tpm: float | None = None,
                   cost: CostFn = _no_prices, max_flagged: int = MAX_FLAGGED,
                   ipm: float | None = None, image_price: ImagePriceFn = _no_image_prices,
                   output: OutputState | None = None) -> Estimate:
    """The estimate of a stream of raw input lines (`path` names them in messages); true token
    counts by `counter`; with `output` (what an OUTPUT holds), of what a rerun into it sends."""
    estimator = Estimator(path, counter=counter, rpm=rpm, tpm=tpm, cost=cost,
                          max_flagged=max_flagged, ipm=ipm, image_price=image_price,
                          output=output)
    for item in read_jobs(lines, path):
        estimator.feed(item)
    return estimator.finish()


# -- the time left, while a run goes ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BudgetWork:
    """What one budget (a model's, or the key's when models share it) has left to do, and how
    fast it may and does go: the ETA's model, the same as the estimate's `minutes`."""

    requests: float                      # requests left
    charge: float                        # rate-limit tokens left (images, on an image lane)
    rpm: float | None = None             # the budget's limits, when known
    tpm: float | None = None
    requests_per_s: float | None = None  # achieved lately, when measured
    charge_per_s: float | None = None

    def seconds(self) -> float | None:
        """The larger of the work over the limits (the least time the budget allows) and the
        work over the achieved rates (what it has lately been taking: latency, retries, 429s, a
        lower limit at the server); None when no rate is known for work left."""
        if self.requests <= 0 and self.charge <= 0:
            return 0.0
        terms = [work / rate for work, rate in (
            (self.requests, None if self.rpm is None else self.rpm / 60),
            (self.charge, None if self.tpm is None else self.tpm / 60),
            (self.requests, self.requests_per_s), (self.charge, self.charge_per_s))
            if rate and work > 0]
        return max(terms) if terms else None


def time_left(budgets: Iterable[BudgetWork]) -> float | None:
    """Seconds until the last budget is done: budgets run in parallel, so the slowest decides;
    None when a budget with work left has no rate to go by."""
    worst = 0.0
    for budget in budgets:
        seconds = budget.seconds()
        if seconds is None:
            return None
        worst = max(worst, seconds)
    return worst


def work_plan(items: Iterable[Job | BadLine | Duplicate], output: OutputState | None = None
              ) -> dict[str, ModelEstimate]:
    """Per model, the jobs, requests and rate-limit charge a run into `output` has to send, for
    the ETA: like the estimate, with the limiter's own approximation of prompt tokens (chars / 4)
    instead of a tokenizer, and packs sized without a budget."""
    estimator = Estimator("", counter=lambda model: None, output=output)
    for item in items:
        estimator.feed(item)
    return {m.model: m for m in estimator.finish().models}
