"""One simulator budget shared by 1, 2 and 4 runner processes, in real time: with `--redis`,
and without it (each process learning the full limits; each told 1/N of them).

The simulator (its own process, a fresh one per row so every row meets full buckets) serves
RPM 600 and TPM 150,000 per model with buckets of 2 s. Scenarios, each about `--seconds` (20)
of the binding budget in total, split into N equal job files, one per process:

    RPM-bound   chat jobs of a few tokens (600 RPM binds)
    TPM-bound   completions, a 10-token prompt + max_tokens 400 (150,000 TPM binds at ~366 RPM)

Modes (every process `python -m runner run --no-pack`, one API key):

    redis        every process with --redis (one local redis-server for the whole bench),
                 limits learned from the headers
    alone-full   no Redis; each learns the full limits from the headers
    alone-split  no Redis; each told --rpm and --tpm of 1/N (N = 1 is the same as alone-full
                 told the limits, so it is not run)

Ideal: the server's bucket starts full, so its first 2 s of budget pass at once and the rest at
the limit's rate: ``ideal = (work - rate × 2 s) / rate``, work in the binding unit (requests or
tokens) of the jobs that got their own answer, over all processes. **Wall**: the last process's
end minus the first process's start, each start being its end less the wall the runner measured
itself (interpreter start-up excluded; `process s` includes it). Efficiency = ideal / wall.
429 % is of HTTP requests sent, over all processes. `limit in force`: the binding limit each
process ended with (a limit header overrides a told `--rpm`/`--tpm`, so `alone-split` ends at the
server's number); `charged / request`: tokens the limiters charged per request sent, against
the server's 410 (prompt + max_tokens) for a completion: above 410, the charge calibration
(`runner/pacing/calibration.py`) has raised its factor.

    python bench/redis_share.py [--seconds 20] [--only RPM-bound] [--procs 1,2,4]

Prints a markdown table and writes it to bench/results/redis_share.md. About 6½ minutes.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from jobs.tokens import rate_limit_charge  # noqa: E402
from pacing import own_answers  # noqa: E402
from tests.servers import RedisServer, free_port  # noqa: E402

RPM = 600
TPM = 150_000
SERVER_BURST_S = 2.0
MAX_TOKENS = 400
API_KEY = "sk-bench-0123456789"
RESULTS = ROOT / "bench" / "results"
REDIS, ALONE_FULL, ALONE_SPLIT = "redis", "alone-full", "alone-split"
POLL_S = 0.02
RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    kind: str  # "chat" (bound by requests) or "completions" (bound by tokens)

    @property
    def per_second(self) -> float:
        return (RPM if self.kind == "chat" else TPM) / 60

    def work(self, job: dict) -> int:
        """What one job costs in the binding unit."""
        return 1 if self.kind == "chat" else rate_limit_charge(job["url"], job["body"])


SCENARIOS = (Scenario("RPM-bound", "chat"), Scenario("TPM-bound", "completions"))


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    procs: int
    mode: str
    ok: int
    jobs: int
    wall: float  # last end - first start, the runners' own timing
    process_wall: float  # the same including interpreter start-up
    ideal: float
    requests: int
    rate_limited: int
    allowed: str  # the binding limit each process ended with
    charged: int  # tokens the runners charged their limiters for the requests they sent

    @property
    def efficiency(self) -> float:
        return self.ideal / self.wall if self.wall > 0 else 0.0


def make_jobs(scenario: Scenario, seconds: float) -> list[dict]:
    """Jobs for `seconds` of the binding budget beyond the server's opening burst, a multiple of
    4 of them so every split is equal."""
    jobs: list[dict] = []
    work, budget = 0, scenario.per_second * (seconds + SERVER_BURST_S)
    while work < budget or len(jobs) % 4:
        i = len(jobs)
        if scenario.kind == "chat":
            body = {"model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"question {i}"}]}
            jobs.append({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": body})
        else:
            body = {"model": "gpt-3.5-turbo-instruct", "prompt": f"prompt {i:06d} ".ljust(40, "."),
                    "max_tokens": MAX_TOKENS}
            jobs.append({"custom_id": f"p{i}", "method": "POST", "url": "/v1/completions",
                         "body": body})
        work += scenario.work(jobs[-1])
    return jobs


class Simulator:
    """``python -m runner simulate`` in its own process on a free loopback port."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "simulate", "--host", "127.0.0.1", "--port",
             str(free_port()), "--rpm", str(RPM), "--tpm", str(TPM), "--burst",
             str(SERVER_BURST_S)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"the simulator did not start: {self.base_url!r}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def runner_args(mode: str, procs: int, redis_url: str) -> list[str]:
    """What distinguishes one mode's processes on the command line."""
    if mode == REDIS:
        return ["--redis", redis_url]
    if mode == ALONE_SPLIT:
        return ["--rpm", f"{RPM / procs:g}", "--tpm", f"{TPM / procs:g}"]
    return []


