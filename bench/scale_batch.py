"""Issue 22 benchmark, Batch API path: peak memory and rates of `--via batch` for a million jobs.

    python bench/scale_batch.py                     # 1,000,000 jobs, packed (20 files of 50,000 jobs)
    python bench/scale_batch.py --no-pack           # the same, one job a line: 20 files of 50,000 lines
    python bench/scale_batch.py --jobs 100000

Tiny jobs (embeddings of one word, as `bench/scale.py` writes them) against `runner simulate` in
its own process, its Batch API answering at once (no validation or finalizing delay, a million
lines a second: the provider's hours are not what is measured); each step is its own
`python -m runner` process, its peak RSS read with `wait4`:

- run:     `runner run JOBS -o OUT --via batch --poll-every 0.2`, a fresh OUTPUT, every job;
- resume:  the same command again over the finished OUTPUT (nothing left to do);
- status:  `runner status JOBS -o OUT`.

Then every job must have exactly one line in OUT (ids read back and counted). The simulator's
own memory is not measured (it keeps every output file, as the provider does).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from scale import free_port, job_file  # noqa: E402  (the same jobs as bench/scale.py's)

PROVIDER = ["--batch-lines-per-s", "1000000", "--batch-validate-s", "0", "--batch-finalize-s", "0"]
POLL_EVERY_S = "0.2"


def runner(*args: str) -> dict:
    """One `python -m runner` process: exit code, wall seconds, peak RSS (MB), its stderr."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT,
                            env={**os.environ, "OPENAI_API_KEY": "sk-bench",
                                 "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    return {"code": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - started,
            "rss": usage.ru_maxrss / 1024, "err": err}


def each_once(output: Path, n: int) -> tuple[bool, int]:
    """(every job job-0 .. job-(n-1) has exactly one line in `output`, lines read)."""
    import orjson
    seen = bytearray(n)
    lines = 0
    twice = 0
    with open(output, "rb") as f:
        for raw in f:
            lines += 1
            cid = orjson.loads(raw)["custom_id"]
            i = int(cid.removeprefix("job-"))
            twice += seen[i]
            seen[i] = 1
    return twice == 0 and lines == n and all(seen), lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--no-pack", action="store_true", help="one job a batch line (runner --no-pack)")
    ap.add_argument("--dir", type=Path, default=ROOT / "bench" / "results" / "scale")
    args = ap.parse_args()
    n = args.jobs
    work = args.dir
    jobs = job_file(work, n)
    out = work / f"batch-out-{n}{'-nopack' if args.no_pack else ''}.jsonl"
    for extra in (out, out.with_name(out.name + ".lock"), out.with_name(out.name + ".batches")):
        extra.unlink(missing_ok=True)
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "runner", "simulate", "--port", str(port),
                            *PROVIDER], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert sim.stdout is not None
    base = sim.stdout.readline().decode().strip()
    command = ["run", str(jobs), "-o", str(out), "--via", "batch", "--base-url", base,
               "--poll-every", POLL_EVERY_S, "--no-progress", *(["--no-pack"] if args.no_pack else [])]
    print(f"{n:,} jobs{' (--no-pack)' if args.no_pack else ''}: python -m runner "
          + " ".join(command), flush=True)

    def row(step: str, r: dict) -> None:
        rate = n / r["wall"] if r["wall"] else 0
        print(f"{step:8} exit {r['code']}  {r['wall']:7.1f} s  {rate:>10,.0f} jobs/s  "
              f"peak RSS {r['rss']:6.0f} MB", flush=True)
        if r["code"] != 0:
            print(r["err"][-3000:], file=sys.stderr)

    try:
        row("run", runner(*command))
        row("resume", runner(*command))
        row("status", runner("status", str(jobs), "-o", str(out)))
        started = time.perf_counter()
        ok, lines = each_once(out, n)
        print(f"check    {'every job exactly once' if ok else 'WRONG'}: {lines:,} lines "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
