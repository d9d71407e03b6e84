"""`--redis` with separate runner processes, as users run them (`python -m runner run` per job file,
one API key, one redis-server), against one simulated budget: they share it with few 429s, a run
that finishes or dies leaves its share to the others, a late joiner paces from what the others
learned, and a Redis restart mid-run is waited out.

The simulator runs in a thread of the test process (its `stats` count what reached it); a `Watch`
samples, in another thread, each output's line count (a result line is written the moment its answer
is known) and the simulator's counts, so rates come from what happened, never from sleeps.
`--shard` with `runner merge` over CLI processes is `tests/test_examples_shards.py`.
"""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from runner.pacing.redis_state import KEY_PREFIX
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator, run_in_thread
from tests.test_e2e import cli, count_lines, finish

pytestmark = pytest.mark.slow  # real time, several runner processes for seconds

KEY = "sk-proj-SHAREDKEYOFTHEORGANISATION0123456789"
MODEL = "gpt-4o-mini"
RPM = 2400
RATE = RPM / 60  # requests a second the budget allows
BURST_S = 1.0  # the server's bucket holds this much of it, as runner's (`--burst` by default)
CAPACITY = RATE * BURST_S
SAMPLE_S = 0.05
RUN_TIMEOUT_S = 60.0
FEW_429S = 3


def budget(latency_ms: float = 0.0) -> Simulator:
    """A simulator whose one budget binds on requests (the token limit is out of reach)."""
    return Simulator(SimConfig(rpm=RPM, tpm=10_000_000, burst_s=BURST_S,
                               latency_ms=latency_ms))


def write_chat_jobs(path: Path, n: int) -> list[str]:
    """`n` chat jobs in `path`, custom_ids and prompts unique across files (named after the file's
    stem); returns the custom_ids."""
    stem = path.stem
    jobs = [{"custom_id": f"{stem}-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": MODEL, "messages": [{"role": "user", "content": f"{stem} q{i}"}],
                      "max_tokens": 5}} for i in range(n)]
    path.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs))
    return [job["custom_id"] for job in jobs]


def prompt_of(custom_id: str) -> str:
    stem, i = custom_id.rsplit("-", 1)
    return f"{stem} q{i}"


def output_ids(path: Path) -> list[str]:
    """The custom_ids of `path`'s success lines (the lines of other outcomes fail the caller)."""
    ids = []
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        assert record["error"] is None and record["response"]["status_code"] == 200, record
        ids.append(record["custom_id"])
    return ids


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.monotonic()
    lines: dict[str, int]  # result lines per output
    sent: int  # requests that reached the simulator, 429s included
    refused: int  # 429s


class Watch:
    """Samples every `SAMPLE_S`, in a thread, the line count of each of `names`' outputs
    (`tmp/NAME.out.jsonl`) and the simulator's request and 429 counts."""

    def __init__(self, sim: Simulator, tmp: Path, names: str) -> None:
        self.sim, self.tmp, self.names = sim, tmp, names
        self.samples: list[Sample] = []  # in time order
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)

    def output(self, name: str) -> Path:
        return self.tmp / f"{name}.out.jsonl"

    def _sample(self) -> Sample:
        stats = self.sim.stats
        with self._lock:
            sample = Sample(time.monotonic(), {n: count_lines(self.output(n)) for n in self.names},
                            stats.requests, stats.rate_limited)
            self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._done.is_set():
            self._sample()
            self._done.wait(SAMPLE_S)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self._sample()

    def wait(self, condition, what: str, procs: list[subprocess.Popen],
             timeout: float = RUN_TIMEOUT_S) -> Sample:
        """The first fresh sample meeting `condition`; fails when a run exits with an error or
        `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            sample = self._sample()
            if condition(sample):
                return sample
            failed = [p for p in procs if p.poll() not in (None, 0)]
            assert not failed, f"a run failed before {what}: {finish(failed[0])[2][-2000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:g} s: {sample}"
            time.sleep(SAMPLE_S)

    def when(self, condition) -> float:
        """When `condition` first held."""
        return next(s.at for s in self.samples if condition(s))

    def at(self, moment: float) -> Sample:
        """The last sample taken at or before `moment`."""
        return [s for s in self.samples if s.at <= moment][-1]

    def rate(self, names: str, start: float, end: float) -> float:
        """Result lines a second that `names`' outputs gained from `start` to `end`."""
        first, last = self.at(start), self.at(end)
        gained = sum(last.lines[n] - first.lines[n] for n in names)
        return gained / max(last.at - first.at, SAMPLE_S)


