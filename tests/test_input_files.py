"""Job files as people keep them: compressed (found by their bytes, not their name), through a
FIFO, or not job files at all; run, status and estimate read them alike."""
import bz2
import gzip
import lzma
import os
import random
import threading

import orjson
import pytest

from tests.conftest import run_offline
from runner.api.endpoint import Endpoint
from runner.files.inputs import UnreadableFormat, check_format, input_lines
from runner.live.run import RunConfig, run
from runner.report.estimate import estimate_file
from runner.report.prices import load_prices
from runner.report.status import StatusError, status
from runner.simulator.answers import completion_text, embedding_vector
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator

COMPRESS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


def job_lines(n):
    lines = []
    for i in range(n):
        if i % 2:
            body = {"model": "gpt-3.5-turbo-instruct", "prompt": f"p{i}", "max_tokens": 4}
            url = "/v1/completions"
        else:
            body = {"model": "text-embedding-3-small", "input": f"e{i}"}
            url = "/v1/embeddings"
        lines.append(orjson.dumps({"custom_id": f"j{i}", "method": "POST", "url": url, "body": body}))
    return lines


def assert_each_job_has_its_own_answer(lines, output):
    records = {}
    for raw in output.read_bytes().splitlines():
        record = orjson.loads(raw)
        assert record["custom_id"] not in records, "one line per job"
        records[record["custom_id"]] = record
    assert len(records) == len(lines)
    for raw in lines:
        job = orjson.loads(raw)
        answer = records[job["custom_id"]]["response"]["body"]
        if job["url"] == "/v1/completions":
            assert answer["choices"][0]["text"] == completion_text(job["body"]["prompt"], 0)
        else:
            assert answer["data"][0]["embedding"] == pytest.approx(embedding_vector(job["body"]["input"]))


async def run_quietly(input_path, output, base_url):
    return await run(RunConfig(input=str(input_path), output=output,
                               endpoint=Endpoint(base_url=base_url, api_key="sk-test")),
                     progress=True, handle_signals=False, log=lambda m: None)


@pytest.mark.parametrize("kind", sorted(COMPRESS))
async def test_a_compressed_job_file_runs_whatever_its_name_and_resumes(tmp_path, kind):
    lines = job_lines(60)
    source = tmp_path / "jobs.jsonl"  # no .gz: found by its bytes
    source.write_bytes(COMPRESS[kind](b"\n".join(lines) + b"\n"))
    output = tmp_path / "out.jsonl"
    async with Simulator(SimConfig()) as sim:
        first = await run_quietly(source, output, sim.base_url)
        calls = sim.stats.requests
        second = await run_quietly(source, output, sim.base_url)
    assert first.exit_code() == 0 and first.jobs == 60 and first.bad_lines == 0
    assert second.already_done == 60 and sim.stats.requests == calls
    assert_each_job_has_its_own_answer(lines, output)


async def test_a_gzip_job_file_arriving_through_a_fifo_runs(tmp_path):
    lines = job_lines(40)
    fifo = tmp_path / "jobs.fifo"
    os.mkfifo(fifo)
    data = gzip.compress(b"\n".join(lines))  # no final newline either

    def write():
        with open(fifo, "wb") as f:
            for i in range(0, len(data), 97):  # dribbled, cut anywhere
                f.write(data[i:i + 97])
                f.flush()

    writer = threading.Thread(target=write)
    writer.start()
    output = tmp_path / "out.jsonl"
    async with Simulator(SimConfig()) as sim:
        stats = await run_quietly(fifo, output, sim.base_url)
    writer.join()
    assert stats.exit_code() == 0
    assert_each_job_has_its_own_answer(lines, output)


