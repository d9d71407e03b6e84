"""Real servers benchmark: one job file through ``python -m runner run`` against the built-in
simulator in each of its server modes, against llmock (PyPI, a test dependency), and against a
LiteLLM proxy answering ``mock_response`` (when ``litellm`` is installed), each twice: runner
learning the limits from the answers ("learned") and told them on the command line ("told").

The job file (300 jobs): 200 chat jobs alternating between two models, every fifth asking for
``n=2``, and 100 short completion jobs (which runner packs into list prompts).

Targets (each its own server process on a free loopback port, fresh for every run):

    sim                 OpenAI-style buckets per model (RPM 300, a 2 s burst)
    sim list ignore     ... a list prompt gets its first item answered only (--list-prompts ignore)
    sim list error      ... a list prompt gets a blank 500 (--list-prompts error)
    sim ignore n        ... one choice whatever n asks (--ignore-n)
    sim ietf headers    ... RateLimit-* headers of the IETF draft (--header-style ietf)
    sim key budget      one budget per API key across models (RPM 600), LiteLLM's headers
    sim window          fixed 60 s windows from a window's first request (RPM 60), retry-after 60
    sim gateway window  ... with LiteLLM's headers (no reset), as LiteLLM's proxy limits a key
    sim window no headers ... and no rate-limit headers at all: only the 429s teach
    sim router minute   calendar minutes, rpm - 1 pass, LiteLLM's router headers (as litellm below)
    sim serial          one request at a time, 50 ms each, no rate limit (--serial)
    llmock              per-key buckets holding a whole minute (RPM 150); no /v1/completions
    litellm             calendar-minute windows per model deployment (rpm 61, usage-based-routing-v2)

"Told" gives what a user who read the server's documentation would give: ``--rpm`` and the
server's ``--burst`` (60 for a minute-long bucket or window), ``--budget-scope key`` where one
budget covers the key's models, ``--concurrency 1`` for the serial server.

**Ideal time** is what a client that knows the server exactly needs: per budget (a model, or the
key), the requests it must send (a chat job one request, or ``n`` where the server ignores ``n``;
the completions one packed request where lists are answered, else one each; llmock's 404 for the
completions counts one), then: buckets ``max(0, R - rpm × burst / 60) / (rpm / 60)``; windows from
the first request ``(ceil(R / rpm) - 1) × 60``; LiteLLM's calendar minutes (it refuses the rpm-th
request of a minute, so ``rpm - 1`` pass) the wait to the last minute needed from the run's start;
serial ``R × latency`` summed over budgets. Budgets run in parallel; the run's ideal is the
slowest budget's. **Efficiency** = ideal / wall, wall being runner's own measure (its summary).
**Jobs ok**: a success line holding the job's own answer with ``n`` choices (the simulator's
per-prompt text, llmock's echo; for LiteLLM only the count of choices, its answer is fixed).

    python bench/realservers.py                        # every target, 3 runs at a time, ~6 min
    python bench/realservers.py --targets llmock,litellm --modes learned
    python bench/realservers.py --litellm .venv-litellm/bin/litellm

Prints a markdown table and writes it to bench/results/realservers.md.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.simulator.answers import chat_prompt, completion_text  # noqa: E402
from tests.servers import (  # noqa: E402
    LITELLM_MASTER_KEY, LITELLM_MOCK_RESPONSE, LiteLLMProxy, Llmock, ServerDidNotStart, echo_text,
    free_port)

RESULTS = ROOT / "bench" / "results"
API_KEY = "sk-bench-realservers"
CHAT_MODELS = ("gpt-4o-mini", "gpt-4o")
COMPLETIONS_MODEL = "gpt-3.5-turbo-instruct"
CHAT_JOBS, COMPLETION_JOBS, N_EVERY = 200, 100, 5
RUN_TIMEOUT_S = 420.0  # a run still going after this is stopped (SIGTERM) and reported as such
MINUTE_S = 60.0
LEARNED, TOLD = "learned", "told"


@dataclass(frozen=True, slots=True)
class Target:
    """One server and what a perfect client could do against it."""

    name: str
    server: str                      # "sim", "llmock" or "litellm"
    rpm: int | None = None           # requests per minute per budget (None: no limit)
    limiter: str = "bucket"          # "bucket", "window" (from first request), "minute", "serial"
    burst_s: float = 2.0             # a bucket's capacity in seconds of budget
    scope: str = "model"             # one budget per "model" or per "key"
    lists: bool = True               # a list prompt gets every item answered
    honours_n: bool = True
    completions: bool = True         # serves /v1/completions
    latency_ms: float = 0.0
    sim_flags: tuple[str, ...] = ()
    told: tuple[str, ...] = ()       # runner's flags in the "told" run
    answers: str = "sim"             # how to check a job got its own answer: "sim", "echo", "fixed"


TARGETS = (
    Target("sim", "sim", rpm=300, told=("--rpm", "300", "--burst", "2")),
    Target("sim list ignore", "sim", rpm=300, lists=False, sim_flags=("--list-prompts", "ignore"),
           told=("--rpm", "300", "--burst", "2")),
    Target("sim list error", "sim", rpm=300, lists=False, sim_flags=("--list-prompts", "error"),
           told=("--rpm", "300", "--burst", "2")),
    Target("sim ignore n", "sim", rpm=300, honours_n=False, sim_flags=("--ignore-n",),
           told=("--rpm", "300", "--burst", "2")),
    Target("sim ietf headers", "sim", rpm=300, sim_flags=("--header-style", "ietf"),
           told=("--rpm", "300", "--burst", "2")),
    Target("sim key budget", "sim", rpm=600, scope="key",
           sim_flags=("--budget-scope", "key", "--header-style", "litellm"),
           told=("--rpm", "600", "--burst", "2", "--budget-scope", "key")),
    Target("sim window", "sim", rpm=60, limiter="window", sim_flags=("--limiter", "window"),
           told=("--rpm", "60", "--burst", "60")),
    Target("sim gateway window", "sim", rpm=60, limiter="window",
           sim_flags=("--limiter", "window", "--header-style", "litellm"),
           told=("--rpm", "60", "--burst", "60")),
    Target("sim window no headers", "sim", rpm=60, limiter="window",
           sim_flags=("--limiter", "window", "--header-style", "none"),
           told=("--rpm", "60", "--burst", "60")),
    Target("sim router minute", "sim", rpm=61, limiter="minute",
           sim_flags=("--limiter", "minute", "--header-style", "litellm-router"),
           told=("--rpm", "60", "--burst", "60")),
    Target("sim serial", "sim", limiter="serial", latency_ms=50.0, sim_flags=("--serial",),
           told=("--concurrency", "1")),
    Target("llmock", "llmock", rpm=150, burst_s=60.0, scope="key", completions=False,
           answers="echo", told=("--rpm", "150", "--burst", "60", "--budget-scope", "key")),
    Target("litellm", "litellm", rpm=61, limiter="minute", lists=False, answers="fixed",
           told=("--rpm", "60", "--burst", "60")),
)


def make_jobs() -> list[dict]:
    jobs = []
    for i in range(CHAT_JOBS):
        body = {"model": CHAT_MODELS[i % len(CHAT_MODELS)],
                "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 5}
        if i % N_EVERY == 0:
            body["n"] = 2
        jobs.append({"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
                     "body": body})
    for i in range(COMPLETION_JOBS):
        jobs.append({"custom_id": f"compl-{i}", "method": "POST", "url": "/v1/completions",
                     "body": {"model": COMPLETIONS_MODEL, "prompt": f"prompt {i}", "max_tokens": 5}})
    return jobs


# -- what a perfect client needs -------------------------------------------------------------------

def needed_requests(target: Target, jobs: list[dict]) -> dict[str, int]:
    """Requests per budget that a client knowing the server exactly must send."""
    need: dict[str, int] = {}
    packed: set[str] = set()
    for job in jobs:
        body = job["body"]
        budget = body["model"] if target.scope == "model" else "key"
        if job["url"] == "/v1/completions":
            if target.lists or not target.completions:  # one pack (or llmock's one 404)
                if budget in packed:
                    continue
                packed.add(budget)
            need[budget] = need.get(budget, 0) + 1
        else:
            n = body.get("n", 1)
            need[budget] = need.get(budget, 0) + (1 if target.honours_n else n)
    return need


def ideal_seconds(target: Target, jobs: list[dict], started_wall: float) -> float:
    need = needed_requests(target, jobs)
    latency = target.latency_ms / 1000
    if target.limiter == "serial":
        return sum(need.values()) * latency
    if target.rpm is None:
        return latency
    per_budget = []
    for requests in need.values():
        if target.limiter == "bucket":
            rate = target.rpm / MINUTE_S
            per_budget.append(max(0.0, requests - rate * target.burst_s) / rate)
        elif target.limiter == "window":
            per_budget.append((math.ceil(requests / target.rpm) - 1) * MINUTE_S)
        else:  # calendar minutes: rpm - 1 pass in each
            minutes = math.ceil(requests / (target.rpm - 1))
            into = started_wall % MINUTE_S
            per_budget.append(0.0 if minutes <= 1 else (MINUTE_S - into) + (minutes - 2) * MINUTE_S)
    return max(per_budget) + latency


def own_answer(target: Target, job: dict, record: dict) -> bool:
    if record.get("error") is not None:
        return False
    body, answer = job["body"], record["response"]["body"]
    n = body.get("n", 1)
    choices = answer.get("choices") or []
    if len(choices) != n:
        return False
    if job["url"] == "/v1/chat/completions":
        texts = [c["message"]["content"] for c in choices]
        prompt = chat_prompt(body["messages"])
    else:
        texts = [c.get("text") for c in choices]
        prompt = body["prompt"]
    if target.answers == "sim":
        return texts == [completion_text(prompt, j) for j in range(n)]
    if target.answers == "echo":
        return texts == [echo_text(prompt)] * n
    return texts == [LITELLM_MOCK_RESPONSE] * n


def jobs_ok(target: Target, jobs: list[dict], out: Path) -> int:
    last: dict[str, dict] = {}
    if out.exists():
        for line in out.read_bytes().splitlines():
            record = orjson.loads(line)
            last[record["custom_id"]] = record
    return sum(1 for job in jobs if job["custom_id"] in last
               and own_answer(target, job, last[job["custom_id"]]))


# -- servers ---------------------------------------------------------------------------------------

class Simulator:
    """``python -m runner simulate`` in its own process (it prints its base URL when ready)."""

    def __init__(self, target: Target) -> None:
        args = [sys.executable, "-m", "runner", "simulate", "--host", "127.0.0.1",
                "--port", str(free_port()), "--latency-ms", str(target.latency_ms), *target.sim_flags]
        if target.rpm is not None:
            args += ["--rpm", str(target.rpm), "--burst", str(target.burst_s)]
        self._errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._errors,
                                     text=True)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.stop()
            self._errors.seek(0)
            said = self._errors.read().decode(errors="replace").strip().splitlines()[-1:]
            raise ServerDidNotStart(f"the simulator did not start: {self.base_url!r} {said}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(target: Target, litellm: str | None, work_dir: Path):
    """(server with .base_url and .stop(), API key to use)."""
    if target.server == "sim":
        return Simulator(target), API_KEY
    if target.server == "llmock":
        return Llmock(rpm=target.rpm, latency_ms=int(target.latency_ms)).start(), API_KEY
    assert litellm is not None
    proxy = LiteLLMProxy(litellm, (*CHAT_MODELS, COMPLETIONS_MODEL), rpm=target.rpm,
                         work_dir=work_dir)
    return proxy.start(timeout=120.0), LITELLM_MASTER_KEY


# -- one run ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class Row:
    target: str
    mode: str
    limit: str
    told: str
    ok: int = 0
    jobs: int = 0
    wall: float = 0.0
    ideal: float = 0.0
    requests: int = 0
    rate_limited: int = 0
    note: str = ""
    failures: dict = field(default_factory=dict)

    @property
    def efficiency(self) -> float:
        return self.ideal / self.wall if self.wall > 0 else 0.0


def describe_limit(target: Target) -> str:
    if target.limiter == "serial":
        return f"serial, {target.latency_ms:g} ms"
    per = "key" if target.scope == "key" else "model"
    kind = {"bucket": f"bucket {target.burst_s:g} s", "window": "60 s window",
            "minute": "calendar minute"}[target.limiter]
    return f"RPM {target.rpm}/{per}, {kind}"


def measure(target: Target, mode: str, jobs: list[dict], jobs_path: Path, litellm: str | None,
            work_dir: Path) -> Row:
    told = target.told if mode == TOLD else ()
    row = Row(target.name, mode, describe_limit(target), " ".join(told) or "-", jobs=len(jobs))
    run_dir = Path(tempfile.mkdtemp(prefix=f"{target.name.replace(' ', '-')}-{mode}-", dir=work_dir))
    out, summary_path = run_dir / "out.jsonl", run_dir / "summary.json"
    try:
        server, key = start_server(target, litellm, run_dir)
    except ServerDidNotStart as e:
        row.note = f"server did not start: {str(e).splitlines()[0]}"
        return row
    try:
        started_wall = time.time()
        args = [sys.executable, "-m", "runner", "run", str(jobs_path), "-o", str(out), "--no-progress",
                "--base-url", server.base_url, "--summary-json", str(summary_path), *told]
        proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": key},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()
            _, stderr = proc.communicate()
            row.note = f"stopped after {RUN_TIMEOUT_S:g} s"
    finally:
        server.stop()
    if not summary_path.exists():
        row.note = (row.note + f"; no summary (exit {proc.returncode}): {stderr[-300:]}").strip("; ")
        return row
    summary = orjson.loads(summary_path.read_bytes())
    row.wall = summary["wall_seconds"]
    row.requests = summary["requests"]["sent"]
    row.rate_limited = summary["requests"]["rate_limited_429"]
    row.failures = summary["failures_by_code"]
    row.ok = jobs_ok(target, jobs, out)
    row.ideal = ideal_seconds(target, jobs, started_wall)
    return row


def table(rows: list[Row]) -> str:
    lines = ["| target | server limit | runner | told | jobs ok | wall s | ideal s | efficiency "
             "| 429s | requests | requests/job | notes |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        notes = "; ".join(filter(None, [r.note, ", ".join(f"{c} {n}" for c, n in r.failures.items())]))
        lines.append(f"| {r.target} | {r.limit} | {r.mode} | {r.told} | {r.ok}/{r.jobs} | "
                     f"{r.wall:.1f} | {r.ideal:.1f} | {r.efficiency:.2f} | {r.rate_limited} | "
                     f"{r.requests} | {r.requests / r.jobs:.2f} | {notes} |")
    return "\n".join(lines)


def find_litellm(given: str | None) -> tuple[str | None, str]:
    """(executable, why not) for the LiteLLM proxy."""
    path = given or shutil.which("litellm")
    if path is None:
        return None, ("litellm not found: pip install -e '.[litellm]' (or into its own virtual "
                      "environment, then --litellm PATH)")
    if not os.access(path, os.X_OK):
        return None, f"{path} is not executable"
    return path, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="",
                        help="Comma-separated target names (default: all): "
                             + ", ".join(t.name for t in TARGETS))
    parser.add_argument("--modes", default=f"{LEARNED},{TOLD}",
                        help=f"Comma-separated: {LEARNED} (limits from the answers), {TOLD} (given).")
    parser.add_argument("--parallel", type=int, default=3,
                        help="Runs at a time, each with its own server on its own port.")
    parser.add_argument("--litellm", default=None,
                        help="The litellm executable (default: `litellm` on PATH).")
    args = parser.parse_args()
    wanted = {name.strip() for name in args.targets.split(",") if name.strip()}
    unknown = wanted - {t.name for t in TARGETS}
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    targets = [t for t in TARGETS if not wanted or t.name in wanted]
    litellm, why_not = find_litellm(args.litellm)
    skipped = []
    if litellm is None and any(t.server == "litellm" for t in targets):
        skipped.append(f"litellm: skipped ({why_not})")
        targets = [t for t in targets if t.server != "litellm"]

    work_dir = RESULTS / "realservers-work"
    work_dir.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs()
    jobs_path = work_dir / "jobs.jsonl"
    jobs_path.write_bytes(b"".join(orjson.dumps(job) + b"\n" for job in jobs))
    plan = [(t, m) for t in targets for m in modes]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = [pool.submit(measure, t, m, jobs, jobs_path, litellm, work_dir) for t, m in plan]
        for future in futures:
            print(table([future.result()]).splitlines()[-1], flush=True)
        rows = [f.result() for f in futures]
    note = (f"\n{len(jobs)} jobs ({CHAT_JOBS} chat over {len(CHAT_MODELS)} models, every "
            f"{N_EVERY}th with n=2; {COMPLETION_JOBS} completions). Runs {args.parallel} at a "
            f"time; benchmark wall time {time.monotonic() - started:.0f} s.\n")
    if skipped:
        note += "\n" + "\n".join(skipped) + "\n"
    text = table(rows)
    print("\n" + text + "\n" + note)
    (RESULTS / "realservers.md").write_text(text + "\n" + note)


if __name__ == "__main__":
    main()
