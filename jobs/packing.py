"""Requests: one or more jobs sent as one API call, and their answers matched back to each job.

Pure. A `Request` packs jobs whose bodies differ only in `prompt` (completions) or `input`
(embeddings) into one list-valued body. The API answers with choices (or embedding `data`) in any
order, each carrying an `index`; for completions with `n` choices per prompt, choice index
``prompt_position * n + j``. `split_response` gives each job a body that looks like the answer to
that job alone: its own choices re-indexed from 0 and a share of `usage`. A `Packer` can be told
to stop packing for one (url, model), where the server turned out not to take list prompts.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from jobs.endpoints import spec_of
from jobs.job import CHAT, EMBEDDINGS, Job
from jobs.tokens import rate_limit_charge
from jobs.usage import usage_count


MAX_LIST_ITEMS = 2048          # the API's longest `prompt` / `input` list
DEFAULT_PACK_JOBS = 64         # jobs per pack while the budget is still unknown
MAX_REQUEST_TOKENS = 200_000   # ceiling on one request's charge, whatever the budget
RPM_MARGIN = 1.25              # pack a little more than needed so the request budget never binds
MAX_OPEN_PACKS = 256           # partial packs held at once; the oldest is sent when exceeded
MAX_HELD_JOBS = 8192           # jobs held in partial packs at once; the largest is sent when exceeded


class MissingChoices(ValueError):
    """A 200 answer that lacks a choice (or embedding) some job of the request needs."""


class NChoicesIgnored(MissingChoices):
    """A 200 answer with exactly one choice per prompt, indexed 0..prompts-1, where `n` asked for
    more: the server ignores `n`. `prompts` is how many prompts the request held; `n` what it asked
    per prompt. When `prompts == n` the answer also looks like one prompt's `n` choices from a
    server that ignores list prompts, so it proves nothing about `n`."""

    def __init__(self, n: int, prompts: int) -> None:
        self.n, self.prompts = n, prompts
        got = "1 choice" if prompts == 1 else f"{prompts} choices, one per prompt,"
        asked = f"n={n}" if prompts == 1 else f"n={n} for each of {prompts} prompts"
        super().__init__(f"the server ignores n: {got} came back where {asked} asked for "
                         f"{n * prompts}")


class ListNotTaken(MissingChoices):
    """A 200 answer to a pack holding exactly the first prompt's choices: the shape of a server
    that reads one prompt of a list (a fault does not give it: it drops choices at random). Those
    choices are still the first job's own answer (`first`, with the answer's whole usage: the
    server charged that prompt alone), so the lesson costs no job a second request. `first` is
    None when the first job asked `n` > 1 and one choice came back (a server ignoring lists and
    `n`): nothing of it is usable. `prompts`: how many prompts the pack held."""

    def __init__(self, message: str, first: dict[str, Any] | None, *, prompts: int) -> None:
        super().__init__(message)
        self.first, self.prompts = first, prompts


class PartialAnswer(MissingChoices):
    """A 200 answer to a pack that lacks the choices of some jobs but holds every choice of
    others, from more than the first prompt (so the server does take list prompts: this is a
    fault, not a capability). `answers` maps the position in `request.jobs` of each job answered in
    full to its own answer; `missing` lists the positions of the jobs to send again."""

    def __init__(self, answers: dict[int, dict[str, Any]], missing: tuple[int, ...],
                 message: str) -> None:
        super().__init__(message)
        self.answers, self.missing = answers, missing


@dataclass(frozen=True, slots=True, eq=False)
class Request:
    """One API call: `body` is sent as is; `jobs` are answered by it, in prompt order."""

    url: str
    body: dict[str, Any]
    jobs: tuple[Job, ...]
    charge: int  # tokens the API's rate limiter will charge for this call

    @property
    def model(self) -> str:
        return self.jobs[0].model

    @property
    def packed(self) -> bool:
        return len(self.jobs) > 1

    @property
    def n(self) -> int:
        """Choices asked per prompt (1 for embeddings)."""
        return _choices_per_prompt(self.body) if spec_of(self.url).n_multiplies else 1

    @property
    def prompts(self) -> int:
        """Prompts (or inputs) the request holds, over all its jobs (chat: 1)."""
        return sum(prompt_count(j) for j in self.jobs)


def single(job: Job, charge: int) -> Request:
    """A request carrying one job, its body untouched."""
    return Request(url=job.url, body=job.body, jobs=(job,), charge=charge)


def _list_field(url: str) -> str | None:
    return spec_of(url).list_field


def prompt_count(job: Job) -> int:
    """How many prompts (completions) or inputs (embeddings, moderations) a job's own body holds
    (a list of multimodal moderation parts is one input)."""
    field = _list_field(job.url)
    if field is None:
        return 1
    value = job.body.get(field)
    if isinstance(value, list) and value and isinstance(value[0], (str, list)):
        return len(value)
    return 1


def _choices_per_prompt(body: dict[str, Any]) -> int:
    n = body.get("n", 1)
    return n if isinstance(n, int) and n > 0 else 1


def _text_len(item: Any) -> int:
    if isinstance(item, dict):
        if "message" in item:
            content = (item.get("message") or {}).get("content")
            return len(content) if isinstance(content, str) else 0
        text = item.get("text")
        return len(text) if isinstance(text, str) else 0
    return 0


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split an integer `total` in proportion to `weights` (largest remainder): parts sum to total.

    Equal weights are used when all weights are zero.
    """
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1.0] * len(weights)
    scale = total / sum(weights)
    raw = [w * scale for w in weights]
    parts = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (parts[i] - raw[i], i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _prompt_weight(job: Job) -> float:
    field = _list_field(job.url)
    value = job.body.get(field) if field else None
    if isinstance(value, str):
        return float(len(value) or 1)
    if isinstance(value, list):
        return float(sum(len(v) if isinstance(v, str) else 1 for v in value) or 1)
    return 1.0


def split_response(request: Request, body: Any) -> list[dict[str, Any]]:
    """Each job's own answer body, in the order of `request.jobs`.

    Raises MissingChoices when the answer lacks a choice, embedding or moderation result some job
    needs, or is not the shape the endpoint answers with; the caller retries rather than writing a
    hole. Items with an `index` are matched by it; moderation `results` carry none and are matched
    by position, so a count that differs from the inputs sent is MissingChoices (the whole request
    is retried; results are never shifted from one job to another). Raises `NChoicesIgnored` (a
    MissingChoices) when `n` > 1 and exactly one choice per prompt came back. Raises
    `PartialAnswer` (a MissingChoices) when an indexed pack's answer holds every choice of some
    jobs, with choices beyond the first prompt's: those jobs' answers are kept, only the others
    are sent again (a list answered with the first prompt's choices alone is MissingChoices: the
    shape of a server that ignores list prompts).
    """
    if not isinstance(body, dict):
        raise MissingChoices("answer is not a JSON object")
    spec = spec_of(request.url)
    key = spec.items
    if key is None:  # the Responses API: one object, the job's whole answer
        return [body]
    items = body.get(key)
    if not isinstance(items, list):
        raise MissingChoices(f"answer has no {key!r} list")
    if spec.images:  # one request, one job: every image of `data` is its own
        if not items:
            raise MissingChoices("answer has an empty 'data' list")
        return [body]
    per_prompt = _choices_per_prompt(request.body) if spec.n_multiplies else 1
    counts = [prompt_count(j) for j in request.jobs] if request.url != CHAT else [1]
    expected = sum(counts) * per_prompt
    by_index: dict[int, dict[str, Any]] = {}
    if not spec.indexed:
        if len(items) != expected:
            raise MissingChoices(f"answer has {len(items)} {key} for {expected} inputs; positions "
                                 "cannot be trusted")
        by_index = dict(enumerate(items))
    for item in items if spec.indexed else ():
        index = item.get("index") if isinstance(item, dict) else None
        if isinstance(index, int) and 0 <= index < expected:
            by_index[index] = item
    if len(by_index) < expected:
        prompts = sum(counts)
        if per_prompt > 1 and len(items) == prompts and by_index.keys() == set(range(prompts)):
            raise NChoicesIgnored(per_prompt, prompts)
        missing = sorted(set(range(expected)) - by_index.keys())
        message = (f"answer lacks {len(missing)} of {expected} {key} (first missing index "
                   f"{missing[0]})")
        first_width = counts[0] * per_prompt
        if request.packed and spec.indexed and by_index.keys() == set(range(first_width)):
            first = {**body, key: [{**by_index[k], "index": k} for k in range(first_width)]}
            raise ListNotTaken(f"{message}: only the first prompt's {first_width} choice(s) came "
                               "back, as from a server that does not take list prompts", first,
                               prompts=sum(counts))
        if request.packed and spec.indexed and per_prompt > 1 and by_index.keys() == {0}:
            raise ListNotTaken(f"{message}: one choice for the first prompt alone came back, as "
                               "from a server that takes neither list prompts nor n", None,
                               prompts=sum(counts))
        if request.packed and spec.indexed and any(i >= first_width for i in by_index):
            answers = _own_answers(request, body, key, spec, counts, per_prompt, by_index)
            whole = {pos: own for pos, own in enumerate(answers) if own is not None}
            if whole:
                lacking = tuple(pos for pos, own in enumerate(answers) if own is None)
                raise PartialAnswer(whole, lacking, message)
        raise MissingChoices(message)
    if not request.packed:
        return [{**body, key: [by_index[i] for i in range(expected)]}]
    return [own for own in _own_answers(request, body, key, spec, counts, per_prompt, by_index)
            if own is not None]


def _own_answers(request: Request, body: dict[str, Any], key: str, spec: Any, counts: list[int],
                 per_prompt: int, by_index: dict[int, dict[str, Any]]
                 ) -> list[dict[str, Any] | None]:
    """Each job's own answer from a pack's answer (None for a job lacking any of its choices),
    the answer's usage apportioned among the jobs."""

    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    slices: list[list[dict[str, Any]] | None] = []
    offset = 0
    for count in counts:
        width = count * per_prompt
        whole = all(offset + k in by_index for k in range(width))
        slices.append([{**by_index[offset + k], "index": k} if spec.indexed else by_index[offset + k]
                       for k in range(width)] if whole else None)
        offset += width
    if spec.list_field == "input" and request.url != EMBEDDINGS:  # moderations: no usage
        return [None if own is None else {**body, key: own} for own in slices]
    prompt_parts = apportion(usage_count(usage.get("prompt_tokens")),
                             [_prompt_weight(j) for j in request.jobs])
    completion_parts = apportion(usage_count(usage.get("completion_tokens")),
                                 [float(sum(_text_len(c) for c in s)) if s else 0.0 for s in slices])
    answers: list[dict[str, Any] | None] = []
    for own, p, c in zip(slices, prompt_parts, completion_parts):
        if own is None:
            answers.append(None)
            continue
        own_usage = {"prompt_tokens": p, "total_tokens": p + c}
        if request.url != EMBEDDINGS:
            own_usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        answers.append({**body, key: own, "usage": own_usage})
    return answers


@dataclass(frozen=True, slots=True)
class Budget:
    """What one model's rate limits allow: per-minute budgets and the token bucket's capacity."""

    rpm: float | None
    tpm: float | None
    token_capacity: float | None = None


def pack_size(job_charge: int, budget: Budget | None) -> int:
    """Jobs per request for jobs of this charge.

    Enough that the token budget, not the request budget, is what binds (tpm / rpm / charge, with a
    margin); never more than the API's list limit, `MAX_REQUEST_TOKENS`, or what the token bucket
    can admit at once. Packing beyond the point where tokens bind gains nothing and widens the blast
    radius of a rejected pack.
    """
    charge = max(1, job_charge)
    if budget is None or (budget.rpm is None and budget.tpm is None):
        size = DEFAULT_PACK_JOBS
    elif budget.tpm is None:
        size = MAX_LIST_ITEMS  # only requests are limited: pack all the API allows
    elif budget.rpm is None:
        size = DEFAULT_PACK_JOBS
    else:
        size = math.ceil(budget.tpm / budget.rpm / charge * RPM_MARGIN)
    return max(1, min(size, MAX_LIST_ITEMS, int(_charge_ceiling(budget) // charge)))


def _charge_ceiling(budget: Budget | None) -> float:
    """The most tokens one request may be charged: `MAX_REQUEST_TOKENS`, or less if the token
    bucket cannot admit that much at once."""
    if budget is not None and budget.token_capacity:
        return min(MAX_REQUEST_TOKENS, budget.token_capacity)
    return MAX_REQUEST_TOKENS


def group_key(job: Job) -> bytes | None:
    """Jobs with equal keys may share a request; None for a job that must go alone.

    Packable: completions with a string `prompt`, embeddings and moderations with a string `input`
    (`jobs.endpoints`: the spec's `list_field`); every other field
    (model, n, max_tokens, temperature, stop, logprobs, ...) must be identical. Chat completions have
    no list form and always go alone.
    """
    field = _list_field(job.url)
    if field is None or not isinstance(job.body.get(field), str):
        return None
    rest = {k: v for k, v in job.body.items() if k != field}
    return job.url.encode() + b" " + orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)


def pack(jobs: Sequence[Job], charge: int) -> Request:
    """One request for jobs sharing a group key (or a single job of any kind), body built from the first."""
    first = jobs[0]
    if len(jobs) == 1:
        return single(first, charge)
    field = _list_field(first.url)
    assert field is not None
    body = {k: ([j.body[field] for j in jobs] if k == field else v) for k, v in first.body.items()}
    return Request(url=first.url, body=body, jobs=tuple(jobs), charge=charge)


@dataclass(slots=True)
class _Open:
    jobs: list[Job]
    charge: int


class Packer:
    """Collects packable jobs into requests sized by `pack_size`; unpackable jobs pass straight through.

    `budget(model)` tells the current limits of a model (None while unknown). Partial packs are sent by
    `flush()`, which the dispatcher calls at the end of the input and whenever the input pauses, so
    packing never delays the last jobs. After `stop_packing(url, model)` the jobs of that url and
    model go alone.
    """

    def __init__(self, budget: Callable[[str], Budget | None] = lambda model: None,
                 max_open: int = MAX_OPEN_PACKS, max_held: int = MAX_HELD_JOBS) -> None:
        self._budget = budget
        self._max_open = max_open
        self._max_held = max_held
        self._open: dict[bytes, _Open] = {}
        self._alone: set[tuple[str, str]] = set()  # (url, model) whose jobs are no longer packed
        self.held = 0  # jobs waiting in partial packs

    def add(self, job: Job, charge: int) -> list[Request]:
        """Requests now complete (possibly none) after adding `job` with its rate-limit charge."""
        key = group_key(job)
        if key is None or (job.url, job.model) in self._alone:
            return [single(job, charge)]
        ready: list[Request] = []
        budget = self._budget(job.model)
        current = self._open.get(key)
        if current is not None and current.charge + charge > _charge_ceiling(budget):
            ready.append(self._close(key))  # this job would make the pack too large to admit
            current = None
        if current is None:
            if len(self._open) >= self._max_open:
                ready.append(self._close(next(iter(self._open))))
            current = self._open[key] = _Open([], 0)
        current.jobs.append(job)
        current.charge += charge
        self.held += 1
        # sized on every add: the budget may have been learned since the pack was opened
        if len(current.jobs) >= pack_size(charge, budget):
            ready.append(self._close(key))
        elif self.held > self._max_held:  # bound memory: send the largest partial pack
            ready.append(self._close(max(self._open, key=lambda k: len(self._open[k].jobs))))
        return ready

    def flush(self) -> list[Request]:
        """Every partial pack, as requests."""
        return [self._close(key) for key in list(self._open)]

    def stop_packing(self, url: str, model: str) -> list[Request]:
        """Send the jobs of `url` and `model` alone from now on; returns the jobs of its partial
        packs, each as a request of its own."""
        self._alone.add((url, model))
        ready: list[Request] = []
        for key, current in list(self._open.items()):
            if (current.jobs[0].url, current.jobs[0].model) != (url, model):
                continue
            del self._open[key]
            self.held -= len(current.jobs)
            ready.extend(single(j, rate_limit_charge(j.url, j.body)) for j in current.jobs)
        return ready

    def _close(self, key: bytes) -> Request:
        current = self._open.pop(key)
        self.held -= len(current.jobs)
        return pack(current.jobs, current.charge)


def halves(request: Request) -> list[Request]:
    """A pack split in two (to find the guilty job of a refused pack, or to fit a budget), each
    half charged what its own jobs are charged."""
    mid = len(request.jobs) // 2
    parts = (request.jobs[:mid], request.jobs[mid:])
    return [pack(list(p), sum(rate_limit_charge(j.url, j.body) for j in p)) for p in parts if p]
