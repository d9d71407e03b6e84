"""Servers that are not OpenAI: lists not taken, `n` ignored, budgets shared by models.

The runner and the in-process simulator share one virtual-time loop over loopback sockets; a
counting `send` records every request and answer, so each test can say how many requests carried
which jobs.
"""
from collections import Counter

import orjson
import pytest

from jobs.results import OutputState, is_transient
from runner.api.endpoint import Endpoint
from runner.api.transport import aiohttp_sender, open_session
from runner.live.capabilities import PACK_FAILURES_TO_STOP
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.report.summary import summary_dict, summary_lines
from runner.simulator.answers import chat_prompt, completion_text, embedding_vector
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator


COMPLETIONS, EMBEDDINGS, CHAT = "/v1/completions", "/v1/embeddings", "/v1/chat/completions"
COMPLETION_MODEL, EMBEDDING_MODEL, CHAT_MODEL = "gpt-3.5-turbo-instruct", "text-embedding-3-small", "gpt-4o-mini"




def completion(i, n=1):
    return {"custom_id": f"c{i}-n{n}", "method": "POST", "url": COMPLETIONS,
            "body": {"model": COMPLETION_MODEL, "prompt": f"complete me {i} n{n}", "max_tokens": 8, "n": n}}


def embedding(i):
    return {"custom_id": f"e{i}", "method": "POST", "url": EMBEDDINGS,
            "body": {"model": EMBEDDING_MODEL, "input": f"embed me {i}"}}


def chat(i, n=1, model=CHAT_MODEL):
    return {"custom_id": f"chat{i}-n{n}-{model}", "method": "POST", "url": CHAT,
            "body": {"model": model, "messages": [{"role": "user", "content": f"ask {i} n{n} {model}"}],
                     "max_tokens": 8, "n": n}}


def prompts_of(url, body):
    """The prompts a request body carries, as the texts that name their jobs."""
    if url == CHAT:
        return [body["messages"][0]["content"]]
    value = body["prompt" if url == COMPLETIONS else "input"]
    return value if isinstance(value, list) else [value]


def job_text(job):
    return prompts_of(job["url"], job["body"])[0]


class Run:
    """One run's records, stats, log, and every request sent: (url path, prompts, status)."""

    def __init__(self, records, stats, log, sent, sim):
        self.records, self.stats, self.log, self.sent, self.sim = records, stats, log, sent, sim

    def packed(self, url):
        return [s for s in self.sent if s[0] == url and len(s[1]) > 1]

    def requests_per_job(self):
        return Counter(text for _, prompts, _ in self.sent for text in prompts)


def run_jobs(loop, tmp_path, jobs, sim_config, *, rpm=600, tpm=1_000_000, max_attempts=6, pack=True,
             retry_failed=False, output="out.jsonl", trust_packs=False):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in jobs))
    out = tmp_path / output
    log, sent = [], []

    async def main():
        async with Simulator(sim_config, clock=loop.time) as sim:
            session = open_session(max_connections=64)
            inner = aiohttp_sender(session)

            async def send(request):
                url = "/v1" + request.url.split("/v1", 1)[1].split("?")[0]
                response = await inner(request)
                sent.append((url, prompts_of(url, orjson.loads(request.body)), response.status))
                return response

            try:
                stats = await run(RunConfig(input=str(tmp_path / "in.jsonl"), output=out,
                                            endpoint=Endpoint(base_url=sim.base_url, api_key="k"),
                                            rpm=rpm, tpm=tpm, pack=pack,
                                            dispatch=DispatchConfig(max_attempts=max_attempts,
                                                                    retry_failed=retry_failed,
                                                                    trust_packs=trust_packs)),
                                  send=send, progress=False, handle_signals=False, log=log.append)
            finally:
                await session.close()
        return stats, sim.stats

    stats, sim_stats = loop.run_until_complete(main())
    records = {}
    for line in out.read_bytes().splitlines():
        record = orjson.loads(line)
        records[record["custom_id"]] = record  # the last line for a job is its result
    return Run(records, stats, log, sent, sim_stats)


