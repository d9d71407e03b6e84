"""SIGKILL while images are being downloaded and saved, then resume: every job ends with one
success whose files are complete, no file under a final name is partial, none is overwritten."""

import random
import re
import signal
import time

import orjson
import pytest

from runner.files.images import safe_stem
from runner.simulator.images import image_bytes
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator, run_in_thread
from tests.test_e2e import cli, count_lines, finish


@pytest.mark.slow
def test_sigkill_during_image_downloads_then_resume(tmp_path):
    n = 120
    jobs = [{"custom_id": f"sku/{i}", "url": "/v1/images/generations",
             "body": {"model": "dall-e-2", "prompt": f"item {i}", "n": 1 + i % 2, "size": "256x256"}}
            for i in range(n)]
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    out = tmp_path / "out.jsonl"
    rng = random.Random(12)
    sim = Simulator(SimConfig(latency_ms=30, download_fault_rate=0.1, seed=4))
    with run_in_thread(simulator=sim) as base_url:
        args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", base_url,
                "--concurrency", "8", "--no-progress"]
        kills = 0
        for target in sorted(rng.sample(range(10, n - 20), 2)):
            proc = cli(*args)
            deadline = time.monotonic() + 60
            while count_lines(out) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.001, 0.01))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=30)
        code, _, err = finish(cli(*args))
    assert kills == 2 and code == 0, err
    records = {}
    for line in out.read_bytes().splitlines():
        record = orjson.loads(line)
        records[record["custom_id"]] = record  # the last line wins
    assert len(records) == n
    named = set()
    for i, job in enumerate(jobs):
        data = records[f"sku/{i}"]["response"]["body"]["data"]
        assert len(data) == job["body"]["n"]
        for k, item in enumerate(data):
            assert (tmp_path / item["file"]).read_bytes() == image_bytes(f"item {i}", k)
            named.add(item["file"])
    folder = tmp_path / "out.images"
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue  # a temporary file a kill left: never under a final name
        stem, k = path.name.split(".")[0].rsplit("-", 1)
        i = int(stem.split("_")[1].split("-")[0])
        assert path.read_bytes() == image_bytes(f"item {i}", int(k))  # complete, never partial
    assert safe_stem("sku/0") in {p.name.rsplit("-", 1)[0] for p in folder.iterdir()}


@pytest.mark.slow
def test_the_cli_takes_images_dir_inline_images_and_ipm_and_estimate_counts_images(tmp_path):
    import shutil
    from tests.conftest import ROOT
    shutil.copytree(ROOT / "examples" / "images", tmp_path / "images")
    shutil.copy(ROOT / "examples" / "every-endpoint.jsonl", tmp_path / "jobs.jsonl")
    with run_in_thread(SimConfig(ipm=100)) as base_url:
        code, _, err = finish(cli("run", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                                  "--base-url", base_url, "--no-progress", "--ipm", "100",
                                  "--images-dir", str(tmp_path / "pictures"), "--inline-images"))
    assert code == 0, err
    assert "images: 8 saved as files" in err
    # a run of seconds gets no per-minute rate (issue 21): its image models say their images
    assert re.search(r"dall-e-\d: \d+ images", err) and "IPM" not in err
    lines = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    [gpt] = [x for x in lines if x["custom_id"] == "image-gpt"]
    item = gpt["response"]["body"]["data"][0]
    assert item["file"].startswith("pictures/") and item["file"].endswith(".webp") and "b64_json" in item
    assert len(list((tmp_path / "pictures").iterdir())) == 8
    code, out, err = finish(cli("estimate", str(tmp_path / "jobs.jsonl"), "--ipm", "4", "--json"))
    assert code == 0, err
    estimate = orjson.loads(out)
    assert estimate["images"] == 8 and estimate["limits"]["ipm"] == 4
