"""The image store on its own: downloads without the key, retries, failures; orphan sweeping."""

import asyncio
import base64
import os
import subprocess
import sys

import pytest

from runner.api.transport import HttpResponse
from runner.errors import APIConnectionError
from runner.files.images import BadImageData, DownloadFailed, ImageStore, sweep_orphans
from runner.simulator.images import image_bytes


class Downloads:
    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []

    async def __call__(self, request):
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def store(tmp_path, send, sleeps=None):
    async def sleep(seconds):
        (sleeps if sleeps is not None else []).append(seconds)
    return ImageStore(tmp_path / "img", relative_to=tmp_path, send=send, sleep=sleep, rng=lambda: 1.0)


def test_a_url_is_fetched_without_the_api_key_through_failures(tmp_path):
    png = image_bytes("s", 0)
    send = Downloads([APIConnectionError("reset"), HttpResponse(500, {}, b"x"),
                      HttpResponse(200, {}, png)])
    sleeps = []
    body = asyncio.run(store(tmp_path, send, sleeps).save("job", {"data": [{"url": "https://blob/x?sig=s"}]}))
    assert [r.method for r in send.requests] == ["GET"] * 3
    assert all(dict(r.headers) == {} for r in send.requests)  # no key goes to the blob store
    assert sleeps == [1.0, 2.0]  # full jitter ceilings (rng at its top)
    assert body["data"][0]["file"] == "img/job-0.png" and body["data"][0]["url"].startswith("https")
    assert (tmp_path / "img" / "job-0.png").read_bytes() == png


def test_an_expired_url_fails_at_once_and_one_that_keeps_failing_after_five_tries(tmp_path):
    expired = Downloads([HttpResponse(403, {}, b"expired")])
    with pytest.raises(DownloadFailed, match="HTTP 403"):
        asyncio.run(store(tmp_path, expired).save("a", {"data": [{"url": "u"}]}))
    assert len(expired.requests) == 1
    failing = Downloads([HttpResponse(503, {}, b"")] * 5)
    with pytest.raises(DownloadFailed, match="HTTP 503"):
        asyncio.run(store(tmp_path, failing).save("b", {"data": [{"url": "u"}]}))
    assert len(failing.requests) == 5
    assert not (tmp_path / "img").exists() or not any((tmp_path / "img").iterdir())


def test_b64_is_decoded_and_removed_unless_inline_and_garbage_is_refused(tmp_path):
    raw = image_bytes("s", 0, "webp")
    answer = {"data": [{"b64_json": base64.b64encode(raw).decode(), "revised_prompt": "r"}]}
    body = asyncio.run(store(tmp_path, Downloads([])).save("j", answer))
    assert body["data"] == [{"revised_prompt": "r", "file": "img/j-0.webp"}]
    with pytest.raises(BadImageData):
        asyncio.run(store(tmp_path, Downloads([])).save("k", {"data": [{"b64_json": "%%%"}]}))


@pytest.mark.slow  # starts a process
def test_orphaned_temporary_files_of_dead_processes_are_swept_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f".job-0.tmp-{dead}-0123abcd").write_bytes(b"half")
    (tmp_path / f".job-1.tmp-{os.getpid()}-0123abcd").write_bytes(b"mine, in progress")
    (tmp_path / "job-0.png").write_bytes(b"done")
    assert sweep_orphans(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".job-1.tmp-{os.getpid()}-0123abcd", "job-0.png"]


def test_an_upload_path_with_a_nul_byte_is_a_bad_line_not_a_crash(tmp_path):
    from jobs.job import Job
    from jobs.reader import BadLine
    from runner.files.images import check_uploads

    job = Job(custom_id="e1", url="/v1/images/edits",
              body={"model": "gpt-image-1", "prompt": "p", "image": "a\x00b.png"}, line=3)
    result = check_uploads(job, tmp_path, "jobs.jsonl")
    assert isinstance(result, BadLine)
    assert result.line == 3 and "body.image" in result.reason
