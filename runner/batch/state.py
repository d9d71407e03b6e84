"""The batch state file, `OUTPUT.batches`: every remote action of the batch backend, durable.

An append-only journal, one JSON object a line, each line fsync'd before the action it enables:

    {"event": "run", "run_id": HEX}                                first line: tags this output's batches
    {"event": "planned", "chunk": ID, "url", "model", "tokens", "lines": [...],
     "fingerprints": {custom_id: fingerprint}}                     written with the
          chunk's local input file (OUTPUT.batches.d/ID.jsonl) before anything is sent; `lines`
          lists each batch line: a job's custom_id, or [line id, [custom_ids]] for a pack;
          `fingerprints` the job each custom_id stood for (`jobs.results.fingerprint`), written
          into its result lines when the batch is collected
    {"event": "uploaded", "chunk": ID, "file_id": F}               after the upload answered
    {"event": "created", "chunk": ID, "batch_id": B}               after the create answered (or
          after finding, by listing batches and their metadata, one created but not recorded)
    {"event": "polled", "chunk": ID, "status": S, "counts": {...}} when a batch's state changes
    {"event": "closed", "chunk": ID, "status": S, "retry": [ids], "bisect": [[ids], [ids]],
     "reset": [ids]}
          after the batch's results were appended to OUTPUT and fsync'd: its jobs are free again
          (jobs without a final line go into a later batch; `retry` counts an attempt for each,
          `reset` forgets the attempts of jobs given up on, so a later run starts them afresh)
    {"event": "token_limit", "model": M, "limit": N}               an enqueued-token limit learned
    {"event": "endpoint", "base_url": URL}                         where later batches go (a run
          with another base URL is refused while chunks uploaded elsewhere are open; chunks
          never uploaded are closed and planned again)

**Memory**: what the journal says of each job (a chunk's `lines` and `fingerprints`) stays on
disk. A loaded chunk is its counts and where its "planned" line is (`Chunk.planned_at`); its lines
are read back when they are needed, one chunk at a time (`BatchState.planned`), and the jobs of
the open chunks are asked about through a `jobs.digests.DigestSet` (`busy_jobs`), 8 bytes a slot.

**Never pay twice**: a job is in at most one open chunk (planned and not closed); a chunk is
created at most once (a rerun that finds `uploaded` without `created` lists the batches and looks
for the chunk's metadata before creating). A SIGKILL at any moment leaves at most a torn last line,
cut off when the file is next loaded; every step after it is repeated safely (an upload again, a
lookup by listing, a collect that skips result lines already in OUTPUT). No API key is ever
written here: the journal holds ids, statuses and counts only.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from runner.files import PRIVATE_DIR, PRIVATE_FILE
from runner.files.checkpoint import READ_CHUNK, CheckpointError, fsync_dir
from jobs.digests import DigestSet
from runner.files.lines import LineSplitter
from runner.redact import mask_secrets

STATE_SUFFIX = ".batches"
CHUNKS_SUFFIX = ".batches.d"
DRAFT_SUFFIX = ".draft"  # a batch input file being written (a chunk's once planned)
OPEN_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


def state_path(output: Path) -> Path:
    return output.with_name(output.name + STATE_SUFFIX)


def chunks_dir(output: Path) -> Path:
    return output.with_name(output.name + CHUNKS_SUFFIX)


@dataclass(slots=True)
class Chunk:
    """One batch input file of the run and what became of it (rebuilt from the journal). `lines`
    and `fingerprints` are given to `BatchState.plan`; the journal's chunks hold none of them
    (`BatchState.planned(chunk)` reads them back)."""

    chunk: str
    url: str
    model: str
    tokens: int
    lines: list[tuple[str, tuple[str, ...]]]  # (line custom_id, the jobs it carries)
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the provider's, as last polled
    counts: dict[str, int] = field(default_factory=dict)
    closed: bool = False
    fingerprints: dict[str, str] = field(default_factory=dict)  # custom_id -> its job's, as sent
    line_count: int = -1  # lines and jobs it has
    job_count: int = -1
    planned_at: int = -1  # where its "planned" line is in the journal (offset, length)
    planned_size: int = 0

    def __post_init__(self) -> None:
        if self.line_count < 0:
            self.line_count = len(self.lines)
        if self.job_count < 0:
            self.job_count = sum(len(ids) for _, ids in self.lines)


@dataclass(frozen=True, slots=True)
class Planned:
    """A chunk's lines (line id, the custom_ids it carries) and its jobs' fingerprints, as its
    "planned" line in the journal has them."""

    lines: list[tuple[str, tuple[str, ...]]]
    fingerprints: dict[str, str]

    @property
    def jobs(self) -> Iterator[str]:
        for _, ids in self.lines:
            yield from ids


def _lines_json(lines: list[tuple[str, tuple[str, ...]]]) -> list[Any]:
    return [ids[0] if len(ids) == 1 and ids[0] == line else [line, list(ids)] for line, ids in lines]


def _counts(raw: list[Any]) -> tuple[int, int]:
    """(lines, jobs) of a "planned" event's `lines`."""
    return len(raw), sum(1 if isinstance(item, str) else len(item[1]) for item in raw)


