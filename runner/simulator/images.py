"""The simulator's image endpoints: generations (JSON), edits and variations (multipart), with the
service's per-model validation, and images that are small valid files derived from the prompt.

Models and what they take (as the service documents it):

    dall-e-2     n 1..10; size 256x256 / 512x512 / 1024x1024; response_format url | b64_json;
                 generations, edits (one PNG `image`, optional `mask`), variations (one `image`)
    dall-e-3     n must be 1 ("You must provide n=1 for this model."); size 1024x1024 / 1792x1024 /
                 1024x1792; quality standard | hd; style; generations only; a `revised_prompt`
    gpt-image-1  n 1..10; size 1024x1024 / 1536x1024 / 1024x1536 / auto; quality low | medium |
                 high | auto; output_format png | jpeg | webp; always answers `b64_json` (a
                 `response_format` is refused); edits take up to 16 images (`image[]`); `usage`
                 in tokens

`image_bytes(seed, index, fmt)` is the file a test expects for image `index` of a request whose
prompt (plus the sha256 of its uploads) is `seed`: an 8x8 PNG, a baseline JPEG or a lossless WebP
of one colour from the seed's sha256, carrying the seed's hash in a comment or text chunk so no two
seeds share bytes (all three decode to the expected colour in Pillow 13, checked by hand when
written; Pillow is not a dependency, the PNG is checked by a test). `url` answers point at the simulator itself (`/sim-images/NAME`) and expire
after `SimConfig.image_url_ttl_s` (403 then, as an expired signed URL does).
"""
from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.simulator.answers import text_tokens
from runner.simulator.parsing import bad_request

GENERATIONS, EDITS, VARIATIONS = "images/generations", "images/edits", "images/variations"
MAX_N = 10
MAX_EDIT_IMAGES = 16
SIZES = {
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "gpt-image-1": ("1024x1024", "1536x1024", "1024x1536", "auto"),
}
QUALITIES = {"dall-e-2": ("standard",), "dall-e-3": ("standard", "hd"),
             "gpt-image-1": ("low", "medium", "high", "auto")}