def measure(scenario: Scenario, procs: int, mode: str, jobs: list[dict], work_dir: Path,
            redis_url: str) -> Row:
    run_dir = work_dir / f"{scenario.kind}-{procs}-{mode}"
    run_dir.mkdir(parents=True, exist_ok=True)
    shares = [jobs[k::procs] for k in range(procs)]
    for k, share in enumerate(shares):
        (run_dir / f"jobs{k}.jsonl").write_bytes(b"".join(orjson.dumps(j) + b"\n" for j in share))
        (run_dir / f"out{k}.jsonl").unlink(missing_ok=True)
        (run_dir / f"summary{k}.json").unlink(missing_ok=True)
    server = Simulator()
    env = {**os.environ, "OPENAI_API_KEY": API_KEY}
    running: list[subprocess.Popen] = []
    try:
        started = time.monotonic()
        for k in range(procs):
            running.append(subprocess.Popen(
                [sys.executable, "-m", "runner", "run", str(run_dir / f"jobs{k}.jsonl"),
                 "-o", str(run_dir / f"out{k}.jsonl"), "--base-url", server.base_url,
                 "--no-progress", "--no-pack", "--summary-json", str(run_dir / f"summary{k}.json"),
                 *runner_args(mode, procs, redis_url)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                stderr=(run_dir / f"stderr{k}.txt").open("wb")))
        ended: dict[int, float] = {}
        while len(ended) < procs:
            for k, proc in enumerate(running):
                if k not in ended and proc.poll() is not None:
                    ended[k] = time.monotonic()
            if time.monotonic() - started > RUN_TIMEOUT_S:
                raise RuntimeError(f"{scenario.name} {procs} {mode}: still running after "
                                   f"{RUN_TIMEOUT_S:g} s")
            time.sleep(POLL_S)
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.stop()
    summaries = []
    for k in range(procs):
        path = run_dir / f"summary{k}.json"
        if not path.exists():
            raise RuntimeError(f"no summary from process {k} (exit {running[k].returncode}): "
                               f"{(run_dir / f'stderr{k}.txt').read_text()[-500:]}")
        summaries.append(orjson.loads(path.read_bytes()))
    first_start = min(ended[k] - s["wall_seconds"] for k, s in enumerate(summaries))
    good = [job for k, share in enumerate(shares)
            for job in own_answers(share, run_dir / f"out{k}.jsonl")]
    rate = scenario.per_second
    ideal = max(0.0, sum(scenario.work(job) for job in good) - rate * SERVER_BURST_S) / rate
    binding = "allowed_rpm" if scenario.kind == "chat" else "allowed_tpm"
    allowed = sorted({model[binding] for s in summaries for model in s["models"].values()},
                     key=lambda v: (v is None, v))
    return Row(scenario.name, procs, mode, len(good), len(jobs), max(ended.values()) - first_start,
               max(ended.values()) - started, ideal,
               sum(s["requests"]["sent"] for s in summaries),
               sum(s["requests"]["rate_limited_429"] for s in summaries),
               "/".join(f"{v:,.0f}" if v is not None else "?" for v in allowed),
               sum(model["charged_tokens"] for s in summaries for model in s["models"].values()))


def table(rows: list[Row]) -> str:
    lines = ["| scenario | processes | mode | jobs ok | wall s | process s | ideal s | efficiency "
             "| 429s / requests | 429 % | limit in force | charged / request |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = 100 * r.rate_limited / r.requests if r.requests else 0.0
        lines.append(f"| {r.scenario} | {r.procs} | {r.mode} | {r.ok}/{r.jobs} | {r.wall:.1f} | "
                     f"{r.process_wall:.1f} | {r.ideal:.1f} | {r.efficiency:.3f} | "
                     f"{r.rate_limited}/{r.requests} | {share:.1f} | {r.allowed} | "
                     f"{r.charged / r.requests if r.requests else 0:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="Seconds of budget all processes' jobs need beyond the first burst.")
    parser.add_argument("--only", default="",
                        help="Comma-separated scenario names to run (default: all).")
    parser.add_argument("--procs", default="1,2,4", help="Comma-separated process counts.")
    parser.add_argument("--modes", default=f"{REDIS},{ALONE_FULL},{ALONE_SPLIT}",
                        help=f"Comma-separated modes: {REDIS}, {ALONE_FULL}, {ALONE_SPLIT}.")
    args = parser.parse_args()
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    counts = [int(n) for n in args.procs.split(",") if n.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    work_dir = RESULTS / "redis-share-work"
    rows: list[Row] = []
    started = time.monotonic()
    with RedisServer() as redis:
        for scenario in SCENARIOS:
            if wanted and scenario.name not in wanted:
                continue
            jobs = make_jobs(scenario, args.seconds)
            for procs in counts:
                for mode in modes:
                    if mode == ALONE_SPLIT and procs == 1:
                        continue
                    row = measure(scenario, procs, mode, jobs, work_dir, redis.url)
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
    text = table(rows)
    per_completion = SCENARIOS[1].work(make_jobs(SCENARIOS[1], 0)[0])
    note = (f"\nOne simulator: RPM {RPM}, TPM {TPM:,}, a {SERVER_BURST_S:g} s burst, a fresh one "
            f"per row; each process `python -m runner run --no-pack` on 1/N of the jobs. Wall: "
            f"last end - first start by the runners' own timing; process s: including interpreter "
            f"start-up. Limit in force: the binding limit (RPM or TPM) each process ended with. "
            f"Charged / request: tokens the runners charged their limiters per request sent (the "
            f"server charges a completion its prompt + max_tokens: {per_completion}). "
            f"Benchmark wall time {time.monotonic() - started:.0f} s.\n")
    print("\n" + text + "\n" + note)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "redis_share.md").write_text(text + "\n" + note)


if __name__ == "__main__":
    main()
