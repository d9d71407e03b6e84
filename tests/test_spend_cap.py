"""--max-cost and --limit (issue 21, item 4): a run stops, resumable, before what it has spent
passes the cap; the money is checked from the result lines' own `usage`, not runner's accounting."""
from __future__ import annotations

import random

import orjson
import pytest
from click.testing import CliRunner

from jobs.job import Job
from jobs.results import OutputState
from jobs.spend import Spend, Unpriceable, job_bound
from runner.api.endpoint import Endpoint
from runner.api.transport import HttpResponse
from runner.clock import run_virtual
from runner.cli.main import main
from runner.live.dispatch import DispatchConfig, Dispatcher
from runner.outcome import Backoff
from runner.pacing.limiters import Limiters
from runner.report.prices import load_prices
from runner.simulator.server import SimConfig, Simulator, run_in_thread
from runner.tokenizer import token_counter
from tests.conftest import Script
from tests.test_batch_e2e import sim_factory  # noqa: F401  (a fixture)

PRICES = load_prices()
MODEL = "gpt-4o-mini"


def chat(i: int, max_tokens: int | None = 400) -> Job:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"question number {i}"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return Job(f"job-{i}", "/v1/chat/completions", body, i + 1)


def money(records) -> float:
    """USD of the result lines, from their own `usage` at list prices."""
    total = 0.0
    for r in records:
        if r.get("error") is None:
            usage = r["response"]["body"]["usage"]
            total += PRICES.cost(MODEL, usage["prompt_tokens"], usage["completion_tokens"])
    return total


def at_the_bound(n, req, body):
    """A worst-case server: every answer uses the whole completion budget."""
    prompt = len(body["messages"][0]["content"].split()) + 8
    answer = {"id": "x", "object": "chat.completion", "model": MODEL,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "long"},
                           "finish_reason": "length"}],
              "usage": {"prompt_tokens": prompt, "completion_tokens": body["max_tokens"],
                        "total_tokens": prompt + body["max_tokens"]}}
    return HttpResponse(200, {}, orjson.dumps(answer))


def run_capped(jobs, cap, *, concurrency=32, rule=at_the_bound, limit=None):
    records = []

    async def main_():
        d = Dispatcher(send=Script(rule, latency=2.0), endpoint=Endpoint(base_url="http://t/v1", api_key="k"),
                       limiters=Limiters(rpm=6000, tpm=10**8, burst_s=1.0), sink=records.append,
                       config=DispatchConfig(concurrency=concurrency, max_cost=cap, limit=limit),
                       backoff=Backoff(rng=random.Random(1)), prices=PRICES)

        async def items():
            for job in jobs:
                yield job
        return await d.run(items(), OutputState())

    return records, run_virtual(main_())


def test_answers_that_use_their_whole_budget_never_take_the_spend_past_the_cap():
    # 32 requests on the wire at once, each answered at its upper bound: only holding each one's
    # bound while it is out keeps the sum under the cap
    jobs = [chat(i) for i in range(400)]
    cap = 100 * job_bound(jobs[0], PRICES, token_counter)
    records, stats = run_capped(jobs, cap)
    assert money(records) <= cap
    assert money(records) >= cap * 0.9  # and the cap is used, not left mostly idle
    assert stats.exit_code() == 3 and stats.spend_capped and "--max-cost" in stats.stop_reason
    assert stats.spent == pytest.approx(money(records))


def test_a_job_without_a_price_stops_a_capped_run_with_exit_2():
    jobs = [Job("a", "/v1/chat/completions", {"model": "my-finetune", "max_tokens": 5,
                                              "messages": [{"role": "user", "content": "x"}]}, 1)]
    records, stats = run_capped(jobs, 1.0)
    assert records == [] and stats.exit_code() == 2 and "no price for my-finetune" in stats.stop_reason


def test_a_job_without_max_tokens_is_bounded_by_its_context_window():
    bounded, unbounded = chat(1), chat(1, max_tokens=None)
    assert job_bound(unbounded, PRICES, token_counter) > 100 * job_bound(bounded, PRICES, token_counter)
    odd = Job("b", "/v1/chat/completions", {"model": "unknown-model", "messages": []}, 1)
    with pytest.raises(Unpriceable):
        job_bound(odd, PRICES, token_counter)


def test_spend_fits_only_what_cannot_pass_the_cap():
    spend = Spend(1.0)
    spend.hold(0.6)
    assert spend.fits(0.4) and not spend.fits(0.41)
    spend.release(0.6)
    spend.pay(0.1)
    assert spend.fits(0.9) and not spend.fits(0.91)


def test_nothing_held_is_exactly_nothing_whatever_float_residue_the_bounds_leave():
    spend = Spend(1.0)
    for bound in (0.1, 0.2, 0.3):
        spend.hold(bound)
    for bound in (0.3, 0.1, 0.2):
        spend.release(bound)
    assert spend.held == 0.0 and spend.holding == 0


def test_limit_runs_only_the_first_n_pending_jobs_and_exits_3():
    records, stats = run_capped([chat(i) for i in range(50)], None, limit=7)
    assert sorted(r["custom_id"] for r in records) == [f"job-{i}" for i in range(7)]
    assert stats.exit_code() == 3 and stats.limit == 7


def test_a_limit_covering_every_pending_job_is_a_finished_run():
    records, stats = run_capped([chat(i) for i in range(7)], None, limit=7)
    assert len(records) == 7 and stats.exit_code() == 0 and stats.limit is None


