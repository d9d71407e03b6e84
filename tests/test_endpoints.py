"""The endpoint table and the pure pieces around it: charges, usage shapes, body checks, file
names, multipart bodies, URLs."""

import pytest

from jobs.endpoints import (
    IMAGES_EDITS, IMAGES_GENERATIONS, IMAGES_VARIATIONS, MODERATIONS, RESPONSES, SPECS, Usage,
    body_problem, images_requested, read_usage, spec_of,
)
from jobs.tokens import rate_limit_charge
from runner.api.endpoint import Endpoint
from runner.api.multipart import multipart_body
from runner.files.images import extension, safe_stem, write_new_file
from runner.simulator.images import image_bytes


def test_every_endpoint_says_how_it_packs_and_what_it_charges():
    packable = {url for url, spec in SPECS.items() if spec.packable}
    assert packable == {"/v1/completions", "/v1/embeddings", MODERATIONS}
    assert {url for url, spec in SPECS.items() if spec.images} == {
        IMAGES_GENERATIONS, IMAGES_EDITS, IMAGES_VARIATIONS}
    assert not SPECS[IMAGES_VARIATIONS].batch and SPECS[RESPONSES].batch
    assert spec_of("https://x/openai/deployments/d/images/edits?api-version=1").url == IMAGES_EDITS


@pytest.mark.parametrize("url, body, charge", [
    (RESPONSES, {"model": "m", "input": "abcdefgh", "max_output_tokens": 100}, 2 + 100),
    (RESPONSES, {"model": "m", "instructions": "abcd", "input": "abcd"}, 2),  # no output bound
    (RESPONSES, {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "abcd"}, {"type": "input_image", "image_url": "x"}]}]}, 1),
    (MODERATIONS, {"input": ["abcd", "abcdefgh"]}, 1 + 2),
    (MODERATIONS, {"input": [{"type": "text", "text": "abcd"}, {"type": "image_url"}]}, 1),
    (IMAGES_GENERATIONS, {"model": "dall-e-2", "prompt": "a" * 400, "n": 3}, 3),  # images
    (IMAGES_GENERATIONS, {"model": "dall-e-3", "prompt": "p"}, 1),
    (IMAGES_EDITS, {"prompt": "p", "image": "x.png", "n": "two"}, 1),
])
def test_the_rate_limit_charge_of_each_new_endpoint(url, body, charge):
    assert rate_limit_charge(url, body) == charge


def test_images_requested_is_n_for_image_endpoints_only():
    assert images_requested(IMAGES_VARIATIONS, {"n": 4}) == 4
    assert images_requested(RESPONSES, {"n": 4}) == 0


