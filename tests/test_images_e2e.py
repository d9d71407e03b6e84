"""Image jobs end to end against the simulator on virtual time: files saved safely, never
overwritten, url answers downloaded through faults, uploads checked before sending, IPM pacing."""

import base64
import errno
import os
import hashlib

import orjson
import pytest

from runner.api.endpoint import Endpoint
from runner.api.imagelimits import as_token_headers, image_limit_from_message
from runner.files.images import safe_stem, write_new_file
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.simulator.images import image_bytes
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator


def write(path, jobs):
    path.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))


def run_file(loop, tmp_path, jobs, sim_config, *, out="out.jsonl", ipm=None, retry_failed=False,
             inline=False, write_jobs=True, images_dir=None):
    if write_jobs:
        write(tmp_path / "in.jsonl", jobs)
    out = tmp_path / out
    logs = []

    async def main():
        async with Simulator(sim_config, clock=loop.time) as sim:
            started = loop.time()
            stats = await run(RunConfig(input=str(tmp_path / "in.jsonl"), output=out,
                                        endpoint=Endpoint(base_url=sim.base_url, api_key="k"),
                                        ipm=ipm, inline_images=inline, images_dir=images_dir,
                                        dispatch=DispatchConfig(max_attempts=10,
                                                                retry_failed=retry_failed)),
                              progress=False, handle_signals=False, log=logs.append)
            return stats, sim, loop.time() - started

    stats, sim, elapsed = loop.run_until_complete(main())
    records = {}
    for line in out.read_bytes().splitlines():
        record = orjson.loads(line)
        records[record["custom_id"]] = record
    return records, stats, sim, elapsed, logs


def gen(i, **body):
    return {"custom_id": f"product/{i}", "method": "POST", "url": "/v1/images/generations",
            "body": {"prompt": f"a red chair, view {i}", **body}}


def test_b64_images_become_files_with_their_own_bytes_and_lines_hold_paths(loop, tmp_path):
    jobs = [gen(i, model="gpt-image-1", n=2, output_format=("png", "jpeg", "webp")[i % 3], quality="low")
            for i in range(9)]
    records, stats, _, _, _ = run_file(loop, tmp_path, jobs, SimConfig(fault_rate=0.2, seed=2,
                                                                       faults=("500", "truncated")))
    assert stats.exit_code() == 0 and stats.images == 18
    for i, job in enumerate(jobs):
        body = records[f"product/{i}"]["response"]["body"]
        fmt = job["body"]["output_format"]
        for k, item in enumerate(body["data"]):
            assert "b64_json" not in item
            path = tmp_path / item["file"]
            ext = {"png": "png", "jpeg": "jpg", "webp": "webp"}[fmt]
            assert path.name == f"{safe_stem(f'product/{i}')}-{k}.{ext}"
            assert path.read_bytes() == image_bytes(job["body"]["prompt"], k, fmt)
        assert body["usage"]["output_tokens"] == 2 * 272
    assert not list((tmp_path / "out.images").glob(".*"))  # no temporary file left


def test_url_answers_are_downloaded_through_failures_and_inline_keeps_the_answer(loop, tmp_path):
    jobs = [gen(i, model="dall-e-2", n=1, size="256x256") for i in range(12)]
    records, stats, sim, _, _ = run_file(loop, tmp_path, jobs,
                                         SimConfig(download_fault_rate=0.3, seed=9), inline=True)
    assert stats.exit_code() == 0
    for i in range(12):
        [item] = records[f"product/{i}"]["response"]["body"]["data"]
        assert item["url"].startswith("http") and item["file"].endswith(".png")
        assert (tmp_path / item["file"]).read_bytes() == image_bytes(f"a red chair, view {i}", 0)


def test_an_expired_url_is_a_transient_failure_redone_on_resume(loop, tmp_path):
    jobs = [gen(0, model="dall-e-2")]
    records, stats, *_ = run_file(loop, tmp_path, jobs, SimConfig(image_url_ttl_s=0.0))
    assert records["product/0"]["error"]["code"] == "image_download_failed"
    records, stats, *_ = run_file(loop, tmp_path, jobs, SimConfig(), write_jobs=False)
    assert records["product/0"]["error"] is None and stats.exit_code() == 0


