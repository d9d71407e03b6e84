"""Packing end to end against the simulator: shuffled and missing choices, poisoned prompts.

The runner and the simulator share one virtual-time loop over real loopback sockets, so the pacing
(RPM 600: ten requests a second) costs no real time and this machine's load changes nothing.
"""

import orjson
import pytest

from runner.live.dispatch import DispatchConfig
from runner.api.endpoint import Endpoint
from runner.live.run import RunConfig, run
from runner.simulator.answers import completion_text, embedding_vector
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator


POISON = "<<poison>>"


def write_jobs(path, n, poison_every=None):
    jobs = []
    for i in range(n):
        if i % 3 == 2:
            text = f"embed me {i}" + (f" {POISON}" if poison_every and i % poison_every == 0 else "")
            job = {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": "text-embedding-3-small", "input": text}}
        else:
            prompt = f"complete me {i}" + (f" {POISON}" if poison_every and i % poison_every == 0 else "")
            job = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                   "body": {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "max_tokens": 8, "n": 2}}
        jobs.append(job)
    path.write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    return jobs




def run_file(loop, tmp_path, name, sim_config, *, pack=True, rpm=600, tpm=1_000_000):
    out = tmp_path / name

    async def main():
        async with Simulator(sim_config, clock=loop.time) as sim:
            stats = await run(RunConfig(input=str(tmp_path / "in.jsonl"), output=out,
                                        endpoint=Endpoint(base_url=sim.base_url, api_key="k"),
                                        rpm=rpm, tpm=tpm, pack=pack,
                                        dispatch=DispatchConfig(max_attempts=10)),
                              progress=False, handle_signals=False, log=lambda m: None)
        return stats, sim.stats

    stats, sim_stats = loop.run_until_complete(main())
    records = {}
    for line in out.read_bytes().splitlines():
        record = orjson.loads(line)
        assert record["custom_id"] not in records, "one line per job"
        records[record["custom_id"]] = record
    return records, stats, sim_stats


def check_own_answer(job, record):
    assert record["error"] is None, record
    body = record["response"]["body"]
    if job["url"] == "/v1/embeddings":
        [item] = body["data"]
        assert item["index"] == 0 and item["embedding"] == pytest.approx(embedding_vector(job["body"]["input"]))
    else:
        prompt = job["body"]["prompt"]
        assert [c["text"] for c in body["choices"]] == [completion_text(prompt, j) for j in range(2)]
        assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["total_tokens"] >= body["usage"]["prompt_tokens"] > 0


def test_packed_jobs_each_get_their_own_answer_through_shuffles_and_missing_choices(loop, tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 600)
    sim = SimConfig(rpm=600, tpm=1_000_000, burst_s=2, fault_rate=0.2, faults=("missing_choice",), seed=4)
    records, stats, server = run_file(loop, tmp_path, "out.jsonl", sim)
    assert stats.exit_code() == 0
    assert len(records) == 600
    for job in jobs:
        check_own_answer(job, records[job["custom_id"]])
    assert stats.requests < 60  # packed: far fewer requests than jobs
    assert server.faults["missing_choice"] > 0 and stats.retries > 0


def test_poisoned_prompts_fail_alone_and_the_rest_of_their_pack_succeeds(loop, tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 900, poison_every=300)  # jobs 0, 300, 600
    sim = SimConfig(rpm=600, tpm=1_000_000, burst_s=2, poison=POISON, seed=2)
    records, stats, _ = run_file(loop, tmp_path, "out.jsonl", sim)
    guilty = {j["custom_id"] for j in jobs if POISON in str(j["body"])}
    assert len(guilty) == 3
    for job in jobs:
        record = records[job["custom_id"]]
        if job["custom_id"] in guilty:
            assert record["error"]["code"] == "context_length_exceeded"
            assert record["response"]["status_code"] == 400
        else:
            check_own_answer(job, record)
    assert stats.exit_code() == 1 and 0 < stats.bisect_requests < 100


def test_no_pack_gives_the_same_results(loop, tmp_path):
    jobs = write_jobs(tmp_path / "in.jsonl", 120)
    sim = SimConfig(rpm=6000, tpm=10_000_000, burst_s=2, seed=9)
    packed, packed_stats, _ = run_file(loop, tmp_path, "packed.jsonl", sim, pack=True, rpm=6000, tpm=10_000_000)
    alone, alone_stats, _ = run_file(loop, tmp_path, "alone.jsonl", sim, pack=False, rpm=6000, tpm=10_000_000)
    assert alone_stats.requests == 120 and packed_stats.requests < 120
    for job in jobs:
        a, b = packed[job["custom_id"]]["response"]["body"], alone[job["custom_id"]]["response"]["body"]
        key = "data" if "data" in a else "choices"
        assert a[key] == b[key]