@pytest.fixture
def runs(tmp_path):
    """Starts runner processes (`runs(name, base_url, redis_url, *options)` runs
    `tmp/NAME.jsonl` into `tmp/NAME.out.jsonl` with `KEY`); kills those left at the end."""
    started: list[subprocess.Popen] = []

    def start(name: str, base_url: str, redis_url: str, *options: str) -> subprocess.Popen:
        proc = cli("run", str(tmp_path / f"{name}.jsonl"),
                   "-o", str(tmp_path / f"{name}.out.jsonl"), "--base-url", base_url, "--redis", redis_url, "--no-progress", *options,
                   env={"OPENAI_API_KEY": KEY})
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finish_all(procs: list[subprocess.Popen]) -> None:
    """Wait for each run to end; fails, showing its stderr, unless it exits 0."""
    for proc in procs:
        code, _, err = finish(proc, timeout=RUN_TIMEOUT_S)
        assert code == 0, err[-2000:]


def budget_keys(redis_url: str) -> list[bytes]:
    """The budgets kept in the Redis (one per (key, base URL, model) shared)."""
    import redis  # here, not above: collecting the fast tests never loads redis
    client = redis.Redis.from_url(redis_url)
    try:
        return client.keys(KEY_PREFIX + "*")
    finally:
        client.close()


def test_three_processes_share_one_budget_and_a_small_file_finishing_speeds_the_others_up(
        tmp_path, redis_server, runs):
    sizes = {"s": 40, "m": 120, "l": 240}
    ids = {name: write_chat_jobs(tmp_path / f"{name}.jsonl", n) for name, n in sizes.items()}
    sim = budget()
    with run_in_thread(simulator=sim) as base_url, Watch(sim, tmp_path, "sml") as watch:
        procs = [runs(name, base_url, redis_server.url) for name in "ml"]
        # The small file starts once the other two spend the budget (its bucket is drained: else
        # it could take 40 jobs in one burst, and "while all three ran" would last no time).
        watch.wait(lambda s: s.lines["m"] and s.lines["l"], "results of m and l", procs)
        procs.append(runs("s", base_url, redis_server.url))
        finish_all(procs)
    for name in sizes:
        assert sorted(output_ids(watch.output(name))) == sorted(ids[name])  # each job once
    assert sim.stats.rate_limited <= FEW_429S, sim.stats.by_status
    assert sum(sim.stats.by_key.values()) == sum(sizes.values())  # no job paid twice

    s_starts = watch.when(lambda s: s.lines["s"] >= 1)
    s_ends = watch.when(lambda s: s.lines["s"] == sizes["s"])
    l_ends = watch.when(lambda s: s.lines["l"] >= sizes["l"] - 10)  # before its last few
    assert s_starts < s_ends < l_ends
    # Together they use the whole budget while two or three run (the opening burst is over).
    assert watch.rate("sml", s_starts, l_ends) >= 0.85 * RATE
    # The small file's share goes to the others once it is done: m and l together had about two
    # thirds of the budget while three ran, all of it after; l alone a third, then a half or more.
    while_three, after_small = watch.rate("ml", s_starts, s_ends), watch.rate("ml", s_ends, l_ends)
    assert after_small >= 1.25 * while_three, (while_three, after_small)
    while_three, after_small = watch.rate("l", s_starts, s_ends), watch.rate("l", s_ends, l_ends)
    assert after_small >= 1.2 * while_three, (while_three, after_small)


def test_a_late_joiner_paces_from_the_shared_budget_without_a_burst_of_its_own(
        tmp_path, redis_server, runs):
    sizes = {"a": 160, "b": 160, "j": 60}
    ids = {name: write_chat_jobs(tmp_path / f"{name}.jsonl", n) for name, n in sizes.items()}
    sim = budget()
    with run_in_thread(simulator=sim) as base_url, Watch(sim, tmp_path, "abj") as watch:
        procs = [runs(name, base_url, redis_server.url) for name in "ab"]
        # Seconds into the run: the limit is learned and the server's bucket spent.
        watch.wait(lambda s: s.lines["a"] + s.lines["b"] >= 2 * CAPACITY, "the budget spent", procs)
        procs.append(runs("j", base_url, redis_server.url))
        joined = watch.wait(lambda s: s.lines["j"] >= 1, "the joiner's first result", procs).at
        finish_all(procs)
    for name in sizes:
        assert sorted(output_ids(watch.output(name))) == sorted(ids[name])
    # Its first seconds: all together send what the budget refills (plus at most a bucket that
    # filled meanwhile), not a burst of the joiner's own on top, which the server would refuse.
    first, last = watch.at(joined - 0.5), watch.at(joined + 2.0)
    assert last.refused - first.refused <= 1, sim.stats.by_status
    assert last.sent - first.sent <= RATE * (last.at - first.at) + CAPACITY
    assert sim.stats.rate_limited <= FEW_429S, sim.stats.by_status
    assert len(budget_keys(redis_server.url)) == 1


