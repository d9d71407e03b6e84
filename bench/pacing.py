"""Pacing benchmark, in real time: our runner and a cookbook-style baseline against the simulator
run as a separate process, with tight limits.

Scenarios (the simulator serves RPM 900 and TPM 240,000 per model, buckets of 2 s, i.e. it starts
with 30 requests and 8,000 tokens in hand):

    RPM-bound       chat jobs of a few tokens                       ~32 s of requests
    TPM-bound       completions, 10-token prompt + max_tokens 400  ~32 s of tokens
    ... + 2 s       the same with 2 s of latency per answer (--latency-ms 2000)

Tools: ``ours`` (``python -m runner run --no-pack``, otherwise default flags) learning the limits
from the headers; ``ours given`` told the server's numbers (``--rpm 900 --tpm 240000 --burst 2``);
and ``cookbook`` (bench/cookbook_baseline.py, given the true RPM and TPM). Each run gets a fresh
simulator, so every run starts against full buckets.

With default flags ours gives up part of the server's opening burst (its own bucket holds 1 s of
budget, `runner.pacing.limiter.DEFAULT_BURST_S`) and, learning the limits, waits for one probe's answer
before sending more: about 1 s + one latency per run, which is why the ``ours given`` row exists.

Ideal time, honestly: the server's buckets start full, so the first 2 s of budget pass at once and
the rest at the limit's rate; the last answer then takes the latency:
``ideal = (work - rate × 2 s) / rate + latency``, work in the binding unit (requests or tokens)
of the jobs that succeeded. Efficiency = ideal / run time, where run time is what the tool itself
measured from its start to its last answer (interpreter start-up excluded for both tools; the
process time is shown too). 429 % is of HTTP requests sent.

    python bench/pacing.py [--seconds 30] [--baseline-limit 20] [--only RPM-bound,...]

Prints a markdown table and writes it to bench/results/pacing.md.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.tokens import rate_limit_charge  # noqa: E402
from runner.simulator.answers import chat_prompt, completion_text  # noqa: E402

RPM = 900
TPM = 240_000
SERVER_BURST_S = 2.0
LATENCY_MS = 2000
MAX_TOKENS = 400
RESULTS = ROOT / "bench" / "results"
API_KEY = "sk-bench-0123456789"
OURS, GIVEN, COOKBOOK = "ours", "ours given", "cookbook"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    kind: str  # "chat" (bound by requests) or "completions" (bound by tokens)
    latency_ms: int = 0

    @property
    def per_second(self) -> float:
        return (RPM if self.kind == "chat" else TPM) / 60

    def work(self, job: dict) -> int:
        """What one job costs in the binding unit."""
        return 1 if self.kind == "chat" else rate_limit_charge(job["url"], job["body"])


SCENARIOS = (
    Scenario("RPM-bound", "chat"),
    Scenario("TPM-bound", "completions"),
    Scenario("RPM-bound + 2 s latency", "chat", LATENCY_MS),
    Scenario("TPM-bound + 2 s latency", "completions", LATENCY_MS),
)


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    tool: str
    ok: int
    jobs: int
    seconds: float  # the tool's own run time
    process_s: float
    ideal: float
    requests: int
    rate_limited: int

    @property
    def efficiency(self) -> float:
        return self.ideal / self.seconds if self.seconds > 0 else 0.0


def make_jobs(scenario: Scenario, seconds: float) -> list[dict]:
    """Enough jobs for `seconds` of the binding budget beyond the server's initial burst."""
    jobs: list[dict] = []
    work, budget = 0, scenario.per_second * (seconds + SERVER_BURST_S)
    while work < budget:
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


