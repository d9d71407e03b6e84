"""The simulator's hosted Batch API as a client sees it: Files and Batches endpoints in OpenAI and
Azure shapes, the batch states, validation, expiry, cancel, the enqueued-token limit, listing."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from runner.api.endpoint import Endpoint
from runner.api.transport import aiohttp_sender, open_session
from runner.batch.client import BatchClient
from runner.errors import APIError
from runner.simulator.batches import BatchConfig
from runner.simulator.answers import completion_text
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator


def chat_line(i, url="/v1/chat/completions", model="gpt-4o-mini", text=None):
    body = {"model": model, "messages": [{"role": "user", "content": text or f"q{i}"}], "max_tokens": 5}
    return orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}) + b"\n"


def with_client(loop, batch_config, fn, *, sim_config=SimConfig(), azure=False):
    async def main():
        async with Simulator(sim_config, clock=loop.time, batch=batch_config) as sim:
            endpoint = (Endpoint(base_url=sim.azure_endpoint, api_key="k", azure=True,
                                 api_version="2024-10-21") if azure
                        else Endpoint(base_url=sim.base_url, api_key="k"))
            async with open_session(max_connections=4) as session:
                return await fn(sim, BatchClient(aiohttp_sender(session), endpoint))
    return loop.run_until_complete(main())


async def wait_final(client, batch_id):
    while True:
        batch = await client.get(batch_id)
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        await asyncio.sleep(0.5)


def lines_of(data):
    return {x["custom_id"]: x for x in map(orjson.loads, data.splitlines())}


def test_a_batch_goes_validating_in_progress_finalizing_completed_with_each_line_answered(loop):
    async def scenario(sim, client):
        file = await client.upload("in.jsonl", b"".join(chat_line(i) for i in range(5)))
        assert (file["object"], file["purpose"], file["bytes"]) == ("file", "batch", file["bytes"])
        batch = await client.create(file["id"], "/v1/chat/completions", {"k": "v"})
        seen = [batch["status"]]
        while seen[-1] != "completed":
            await asyncio.sleep(0.1)
            status = (await client.get(batch["id"]))["status"]
            if status != seen[-1]:
                seen.append(status)
        done = await client.get(batch["id"])
        out = lines_of(await client.content(done["output_file_id"]))
        return seen, done, out

    seen, done, out = with_client(loop, BatchConfig(lines_per_s=10, validate_s=1, finalize_s=1), scenario)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert done["metadata"] == {"k": "v"} and done["error_file_id"] is None
    for i in range(5):
        body = out[f"r{i}"]["response"]["body"]
        assert out[f"r{i}"]["response"]["status_code"] == 200
        assert body["choices"][0]["message"]["content"] == completion_text(f"q{i}", 0)


def test_poison_and_faults_go_to_the_error_file_as_live_answers_would(loop):
    async def scenario(sim, client):
        data = chat_line(0, text="fine") + chat_line(1, text="has POISON")
        file = await client.upload("in.jsonl", data)
        batch = await wait_final(client, (await client.create(file["id"], "/v1/chat/completions", {}))["id"])
        return batch, lines_of(await client.content(batch["error_file_id"]))

    batch, errors = with_client(loop, BatchConfig(), scenario, sim_config=SimConfig(poison="POISON"))
    assert batch["status"] == "completed" and batch["request_counts"]["failed"] == 1
    assert errors["r1"]["response"]["status_code"] == 400
    assert errors["r1"]["response"]["body"]["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("config, data, code", [
    (BatchConfig(invalid_marker="BAD"), chat_line(0) + chat_line(1, text="BAD"), "invalid_request"),
    (BatchConfig(), chat_line(0) + chat_line(0), "duplicate_custom_id"),
    (BatchConfig(), chat_line(0) + b"{not json\n", "invalid_json_line"),
    (BatchConfig(), chat_line(0) + chat_line(1, model="gpt-4o"), "mismatched_model"),
    (BatchConfig(), chat_line(0) + chat_line(1, url="/v1/embeddings"), "invalid_url"),
])
def test_validation_fails_the_batch_naming_the_bad_line(loop, config, data, code):
    async def scenario(sim, client):
        file = await client.upload("in.jsonl", data)
        return await wait_final(client, (await client.create(file["id"], "/v1/chat/completions", {}))["id"])

    batch = with_client(loop, config, scenario)
    assert batch["status"] == "failed" and batch["output_file_id"] is None
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [(code, 2)]


@pytest.mark.parametrize("config, code", [(BatchConfig(max_requests=2), "too_many_requests"),
                                          (BatchConfig(max_bytes=200), "file_too_large")])
def test_a_file_over_the_limits_fails_validation(loop, config, code):
    async def scenario(sim, client):
        file = await client.upload("in.jsonl", b"".join(chat_line(i) for i in range(3)))
        return await wait_final(client, (await client.create(file["id"], "/v1/chat/completions", {}))["id"])

    batch = with_client(loop, config, scenario)
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == code


def test_expiry_and_cancel_return_the_finished_lines_and_mark_the_rest(loop):
    async def scenario(sim, client):
        data = b"".join(chat_line(i) for i in range(10))
        f1 = await client.upload("a.jsonl", data)
        expired = await wait_final(client, (await client.create(f1["id"], "/v1/chat/completions", {}))["id"])
        f2 = await client.upload("b.jsonl", data)
        b2 = await client.create(f2["id"], "/v1/chat/completions", {})
        await asyncio.sleep(2.2)  # validated, two lines answered
        assert (await client.cancel(b2["id"]))["status"] == "cancelling"
        cancelled = await wait_final(client, b2["id"])
        return [(b, lines_of(await client.content(b["output_file_id"])),
                 lines_of(await client.content(b["error_file_id"]))) for b in (expired, cancelled)]

    (expired, e_out, e_err), (cancelled, c_out, c_err) = with_client(
        loop, BatchConfig(lines_per_s=2, validate_s=1, expire_after_lines=4), scenario)
    assert expired["status"] == "expired" and len(e_out) == 4 and len(e_err) == 6
    assert {x["error"]["code"] for x in e_err.values()} == {"batch_expired"}
    assert cancelled["status"] == "cancelled" and 0 < len(c_out) < 4
    assert {x["error"]["code"] for x in c_err.values()} == {"batch_cancelled"}
    assert all(x["response"] is None for x in c_err.values())


def test_the_enqueued_token_limit_fails_a_batch_that_would_go_over_it(loop):
    async def scenario(sim, client):
        data = b"".join(chat_line(i) for i in range(10))  # 10 x 6 tokens
        f1, f2 = await client.upload("a", data), await client.upload("b", data)
        b1 = await client.create(f1["id"], "/v1/chat/completions", {})
        await asyncio.sleep(1.5)  # b1 in progress
        b2 = await wait_final(client, (await client.create(f2["id"], "/v1/chat/completions", {}))["id"])
        return await wait_final(client, b1["id"]), b2

    first, second = with_client(loop, BatchConfig(lines_per_s=1, enqueued_token_limit=100), scenario)
    assert first["status"] == "completed" and second["status"] == "failed"
    error = second["errors"]["data"][0]
    assert error["code"] == "token_limit_exceeded" and "Limit: 100 enqueued tokens" in error["message"]


def test_listing_pages_newest_first_with_after_and_limit(loop):
    async def scenario(sim, client):
        file = await client.upload("a", chat_line(0))
        ids = [(await client.create(file["id"], "/v1/chat/completions", {"n": str(i)}))["id"]
               for i in range(5)]
        pages, after = [], None
        while True:
            page = await client._json("GET", "/batches", query={"limit": "2", **({"after": after} if after else {})})
            pages.append([b["id"] for b in page["data"]])
            if not page["has_more"]:
                return ids, pages
            after = page["last_id"]

    ids, pages = with_client(loop, BatchConfig(), scenario)
    assert pages == [ids[::-1][0:2], ids[::-1][2:4], ids[::-1][4:]]


def test_azure_shapes_need_an_api_version_and_take_urls_without_v1(loop):
    async def scenario(sim, client):
        line = chat_line(0, url="/chat/completions", model="my-deployment")
        file = await client.upload("a", line)
        assert file["status"] == "pending"  # Azure processes an upload before a batch may use it
        try:
            await client.create(file["id"], "/v1/chat/completions", {})
            raise AssertionError("a batch over a pending file was accepted")
        except APIError as e:
            assert e.status == 400 and "not processed yet" in str(e)
        while (await client.file(file["id"]))["status"] != "processed":
            await asyncio.sleep(0.25)
        batch = await wait_final(client, (await client.create(file["id"], "/v1/chat/completions", {}))["id"])
        missing = None
        try:
            await BatchClient(client._send, Endpoint(base_url=sim.azure_endpoint, api_key="k", azure=True,
                                                     api_version="x")).get("nope")
        except APIError as e:
            missing = e.status
        return batch, missing

    batch, missing = with_client(loop, BatchConfig(), scenario, azure=True)
    assert batch["endpoint"] == "/chat/completions" and batch["status"] == "completed"
    assert missing == 404


def test_files_can_be_read_back_and_deleted(loop):
    async def scenario(sim, client):
        file = await client.upload("a.jsonl", chat_line(0))
        content = await client.content(file["id"])
        listed = [f["filename"] for f in (await client.files())["data"]]
        await client.delete_file(file["id"])
        try:
            await client.content(file["id"])
        except APIError as e:
            return content, listed, e.status

    content, listed, status = with_client(loop, BatchConfig(), scenario)
    assert content == chat_line(0) and listed == ["a.jsonl"] and status == 404


def test_a_job_packed_into_two_batches_under_different_line_ids_shows_as_paid_twice(loop):
    def pack(line_id, prompts):
        body = {"model": "gpt-3.5-turbo-instruct", "prompt": prompts, "max_tokens": 4}
        return orjson.dumps({"custom_id": line_id, "method": "POST", "url": "/v1/completions",
                             "body": body}) + b"\n"

    async def scenario(sim, client):
        for data in (pack("runner-pack-1-a", ["pa", "pb"]), pack("runner-pack-7-b", ["pb", "pc"])):
            file = await client.upload("in.jsonl", data)
            await wait_final(client, (await client.create(file["id"], "/v1/completions", {}))["id"])
        return sim.batches.stats

    stats = with_client(loop, BatchConfig(lines_per_s=10, validate_s=1, finalize_s=1), scenario)
    assert not any(len(ids) > 1 for ids in stats.succeeded.values())  # per line: invisible
    twice = {key: ids for key, ids in stats.paid.items() if len(ids) > 1}
    assert list(twice) == ['completions "pb"'] and len(set(twice['completions "pb"'])) == 2
    assert len(stats.paid) == 3
