"""The resume index: what each line of INPUT came to (`jobs.settled`), saved beside OUTPUT as
`OUTPUT.resume` by a live run that decided every line of INPUT, so that the next run over the
same two files reads neither OUTPUT's lines nor its finished jobs again.

    OUTPUT.resume   {"version":1,"input_bytes":…,"input_sha256":…,"output_bytes":…,
                     "output_sha256":…,"shard":"K/N"|null,"lines":N}\\n
                    N bytes: the state of INPUT's line k at offset k - 1

Trusted only while both files are byte for byte what they were when it was written: before use,
INPUT and OUTPUT are read once each and their SHA-256 compared (sequential reads, about 1.7 GB/s
here: 4 s for ten million result lines), so an edited job, a line added to OUTPUT by hand or by
`--via batch`, a merged, repaired or truncated OUTPUT, another shard's run, all leave it unused:
that run reads OUTPUT as it always has (and writes a new index if it can). A hash collision of
SHA-256 is the only way a wrong index could be taken, which is why nothing weaker is used.

Written (atomically) only at the end of a run that was not stopped (so every job it started got
its line), read INPUT to its end, wrote every line whole and synced OUTPUT, and whose INPUT, a
regular uncompressed file, kept its size, inode and modification time meanwhile; not when INPUT
holds duplicate ids or a job changed since the result it kept (`Settled.void`). A run using an
index reads its jobs from the file it hashed (`Index.input_file`), no further than that size. A run with --retry-failed or --retry-codes does not use an index holding kept
failures (their codes are in OUTPUT). Losing the index only costs time.

A partial index ("version":2, same layout) is what a run that has not ended vouches for: saved
every --index-every seconds while it goes and when it stops early (`runner.live.run._Snapshots`),
so that the resume after a SIGKILL or a reboot hashes what it vouches for instead of parsing it.
It gives the states of INPUT's first `lines` lines (all within its first `input_bytes`) when
OUTPUT was `output_bytes` long, and promises that no line of OUTPUT before that offset answers a
line it leaves PENDING (or does not cover) but a transient failure. Only a run that knows it
writes them: a first run over an empty OUTPUT (lines read but not yet decided are PENDING) and a
run from an index (whole, from the check before the run, or a settled partial one), with the
default --changed and no retries. It is taken while both prefixes are byte for byte as they
were. Lines added to OUTPUT since are read; lines added to INPUT only when the index says it
`grows`: OUTPUT then answers no line it does not cover (a first run's, and those of runs from
such an index that found every id OUTPUT answered since in INPUT; a run from another index may
have results in OUTPUT for jobs no longer in INPUT, which a job added again would meet). The
states carry their own SHA-256 (an index is written without a sync). The run reads OUTPUT from
`output_bytes` on, reads INPUT once for its ids alone (the duplicate check) and decides only the
lines whose ids the lines of OUTPUT after the index answer (`runner.files.inputs.settle_lines`);
a duplicate id makes it read OUTPUT whole after all. A run that appends without keeping partial
indexes removes one (it would not know of that run's lines).
"""
from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from jobs.settled import KEPT, Settled
from jobs.shard import Shard
from runner.files.atomic import write_atomically
from runner.files.compression import MAGIC_BYTES, sniff
from runner.files.inputs import STDIN, Digest

VERSION = 1
PARTIAL = 2  # the version of a partial index
SUFFIX = ".resume"
HASH_CHUNK = 1 << 20


def index_path(output: Path) -> Path:
    return output.with_name(output.name + SUFFIX)


@dataclass(frozen=True, slots=True)
class InputStamp:
    """What says INPUT did not change during a run: its size, modification time and inode."""

    size: int
    mtime_ns: int
    inode: int

    @staticmethod
    def of(path: str) -> InputStamp | None:
        """INPUT's stamp when it can have an index (a regular, uncompressed file), else None."""
        if path == STDIN:
            return None
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                return None
            with open(path, "rb") as f:
                if sniff(f.read(MAGIC_BYTES)) is not None:
                    return None
        except OSError:
            return None
        return InputStamp(st.st_size, st.st_mtime_ns, st.st_ino)