def test_no_image_file_is_ever_overwritten_by_a_rerun_or_another_output(loop, tmp_path):
    jobs = [gen(i, model="dall-e-3", response_format="b64_json") for i in range(3)]
    first, *_ = run_file(loop, tmp_path, jobs, SimConfig())
    files = {p: p.read_bytes() for p in (tmp_path / "out.images").iterdir()}
    (tmp_path / "out.images" / "squatter-0.png").write_bytes(b"mine")
    # another output sharing the folder
    second, *_ = run_file(loop, tmp_path, jobs, SimConfig(), out="other.jsonl", write_jobs=False,
                          images_dir=tmp_path / "out.images")
    assert len(list((tmp_path / "out.images").iterdir())) == 2 * len(files) + 1
    assert {item["file"] for r in second.values() for item in r["response"]["body"]["data"]} == {
        f"out.images/{safe_stem(f'product/{i}')}-0.1.png" for i in range(3)}
    assert all(p.read_bytes() == data for p, data in files.items())
    assert (tmp_path / "out.images" / "squatter-0.png").read_bytes() == b"mine"
    target = tmp_path / "out.images"
    taken = write_new_file(target, f"{safe_stem('product/0')}-0", "png", b"new")
    assert taken.name.endswith("-0.2.png") and taken.read_bytes() == b"new"
    assert all(p.read_bytes() == data for p, data in files.items())


def test_dall_e_3_n_above_1_fails_with_the_apis_message_and_is_kept(loop, tmp_path):
    records, stats, *_ = run_file(loop, tmp_path, [gen(0, model="dall-e-3", n=2)], SimConfig())
    error = records["product/0"]["error"]
    assert error == {"code": "invalid_request", "message": "You must provide n=1 for this model."}
    assert records["product/0"]["response"]["status_code"] == 400
    assert stats.exit_code() == 1


def test_edits_upload_their_images_and_each_job_gets_an_image_of_its_own_upload(loop, tmp_path):
    (tmp_path / "pics").mkdir()
    jobs = []
    for i in range(4):
        png = image_bytes(f"source {i}", 0)
        (tmp_path / "pics" / f"s{i}.png").write_bytes(png)
        jobs.append({"custom_id": f"e{i}", "url": "/v1/images/edits",
                     "body": {"model": "gpt-image-1", "prompt": "make it blue",
                              "image": [f"pics/s{i}.png", str(tmp_path / "pics" / "s0.png")]}})
    jobs.append({"custom_id": "v", "url": "/v1/images/variations",
                 "body": {"model": "dall-e-2", "image": "pics/s1.png", "response_format": "b64_json"}})
    records, stats, *_ = run_file(loop, tmp_path, jobs, SimConfig())
    assert stats.exit_code() == 0
    sha = lambda p: hashlib.sha256((tmp_path / "pics" / p).read_bytes()).hexdigest()
    for i in range(4):
        seed = "make it blue" + f"|{sha(f's{i}.png')}|{sha('s0.png')}"
        [item] = records[f"e{i}"]["response"]["body"]["data"]
        assert (tmp_path / item["file"]).read_bytes() == image_bytes(seed, 0)
    [item] = records["v"]["response"]["body"]["data"]
    assert (tmp_path / item["file"]).read_bytes() == image_bytes(f"|{sha('s1.png')}", 0)


def test_a_missing_upload_is_a_bad_line_named_by_file_and_line_and_never_sent(loop, tmp_path):
    jobs = [{"custom_id": "e", "url": "/v1/images/edits",
             "body": {"model": "dall-e-2", "prompt": "p", "image": "nope.png"}}]
    records, stats, sim, _, logs = run_file(loop, tmp_path, jobs, SimConfig())
    assert records == {} and stats.bad_lines == 1 and stats.requests == 0
    assert any(f"{tmp_path / 'in.jsonl'}:1: body.image: cannot read 'nope.png'" in m for m in logs)
    assert stats.exit_code() == 1


def test_images_per_minute_are_paced_from_what_the_server_says(loop, tmp_path):
    jobs = [gen(i, model="dall-e-2", n=2, response_format="b64_json") for i in range(40)]
    records, stats, sim, elapsed, _ = run_file(loop, tmp_path, jobs, SimConfig(ipm=20, burst_s=5))
    assert stats.exit_code() == 0 and stats.images == 80
    # 80 images at 20 a minute, the server's bucket holding 5 s of them (1.67): about 235 s
    assert 225 <= elapsed <= 260
    assert stats.rate_limited <= 2  # the first 429 teaches the limit; then paced


def test_image_headers_and_429_messages_read_as_an_images_budget():
    headers = {"x-ratelimit-limit-images": "15", "x-ratelimit-remaining-images": "3",
               "x-ratelimit-limit-tokens": "100000", "x-ratelimit-limit-requests": "50"}
    seen = as_token_headers(headers)
    assert seen["x-ratelimit-limit-tokens"] == "15" and seen["x-ratelimit-remaining-tokens"] == "3"
    assert seen["x-ratelimit-limit-requests"] == "50"  # the tokens limit of the model is not paced
    body = orjson.dumps({"error": {"message": "Rate limit exceeded for images per minute in "
                                   "organization org-x. Limit: 15/1min. Current: 16/1min."}})
    assert image_limit_from_message(body) == 15
    assert as_token_headers({}, body) == {"x-ratelimit-limit-tokens": "15"}
    assert image_limit_from_message(b'{"error": {"message": "Rate limit reached on tokens"}}') is None


