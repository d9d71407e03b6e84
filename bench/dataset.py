"""Memory of `runner prepare` and `runner export` stays flat as the table grows.

Generates a CSV of N rows (a quoted comma, a newline and non-ASCII text in every few rows), runs
`runner prepare` on it with `--id-column`, writes a result line for every job (in reverse order,
so export's index is really used, with a few retried lines), then `runner export --data` to CSV.
Each command runs in a fresh process; its peak resident memory (VmHWM) and wall time are
printed per size. Flat memory: the peak hardly moves while N grows tenfold.

    python bench/dataset.py                       # 100,000 and 1,000,000 rows
    python bench/dataset.py --rows 20000 200000
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
# The peak RSS of the command's own process: VmHWM (ru_maxrss would carry the parent's peak
# across exec on Linux, and this script's parent holds a whole job file at one point).
PROBE = ("import re, sys\n"
         "from runner.cli.main import main\n"
         "try:\n"
         "    main(sys.argv[1:])\n"
         "except SystemExit as e:\n"
         "    code = e.code\n"
         "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
         "print('maxrss_kib', hwm, code, file=sys.stderr)\n")
TEXTS = ("Hello, world", "two\nlines", "Grüße, 你好", 'say "hi"', "plain text of a review " * 4)


def generate(path: Path, rows: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["review_id", "text", "stars"])
        for i in range(rows):
            writer.writerow([f"r{i:08d}", f"{TEXTS[i % len(TEXTS)]} #{i}", i % 5 + 1])


def results(jobs: Path, out: Path) -> None:
    """A success line per job, last job first; every 50th job has a failed line before it."""
    lines = jobs.read_bytes().splitlines()
    with open(out, "wb") as f:
        for raw in reversed(lines):
            cid = orjson.loads(raw)["custom_id"]
            if hash(cid) % 50 == 0:
                f.write(orjson.dumps({"id": "x", "custom_id": cid, "response": None,
                                      "error": {"code": "server_error", "message": "m"}}) + b"\n")
            body = {"choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f"answer {cid}"}}],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}}
            f.write(orjson.dumps({"id": "x", "custom_id": cid, "error": None, "response": {
                "status_code": 200, "request_id": "r", "body": body}}) + b"\n")


def measure(*args: str) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of `runner ARGS` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          env=env)
    seconds = time.perf_counter() - started
    line = [x for x in proc.stderr.splitlines() if x.startswith("maxrss_kib")][-1].split()
    assert line[2] in ("0", "None"), proc.stderr[-2000:]
    return int(line[1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    print(f"{'rows':>10} {'prepare MiB':>12} {'s':>6} {'export MiB':>11} {'s':>6}")
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            generate(d / "data.csv", rows)
            prep = measure("prepare", str(d / "data.csv"), "-o", str(d / "jobs.jsonl"),
                           "-m", "gpt-4o-mini", "--id-column", "review_id",
                           "-t", "Rate this review ({{ stars }} stars): {{ text }}",
                           "--set", "max_tokens=5")
            results(d / "jobs.jsonl", d / "results.jsonl")
            exp = measure("export", str(d / "jobs.jsonl"), "--output", str(d / "results.jsonl"),
                          "-o", str(d / "answers.csv"), "--data", str(d / "data.csv"),
                          "--id-column", "review_id")
            print(f"{rows:>10,} {prep[0]:>12.0f} {prep[1]:>6.1f} {exp[0]:>11.0f} {exp[1]:>6.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
