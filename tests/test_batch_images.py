"""Image jobs through `--via batch` against the simulator's Batch API, on virtual time: each image
a file of its own with the right bytes (saved by the live path's `ImageStore`), result lines
naming the files, never an earlier file overwritten, edits sent as JSON data URLs, variations
refused by file and line, and a kill during collect that a rerun finishes without redoing
anything."""
from __future__ import annotations

import base64
import hashlib
import shutil
from collections import Counter

import orjson
import pytest

from runner.exit_codes import EXIT_OK, EXIT_SOME_FAILED
from runner.files.images import safe_stem
from runner.simulator.batches import BatchConfig
from runner.simulator.images import image_bytes
from runner.simulator.config import SimConfig
from tests.conftest import ROOT
from tests.test_batch_e2e import Killed, ran_twice, run, sim_factory  # noqa: F401 (fixture)
from tests.test_e2e import read_results


def write(path, jobs):
    path.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))


def gen(i, **body):
    return {"custom_id": f"product/{i}", "method": "POST", "url": "/v1/images/generations",
            "body": {"model": "gpt-image-1", "prompt": f"a red chair, view {i}", "n": 1 + i % 2,
                     "quality": "low", **body}}


def last_lines(tmp_path):
    return {r["custom_id"]: r for r in read_results(tmp_path / "out.jsonl")}


def assert_files(tmp_path, record, seed, fmt="png"):
    data = record["response"]["body"]["data"]
    for k, item in enumerate(data):
        assert "b64_json" not in item
        assert (tmp_path / item["file"]).read_bytes() == image_bytes(seed, k, fmt)
    return [item["file"] for item in data]


def test_generations_via_batch_become_files_with_their_own_bytes_and_lines_hold_paths(
        loop, tmp_path, sim_factory):
    jobs = [gen(i, output_format=("png", "jpeg", "webp")[i % 3]) for i in range(12)]
    write(tmp_path / "in.jsonl", jobs)
    sim = sim_factory(SimConfig(fault_rate=0.2, faults=("500",), seed=3))
    stats = run(loop, sim, tmp_path, max_attempts=10, max_requests=5)
    assert stats.exit_code() == EXIT_OK and stats.images == sum(j["body"]["n"] for j in jobs)
    lines = last_lines(tmp_path)
    named = []
    for i, job in enumerate(jobs):
        fmt = job["body"]["output_format"]
        files = assert_files(tmp_path, lines[job["custom_id"]], job["body"]["prompt"], fmt)
        assert len(files) == job["body"]["n"]
        assert all(f.startswith(f"out.images/{safe_stem(job['custom_id'])}-") for f in files)
        named += files
    assert len(set(named)) == len(named) == len(list((tmp_path / "out.images").iterdir()))
    assert {b["endpoint"] for b in sim.batches.batches.values()} == {"/v1/images/generations"}
    assert stats.model_images["gpt-image-1"] == stats.images
    assert not ran_twice(sim)


def test_url_answers_are_downloaded_and_images_dir_and_inline_images_are_honoured(
        loop, tmp_path, sim_factory):
    jobs = [{"custom_id": f"d{i}", "method": "POST", "url": "/v1/images/generations",
             "body": {"model": "dall-e-2", "prompt": f"dog {i}", "size": "256x256",
                      "response_format": "url" if i % 2 else "b64_json"}} for i in range(6)]
    write(tmp_path / "in.jsonl", jobs)
    sim = sim_factory(SimConfig(download_fault_rate=0.2, seed=5))
    stats = run(loop, sim, tmp_path, images_dir=tmp_path / "pics", inline_images=True)
    assert stats.exit_code() == EXIT_OK
    lines = last_lines(tmp_path)
    for i, job in enumerate(jobs):
        [item] = lines[job["custom_id"]]["response"]["body"]["data"]
        assert item["file"].startswith("pics/")
        assert (tmp_path / item["file"]).read_bytes() == image_bytes(f"dog {i}", 0)
        assert ("url" if i % 2 else "b64_json") in item  # inline: the answer as the API sent it
    assert len(list((tmp_path / "pics").iterdir())) == 6