@pytest.mark.parametrize("usage, expected", [
    ({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4},
      "completion_tokens_details": {"reasoning_tokens": 2}}, Usage(10, 5, 4, 2)),
    ({"input_tokens": 10, "output_tokens": 5, "input_tokens_details": {"cached_tokens": 4},
      "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15}, Usage(10, 5, 4, 2)),
    ({"input_tokens": 7, "output_tokens": 272, "input_tokens_details": {"text_tokens": 7}}, Usage(7, 272)),
    ({"prompt_tokens": -1, "completion_tokens": "x"}, Usage()),
    (None, Usage()),
])
def test_usage_is_read_in_either_shape(usage, expected):
    assert read_usage(usage) == expected


@pytest.mark.parametrize("url, body, problem", [
    (IMAGES_EDITS, {"prompt": "p"}, "body.image must be a path, or a list of paths"),
    (IMAGES_EDITS, {"prompt": "p", "image": ["a.png", 3]}, "body.image must be"),
    (IMAGES_VARIATIONS, {"image": ["a.png"]}, "body.image must be a path to an image file"),
    (IMAGES_EDITS, {"prompt": "p", "image": "a.png", "mask": 1}, "body.mask must be"),
    (IMAGES_GENERATIONS, {"model": "dall-e-3"}, "body.prompt must be a non-empty string"),
    (RESPONSES, {"model": "m"}, "body.input is missing"),
    (IMAGES_EDITS, {"prompt": "p", "image": ["a.png", "b.png"], "mask": "m.png"}, None),
    (IMAGES_VARIATIONS, {"image": "a.png"}, None),
])
def test_body_problems_a_user_can_fix_in_the_job_line(url, body, problem):
    found = body_problem(url, body)
    assert (found is None) if problem is None else found.startswith(problem)


@pytest.mark.parametrize("custom_id, stem", [
    ("sku-1_a.b", "sku-1_a.b"),
    ("product/1", "product_1-" + __import__("hashlib").sha256(b"product/1").hexdigest()[:8]),
    ("../etc/passwd", "_etc_passwd-" + __import__("hashlib").sha256(b"../etc/passwd").hexdigest()[:8]),
    ("ünï", "_n_-" + __import__("hashlib").sha256("ünï".encode()).hexdigest()[:8]),
])
def test_file_names_are_safe_and_distinct(custom_id, stem):
    assert safe_stem(custom_id) == stem
    assert safe_stem("a/b") != safe_stem("a_b")
    assert len(safe_stem("x" * 500)) == 100 + 9


@pytest.mark.parametrize("data, fmt, ext", [
    (image_bytes("s", 0, "png"), None, "png"), (image_bytes("s", 0, "jpeg"), None, "jpg"),
    (image_bytes("s", 0, "webp"), "png", "webp"), (b"????", "jpeg", "jpg"), (b"????", None, "png"),
])
def test_the_extension_comes_from_the_bytes_first(data, fmt, ext):
    assert extension(data, fmt) == ext


def test_write_new_file_never_replaces_and_leaves_no_temporary_file(tmp_path):
    first = write_new_file(tmp_path / "d", "x-0", "png", b"1")
    second = write_new_file(tmp_path / "d", "x-0", "png", b"2")
    assert (first.name, second.name) == ("x-0.png", "x-0.1.png")
    assert first.read_bytes() == b"1" and second.read_bytes() == b"2"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x-0.1.png", "x-0.png"]


def test_a_multipart_body_carries_fields_and_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNGaaa")
    (tmp_path / "b.png").write_bytes(b"\x89PNGbbb")
    content_type, body = multipart_body(IMAGES_EDITS, {
        "model": "gpt-image-1", "prompt": "p", "n": 2,
        "image": [str(tmp_path / "a.png"), str(tmp_path / "b.png")]}, boundary=b"BB")
    assert content_type == "multipart/form-data; boundary=BB"
    assert b'name="n"\r\n\r\n2\r\n' in body and b'name="prompt"\r\n\r\np\r\n' in body
    assert body.count(b'name="image[]"; filename=') == 2 and b"\x89PNGbbb" in body
    assert body.endswith(b"--BB--\r\n")


def test_azure_urls_for_images_and_responses():
    azure = Endpoint(base_url="https://r.openai.azure.com", api_key="k", azure=True,
                     api_version="2025-04-01-preview", deployments={"dall-e-3": "draw"})
    assert azure.url_for(IMAGES_GENERATIONS, "dall-e-3") == (
        "https://r.openai.azure.com/openai/deployments/draw/images/generations"
        "?api-version=2025-04-01-preview")
    assert azure.url_for(RESPONSES, "gpt-4o") == "https://r.openai.azure.com/openai/v1/responses"


def test_azure_responses_name_the_deployment_in_the_body():
    from jobs.job import Job
    from jobs.packing import single
    azure = Endpoint(base_url="https://r.openai.azure.com", api_key="k", azure=True,
                     api_version="2024-10-21", deployments={"gpt-4o": "prod-4o"})
    job = Job("a", RESPONSES, {"model": "gpt-4o", "input": "hi"}, 1)
    http = azure.build(single(job, 1))
    assert http.url.endswith("/openai/v1/responses") and b'"model":"prod-4o"' in http.body
    assert job.body["model"] == "gpt-4o"  # the job itself is untouched


def test_estimate_counts_images_times_them_by_ipm_and_prices_them_per_image():
    import orjson
    from jobs.estimate import estimate_lines
    from runner.report.prices import packaged_prices
    prices = packaged_prices()
    lines = [orjson.dumps({"custom_id": f"i{i}", "url": IMAGES_GENERATIONS,
                           "body": {"model": "dall-e-3", "prompt": "p", "quality": "hd",
                                    "size": "1792x1024"}}) for i in range(30)]
    lines.append(orjson.dumps({"custom_id": "m", "url": MODERATIONS, "body": {"input": "x"}}))
    est = estimate_lines(lines, "f", counter=lambda model: None, rpm=100, ipm=15,
                         cost=prices.cost, image_price=prices.image_price)
    [dalle, moderation] = est.models
    assert (dalle.images, dalle.requests) == (30, 30)
    assert dalle.minutes(est.budget, est.ipm) == 2.0  # 30 images at 15 a minute
    assert dalle.cost == pytest.approx(30 * 0.12)
    assert moderation.cost == 0.0 and est.to_json()["images"] == 30


def test_the_simulators_png_is_valid_and_holds_the_seeds_colour():
    import hashlib
    import struct
    import zlib
    data = image_bytes("a red chair", 1, "png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + length
    assert struct.unpack(">II", chunks[b"IHDR"][:8]) == (8, 8)
    rows = zlib.decompress(chunks[b"IDAT"])
    assert rows[1:4] == bytes.fromhex(hashlib.sha256(b"a red chair#1").hexdigest()[:6])
    assert image_bytes("a red chair", 1, "png") != image_bytes("a red chair", 0, "png")
