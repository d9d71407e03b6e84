"""runner.files.compression: formats recognised by their bytes, streams decompressed in bounded pieces."""
import bz2
import gzip
import lzma
import os

import pytest

from runner.files.compression import CompressionError, Decompressor, decompressed, refusal, sniff

COMPRESS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}
DATA = b"".join(b'{"custom_id": "%d", "body": {}}\n' % i for i in range(3_000)) + os.urandom(3000)


@pytest.mark.parametrize("head, kind", [
    (gzip.compress(b"x", mtime=0)[:6], "gzip"),
    (bz2.compress(b"x")[:6], "bzip2"),
    (lzma.compress(b"x")[:6], "xz"),
    (b"\x28\xb5\x2f\xfd\x00\x00", "zstd"),
    (b"PK\x03\x04\x14\x00", "zip"),
    (b'{"cus', None),
    (b"BZh{", None),  # "BZh" without its block-size digit is text
    (b"", None),
])
def test_formats_are_recognised_by_their_first_bytes(head, kind):
    assert sniff(head) == kind


@pytest.mark.parametrize("kind", sorted(COMPRESS))
@pytest.mark.parametrize("chunk", [1, 13, 65_536, None])
def test_any_chunking_gives_back_the_exact_bytes_including_concatenated_streams(kind, chunk):
    compressed = COMPRESS[kind](DATA) + COMPRESS[kind](b"second stream\n")
    size = chunk or len(compressed)
    chunks = (compressed[i:i + size] for i in range(0, len(compressed), size))
    pieces = list(decompressed(chunks, kind, max_piece=4096))
    assert b"".join(pieces) == DATA + b"second stream\n"
    assert max(map(len, pieces)) <= 4096


def test_a_file_that_inflates_enormously_is_handed_out_in_bounded_pieces():
    bomb = gzip.compress(b"\n" * (16 << 20))  # 16 MiB from about 16 KB
    decoder = Decompressor("gzip", max_piece=1 << 20)
    total = 0
    for piece in decoder.feed(bomb):
        assert len(piece) <= 1 << 20
        total += len(piece)
    decoder.finish()
    assert total == 16 << 20


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_data_cut_short_is_an_error_not_a_silent_end(kind):
    compressed = COMPRESS[kind](DATA)
    with pytest.raises(CompressionError, match="cut short"):
        list(decompressed([compressed[: len(compressed) // 2]], kind, max_piece=4096))


def test_corrupt_data_names_the_format():
    compressed = bytearray(gzip.compress(DATA))
    compressed[20:40] = b"\xff" * 20
    with pytest.raises(CompressionError, match="corrupt gzip data"):
        list(decompressed([bytes(compressed)], "gzip", max_piece=4096))


@pytest.mark.parametrize("kind, hint", [("zstd", "zstd -d jobs.jsonl.zst"), ("zip", "unzip jobs.zip")])
def test_formats_not_read_get_a_message_saying_what_to_do(kind, hint):
    path = "jobs.jsonl.zst" if kind == "zstd" else "jobs.zip"
    message = refusal(kind, path)
    assert path in message and hint in message and "gzip" in message