FORMATS = ("png", "jpeg", "webp")
GPT_IMAGE_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160, "auto": 1056}
FIELDS = {
    GENERATIONS: frozenset({"model", "prompt", "n", "size", "quality", "response_format", "style",
                            "user", "background", "moderation", "output_format",
                            "output_compression"}),
    EDITS: frozenset({"model", "prompt", "image", "image[]", "mask", "n", "size", "quality",
                      "response_format", "user", "background", "output_format",
                      "output_compression", "input_fidelity"}),
    VARIATIONS: frozenset({"model", "image", "n", "size", "response_format", "user"}),
}


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """A validated image request: `seed` (prompt + sha256 of each upload) makes its images."""

    kind: str
    model: str
    seed: str
    n: int
    size: str
    quality: str
    fmt: str
    b64: bool
    prompt: str = ""
    uploads: int = 0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_image_request(kind: str, fields: Mapping[str, Any], files: Mapping[str, list[bytes]],
                        deployment: str | None) -> ImageRequest:
    """Validate like the service; `fields` the JSON body or the multipart text fields, `files`
    the multipart uploads by field name (`image[]` counts as `image`)."""
    unknown = sorted(set(fields) - FIELDS[kind])
    if unknown:
        raise bad_request(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    # Azure: the deployment names the budget; the model it runs is the body's, or the
    # deployment's name when that is a model's, else dall-e-3 (Azure's image deployments)
    model = fields.get("model") or (deployment if deployment in SIZES else None) or \
        ("dall-e-3" if deployment else "dall-e-2")
    if model not in SIZES:
        raise bad_request(f"Invalid value for 'model': '{model}'.", "model", "invalid_value")
    if kind == VARIATIONS and model != "dall-e-2":
        raise bad_request("Variations are only supported for dall-e-2.", "model", "invalid_value")
    if kind == EDITS and model == "dall-e-3":
        raise bad_request("Edits are not supported for dall-e-3.", "model", "invalid_value")
    prompt = fields.get("prompt")
    if kind != VARIATIONS and (not isinstance(prompt, str) or not prompt):
        raise bad_request("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    n = _int(fields.get("n", 1), "n")
    if model == "dall-e-3" and n != 1:
        raise bad_request("You must provide n=1 for this model.")  # as the service words it: no param or code
    if not 1 <= n <= MAX_N:
        raise bad_request(f"Invalid 'n': expected a value between 1 and {MAX_N}, got {n}.", "n",
                   "invalid_value")
    size = fields.get("size") or SIZES[model][-1 if model == "gpt-image-1" else 2 if model == "dall-e-2" else 0]
    if size not in SIZES[model]:
        raise bad_request(f"Invalid value: '{size}'. Supported values are: "
                   f"{', '.join(repr(s) for s in SIZES[model])}.", "size", "invalid_value")
    quality = fields.get("quality") or ("auto" if model == "gpt-image-1" else "standard")
    if quality not in QUALITIES[model]:
        raise bad_request(f"Invalid value: '{quality}'. Supported values are: "
                   f"{', '.join(repr(q) for q in QUALITIES[model])}.", "quality", "invalid_value")
    fmt = fields.get("output_format") or "png"
    if model != "gpt-image-1" and "output_format" in fields:
        raise bad_request("output_format is only supported for gpt-image-1.", "output_format",
                   "invalid_value")
    if fmt not in FORMATS:
        raise bad_request(f"Invalid value: '{fmt}'. Supported values are: 'png', 'jpeg' and 'webp'.",
                   "output_format", "invalid_value")
    response_format = fields.get("response_format")
    if model == "gpt-image-1" and response_format is not None:
        raise bad_request("Unknown parameter: 'response_format'.", "response_format", "unknown_parameter")
    if response_format not in (None, "url", "b64_json"):
        raise bad_request(f"Invalid value: '{response_format}'. Supported values are: 'url' and "
                   "'b64_json'.", "response_format", "invalid_value")
    uploads: list[bytes] = []
    if kind != GENERATIONS:
        images = files.get("image", [])
        if not images:
            raise bad_request("Missing required parameter: 'image'.", "image", "missing_required_parameter")
        limit = MAX_EDIT_IMAGES if model == "gpt-image-1" else 1
        if len(images) > limit:
            raise bad_request(f"Too many images: at most {limit} for {model}.", "image", "invalid_value")
        for data in images:
            if not data.startswith((b"\x89PNG", b"\xff\xd8\xff", b"RIFF")):
                raise bad_request("Invalid image file or mode for image 1, please check your image file.",
                           "image", "invalid_image_format")
        uploads = images + files.get("mask", [])
    seed = (prompt or "") + "".join("|" + _sha(u) for u in uploads)
    return ImageRequest(kind, model, seed, n, size, quality, fmt,
                        b64=model == "gpt-image-1" or response_format == "b64_json",
                        prompt=prompt or "", uploads=len(uploads))


def _int(value: Any, name: str) -> int:
    if isinstance(value, str) and value.isdigit():  # multipart fields are text
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    return value


def image_usage(req: ImageRequest) -> dict[str, Any]:
    """gpt-image-1's token `usage`: the prompt's tokens (+ 65 per uploaded image) in, a fixed
    number per image of its quality out (OpenAI bills gpt-image-1 by these tokens)."""
    text = text_tokens(req.prompt)
    image_in = 65 * req.uploads
    out = GPT_IMAGE_OUTPUT_TOKENS[req.quality] * req.n
    return {"input_tokens": text + image_in, "output_tokens": out,
            "total_tokens": text + image_in + out,
            "input_tokens_details": {"text_tokens": text, "image_tokens": image_in}}


# -- the image files -----------------------------------------------------------------------------

def image_bytes(seed: str, index: int, fmt: str = "png") -> bytes:
    """Image `index` of the request seeded `seed` (see the module docstring)."""
    tag = _sha(f"{seed}#{index}".encode())
    r, g, b = bytes.fromhex(tag[:6])
    if fmt == "jpeg":
        return _jpeg(r, tag.encode())
    if fmt == "webp":
        return _webp(r, g, b, tag)
    return _png(r, g, b, tag.encode())


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(r: int, g: int, b: int, text: bytes) -> bytes:
    rows = b"".join(b"\x00" + bytes((r, g, b)) * 8 for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + _chunk(b"tEXt", b"Comment\x00" + text) + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


def _jpeg(level: int, text: bytes) -> bytes:
    """A baseline 8x8 greyscale JPEG of one level: one block, DC only (quantisation 1)."""
    def segment(marker: int, data: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(data) + 2) + data
    dqt = b"\x00" + b"\x01" * 64
    sof = struct.pack(">BHHB", 8, 8, 8, 1) + b"\x01\x11\x00"
    dc_counts = [0, 0, 0, 12] + [0] * 12  # categories 0..11, each a 4-bit code
    dht_dc = b"\x00" + bytes(dc_counts) + bytes(range(12))
    dht_ac = b"\x10" + bytes([1] + [0] * 15) + b"\x00"  # only EOB, code "0"
    sos = b"\x01\x01\x00\x00\x3f\x00"
    diff = (level - 128) * 8
    category = abs(diff).bit_length()
    extra = diff if diff >= 0 else diff - 1 + (1 << category)
    bits = format(category, "04b") + (format(extra, f"0{category}b") if category else "") + "0"
    bits += "1" * (-len(bits) % 8)
    scan = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    return (b"\xff\xd8" + segment(0xFE, text) + segment(0xDB, dqt) + segment(0xC0, sof)
            + segment(0xC4, dht_dc) + segment(0xC4, dht_ac) + segment(0xDA, sos) + scan
            + b"\xff\xd9")


def _webp(r: int, g: int, b: int, tag: str) -> bytes:
    """A 1x1 lossless WebP (VP8L) whose one colour is written as one-symbol prefix codes (the
    simple format has no room for a comment: seeds differ by colour, 24 bits of the hash)."""
    bits: list[int] = []

    def put(value: int, count: int) -> None:
        bits.extend((value >> i) & 1 for i in range(count))

    put(0, 14)  # width - 1
    put(0, 14)  # height - 1
    put(0, 1)   # alpha not used
    put(0, 3)   # version
    put(0, 1)   # no transform
    put(0, 1)   # no colour cache
    put(0, 1)   # no meta prefix codes
    for symbol in (g, r, b, 255):  # green, red, blue, alpha: one 8-bit symbol each
        put(1, 1); put(0, 1); put(1, 1); put(symbol, 8)
    put(1, 1); put(0, 1); put(0, 1); put(0, 1)  # distance: one 1-bit symbol 0
    bits.extend([0] * (-len(bits) % 8))
    data = b"\x2f" + bytes(sum(bits[i + k] << k for k in range(8)) for i in range(0, len(bits), 8))
    vp8l = b"VP8L" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")
    body = b"WEBP" + vp8l
    return b"RIFF" + struct.pack("<I", len(body)) + body


def image_answer(req: ImageRequest, *, created: int, url_for: Any) -> dict[str, Any]:
    """The 200 body: `data` of `n` images as `b64_json` or as `url`s (`url_for(bytes, fmt)`)."""
    data = []
    for i in range(req.n):
        raw = image_bytes(req.seed, i, req.fmt)
        item: dict[str, Any] = ({"b64_json": base64.b64encode(raw).decode()} if req.b64
                                else {"url": url_for(raw, req.fmt)})
        if req.model == "dall-e-3":
            item["revised_prompt"] = f"A detailed rendering of: {req.prompt}"
        data.append(item)
    body: dict[str, Any] = {"created": created, "data": data}
    if req.model == "gpt-image-1":
        body.update(background="opaque", output_format=req.fmt, quality=req.quality,
                    size=req.size, usage=image_usage(req))
    return body