def test_a_process_killed_with_requests_in_flight_leaves_its_share_and_resumes(
        tmp_path, redis_server, runs):
    sizes = {"a": 150, "b": 150, "k": 120}
    ids = {name: write_chat_jobs(tmp_path / f"{name}.jsonl", n) for name, n in sizes.items()}
    sim = budget(latency_ms=400)  # ~16 requests on the wire at any moment
    with run_in_thread(simulator=sim) as base_url, Watch(sim, tmp_path, "abk") as watch:
        procs = [runs(name, base_url, redis_server.url) for name in "abk"]
        killed = procs.pop()
        watch.wait(lambda s: s.lines["k"] >= 20, "20 results of k", procs + [killed])
        in_flight = sim.stats.working  # every process's requests admitted and unanswered
        assert in_flight > 0
        killed.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        killed.communicate(timeout=RUN_TIMEOUT_S)
        written = set(output_ids(watch.output("k")))
        survivors_end = watch.wait(
            lambda s: s.lines["a"] + s.lines["b"] >= sizes["a"] + sizes["b"] - 10,
            "the survivors' last jobs", procs).at
        finish_all(procs)
        # The survivors use the whole budget a few seconds after the kill: nothing of k's holds.
        assert survivors_end > killed_at + 3.0, "the survivors ended too soon to measure"
        assert watch.rate("ab", killed_at + 2.0, survivors_end) >= 0.8 * RATE
        finish_all([runs("k", base_url, redis_server.url)])
    for name in sizes:
        assert sorted(output_ids(watch.output(name))) == sorted(ids[name])  # each job once
    answered = sim.stats.answered
    assert all(answered[prompt_of(i)] == 1 for i in written)  # written before the kill: not resent
    paid = sum(sim.stats.by_key.values())
    assert paid - sum(sizes.values()) <= in_flight + 2  # only what was on the wire is paid twice
    assert sim.stats.rate_limited <= FEW_429S, sim.stats.by_status


def test_runs_wait_while_redis_is_away_then_finish_sharing_one_budget(tmp_path, redis_server, runs):
    sizes = {"a": 120, "b": 120}
    ids = {name: write_chat_jobs(tmp_path / f"{name}.jsonl", n) for name, n in sizes.items()}
    sim = budget()
    away_s = 2.0
    with run_in_thread(simulator=sim) as base_url, Watch(sim, tmp_path, "ab") as watch:
        procs = [runs(name, base_url, redis_server.url, "--redis-timeout", "20") for name in "ab"]
        watch.wait(lambda s: s.lines["a"] + s.lines["b"] >= 60, "60 results", procs)
        redis_server.stop()
        stopped = watch.wait(lambda s: True, "a sample", procs)
        watch.wait(lambda s: s.at >= stopped.at + away_s, f"{away_s:g} s without Redis", procs)
        assert all(p.poll() is None for p in procs)  # waiting, not stopped
        redis_server.start(port=redis_server.port)  # empty: it persists nothing
        restarted = watch.wait(lambda s: True, "a sample", procs)
        # Nothing was sent while Redis was away (but what was admitted as it went).
        assert restarted.sent <= stopped.sent + 2
        finish_all(procs)  # 0, not 3: they carried on
    for name in sizes:
        assert sorted(output_ids(watch.output(name))) == sorted(ids[name])
    assert sim.stats.rate_limited <= FEW_429S, sim.stats.by_status  # still paced as one
    assert len(budget_keys(redis_server.url)) == 1


def test_a_process_started_after_a_redis_restart_shares_the_budget_of_those_running(
        tmp_path, redis_server, runs):
    sizes = {"a": 160, "b": 160, "c": 80}
    ids = {name: write_chat_jobs(tmp_path / f"{name}.jsonl", n) for name, n in sizes.items()}
    sim = budget()
    with run_in_thread(simulator=sim) as base_url, Watch(sim, tmp_path, "abc") as watch:
        procs = [runs(name, base_url, redis_server.url, "--redis-timeout", "20") for name in "ab"]
        watch.wait(lambda s: s.lines["a"] + s.lines["b"] >= 60, "60 results", procs)
        redis_server.stop()
        redis_server.start(port=redis_server.port)  # empty: the salt is gone with the budgets
        procs.append(runs("c", base_url, redis_server.url))
        finish_all(procs)
    for name in sizes:
        assert sorted(output_ids(watch.output(name))) == sorted(ids[name])
    # One (API key, base URL, model), one budget: else the runs started before the restart pace
    # on one and the run started after on another, together sending twice the limit.
    keys = budget_keys(redis_server.url)
    assert sim.stats.rate_limited <= FEW_429S, (sim.stats.by_status, keys)
    assert len(keys) == 1, keys