def own_answers(jobs: list[dict], out: Path) -> list[dict]:
    """The jobs whose last result line is a success holding exactly their own answer."""
    last: dict[str, dict] = {}
    if out.exists():
        for line in out.read_bytes().splitlines():
            record = orjson.loads(line)
            last[record["custom_id"]] = record
    good = []
    for job in jobs:
        record = last.get(job["custom_id"])
        if record is None or record["error"] is not None:
            continue
        body, answer = job["body"], record["response"]["body"]
        if "messages" in body:
            got, prompt = answer["choices"][0]["message"]["content"], chat_prompt(body["messages"])
        else:
            got, prompt = answer["choices"][0]["text"], body["prompt"]
        if got == completion_text(prompt, 0):
            good.append(job)
    return good


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m runner simulate`` in its own process, bound to 127.0.0.1."""

    def __init__(self, scenario: Scenario) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "simulate", "--host", "127.0.0.1", "--port",
             str(self.port), "--rpm", str(RPM), "--tpm", str(TPM), "--burst", str(SERVER_BURST_S),
             "--latency-ms", str(scenario.latency_ms)],
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


_SUMMARY = re.compile(r"requests: ([\d,]+) sent · [\d,]+ retries · ([\d,]+) rate-limited \(429\)"
                      r" · wall ([\d,.]+)s")


def run_ours(scenario: Scenario, jobs_path: Path, out: Path, base_url: str,
             given: bool) -> tuple[float, int, int, float]:
    """(run seconds, requests, 429s, process seconds) of one run of our CLI."""
    args = [sys.executable, "-m", "runner", "run", str(jobs_path), "-o", str(out),
            "--base-url", base_url, "--no-progress", "--no-pack"]
    if given:
        args += ["--rpm", str(RPM), "--tpm", str(TPM), "--burst", str(SERVER_BURST_S)]
    started = time.monotonic()
    proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": API_KEY},
                          capture_output=True, text=True, timeout=600)
    process_s = time.monotonic() - started
    match = _SUMMARY.search(proc.stderr)
    if match is None:
        raise RuntimeError(f"no summary from the runner (exit {proc.returncode}):\n{proc.stderr}")
    sent, limited, wall = (float(g.replace(",", "")) for g in match.groups())
    return wall, int(sent), int(limited), process_s


def run_cookbook(jobs_path: Path, out: Path, base_url: str,
                 time_limit: float) -> tuple[float, int, int, float]:
    """(run seconds, requests, 429s, process seconds) of one run of the baseline."""
    args = [sys.executable, str(ROOT / "bench" / "cookbook_baseline.py"), str(jobs_path),
            "-o", str(out), "--base-url", base_url, "--rpm", str(RPM), "--tpm", str(TPM),
            "--time-limit", str(time_limit)]
    started = time.monotonic()
    proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": API_KEY},
                          capture_output=True, text=True, timeout=600)
    process_s = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"the baseline failed:\n{proc.stderr}")
    tally = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return tally["seconds"], tally["requests"], tally["rate_limited"], process_s


def measure(scenario: Scenario, tool: str, jobs: list[dict], work_dir: Path,
            baseline_limit: float) -> Row:
    jobs_path = work_dir / "jobs.jsonl"
    jobs_path.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs))
    out = work_dir / f"{tool.replace(' ', '-')}.jsonl"
    out.unlink(missing_ok=True)
    server = Server(scenario)
    try:
        if tool == COOKBOOK:
            seconds, sent, limited, process_s = run_cookbook(jobs_path, out, server.base_url,
                                                             baseline_limit)
        else:
            seconds, sent, limited, process_s = run_ours(scenario, jobs_path, out,
                                                         server.base_url, given=tool == GIVEN)
    finally:
        server.stop()
    good = own_answers(jobs, out)
    work = sum(scenario.work(job) for job in good)
    rate = scenario.per_second
    ideal = max(0.0, work - rate * SERVER_BURST_S) / rate + scenario.latency_ms / 1000
    return Row(scenario.name, tool, len(good), len(jobs), seconds, process_s, ideal, sent,
               limited)


def table(rows: list[Row]) -> str:
    lines = ["| scenario | tool | jobs ok | run s | process s | ideal s | efficiency | 429s "
             "| 429 % |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = 100 * r.rate_limited / r.requests if r.requests else 0.0
        lines.append(f"| {r.scenario} | {r.tool} | {r.ok}/{r.jobs} | {r.seconds:.1f} | "
                     f"{r.process_s:.1f} | {r.ideal:.1f} | {r.efficiency:.3f} | {r.rate_limited} "
                     f"| {share:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="Seconds of budget each scenario's jobs need beyond the first burst.")
    parser.add_argument("--baseline-limit", type=float, default=20.0,
                        help="Seconds after which the baseline sends nothing new (it is slow).")
    parser.add_argument("--only", default="",
                        help="Comma-separated scenario names to run (default: all).")
    parser.add_argument("--tools", default=f"{OURS},{GIVEN},{COOKBOOK}",
                        help=f"Comma-separated tools: {OURS}, {GIVEN}, {COOKBOOK}.")
    args = parser.parse_args()
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    tools = [tool.strip() for tool in args.tools.split(",") if tool.strip()]
    work_dir = RESULTS / "pacing-work"
    work_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    started = time.monotonic()
    for scenario in SCENARIOS:
        if wanted and scenario.name not in wanted:
            continue
        jobs = make_jobs(scenario, args.seconds)
        for tool in tools:
            row = measure(scenario, tool, jobs, work_dir, args.baseline_limit)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    text = table(rows)
    note = (f"\nRPM {RPM}, TPM {TPM:,} and a {SERVER_BURST_S:g} s burst at the server; "
            f"'{OURS}': default flags but --no-pack, limits learned from the headers; "
            f"'{GIVEN}': --rpm {RPM} --tpm {TPM} --burst {SERVER_BURST_S:g}; '{COOKBOOK}' sends "
            f"nothing new after {args.baseline_limit:g} s. Run s: the tool's own timing; process "
            f"s: including interpreter start. Benchmark wall time "
            f"{time.monotonic() - started:.0f} s.\n")
    print("\n" + text + "\n" + note)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pacing.md").write_text(text + "\n" + note)


if __name__ == "__main__":
    main()
