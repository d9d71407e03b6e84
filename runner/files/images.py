"""Image files: every image an answer carries becomes a file on disk, never overwriting another.

Names. Image `i` of the job `custom_id` goes to `DIR/SAFE-i.EXT`: SAFE is the custom_id with every
character outside `A-Za-z0-9._-` replaced by `_` (cut to 100 characters), plus `-` and 8 hex digits
of the custom_id's sha256 when anything was replaced or cut (so `a/b` and `a_b` never meet); EXT
comes from the image's own first bytes (png, jpg, webp, gif), else from the request's
`output_format`, else `png`. When that name is taken (an earlier run, a rerun with
`--retry-failed`, another output sharing the folder) the next free `SAFE-i.K.EXT` (K = 1, 2, ...)
is used.

Durability. Bytes are written to a hidden temporary file in DIR, fsynced, then linked to the final
name with `os.link`, which fails rather than replace an existing file (two runs racing for a name
cannot overwrite each other), then the temporary name is removed and DIR fsynced. So a file under
its final name is always complete; a kill leaves at most a `.tmp-*` file, never a half image under
a real name, and the run's first save removes such files left by processes no longer running
(`sweep_orphans`). The dispatcher writes the job's result line only after `save` returns.

`url` answers are downloaded at once (they expire after about an hour) through the run's `send`
function, with full-jitter retries; a download that keeps failing raises `DownloadFailed` and the
job fails with a transient code, so a later run redoes it.

A folder that cannot take the file (disk full, over quota, read-only, permission denied, I/O
error) stops the run, resumable (`ImagesUnwritable`): every later image would be paid for and
lost the same way. The job whose image it was stays pending (nothing is written for it) and is
sent again on resume. Any other error writing one file (its name, say) fails only that job,
with a transient code.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import errno
import hashlib
import os
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import codes
from jobs.endpoints import UPLOAD_FIELDS
from jobs.job import Job
from jobs.reader import BadLine
from runner.api.transport import HttpRequest, Send
from runner.errors import RunnerError, StopRunError
from runner.files import PRIVATE_DIR, PRIVATE_FILE
from runner.retry import Attempts, Backoff

MAX_SAFE_CHARS = 100
DOWNLOAD_ATTEMPTS = 5
DOWNLOAD_BACKOFF_S = 1.0  # full jitter: uniform(0, min(cap, this * 2**attempt))
DOWNLOAD_BACKOFF_CAP_S = 30.0  # (never reached within DOWNLOAD_ATTEMPTS: 8 s before the fifth)
TMP_MARK = ".tmp-"  # temporary names: .STEM.tmp-PID-RANDOM
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_TMP_NAME = re.compile(r"\..+\.tmp-(\d+)-[0-9a-f]{8}")
_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"))
_FORMAT_EXT = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp"}
_MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}


class DownloadFailed(RunnerError):
    """An image `url` could not be downloaded after `DOWNLOAD_ATTEMPTS` tries (or held no image)."""


class BadImageData(RunnerError):
    """A `b64_json` that is not base64."""


class ImagesUnwritable(StopRunError):
    """The images folder cannot take files (full, read-only, refused): the run stops, resumable."""


# errnos of a folder that cannot take any file (not of one file's name)
FOLDER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                           errno.EIO})


@dataclass(frozen=True, slots=True)
class _Draws:
    """A random source (`runner.retry.RandomSource`) drawing from a bare function such as
    `random.Random().random`, as `ImageStore(rng=...)` takes it."""

    random: Callable[[], float]


@dataclass(frozen=True, slots=True)
class SaveFailed:
    """A job whose images could not all be saved: the failure line's `code` (transient for a
    download or a disk that failed, so a later run redoes the job) and `message`."""

    code: str
    message: str


def safe_stem(custom_id: str) -> str:
    """The file-name stem for a custom_id (see the module docstring)."""
    safe = _UNSAFE.sub("_", custom_id)[:MAX_SAFE_CHARS].lstrip(".") or "_"
    if safe != custom_id:
        safe += "-" + hashlib.sha256(custom_id.encode()).hexdigest()[:8]
    return safe


def extension(data: bytes, output_format: Any = None) -> str:
    """The extension for image bytes: by their magic number, else `output_format`, else png."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return _FORMAT_EXT.get(str(output_format).lower(), "png") if output_format else "png"


