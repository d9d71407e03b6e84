"""runner from Python: run a job file (or job dicts) to a result file, and read the results back.

    import runner

    summary = runner.run("jobs.jsonl", "results.jsonl", rpm=500, max_attempts=8)
    for result in runner.results("results.jsonl", jobs="jobs.jsonl"):
        print(result.custom_id, result.status, result.answer)

The same engine as `runner run` (`run_engine` is what the command line calls too), with the same
options (`RunOptions`: the command's flags, Python-named) and the same promise: the output is the
checkpoint, so calling `run` again with the same output resumes (an orchestrator's task retry
sends only the jobs still pending). `run` blocks, and works inside a running event loop too (a
Jupyter notebook's): there it runs the jobs on a worker thread with a loop of its own.
`run_async` is the coroutine, for code that is async already. `results` yields one typed `Result`
per job, streaming (a result file larger than memory is fine).

Errors are exceptions: an output in use by another run or one that must not receive results
(`runner.files.checkpoint.CheckpointError`), jobs changed since their results
(`runner.errors.ChangedJobsError`, see `changed`), an unreachable Redis, a missing API key
(`ValueError`). What the jobs themselves met is in the summary and the result lines, as for the
command (`RunSummary.exit_code` is the command's exit code).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from jobs.intake import ChangedPolicy
from jobs.shard import Shard
from runner.api.endpoint import DEFAULT_BASE_URL, Endpoint
from runner.api.transport import READ_TIMEOUT_S
from runner.live.dispatch import DEFAULT_CONCURRENCY, MAX_ATTEMPTS, DispatchConfig
from runner.live.run import RunConfig
from runner.pacing.limiter import DEFAULT_BURST_S
from runner.pacing.redis_state import DEFAULT_REDIS_TIMEOUT_S
from runner.report.stats import RunStats

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["RunOptions", "RunSummary", "Result", "run", "run_async", "results", "run_engine"]

JobSource = str | os.PathLike[str] | Iterable[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The options of one run: `runner run`'s flags (see `runner run --help`), Python-named.

    The key is `api_key`, else the environment variable `api_key_env` (default OPENAI_API_KEY,
    or AZURE_OPENAI_API_KEY with `azure_endpoint`). `via="batch"` sends the jobs through the
    hosted Batch API (`wait=False`: submit, collect what finished, and return while batches
    still run: `RunSummary.exit_code` 4)."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    azure_endpoint: str | None = None
    api_version: str | None = None
    deployments: Mapping[str, str] = field(default_factory=dict)
    rpm: float | None = None
    tpm: float | None = None
    burst_s: float = DEFAULT_BURST_S
    budget_scope: str = "auto"
    ipm: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    max_attempts: int = MAX_ATTEMPTS
    retry_failed: bool = False
    retry_codes: frozenset[str] = frozenset()
    changed: str = "refuse"  # refuse, rerun or keep (jobs.intake.ChangedPolicy)
    pack: bool = True
    force_pack: bool = False
    read_timeout: float = READ_TIMEOUT_S
    images_dir: Path | None = None
    inline_images: bool = False
    shard: Shard | None = None
    redis: str | None = field(default=None, repr=False)
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT_S
    via: str = "live"
    wait: bool = True
    poll_every: float | None = None
    max_cost: float | None = None  # USD this run may spend at most (--max-cost)
    limit: int | None = None  # run only the first N pending jobs (--limit)

    def __post_init__(self) -> None:
        ChangedPolicy(self.changed)  # ValueError for another word
        if self.via not in ("live", "batch"):
            raise ValueError(f"via must be 'live' or 'batch', got {self.via!r}")
        object.__setattr__(self, "retry_codes", frozenset(self.retry_codes))

    def endpoint(self) -> Endpoint:
        """The endpoint and its key (ValueError when there is no key)."""
        azure = bool(self.azure_endpoint)
        env = self.api_key_env or ("AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY")
        key = self.api_key or os.environ.get(env, "")
        if not key:
            raise ValueError(f"no API key: pass api_key, or set the environment variable {env}")
        if azure:
            return Endpoint(base_url=self.azure_endpoint or "", api_key=key, azure=True,
                            api_version=self.api_version, deployments=dict(self.deployments))
        return Endpoint(base_url=self.base_url, api_key=key)

    def config(self, jobs: str, output: Path) -> Any:
        """The engine's config for a run of the job file `jobs` into `output`: a `RunConfig`
        (live) or a `BatchRunConfig` (`via="batch"`)."""
        endpoint = self.endpoint()
        if self.via == "batch":
            from runner.batch.run import BatchRunConfig  # noqa: PLC0415  (only for batch runs)
            return BatchRunConfig(
                input=jobs, output=output, endpoint=endpoint, wait=self.wait,
                poll_every=self.poll_every, max_attempts=self.max_attempts,
                retry_failed=self.retry_failed, retry_codes=self.retry_codes,
                changed=ChangedPolicy(self.changed), pack=self.pack,
                read_timeout=self.read_timeout, images_dir=self.images_dir,
                inline_images=self.inline_images, shard=self.shard, max_cost=self.max_cost,
                limit=self.limit, prices=self._prices(batch=True))
        return RunConfig(
            input=jobs, output=output, endpoint=endpoint, rpm=self.rpm, tpm=self.tpm,
            burst_s=self.burst_s, budget_scope=self.budget_scope,
            dispatch=DispatchConfig(max_attempts=self.max_attempts, concurrency=self.concurrency,
                                    retry_failed=self.retry_failed, retry_codes=self.retry_codes,
                                    changed=ChangedPolicy(self.changed),
                                    trust_packs=self.force_pack, max_cost=self.max_cost,
                                    limit=self.limit),
            pack=self.pack, read_timeout=self.read_timeout, ipm=self.ipm,
            images_dir=self.images_dir, inline_images=self.inline_images, redis=self.redis,
            redis_timeout=self.redis_timeout, shard=self.shard, prices=self._prices(batch=False))

    def _prices(self, *, batch: bool) -> Any:
        """The price table --max-cost counts at (the Batch API's for batch runs); None without a
        cap."""
        if self.max_cost is None:
            return None
        from runner.report.prices import batch_price_table, load_prices  # noqa: PLC0415
        prices = load_prices()
        return batch_price_table(prices) if batch else prices


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What one run did. `exit_code` is `runner run`'s (0 every job succeeded, 1 some failed,
    2 unusable input or settings, 3 stopped early and resumable, 4 batches still running).
    `succeeded` and `failed` (error code -> jobs) count this run's outcomes; `already_done` the
    jobs an earlier run had finished."""

    output: Path
    exit_code: int
    jobs: int
    succeeded: int
    failed: Mapping[str, int]
    already_done: int
    stop_reason: str | None = None

    @property
    def ok(self) -> bool:
        """Every job has succeeded."""
        return self.exit_code == 0

    @classmethod
    def of(cls, stats: RunStats, output: Path) -> RunSummary:
        return cls(output=output, exit_code=stats.exit_code(), jobs=stats.jobs,
                   succeeded=stats.succeeded, failed=dict(stats.failed),
                   already_done=stats.already_done, stop_reason=stats.stop_reason)


@dataclass(frozen=True, slots=True)
class Result:
    """One job's outcome (`jobs.export`'s columns): `status` is done, failed, pending (no result
    yet) or changed (the result answers an earlier version of the job); `answer` the answer text
    (a list for n > 1; the vector of an embedding, the scores of a moderation, image paths)."""

    custom_id: str
    status: str
    answer: Any = None
    finish_reason: Any = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def json(self) -> Any:
        """The answer parsed as JSON (structured outputs); ValueError when it is not JSON text."""
        if not isinstance(self.answer, str):
            raise ValueError(f"{self.custom_id}: the answer is no JSON text")
        return orjson.loads(self.answer)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write_jobs(jobs: Iterable[Mapping[str, Any]], path: Path) -> None:
    """Job dicts to a job file at `path`, streaming and atomically."""
    from runner.files.tables import AtomicFile  # noqa: PLC0415
    with AtomicFile(path) as out:
        for job in jobs:
            out.file.write(orjson.dumps(job) + b"\n")
        out.commit()


def _job_file(jobs: JobSource, output: Path, jobs_file: str | os.PathLike[str] | None) -> str:
    if isinstance(jobs, (str, os.PathLike)):
        if jobs_file is not None:
            raise ValueError("jobs_file is where job dicts are written: jobs is a file already")
        return os.fspath(jobs)
    path = Path(jobs_file) if jobs_file is not None else output.with_name(
        f"{output.stem}.jobs.jsonl")
    _write_jobs(jobs, path)
    return str(path)


async def run_engine(config: Any, *, console: Console | None = None,
                     log: Callable[[str], None] | None = None, progress: bool = False,
                     handle_signals: bool = False, metrics: Any = None) -> RunStats:
    """Run `config` (a `RunConfig`, or a `BatchRunConfig`) on the engine: the one path every
    run takes, from the command line or from Python. Its stats; the engine's exceptions.
    `metrics` (a `runner.report.metrics.MetricsFile`) is written while the run goes."""
    if isinstance(config, RunConfig):
        from runner.live.run import run as run_live  # noqa: PLC0415
        return await run_live(config, console=console, log=log, progress=progress,
                              handle_signals=handle_signals, metrics=metrics)
    from runner.batch.run import run_batch  # noqa: PLC0415
    return await run_batch(config, console=console, log=log, progress=progress,
                           handle_signals=handle_signals, metrics=metrics)


def _options(options: RunOptions | None, overrides: Mapping[str, Any]) -> RunOptions:
    known = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown option {unknown[0]!r}; RunOptions has {', '.join(sorted(known))}")
    return replace(options or RunOptions(), **overrides)


async def run_async(jobs: JobSource, output: str | os.PathLike[str], *,
                    options: RunOptions | None = None,
                    log: Callable[[str], None] | None = _stderr,
                    jobs_file: str | os.PathLike[str] | None = None,
                    **settings: Any) -> RunSummary:
    """Run `jobs` (a job file's path, or an iterable of job dicts) into `output` and return
    what happened; the coroutine of `run` (see there)."""
    output = Path(output)
    chosen = _options(options, settings)
    config = chosen.config(_job_file(jobs, output, jobs_file), output)
    stats = await run_engine(config, log=log or (lambda line: None))
    return RunSummary.of(stats, output)


def run(jobs: JobSource, output: str | os.PathLike[str], *, options: RunOptions | None = None,
        log: Callable[[str], None] | None = _stderr,
        jobs_file: str | os.PathLike[str] | None = None, **settings: Any) -> RunSummary:
    """Run `jobs` into `output`, blocking until the run ends; what happened.

    `jobs`: a job file's path (JSONL, compressed or not), or an iterable of job dicts (each
    `{"custom_id", "method", "url", "body"}`), written first to `jobs_file` (default: beside
    `output`, `<output stem>.jobs.jsonl`). `output`: the result file, also the checkpoint: a
    second call resumes. Options: `options=RunOptions(...)` and/or its fields as keywords
    (`rpm=500, max_attempts=8, base_url=...`). `log`: where messages and status lines go
    (default: stderr; None: nowhere). Inside a running event loop (Jupyter) the run goes on a
    worker thread with its own loop, and this call blocks the caller until it ends."""
    coroutine = run_async(jobs, output, options=options, log=log, jobs_file=jobs_file, **settings)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="runner") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def results(output: str | os.PathLike[str],
            jobs: str | os.PathLike[str] | None = None) -> Iterator[Result]:
    """One `Result` per job, streaming. With `jobs` (the job file): every job in its order,
    pending and changed ones too. Without: every custom_id with a result in `output`, in the
    order of their final lines (the answer's endpoint told by its shape)."""
    from runner.dataset import ResultIndex, read_job_file  # noqa: PLC0415
    from jobs.export import export_row  # noqa: PLC0415
    from jobs.results import fingerprint  # noqa: PLC0415
    output = Path(output)
    with ResultIndex(output) as index:
        if jobs is not None:
            for job in read_job_file(Path(jobs)):
                row = export_row(job.custom_id, job.url, fingerprint(job.url, job.body),
                                 index.get(job.custom_id))
                yield Result(**row)
            return
        for record in _final_lines(output, index.at):
            url = _url_of(record)
            yield Result(**export_row(record["custom_id"], url, None, record))