def check_own_answer(job, record):
    assert record["error"] is None, record
    body = record["response"]["body"]
    if job["url"] == EMBEDDINGS:
        [item] = body["data"]
        assert item["embedding"] == pytest.approx(embedding_vector(job["body"]["input"]))
    else:
        prompt = job_text(job) if job["url"] == COMPLETIONS else chat_prompt(job["body"]["messages"])
        texts = [c["text"] if "text" in c else c["message"]["content"] for c in body["choices"]]
        assert texts == [completion_text(prompt, j) for j in range(job["body"].get("n", 1))]


# -- list prompts not taken ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["ignore", "error"])
def test_a_server_that_ignores_or_refuses_list_prompts_gets_the_jobs_alone(loop, tmp_path, mode):
    jobs = [completion(i) for i in range(90)] + [embedding(i) for i in range(90)]
    result = run_jobs(loop, tmp_path, jobs, SimConfig(rpm=600, tpm=1_000_000, burst_s=2,
                                                      list_prompts=mode, seed=3))
    assert result.stats.exit_code() == 0
    for job in jobs:
        check_own_answer(job, result.records[job["custom_id"]])
    for url, model in ((COMPLETIONS, COMPLETION_MODEL), (EMBEDDINGS, EMBEDDING_MODEL)):
        assert 1 <= len(result.packed(url)) <= PACK_FAILURES_TO_STOP  # found out within a few requests
        said = [m for m in result.log if m.startswith(f"packing off for {model} ({url})")]
        assert len(said) == 1, result.log  # said once
    assert result.sim.dropped_prompts > 0 if mode == "ignore" else result.sim.by_status[500] > 0
    assert max(result.requests_per_job().values()) <= 1 + PACK_FAILURES_TO_STOP  # no job retried alone
    summary = summary_dict(result.stats, "out.jsonl")
    assert sorted((p["model"], p["url"]) for p in summary["packing_off"]) == [
        (COMPLETION_MODEL, COMPLETIONS), (EMBEDDING_MODEL, EMBEDDINGS)]
    lines = [line for line in summary_lines(result.stats, "out.jsonl") if line.startswith("packing off")]
    assert len(lines) == 2 and all("its jobs were sent alone" in line for line in lines)


def test_a_lane_whose_packs_worked_keeps_packing_through_a_later_500(loop, tmp_path):
    jobs = [completion(i) for i in range(400)]
    sim = SimConfig(rpm=6000, tpm=1_000_000, burst_s=2, fault_rate=0.25, faults=("500",), seed=2)
    result = run_jobs(loop, tmp_path, jobs, sim, rpm=6000)
    assert result.stats.exit_code() == 0 and result.stats.packing_off == []
    for job in jobs:
        check_own_answer(job, result.records[job["custom_id"]])
    packs = result.packed(COMPLETIONS)
    assert packs[0][2] == 200  # the lane's first pack worked ...
    assert [s for s in packs[1:] if s[2] == 500]  # ... so later 500s on packs are ordinary retries
    assert len(packs) == len(result.sent)  # every job still went in a pack


# -- n ignored ---------------------------------------------------------------------------------------