def file_sha256(path: str | Path, size: int) -> Digest:
    """A sha256 hasher fed the first `size` bytes of `path` (blocking). OSError when unreadable;
    ValueError when the file is shorter."""
    with open(path, "rb", buffering=0) as f:
        return _hash(f, size)


def sha256_on(hasher: Digest, path: str | Path, start: int, end: int) -> Digest:
    """A copy of `hasher` fed bytes `start` to `end` of `path` too (blocking; OSError, and
    ValueError when the file is shorter)."""
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        return _hash(f, end - start, hasher.copy())


def _hash(f: BinaryIO, size: int, hasher: Digest | None = None) -> Digest:
    hasher = hashlib.sha256() if hasher is None else hasher
    left = size
    while left > 0:
        chunk = f.read(min(HASH_CHUNK, left))
        if not chunk:
            raise ValueError(f"{getattr(f, 'name', 'a file')} is shorter than {size} bytes")
        hasher.update(chunk)
        left -= len(chunk)
    return hasher


def _shard_text(shard: Shard | None) -> str | None:
    return None if shard is None else f"{shard.index}/{shard.count}"


@dataclass(slots=True)
class Index:
    """A resume index found valid for this run: the lines' states; INPUT, open, the very file
    whose `input_bytes` were hashed (the run reads its jobs from it, never past that size, so a
    file renamed over INPUT or lines added to it meanwhile are not read); INPUT's digest; and
    OUTPUT's hasher fed its whole content (to go on with what this run appends).

    Or the states the run's own check of INPUT came to before anything was sent
    (`runner.live.run`): then INPUT's digest is that of the bytes the check read, no OUTPUT
    hasher, and `reread` is fed what the run reads again, to be compared at the end."""

    settled: Settled
    input_file: BinaryIO
    input_bytes: int
    input_sha256: str
    output_hasher: Digest | None
    reread: Digest | None = None
    grows: bool = False  # a settled partial index whose partial indexes may read lines added

    @property
    def from_check(self) -> bool:
        """The states of the run's own check (see above)."""
        return self.reread is not None

    def close(self) -> None:
        self.input_file.close()


@dataclass(slots=True)
class Partial:
    """A partial index found valid for this run's files, to be settled before use
    (`runner.live.run`): the `settled` states of INPUT's lines within its first `vouched` bytes
    (their count and SHA-256: the run's own read of INPUT compares them again); INPUT, open,
    `input_bytes` long now (read whole: lines may follow); OUTPUT's hasher fed its first
    `tail_from` bytes, after which its lines are read."""

    settled: Settled
    input_file: BinaryIO
    input_bytes: int
    vouched: tuple[int, str]
    output_hasher: Digest
    tail_from: int
    grows: bool = False  # written by a run that vouched for INPUT's lines added after them

    def close(self) -> None:
        self.input_file.close()