def test_status_and_estimate_read_a_compressed_job_file(tmp_path):
    lines = job_lines(10)
    source = tmp_path / "jobs.jsonl.gz"
    source.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    output = tmp_path / "out.jsonl"
    output.write_bytes(orjson.dumps({"id": "r", "custom_id": "j0", "error": None,
                                     "response": {"status_code": 200, "body": {}}}) + b"\n")
    report = status(str(source), output)
    assert (report.jobs, report.done, report.bad_lines.count) == (10, 1, 0)
    estimate = estimate_file(str(source), rpm=None, tpm=None, prices=load_prices())
    assert estimate.jobs == 10 and estimate.bad_lines.count == 0


def test_a_zstd_job_file_is_refused_with_a_hint_before_anything_runs(tmp_path):
    source = tmp_path / "jobs.jsonl.zst"
    source.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(100))
    with pytest.raises(UnreadableFormat, match="zstd -d"):
        check_format(str(source))
    with pytest.raises(UnreadableFormat, match="zstd-compressed"):
        list(input_lines(str(source)))


def test_a_gzip_file_cut_short_is_an_unreadable_input_not_a_quiet_end(tmp_path):
    data = gzip.compress(b"\n".join(job_lines(2000)))
    source = tmp_path / "jobs.jsonl.gz"
    source.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableFormat, match="cut short"):
        list(input_lines(str(source)))
    with pytest.raises(StatusError, match="cut short"):
        status(str(source), tmp_path / "out.jsonl")


def test_status_of_random_bytes_is_one_clear_message(tmp_path):
    source = tmp_path / "data.bin"
    source.write_bytes(random.Random(3).randbytes(50_000))
    with pytest.raises(StatusError, match="does not look like a JSONL job file"):
        status(str(source), tmp_path / "out.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["random bytes", "zstd", "zstd on stdin"])
def test_the_cli_exits_2_with_one_clear_message_for_input_it_cannot_use(tmp_path, case):
    source = tmp_path / ("data.bin" if case == "random bytes" else "jobs.jsonl.zst")
    source.write_bytes(random.Random(3).randbytes(50_000) if case == "random bytes"
                       else b"\x28\xb5\x2f\xfd" + os.urandom(1000))
    output = tmp_path / "out.jsonl"
    argument = "-" if case == "zstd on stdin" else str(source)
    proc = run_offline(argument, "-o", str(output), stdin_path=source)
    message = proc.stderr.decode()
    assert proc.returncode == 2, message
    expected = {"random bytes": "is a binary file, not a JSONL job file", "zstd": "zstd -d",
                "zstd on stdin": "zstd -dc FILE | runner run -"}[case]
    assert message.count(expected) == 1, message
    if case == "random bytes":  # refused before the run: one message, not a line per bad line
        assert len(message.strip().splitlines()) == 1, message
    assert not output.exists() or output.read_bytes() == b""


def test_a_tiny_zstd_file_is_refused_before_the_run_and_compressed_files_have_no_line_count(tmp_path):
    from runner.files.inputs import count_lines
    tiny = tmp_path / "tiny.zst"
    tiny.write_bytes(b"\x28\xb5\x2f\xfd\x00")  # shorter than the 6 bytes sniffed
    with pytest.raises(UnreadableFormat, match="zstd"):
        check_format(str(tiny))
    packed = tmp_path / "jobs.jsonl.gz"
    packed.write_bytes(gzip.compress(b"\n".join(job_lines(5))))
    assert count_lines(str(packed)) is None  # progress shows no total rather than decompress twice


def test_a_shards_progress_total_counts_the_lines_of_that_shard_only(tmp_path):
    from jobs.shard import Shard
    from runner.files.inputs import count_lines
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(job_lines(60)) + b"\nnot json\n")  # a bad line goes to shard 1
    totals = [count_lines(str(path), Shard(k, 3).holds) for k in (1, 2, 3)]
    assert sum(totals) == 61 and min(totals) > 5
    held = [sum(1 for line in job_lines(60) if Shard(k, 3).holds(orjson.loads(line)["custom_id"]))
            for k in (1, 2, 3)]
    assert totals == [held[0] + 1, held[1], held[2]]