def test_a_server_that_ignores_n_fails_those_jobs_as_n_not_supported_after_one_confirmation(loop, tmp_path):
    """Chose: once a lane has confirmed it ignores n, its later jobs asking n > 1 are not sent at all
    (their answers could not be used); a rerun with --retry-failed sends them again."""
    wants_two = [chat(i, n=2) for i in range(12)] + [completion(i, n=2) for i in range(40)]
    wants_one = [chat(i, n=1) for i in range(12)] + [completion(i, n=1) for i in range(40)]
    jobs = [job for pair in zip(wants_two, wants_one) for job in pair]
    sim = SimConfig(rpm=60, tpm=1_000_000, burst_s=2, honour_n=False, seed=5)
    result = run_jobs(loop, tmp_path, jobs, sim, rpm=60)  # a request a second: answers come between
    per_job = result.requests_per_job()
    for job in wants_two:
        record = result.records[job["custom_id"]]
        assert record["error"]["code"] == "n_not_supported", record
        message = record["error"]["message"]  # e.g. "... 1 choice came back where n=2 asked for 2"
        assert "the server ignores n:" in message and "came back where n=2" in message
        assert per_job[job_text(job)] <= 2
        assert not is_transient("n_not_supported", record["response"] and record["response"]["status_code"])
    for job in wants_one:
        check_own_answer(job, result.records[job["custom_id"]])
    assert result.stats.failed == {"n_not_supported": len(wants_two)}
    assert result.stats.packing_off == []  # lists work: the n=1 completions stayed packed
    assert len(result.packed(COMPLETIONS)) < 20
    confirmations = [m for m in result.log if "ignores n" in m]
    assert len(confirmations) == 2  # once per lane: chat and completions
    # the n=2 chat jobs after the confirmation were never sent
    assert sum(per_job[job_text(j)] for j in wants_two if j["url"] == CHAT) < 12 / 2

    kept = run_jobs(loop, tmp_path, jobs, sim, rpm=60)  # a permanent failure is kept ...
    assert kept.sent == [] and kept.stats.kept_failed == len(wants_two)
    again = run_jobs(loop, tmp_path, jobs, sim, rpm=60, retry_failed=True)  # ... unless --retry-failed
    assert again.stats.kept_failed == 0 and again.stats.already_done == len(wants_one)
    assert again.sent and set(again.requests_per_job()) <= {job_text(j) for j in wants_two}
    assert again.stats.failed == {"n_not_supported": len(wants_two)}  # the same server, the same rule


# -- 429s that carry a delay are pacing --------------------------------------------------------------

def test_paced_429s_never_end_a_job_while_the_run_makes_progress(loop, tmp_path):
    """One budget per key shared by two models, each told four times the limit the key gives both: 429s are
    frequent, and with --max-attempts 1 the old rule (every 4th paced 429 counts) failed jobs."""
    jobs = [chat(i, model=m) for i in range(150) for m in ("model-a", "model-b")]
    sim = SimConfig(rpm=120, tpm=10_000_000, burst_s=2, budget_scope="key", header_style="none", seed=2)
    result = run_jobs(loop, tmp_path, jobs, sim, rpm=480, tpm=None, max_attempts=1)
    assert result.stats.exit_code() == 0
    for job in jobs:
        check_own_answer(job, result.records[job["custom_id"]])
    limited = Counter(prompts[0] for _, prompts, status in result.sent if status == 429)
    assert result.stats.rate_limited > 40
    assert max(limited.values()) > 4 * 1  # a job met more than 4 x max_attempts paced 429s


# -- a fault is not a capability -------------------------------------------------------------------

FAULTS = ("500", "503", "reset", "truncated", "missing_choice")


@pytest.mark.parametrize("seed", range(10))
def test_a_flaky_server_costs_retries_never_jobs_nor_packing_nor_n(loop, tmp_path, seed):
    """A server that honours lists and n but now and then drops a choice, answers 500/503, resets or
    cuts a body short: on any seed every job gets its own answer, packing stays on and n is never
    concluded ignored (the issue's mixed run, smaller)."""
    jobs = ([chat(i, n=2 if i % 3 == 0 else 1) for i in range(40)]
            + [completion(i, n=2) for i in range(80)] + [embedding(i) for i in range(40)])
    sim = SimConfig(rpm=3000, tpm=2_000_000, burst_s=2, fault_rate=0.08, faults=FAULTS, seed=seed)
    result = run_jobs(loop, tmp_path, jobs, sim, rpm=3000, tpm=2_000_000, max_attempts=8)
    assert result.stats.exit_code() == 0, (result.stats.failed, result.stats.stop_reason)
    for job in jobs:
        check_own_answer(job, result.records[job["custom_id"]])
    assert result.stats.packing_off == [] and result.stats.n_ignored == []
    assert result.packed(COMPLETIONS) and result.packed(EMBEDDINGS)  # packing stayed on
    assert sum(result.sim.faults.values()) > 0