PLANNED_HEAD = b'{"event":"planned",'
FINGERPRINTS_KEY = b',"fingerprints":{'  # after "lines": a chunk's biggest part, not needed to load it


def _event(raw: bytes) -> Any:
    """One journal line, parsed; None when it is not JSON. A "planned" line is parsed without
    its fingerprints (up to 50,000 ids and digests: read back by `planned` when needed), so a
    chunk's line does not become some 30 MB of objects at once while the journal loads. The
    key cannot occur earlier in the line: a quote inside an id is escaped. (A line whose
    fingerprints alone are damaged loads; `planned` then refuses it, stopping the run.)"""
    try:
        if raw.startswith(PLANNED_HEAD) and raw.endswith(b"}}"):  # whole, as runner wrote it
            cut = raw.find(FINGERPRINTS_KEY)
            if cut > 0:
                try:
                    return orjson.loads(raw[:cut] + b"}")
                except orjson.JSONDecodeError:
                    pass  # not runner's own layout: the whole line, as any other
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _chunk_number(chunk: Any) -> int:
    """The number in a chunk id ("c00042" -> 42); 0 for anything else."""
    if isinstance(chunk, str) and chunk[:1] == "c" and chunk[1:].isascii() \
            and chunk[1:].isdecimal():
        return int(chunk[1:])
    return 0


def _lines_from(raw: list[Any]) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for item in raw:
        if isinstance(item, str):
            out.append((item, (item,)))
        else:
            out.append((item[0], tuple(item[1])))
    return out