def test_a_rerun_writes_beside_earlier_files_never_over_them(loop, tmp_path, sim_factory):
    jobs = [gen(i) for i in range(4)]
    write(tmp_path / "in.jsonl", jobs)
    sim = sim_factory()
    assert run(loop, sim, tmp_path).exit_code() == EXIT_OK
    folder = tmp_path / "out.images"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for p in folder.iterdir():  # an earlier file that differs must survive the rerun untouched
        p.chmod(0o644)
        p.write_bytes(b"edited by hand " + p.read_bytes())
    edited = {p.name: p.read_bytes() for p in folder.iterdir()}
    (tmp_path / "out.jsonl").unlink()  # every job runs again
    assert run(loop, sim, tmp_path).exit_code() == EXIT_OK
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {k: after[k] for k in edited} == edited  # nothing overwritten
    assert len(after) == 2 * len(before)
    for job in jobs:
        files = assert_files(tmp_path, last_lines(tmp_path)[job["custom_id"]], job["body"]["prompt"])
        assert all(".1." in f for f in files)


def test_edits_go_into_batch_lines_as_data_urls_and_their_images_come_back(
        loop, tmp_path, sim_factory, monkeypatch):
    from runner.simulator import batches as sim_batches
    shutil.copytree(ROOT / "examples" / "images", tmp_path / "pics")
    chair = (tmp_path / "pics" / "chair.png").read_bytes()
    mask = (tmp_path / "pics" / "mask.png").read_bytes()
    jobs = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/images/edits",
             "body": {"model": "gpt-image-1", "prompt": f"paint it {i}", "quality": "low",
                      "image": ["pics/chair.png", str(tmp_path / "pics" / "chair.png")]
                      if i % 2 else "pics/chair.png", "mask": "pics/mask.png"}} for i in range(4)]
    write(tmp_path / "in.jsonl", jobs)
    sent = []
    real_refs = sim_batches._image_refs
    monkeypatch.setattr(sim_batches, "_image_refs",
                        lambda tail, body, files: (sent.append(body), real_refs(tail, body, files))[1])
    sim = sim_factory()
    assert run(loop, sim, tmp_path).exit_code() == EXIT_OK
    lines = last_lines(tmp_path)
    for i, job in enumerate(jobs):
        images = [chair, chair] if i % 2 else [chair]
        seed = f"paint it {i}" + "".join("|" + hashlib.sha256(u).hexdigest() for u in images + [mask])
        assert_files(tmp_path, lines[job["custom_id"]], seed)
    assert {b["endpoint"] for b in sim.batches.batches.values()} == {"/v1/images/edits"}
    as_url = "data:image/png;base64," + base64.b64encode(chair).decode()
    assert len(sent) == 4 and all("image" not in body for body in sent)
    assert sorted(len(body["images"]) for body in sent) == [1, 1, 2, 2]
    assert all(ref == {"image_url": as_url} for body in sent for ref in body["images"])
    assert all(body["mask"] == {"image_url": "data:image/png;base64," + base64.b64encode(mask).decode()}
               for body in sent)


def test_the_simulators_batch_edits_take_file_ids_and_refuse_multipart_style_paths(loop, sim_factory):
    from runner.simulator.batches import _other_answer
    sim = sim_factory()
    png = image_bytes("source", 0)
    sim.batches.contents["file-img"] = png
    ok = {"model": "gpt-image-1", "prompt": "p", "images": [{"file_id": "file-img"}]}
    status, body = _other_answer(sim.service, "images/edits", ok, sim.batches.contents)
    assert status == 200
    assert base64.b64decode(body["data"][0]["b64_json"]) == \
        image_bytes("p|" + hashlib.sha256(png).hexdigest(), 0)
    for bad in ({**ok, "images": [{"file_id": "file-none"}]}, {**ok, "images": []},
                {**ok, "images": [{"image_url": "https://example.com/a.png"}]},
                {"model": "gpt-image-1", "prompt": "p", "image": "a.png"}):
        status, body = _other_answer(sim.service, "images/edits", bad, sim.batches.contents)
        assert status == 400 and body["error"]["message"], bad