@pytest.mark.parametrize("seed", range(10))
def test_dropped_choices_never_turn_n_or_packing_off_and_never_fail_a_job(loop, tmp_path, seed):
    """A server dropping one choice from 30 % of its answers: each job's own answer on any seed,
    and the choices that did come back are kept (fewer requests than answers times attempts)."""
    jobs = [chat(i, n=2) for i in range(40)] + [completion(i, n=2) for i in range(60)]
    sim = SimConfig(rpm=3000, tpm=2_000_000, burst_s=2, fault_rate=0.3, faults=("missing_choice",),
                    seed=seed)
    result = run_jobs(loop, tmp_path, jobs, sim, rpm=3000, tpm=2_000_000, max_attempts=10)
    assert result.stats.exit_code() == 0, (result.stats.failed, result.stats.stop_reason)
    for job in jobs:
        check_own_answer(job, result.records[job["custom_id"]])
    assert result.stats.packing_off == [] and result.stats.n_ignored == []


def test_finding_out_that_lists_are_ignored_costs_no_job_a_second_request(loop, tmp_path):
    """A server answering only a list's first prompt: that answer is the first job's own, kept, so
    the first job of each refused pack is never sent again, and every answer the server gave was
    used once."""
    jobs = [completion(i, n=2) for i in range(60)] + [embedding(i) for i in range(60)]
    result = run_jobs(loop, tmp_path, jobs, SimConfig(rpm=600, tpm=1_000_000, burst_s=2,
                                                      list_prompts="ignore", seed=3))
    assert result.stats.exit_code() == 0
    for job in jobs:
        check_own_answer(job, result.records[job["custom_id"]])
    alone = {prompts[0] for _, prompts, _ in result.sent if len(prompts) == 1}
    for url in (COMPLETIONS, EMBEDDINGS):
        packs = result.packed(url)
        assert packs
        for _, prompts, _ in packs:
            assert prompts[0] not in alone  # answered by the refused pack itself, never again
    assert max(result.requests_per_job().values()) <= 1 + PACK_FAILURES_TO_STOP
    answered = sum(result.sim.answered.values())
    assert answered == len(jobs)  # every prompt the server answered was used: none paid twice


def test_a_server_taking_neither_lists_nor_n_fails_those_jobs_as_n_not_supported_cheaply(
        loop, tmp_path):
    """Its answer to a pack asking n=3 is one choice for the first prompt: a list not taken with
    nothing usable; the jobs go alone, n is found ignored, and they fail as n_not_supported (a
    permanent code a rerun keeps), not as transient bad_response that every rerun pays again."""
    jobs = [completion(i, n=3) for i in range(100)]
    result = run_jobs(loop, tmp_path, jobs, SimConfig(rpm=600, tpm=1_000_000, burst_s=2,
                                                      list_prompts="ignore", honour_n=False, seed=2))
    assert result.stats.failed == {"n_not_supported": 100}
    assert len(result.sent) <= 12, len(result.sent)


def test_a_dropped_choice_in_a_pack_of_two_is_no_evidence_against_lists(loop, tmp_path):
    """A pack of two whose second prompt's choices were dropped looks like a list not taken:
    with every answer partial, packing must still stay on for packs of two."""
    jobs = [completion(i) for i in range(40)]
    for i, job in enumerate(jobs):
        job["body"]["max_tokens"] = 5 + i // 2  # packs of two: jobs differing only in prompt
    for seed in range(8, 21):
        result = run_jobs(loop, tmp_path / str(seed), jobs,
                          SimConfig(rpm=3000, tpm=2_000_000, burst_s=2,
                                    fault_rates={"missing_choice": 1.0}, seed=seed),
                          rpm=3000, tpm=2_000_000, max_attempts=10)
        assert result.stats.exit_code() == 0
        assert result.stats.packing_off == [], seed


def test_forced_packing_against_a_server_ignoring_lists_still_finishes_every_job(loop, tmp_path):
    """--pack keeps packs going to a server that answers only their first prompt: each answer
    still writes its first job and spends no attempt of the others, so every job finishes."""
    jobs = [completion(i) for i in range(30)]
    result = run_jobs(loop, tmp_path, jobs, SimConfig(rpm=3000, tpm=2_000_000, burst_s=2,
                                                      list_prompts="ignore", seed=1),
                      rpm=3000, tpm=2_000_000, trust_packs=True)
    assert result.stats.exit_code() == 0
    for job in jobs:
        check_own_answer(job, result.records[job["custom_id"]])
