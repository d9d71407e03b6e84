"""Issue 22 benchmark: peak memory and rates of run, resume, status and merge for millions of jobs.

    python bench/scale.py                       # 1,000,000 jobs, about 5 minutes
    python bench/scale.py --jobs 10000000       # the same for 10 million (about an hour here)

Tiny jobs (embeddings of one word, packed by runner) against `runner simulate` in its own process,
no rate limits; each step is its own `python -m runner` process, its peak RSS read with `wait4`:

- run:     a fresh OUTPUT, every job;
- resume:  the same command again over the finished OUTPUT (nothing left to do): the run left
           OUTPUT.resume, so this reads the index and hashes both files (docs/resume.md);
- noindex: the same with OUTPUT.resume removed first: OUTPUT read line by line (as after a
           change, or a killed run), which writes the index again;
- kill:    a fresh OUTPUT, SIGKILL once half the jobs have lines, then the same command to the end
           (its RSS is the resume's); every job must then have exactly one line. Before that
           resume, on copies of the killed files, the same command with `--limit 1` (everything
           a resume reads before its first request, and one job): `reread` from the run's last
           partial index (saved every --index-every seconds, 10 by default), `reread0` with it
           removed (OUTPUT and INPUT read whole); their rates count the killed run's lines;
- status:  `runner status` of the finished OUTPUT;
- merge:   the finished OUTPUT split into 4 shard outputs (by `--shard K/4`'s rule), merged back.

Files go to --dir (default bench/results/scale); they are large (about 560 bytes a result line).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.shard import shard_of  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jobs(path: Path, n: int) -> None:
    with open(path, "wb", buffering=1 << 20) as f:
        for i in range(n):
            f.write(b'{"custom_id":"job-%d","method":"POST","url":"/v1/embeddings","body":'
                    b'{"model":"text-embedding-3-small","input":"w%d"}}\n' % (i, i))


def job_file(work: Path, n: int) -> Path:
    """`work`/jobs-N.jsonl, written unless it is there already with its N lines."""
    work.mkdir(parents=True, exist_ok=True)
    jobs = work / f"jobs-{n}.jsonl"
    if not jobs.exists() or sum(1 for _ in open(jobs, "rb")) != n:
        write_jobs(jobs, n)
    return jobs


def runner(*args: str, kill_when: Path | None = None, kill_at: int = 0) -> dict:
    """One `python -m runner` process: exit code, wall seconds, CPU seconds (user and system:
    steadier than wall time on a shared machine), peak RSS (MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT,
                            env={**os.environ, "OPENAI_API_KEY": "sk-bench",
                                 "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_when is not None:
        while proc.poll() is None:
            time.sleep(0.5)
            if kill_when.exists() and kill_when.stat().st_size >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode() if proc.stderr else ""
    return {"code": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - started,
            "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024, "err": err}


def once_each(output: Path, n: int) -> bool:
    """Every job has exactly one line in `output`."""
    count = 0
    for line in open(output, "rb"):
        count += 1
    return count == n  # ids are unique per line by the run's own rule; lines = jobs


def split_shards(output: Path, parts: int) -> list[Path]:
    import orjson
    paths = [output.with_name(f"{output.stem}.shard{k}.jsonl") for k in range(1, parts + 1)]
    files = [open(p, "wb", buffering=1 << 20) for p in paths]
    try:
        for line in open(output, "rb"):
            cid = orjson.loads(line)["custom_id"]
            files[shard_of(cid, parts) - 1].write(line)
    finally:
        for f in files:
            f.close()
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=ROOT / "bench" / "results" / "scale")
    ap.add_argument("--skip", default="", help="steps to skip, comma-separated (run: only when "
                                                "its OUTPUT is there from an earlier time)")
    ap.add_argument("--index-every", default="10", help="the kill step's --index-every (seconds)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    n = args.jobs
    work = args.dir
    jobs = job_file(work, n)
    out, killed = work / f"out-{n}.jsonl", work / f"killed-{n}.jsonl"
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "runner", "simulate", "--port", str(port)],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert sim.stdout is not None
    base = sim.stdout.readline().decode().strip()
    common = ["--base-url", base, "--no-progress"]
    rows = []

    def row(step: str, r: dict, items: int, what: str) -> None:
        rate = items / r["wall"] if r["wall"] else 0
        rows.append((step, r["code"], r["wall"], rate, what, r["rss"]))
        print(f"{step:8} exit {r['code']}  {r['wall']:7.1f} s  {rate:>10,.0f} {what}/s  "
              f"CPU {r['cpu']:7.1f} s  peak RSS {r['rss']:6.0f} MB", flush=True)
        if r["code"] not in ((0, 3) if step.startswith("reread") else (0,)) and step != "kill":
            print(r["err"][-2000:], file=sys.stderr)

    try:
        rerun = "run" not in skip or not out.exists()  # the later steps need its OUTPUT
        for path in (out, killed) if rerun else (killed,):
            for extra in (path, path.with_name(path.name + ".lock"),
                          path.with_name(path.name + ".resume")):
                extra.unlink(missing_ok=True)
        if rerun:
            row("run", runner("run", str(jobs), "-o", str(out), *common), n, "jobs")
        if "resume" not in skip:
            row("resume", runner("run", str(jobs), "-o", str(out), *common), n, "jobs")
        if "noindex" not in skip:
            out.with_name(out.name + ".resume").unlink(missing_ok=True)
            row("noindex", runner("run", str(jobs), "-o", str(out), *common), n, "jobs")
        if "kill" not in skip:
            size = out.stat().st_size
            row("kill", runner("run", str(jobs), "-o", str(killed), *common, "--index-every",
                               args.index_every, kill_when=killed, kill_at=size // 2), n // 2, "jobs")
            half = sum(1 for _ in open(killed, "rb"))
            index = killed.with_name(killed.name + ".resume")
            probe = work / f"probe-{n}.jsonl"
            for step, keep_index in (("reread", True), ("reread0", False)):
                shutil.copyfile(killed, probe)
                probe_index = probe.with_name(probe.name + ".resume")
                probe_index.unlink(missing_ok=True)
                if keep_index and index.exists():
                    shutil.copyfile(index, probe_index)
                row(step, runner("run", str(jobs), "-o", str(probe), *common, "--limit", "1"),
                    half, "lines")
            for path in (probe, probe.with_name(probe.name + ".resume")):
                path.unlink(missing_ok=True)
            r = runner("run", str(jobs), "-o", str(killed), *common)
            row("resumed", r, n, "jobs")
            print(f"         killed with {half:,} lines; after the resume every job once: "
                  f"{once_each(killed, n)}")
        if "status" not in skip:
            row("status", runner("status", str(jobs), "-o", str(out)), n, "jobs")
        if "merge" not in skip:
            shards = split_shards(out, 4)
            merged = work / f"merged-{n}.jsonl"
            row("merge", runner("merge", *map(str, shards), "-o", str(merged), "--jobs", str(jobs)),
                n, "lines")
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