class BatchState:
    """The journal, loaded and open for appending. Raises `CheckpointError` when it cannot be
    read, repaired or written (the run stops, resumable)."""

    def __init__(self, output: Path) -> None:
        self.path = state_path(output)
        self.dir = chunks_dir(output)
        self.run_id: str | None = None
        self.chunks: dict[str, Chunk] = {}
        self.attempts: Counter[str] = Counter()  # counted failed attempts per job
        self.groups: list[tuple[str, ...]] = []  # packs to send as they are (halves of refused packs)
        self.token_limits: dict[str, int] = {}
        self.base_url: str | None = None  # where the batches of this output were sent
        self._in_flight: Counter[str] = Counter()  # tokens of open, created chunks per model
        self._highest = 0  # the highest chunk number any event names: new chunks count on from it
        self._fd: int | None = None
        self._end = 0  # the journal's size: where the next event goes
        self._drafts: list[BinaryIO] = []  # draft files not planned (yet)

    # -- reading ---------------------------------------------------------------------------------
    def _apply_all(self, lines: Iterable[bytes]) -> None:
        """Apply each event of the journal's lines in order (they start at `self._end`); lines
        that are not JSON objects (a torn line, a hand edit) are skipped."""
        for raw in lines:
            at = self._end
            self._end += len(raw) + 1
            event = _event(raw)
            if isinstance(event, dict):
                self._apply(event, at, len(raw))

    def _read(self) -> int:
        """Apply the journal's whole lines, read a piece at a time (nothing of a chunk's jobs is
        kept: see `planned`); returns the bytes of a torn last line."""
        splitter = LineSplitter()
        self._end = 0
        with open(self.path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                self._apply_all(splitter.feed(chunk))
        return len(splitter.tail)

    def load(self) -> int:
        """Read the journal (if any); cut off a torn last line; returns the bytes cut."""
        try:
            torn = self._read()
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise CheckpointError(f"cannot read the batch state {self.path}: {e.strerror}") from None
        if torn:
            try:
                with open(self.path, "r+b") as f:
                    f.truncate(f.seek(0, os.SEEK_END) - torn)
                    os.fsync(f.fileno())
            except OSError as e:
                raise CheckpointError(f"cannot repair the batch state {self.path}: {e.strerror}") from None
        return torn

    def _apply(self, e: dict[str, Any], at: int = -1, size: int = 0) -> None:
        """Apply one event, read from (or just written to) the journal at offset `at`."""
        kind = e.get("event")
        self._highest = max(self._highest, _chunk_number(e.get("chunk")))
        chunk = self.chunks.get(e.get("chunk", ""))
        if kind == "run":
            self.run_id = self.run_id or e["run_id"]
        elif kind == "endpoint":
            self.base_url = e["base_url"]
        elif kind == "planned":
            lines, jobs = _counts(e["lines"])
            self.chunks[e["chunk"]] = Chunk(e["chunk"], e["url"], e["model"], int(e["tokens"]),
                                            [], line_count=lines, job_count=jobs,
                                            planned_at=at, planned_size=size)
        elif chunk is None:
            if kind == "token_limit":
                self.token_limits[e["model"]] = int(e["limit"])
        elif kind == "uploaded":
            chunk.file_id = e["file_id"]
        elif kind == "created":
            if chunk.batch_id is None and not chunk.closed:
                self._in_flight[chunk.model] += chunk.tokens
            chunk.batch_id = e["batch_id"]
        elif kind == "polled":
            chunk.status = e["status"]
            chunk.counts = dict(e.get("counts") or {})
        elif kind == "closed":
            if chunk.batch_id is not None and not chunk.closed:
                self._in_flight[chunk.model] -= chunk.tokens
            chunk.closed = True
            chunk.status = e.get("status", chunk.status)
            self.attempts.update(e.get("retry", ()))
            for cid in e.get("reset", ()):
                self.attempts.pop(cid, None)
            for group in e.get("bisect", ()):
                self.groups.append(tuple(group))

    # -- questions -------------------------------------------------------------------------------
    def open_chunks(self) -> list[Chunk]:
        return [c for c in self.chunks.values() if not c.closed]

    def planned(self, chunk: Chunk) -> Planned:
        """The chunk's lines and fingerprints, read back from its "planned" line (one chunk's
        worth in memory while the caller holds it). Raises `CheckpointError` when unreadable."""
        try:
            with open(self.path, "rb") as f:
                f.seek(chunk.planned_at)
                event = orjson.loads(f.read(chunk.planned_size))
        except (OSError, orjson.JSONDecodeError, ValueError) as e:
            raise CheckpointError(f"cannot read chunk {chunk.chunk} back from the batch state "
                                  f"{self.path}: {e}") from None
        if not (isinstance(event, dict) and event.get("chunk") == chunk.chunk):
            raise CheckpointError(f"{self.path}: chunk {chunk.chunk}'s planned line is not where "
                                  "it was (the file was changed while in use)")
        printed = event.get("fingerprints")
        return Planned(_lines_from(event["lines"]), printed if isinstance(printed, dict) else {})

    def jobs_of(self, chunks: Iterable[Chunk]) -> DigestSet:
        """The jobs of `chunks`, as digests (8 bytes a slot): a job of theirs is always `in`; any
        other job only when its digest collides with one of theirs (see `jobs.digests`)."""
        chunks = list(chunks)
        jobs = DigestSet(expected=sum(chunk.job_count for chunk in chunks))  # allocated once
        for chunk in chunks:
            for cid in self.planned(chunk).jobs:
                jobs.add(cid)
        return jobs

    def busy_jobs(self) -> DigestSet:
        """Jobs in an open chunk: never planned again until it closes (a job whose digest
        collides with one of them waits too, for a plan after that chunk closes)."""
        return self.jobs_of(self.open_chunks())

    def tokens_in_flight(self, model: str) -> int:
        """Tokens of the model's batches created and not closed (kept as events apply: O(1))."""
        return self._in_flight[model]

    def group_of(self) -> dict[str, int]:
        """Job -> the index in `groups` of the latest pack it must go in (halves of a refused pack)."""
        return {cid: i for i, group in enumerate(self.groups) for cid in group}

    def next_chunk_id(self) -> str:
        """A chunk id no event of the journal names (not even one whose "planned" line was lost
        to a hand edit: counting the chunks loaded would give a later chunk's id again, and its
        file and its batch would be taken for the new chunk's)."""
        return f"c{self._highest + 1:05d}"

    def chunk_file(self, chunk: str) -> Path:
        return self.dir / f"{chunk}.jsonl"

    # -- writing ---------------------------------------------------------------------------------
    def open(self, new_run_id: str) -> None:
        """Open for appending (creating it, with a run id, if new)."""
        created = not self.path.exists()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
            self._end = os.fstat(self._fd).st_size
            if created:
                fsync_dir(self.path.parent)
        except OSError as e:
            raise CheckpointError(f"cannot open the batch state {self.path}: {e.strerror}") from None
        if self.run_id is None:
            self.record({"event": "run", "run_id": new_run_id})
        self._sweep_drafts()

    def use_endpoint(self, base_url: str) -> None:
        """Record where batches go; CheckpointError if chunks uploaded elsewhere are still open
        (their batches may exist there: polling them at the wrong place would look like they were
        gone, and they would run twice). Open chunks never uploaded (planned at a base URL that
        did not work, say) are bound to no place: they are closed, and their jobs planned again
        for the new one (the chunk's lines follow the endpoint's shapes)."""
        if self.base_url == base_url:
            return
        if self.base_url is not None:
            sent = [c for c in self.open_chunks() if c.file_id is not None]
            if sent:
                raise CheckpointError(
                    f"{self.path}: {len(sent)} batch(es) of this output are open at "
                    f"{mask_secrets(self.base_url)}, not {mask_secrets(base_url)}: run with that "
                    "base URL (or Azure endpoint) until they are collected")
            for chunk in self.open_chunks():
                self.close_chunk(chunk, "abandoned", retry=[], bisect=[],
                                 note=f"never uploaded to {self.base_url}; planned again for "
                                      f"{base_url}")
        self.record({"event": "endpoint", "base_url": base_url})

    def record(self, event: dict[str, Any]) -> None:
        """Append one event and make it durable before returning."""
        assert self._fd is not None, "BatchState.open() first"
        data = orjson.dumps(event) + b"\n"
        at = self._end
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(0, f"wrote {written} of {len(data)} bytes")
            os.fsync(self._fd)
        except OSError as e:
            raise CheckpointError(f"cannot write the batch state {self.path}: {e.strerror}") from None
        self._end += len(data)
        self._apply(event, at, len(data) - 1)

    def draft_file(self) -> BinaryIO:
        """A new file for a batch input file being filled (in the chunks folder: it holds
        prompts): the chunk's once `plan` is given it, else removed by `close` (or, after a
        kill, by the next `open`)."""
        try:
            self.dir.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            fd, name = tempfile.mkstemp(suffix=DRAFT_SUFFIX, dir=self.dir)  # mode 0600
            os.close(fd)
            draft = open(name, "wb", buffering=1 << 20)  # noqa: SIM115 (closed by plan or close)
        except OSError as e:
            raise CheckpointError(f"cannot write a batch input file in {self.dir}: "
                                  f"{e.strerror}") from None
        self._drafts.append(draft)
        return draft

    def _sweep_drafts(self) -> None:
        """Remove draft files a killed run left (never planned: nothing was sent from them)."""
        try:
            for path in self.dir.glob("*" + DRAFT_SUFFIX):
                path.unlink(missing_ok=True)
        except OSError:
            pass

    def plan(self, chunk: Chunk, data: bytes | BinaryIO) -> None:
        """Make the chunk's input file (`data`: its bytes, or a `draft_file` holding them)
        durable, then record it as planned."""
        path = self.chunk_file(chunk.chunk)
        try:
            self.dir.mkdir(mode=PRIVATE_DIR, exist_ok=True)  # chunk files hold the prompts
            if isinstance(data, bytes):
                tmp = path.with_suffix(".tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                self._drafts.remove(data)
                tmp = Path(data.name)  # type: ignore[arg-type]
                with data:
                    data.flush()
                    os.fsync(data.fileno())
            os.replace(tmp, path)
            fsync_dir(self.dir)
        except OSError as e:
            raise CheckpointError(f"cannot write the batch input {path}: {e.strerror}") from None
        event: dict[str, Any] = {"event": "planned", "chunk": chunk.chunk, "url": chunk.url,
                                 "model": chunk.model, "tokens": chunk.tokens,
                                 "lines": _lines_json(chunk.lines)}
        if chunk.fingerprints:
            event["fingerprints"] = chunk.fingerprints
        self.record(event)

    def close_chunk(self, chunk: Chunk, status: str, *, retry: list[str], bisect: list[list[str]],
                    reset: list[str] = (), note: str = "") -> None:  # type: ignore[assignment]
        event: dict[str, Any] = {"event": "closed", "chunk": chunk.chunk, "status": status,
                                 "retry": retry, "bisect": bisect}
        if reset:
            event["reset"] = list(reset)
        if note:
            event["note"] = mask_secrets(note)
        self.record(event)
        try:
            self.chunk_file(chunk.chunk).unlink(missing_ok=True)
        except OSError:
            pass

    def close(self) -> None:
        """Close the journal; remove the draft files never planned (a plan cut short)."""
        for draft in self._drafts:
            draft.close()
            Path(draft.name).unlink(missing_ok=True)  # type: ignore[arg-type]
        self._drafts = []
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def read_state(output: Path) -> BatchState | None:
    """The batch state of `output` for reading only (`runner status`), or None when it has none."""
    state = BatchState(output)
    if not state.path.exists():
        return None
    try:
        state._read()
    except OSError:
        return None
    return state


def open_batches(output: Path) -> int:
    """How many batches of `output` are open at the provider, by its state file (0 without one)."""
    state = read_state(output)
    return len(state.open_chunks()) if state is not None else 0