# -- end to end: the CLI against the simulator ----------------------------------------------------

@pytest.fixture
def sim(monkeypatch):
    with run_in_thread(simulator=Simulator(SimConfig(latency_ms=20))) as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        yield base_url


def write(path, jobs):
    path.write_bytes(b"".join(orjson.dumps({"custom_id": j.custom_id, "method": "POST",
                                            "url": j.url, "body": j.body}) + b"\n" for j in jobs))


def read(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_max_cost_stops_the_run_resumably_and_each_run_spends_at_most_the_cap(tmp_path, sim):
    jobs = [chat(i, max_tokens=20) for i in range(300)]
    write(tmp_path / "in.jsonl", jobs)
    out, cap = tmp_path / "out.jsonl", 0.0004  # the simulator's short answers: about 100 jobs
    args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--no-progress",
            "--max-cost", str(cap), "--concurrency", "16"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 3, first.output
    spent_first = money(read(out))
    assert 0 < spent_first <= cap
    assert "the cap stopped the run" in first.output and "--max-cost $0.0004 reached" in first.output
    second = CliRunner().invoke(main, args)  # the cap is per run: the next one may spend it again
    assert second.exit_code == 3
    assert spent_first < money(read(out)) <= spent_first + cap
    done = [r["custom_id"] for r in read(out)]
    assert len(done) == len(set(done)) < 300  # nothing sent twice, work remains


def test_limit_is_the_smoke_test_before_the_long_run(tmp_path, sim):
    write(tmp_path / "in.jsonl", [chat(i) for i in range(20)])
    out = tmp_path / "out.jsonl"
    args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--limit", "3"])
    assert result.exit_code == 3 and len(read(out)) == 3 and "--limit 3" in result.output
    assert CliRunner().invoke(main, args).exit_code == 0 and len(read(out)) == 20


def test_max_cost_is_in_help_as_per_run_and_in_the_config_file(tmp_path, sim):
    help_text = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--max-cost" in help_text and "Per run" in help_text and "--limit" in help_text
    write(tmp_path / "in.jsonl", [chat(i, max_tokens=20) for i in range(300)])
    (tmp_path / "runner.toml").write_text("max_cost = 0.0002\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o", str(out),
                                       "--no-progress", "--config", str(tmp_path / "runner.toml")])
    assert result.exit_code == 3 and 0 < money(read(out)) <= 0.0002


# -- --via batch: the cap counts what is submitted ------------------------------------------------

def test_batch_submits_only_what_fits_under_the_cap_at_batch_prices(loop, sim_factory, tmp_path):
    from runner.report.prices import batch_price_table
    from tests.test_batch_e2e import run
    jobs = [chat(i, max_tokens=100) for i in range(40)]
    write(tmp_path / "in.jsonl", jobs)
    prices = batch_price_table(PRICES)
    per_job = job_bound(jobs[0], prices, token_counter)
    sim = sim_factory()
    # files of 10 lines: three fit under a cap of 35 jobs' bounds, the fourth does not
    stats = run(loop, sim, tmp_path, max_cost=35 * per_job, prices=prices, max_requests=10,
                pack=False)
    assert stats.exit_code() == 3 and stats.spend_capped and stats.batches_created == 3
    assert len(read(tmp_path / "out.jsonl")) == 30
    assert stats.spent <= 35 * per_job


def test_batch_limit_submits_only_the_first_n_pending_jobs(loop, sim_factory, tmp_path):
    from tests.test_batch_e2e import run
    write(tmp_path / "in.jsonl", [chat(i) for i in range(30)])
    stats = run(loop, sim_factory(), tmp_path, limit=12, pack=False)
    assert stats.exit_code() == 3 and len(read(tmp_path / "out.jsonl")) == 12
    assert stats.exit_code() == 3 and stats.limit == 12
    stats = run(loop, sim_factory(), tmp_path, pack=False)
    assert stats.exit_code() == 0 and len(read(tmp_path / "out.jsonl")) == 30


def test_answers_no_job_could_use_are_paid_all_the_same_and_the_cap_holds():
    """A 200 whose JSON does not fit the job's schema is billed: its usage counts against the cap
    (and the run's tokens), so retrying broken answers can never spend past --max-cost."""
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}
    jobs = [Job(f"job-{i}", "/v1/chat/completions",
                {"model": MODEL, "max_tokens": 400, "response_format": schema,
                 "messages": [{"role": "user", "content": f"question number {i}"}]}, i + 1)
            for i in range(20)]
    billed = []

    def broken(n, req, body):
        response = at_the_bound(n, req, body)
        answer = orjson.loads(response.body)
        answer["choices"][0]["message"]["content"] = "{not json"
        billed.append(answer["usage"])
        return HttpResponse(200, {}, orjson.dumps(answer))
    cap = 0.01
    records, stats = run_capped(jobs, cap, rule=broken)
    paid = sum(PRICES.cost(MODEL, u["prompt_tokens"], u["completion_tokens"]) for u in billed)
    assert paid <= cap + 1e-12, paid
    assert stats.spent == pytest.approx(paid)
    assert stats.usage[MODEL].completion_tokens == sum(u["completion_tokens"] for u in billed)
    assert stats.usage[MODEL].jobs == 0  # billed, but no job was answered