def load(output: Path, input_path: str, shard: Shard | None, *, retrying: bool
         ) -> Index | Partial | None:
    """The index of `output`, if it answers this run (see the module docstring): exactly, or
    a partial one over the files' prefixes; else None. Blocking (it reads both files): call it
    in a thread. The caller closes what it gets."""
    path = index_path(output)
    source = None
    try:
        with open(path, "rb") as f:
            header = orjson.loads(f.readline())
            states = bytearray(f.read())
        if not isinstance(header, dict) or header.get("version") not in (VERSION, PARTIAL):
            return None
        partial = header["version"] == PARTIAL
        if header.get("shard") != _shard_text(shard) or header.get("lines") != len(states) \
                or header["states_sha256"] != hashlib.sha256(states).hexdigest():
            return None
        if retrying and KEPT in states:
            return None
        input_bytes, output_bytes = header["input_bytes"], header["output_bytes"]
        source = open(input_path, "rb", buffering=0)
        input_size, output_size = os.fstat(source.fileno()).st_size, os.stat(output).st_size
        grows = partial and header.get("grows") is True  # lines added to INPUT may be read
        if input_size < input_bytes or (input_size > input_bytes and not grows) \
                or output_size < output_bytes or (output_size > output_bytes and not partial):
            raise ValueError("not the files the index was written for")
        if partial and input_size > input_bytes > 0 \
                and os.pread(source.fileno(), 1, input_bytes - 1) != b"\n":
            raise ValueError("bytes were added to INPUT's last line the index vouches for")
        with ThreadPoolExecutor(1) as pool:  # both files at once: hashlib lets go of the GIL
            hashing = pool.submit(file_sha256, output, output_bytes)
            input_sha256 = _hash(source, input_bytes).hexdigest()
            hasher = hashing.result()
        if input_sha256 != header["input_sha256"]:
            raise ValueError("INPUT changed")
        if hasher.hexdigest() != header["output_sha256"]:
            raise ValueError("OUTPUT changed")
        source.seek(0)
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        if source is not None:
            source.close()
        return None
    if partial:
        return Partial(Settled(states), source, input_size, (input_bytes, input_sha256), hasher,
                       output_bytes, grows)
    return Index(Settled(states), source, input_bytes, input_sha256, hasher)


def save(output: Path, input_path: str, shard: Shard | None, settled: Settled, *,
         input_sha256: str | None, output_bytes: int, output_hasher: Digest) -> None:
    """Write the index of this run atomically (blocking). `input_sha256` when known (the index
    this run used), else INPUT is hashed here. OSError when it cannot be written."""
    input_bytes = os.stat(input_path).st_size
    if input_sha256 is None:
        input_sha256 = file_sha256(input_path, input_bytes).hexdigest()
    header = {"version": VERSION, "input_bytes": input_bytes, "input_sha256": input_sha256,
              "output_bytes": output_bytes, "output_sha256": output_hasher.hexdigest(),
              "shard": _shard_text(shard), "lines": len(settled.states),
              "states_sha256": hashlib.sha256(settled.states).hexdigest()}
    # not synced: after a power cut an index that is missing, empty or short is refused whole
    # (its header's line count, then both digests), which only costs the next run its time
    write_atomically(index_path(output), [orjson.dumps(header), b"\n", settled.states],  # no copy
                     durable=False)


def save_partial(output: Path, shard: Shard | None, states: bytes, *, input_bytes: int,
                 input_sha256: str, output_bytes: int, output_sha256: str,
                 grows: bool = False) -> None:
    """Write a partial index atomically (blocking): the `states` of INPUT's first lines (its
    first `input_bytes` bytes) for a run that has not ended, OUTPUT being `output_bytes` long;
    `grows`: lines added to INPUT after them are answered by nothing before that offset. See
    the module docstring for what the run vouches for."""
    header = {"version": PARTIAL, "input_bytes": input_bytes, "input_sha256": input_sha256,
              "output_bytes": output_bytes, "output_sha256": output_sha256,
              "shard": _shard_text(shard), "lines": len(states), "grows": grows,
              "states_sha256": hashlib.sha256(states).hexdigest()}
    write_atomically(index_path(output), [orjson.dumps(header), b"\n", states], durable=False)


def discard(output: Path) -> None:
    """Remove the index of `output`, if any (it no longer answers OUTPUT)."""
    try:
        index_path(output).unlink()
    except OSError:
        pass


def discard_partial(output: Path) -> None:
    """Remove the index of `output` if it is a partial one: a run that appends without keeping
    it would leave it saying less than it should of the lines it answers."""
    try:
        with open(index_path(output), "rb") as f:
            header = orjson.loads(f.readline())
    except (OSError, orjson.JSONDecodeError):
        return
    if isinstance(header, dict) and header.get("version") == PARTIAL:
        discard(output)