def test_a_missing_image_to_edit_and_variations_are_bad_lines_by_file_and_line(
        loop, tmp_path, sim_factory):
    shutil.copytree(ROOT / "examples" / "images", tmp_path / "pics")
    jobs = [gen(0),
            {"custom_id": "var", "method": "POST", "url": "/v1/images/variations",
             "body": {"model": "dall-e-2", "image": "pics/chair.png"}},
            {"custom_id": "gone", "method": "POST", "url": "/v1/images/edits",
             "body": {"model": "gpt-image-1", "prompt": "x", "image": "pics/nope.png"}}]
    write(tmp_path / "in.jsonl", jobs)
    sim = sim_factory()
    logs = []
    stats = run(loop, sim, tmp_path, log=logs.append)
    assert stats.exit_code() == EXIT_SOME_FAILED and stats.bad_lines == 2
    name = str(tmp_path / "in.jsonl")
    assert any(m.startswith(f"{name}:2: /v1/images/variations is not taken by the Batch API")
               and "--via live" in m for m in logs), logs
    assert any(m.startswith(f"{name}:3: body.image: cannot read 'pics/nope.png'") for m in logs), logs
    assert set(last_lines(tmp_path)) == {"product/0"}
    assert {b["endpoint"] for b in sim.batches.batches.values()} == {"/v1/images/generations"}


@pytest.mark.parametrize("kill_at", [1, 4, 7])
def test_killed_during_collect_the_rerun_redoes_nothing_and_leaves_no_half_image(
        loop, tmp_path, sim_factory, monkeypatch, kill_at):
    from runner.files import images as images_module
    jobs = [gen(i) for i in range(8)]
    write(tmp_path / "in.jsonl", jobs)
    sim = sim_factory()
    real_write = images_module.write_new_file
    writes = Counter()

    def write_then_die(directory, stem, ext, data, **kwargs):
        writes["n"] += 1
        if writes["n"] == kill_at:  # the image is complete under its name, its line not written
            real_write(directory, stem, ext, data, **kwargs)
            raise Killed
        return real_write(directory, stem, ext, data, **kwargs)

    monkeypatch.setattr(images_module, "write_new_file", write_then_die)
    # and a temporary file a kill left half written: never taken for an image
    (tmp_path / "out.images").mkdir()
    (tmp_path / "out.images" / f".{safe_stem('product/0')}-0.tmp-999999-0badf00d").write_bytes(b"\x89PN")
    with pytest.raises(Killed):
        run(loop, sim, tmp_path)
    monkeypatch.setattr(images_module, "write_new_file", real_write)
    created = sim.batches.stats.created
    stats = run(loop, sim, tmp_path)
    assert stats.exit_code() == EXIT_OK
    assert sim.batches.stats.created == created == 1 and not ran_twice(sim)  # nothing resubmitted
    records = read_results(tmp_path / "out.jsonl")
    assert len(records) == len(jobs)  # one line per job
    images = sum(j["body"]["n"] for j in jobs)
    files = set()
    for job in jobs:
        files.update(assert_files(tmp_path, last_lines(tmp_path)[job["custom_id"]],
                                  job["body"]["prompt"]))
    names = [p.name for p in (tmp_path / "out.images").iterdir()]
    assert len(files) == images and len(names) == images  # the image saved before the kill is reused
    assert not any(".tmp-" in n for n in names)  # the dead process's temporary file swept


def test_batch_prices_halve_per_image_prices_too():
    from runner.report.prices import batch_price_table
    from runner.report.prices import load_prices
    prices = load_prices(None)
    half = batch_price_table(prices)
    assert half.image_price("dall-e-3", "1024x1024", "standard") == \
        pytest.approx(prices.image_price("dall-e-3", "1024x1024", "standard") / 2)