def write_new_file(directory: Path, stem: str, ext: str, data: bytes, *,
                   reuse_identical: bool = False) -> Path:
    """Write `data` to the first free `stem.ext`, `stem.1.ext`, ... in `directory`, durably
    (temp file, fsync, link, fsync the folder); never replaces an existing file. With
    `reuse_identical`, a file of those names already holding exactly `data` is returned instead
    (a collect redone after a kill finds the images it saved before its line was written)."""
    directory.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if reuse_identical:
        found = _identical(directory, stem, ext, data)
        if found is not None:
            return found
    tmp = directory / f".{stem}{TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        k = 0
        while True:
            target = directory / (f"{stem}.{ext}" if k == 0 else f"{stem}.{k}.{ext}")
            try:
                os.link(tmp, target)
                break
            except FileExistsError:
                k += 1
    finally:
        os.unlink(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def _identical(directory: Path, stem: str, ext: str, data: bytes) -> Path | None:
    """The first of `stem.ext`, `stem.1.ext`, ... holding exactly `data`, or None (the names are
    looked at until the first free one, as `write_new_file` takes them)."""
    k = 0
    while True:
        path = directory / (f"{stem}.{ext}" if k == 0 else f"{stem}.{k}.{ext}")
        try:
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return path
        except FileNotFoundError:
            return None
        k += 1


def sweep_orphans(directory: Path) -> int:
    """Remove the temporary files that processes no longer running left in `directory` (a kill
    between writing and linking); a live process's are left alone. Returns how many went."""
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        match = _TMP_NAME.fullmatch(name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # alive (or reused by another process): not ours to judge
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
            removed += 1
    return removed


class ImageStore:
    """Saves the images of image answers under `directory`; paths in result lines are relative
    to `relative_to` (the output file's folder). `inline` keeps the answer as the API sent it
    (files are saved all the same). `reuse_identical`: an image whose exact bytes are already
    under one of its names is not written again (the batch backend, whose answers are files
    that a collect redone after a kill reads again)."""

    def __init__(self, directory: Path, *, relative_to: Path, send: Send, inline: bool = False,
                 reuse_identical: bool = False,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 rng: Callable[[], float] | None = None) -> None:
        self.directory = directory
        self.relative_to = relative_to
        self._send = send
        self.inline = inline
        self.reuse_identical = reuse_identical
        self._sleep = sleep
        self._backoff = Backoff(DOWNLOAD_BACKOFF_S, DOWNLOAD_BACKOFF_CAP_S,  # between download tries
                                rng=_Draws(rng) if rng is not None else random.Random())
        self._swept = False
        self.saved = 0  # images written this run
        self.downloads = 0  # url answers fetched (attempts that got an image)

    async def save(self, custom_id: str, body: dict[str, Any], output_format: Any = None) -> dict[str, Any]:
        """The answer to write in the result line, after every image in `body["data"]` is on
        disk: each item gets `"file"` (its path relative to the output's folder), and loses its
        `b64_json` unless `inline`. Raises `DownloadFailed` or `BadImageData`."""
        items = body.get("data")
        if not isinstance(items, list):
            return body
        if not self._swept:
            self._swept = True
            await asyncio.to_thread(sweep_orphans, self.directory)
        stem = safe_stem(custom_id)
        out_items = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                out_items.append(item)
                continue
            if isinstance(item.get("b64_json"), str):
                try:
                    data = base64.b64decode(item["b64_json"], validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise BadImageData(f"image {index} of the answer is not base64: {exc}") from None
            elif isinstance(item.get("url"), str):
                data = await self._download(item["url"])
            else:
                out_items.append(item)
                continue
            ext = extension(data, output_format or body.get("output_format"))
            path = await asyncio.to_thread(write_new_file, self.directory, f"{stem}-{index}", ext,
                                           data, reuse_identical=self.reuse_identical)
            self.saved += 1
            rel = os.path.relpath(path, self.relative_to)
            kept = item if self.inline else {k: v for k, v in item.items() if k != "b64_json"}
            out_items.append({**kept, "file": rel})
        return {**body, "data": out_items}

    async def save_job(self, job: Job, answer: dict[str, Any]) -> dict[str, Any] | SaveFailed:
        """`save` for the answer of `job`, every backend's one way to turn an image answer into
        files: the answer for its success line, or the failure to write in its place."""
        try:
            return await self.save(job.custom_id, answer, job.body.get("output_format"))
        except DownloadFailed as exc:
            return SaveFailed(codes.IMAGE_DOWNLOAD_FAILED, str(exc))
        except BadImageData as exc:
            return SaveFailed(codes.BAD_RESPONSE, str(exc))
        except OSError as exc:
            if exc.errno in FOLDER_ERRNOS:  # no image can be saved: stop before paying for more
                raise ImagesUnwritable(f"cannot save images in {self.directory}: {exc.strerror}; "
                                       "stopping (resume to run the rest)") from None
            return SaveFailed(codes.IMAGE_SAVE_FAILED, f"cannot save an image: {exc}")

    async def _download(self, url: str) -> bytes:
        """The bytes at `url` (no API key is sent: the URL is signed), tried up to
        `DOWNLOAD_ATTEMPTS` times with full-jitter backoff; a 403 or 404 (expired, gone) at once
        gives up."""
        last = ""
        attempts = Attempts()
        while True:
            try:
                response = await self._send(HttpRequest("GET", url, {}))
            except RunnerError as exc:
                last = str(exc)
            else:
                if response.status == 200 and response.body:
                    self.downloads += 1
                    return response.body
                last = f"HTTP {response.status}"
                if response.status in (403, 404):  # expired or gone: waiting cannot help
                    break
            attempts = attempts.then(counted=True)
            if attempts.counted >= DOWNLOAD_ATTEMPTS:
                break
            await self._sleep(self._backoff.delay(attempts.counted - 1))
        raise DownloadFailed(f"could not download an image ({last}); the job runs again on resume")


def default_images_dir(output: Path) -> Path:
    """`--images-dir` when not given: beside OUTPUT, named after it (`out.jsonl` -> `out.images`)."""
    name = output.name.removesuffix(".jsonl") if output.name.endswith(".jsonl") else output.name
    return output.parent / f"{name}.images"


def check_uploads(job: Job, base: Path, input_name: str) -> Job | BadLine:
    """`job` with every upload path (`image`, `mask`) made absolute (relative ones are relative to
    the job file's folder, `base`), or a `BadLine` naming the file and line when one is missing
    or unreadable. Jobs that upload nothing come back unchanged."""
    fields = UPLOAD_FIELDS.get(job.url)
    if not fields:
        return job
    body = dict(job.body)
    for name in fields:
        value = body.get(name)
        if value is None:
            continue
        paths = value if isinstance(value, list) else [value]
        resolved = []
        for p in paths:
            path = Path(os.path.expanduser(p))
            path = path if path.is_absolute() else base / path
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                return BadLine(input_name, job.line, f"body.{name}: cannot read {p!r} "
                               f"({reason}; relative paths are relative to the job file's folder)",
                               job.custom_id)
            resolved.append(str(path))
        body[name] = resolved if isinstance(value, list) else resolved[0]
    return dataclasses.replace(job, body=body)


def data_url(path: str) -> str:
    """The file at `path` as a base64 `data:` URL, its type from its own bytes (OSError when it
    cannot be read)."""
    with open(path, "rb") as f:
        data = f.read()
    return f"data:{_MIME[extension(data)]};base64,{base64.b64encode(data).decode()}"


def as_json_edit(job: Job, input_name: str) -> Job | BadLine:
    """An image edit whose upload paths are absolute (`check_uploads`) in the JSON shape the
    Images API takes besides multipart, the only one a Batch API line (JSON) can carry: `image`
    (a path or a list) becomes `images`, a list of `{"image_url": DATA_URL}`, and `mask` one
    such object. A `BadLine` when a file cannot be read any more."""
    body = dict(job.body)
    try:
        image = body.pop("image")
        paths = image if isinstance(image, list) else [image]
        body["images"] = [{"image_url": data_url(p)} for p in paths]
        if body.get("mask") is not None:
            body["mask"] = {"image_url": data_url(body["mask"])}
    except OSError as exc:
        return BadLine(input_name, job.line, f"cannot read an image to edit: {exc}", job.custom_id)
    return dataclasses.replace(job, body=body)