def _final_lines(output: Path, final_at: Callable[[str], int | None]) -> Iterator[dict[str, Any]]:
    """The result lines of `output` that are their custom_id's final line (`final_at`: where
    that is), in file order."""
    try:
        f = open(output, "rb")
    except FileNotFoundError:
        return
    with f:
        offset = 0
        for raw in f:
            at, offset = offset, offset + len(raw)
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            cid = record.get("custom_id") if isinstance(record, dict) else None
            if isinstance(cid, str) and final_at(cid) == at:
                yield record


def _url_of(record: Mapping[str, Any]) -> str:
    """The endpoint a result line answers, told by its body's shape (chat when unknown)."""
    from jobs.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, IMAGES_GENERATIONS, MODERATIONS, RESPONSES  # noqa: PLC0415
    response = record.get("response")
    body = response.get("body") if isinstance(response, Mapping) else None
    if not isinstance(body, Mapping):
        return CHAT
    kind = body.get("object")
    if kind == "text_completion":
        return COMPLETIONS
    if kind == "response":
        return RESPONSES
    if "results" in body:
        return MODERATIONS
    data = body.get("data")
    if isinstance(data, list) and data and isinstance(data[0], Mapping):
        return EMBEDDINGS if "embedding" in data[0] else IMAGES_GENERATIONS
    return CHAT