def test_the_mixed_example_file_runs_every_endpoint_cleanly(loop, tmp_path):
    import shutil
    from tests.conftest import ROOT
    shutil.copytree(ROOT / "examples" / "images", tmp_path / "images")
    shutil.copy(ROOT / "examples" / "every-endpoint.jsonl", tmp_path / "in.jsonl")
    records, stats, *_ = run_file(loop, tmp_path, [], SimConfig(ipm=50), write_jobs=False)
    assert stats.exit_code() == 0 and len(records) == 15 and stats.images == 8
    from runner.report.prices import packaged_prices
    from runner.report.summary import summary_dict, summary_lines
    summary = summary_dict(stats, "out.jsonl", packaged_prices())
    dalle3 = summary["models"]["dall-e-3"]
    assert dalle3["images"] == 1 and dalle3["allowed_ipm"] == 50
    assert dalle3["estimated_cost_usd"] == 0.08  # hd, 1024x1024, per image
    # 2 at 256x256 (0.016), an edit and 2 variations at the default 1024x1024 (0.020)
    assert summary["models"]["dall-e-2"]["estimated_cost_usd"] == pytest.approx(0.092)
    assert summary["models"]["gpt-image-1"]["estimated_cost_usd"] > 0  # by its usage tokens
    assert summary["models"]["omni-moderation-latest"]["estimated_cost_usd"] == 0.0
    assert any(line.startswith("dall-e-3: 1 images") for line in summary_lines(stats, "o", packaged_prices()))


def test_azure_image_deployments_are_paced_and_saved(loop, tmp_path):
    jobs = [gen(i, model="dall-e-3", response_format="b64_json") for i in range(8)]
    write(tmp_path / "in.jsonl", jobs)
    out = tmp_path / "out.jsonl"

    async def main():
        async with Simulator(SimConfig(ipm=6, burst_s=10), clock=loop.time) as sim:
            endpoint = Endpoint(base_url=sim.azure_endpoint, api_key="k", azure=True,
                                api_version="2024-10-21", deployments={"dall-e-3": "draw"})
            started = loop.time()
            stats = await run(RunConfig(input=str(tmp_path / "in.jsonl"), output=out,
                                        endpoint=endpoint, ipm=6),
                              progress=False, handle_signals=False, log=lambda m: None)
            return stats, sim, loop.time() - started

    stats, sim, elapsed = loop.run_until_complete(main())
    assert stats.exit_code() == 0 and stats.images == 8
    assert "draw" in sim.service.image_budgets  # the deployment's budget
    assert elapsed >= (8 - 1) / 6 * 60 * 0.95  # paced: one image every 10 s after the first
    for i in range(8):
        [item] = orjson.loads([l for l in out.read_bytes().splitlines()
                               if f'"product/{i}"'.encode() in l][0])["response"]["body"]["data"]
        assert (tmp_path / item["file"]).read_bytes() == image_bytes(f"a red chair, view {i}", 0)


@pytest.mark.parametrize("error, stops", [(errno.ENOSPC, True), (errno.ENAMETOOLONG, False)])
def test_a_full_disk_stops_the_run_before_paying_for_more_images_but_one_bad_name_fails_one_job(
        loop, tmp_path, monkeypatch, error, stops):
    from runner.files import images
    real = images.write_new_file

    def failing(directory, stem, ext, data, **kwargs):
        if stem.startswith("product_3-"):
            raise OSError(error, os.strerror(error))
        return real(directory, stem, ext, data, **kwargs)

    monkeypatch.setattr(images, "write_new_file", failing)
    jobs = [gen(i, model="dall-e-2") for i in range(40)]
    records, stats, sim, _, logs = run_file(loop, tmp_path, jobs, SimConfig(rpm=60, ipm=60))
    if stops:  # resumable, and the job whose image was lost is pending, not failed
        assert stats.exit_code() == 3 and "No space left on device" in stats.stop_reason
        assert "product/3" not in records and len(records) < 20
        assert sim.stats.requests < 20  # it did not go on paying for images it could not keep
        assert all(r["error"] is None for r in records.values())
    else:
        assert stats.exit_code() == 1 and len(records) == 40
        assert records["product/3"]["error"]["code"] == "image_save_failed"
