"""Issue 22 benchmark: the job reader's duplicate check with a narrow table against a wide one.

    python bench/reader_table.py                    # 1,000,000 jobs (bench/scale.py's file)
    python bench/reader_table.py --jobs 10000000 --dir /somewhere/large

Every line of a job file of tiny jobs (as `bench/scale.py` writes them) fed to `jobs.reader.
JobReader` with its INPUT read back by `runner.files.inputs.Rereader` (as a run reads INPUT), its
duplicate check's `IdTable` narrow (4 bytes a slot, line numbers, the digest's lowest bits kept:
what runner uses) or wide (8 bytes, the top 24 bits kept: what it used before), in turns, in one
process. For each: CPU seconds (best of `--repeat`), the ids read back from INPUT to confirm a
match (one for each id found, and one for each id whose kept bits matched another's: a `pread`
of INPUT each), and the table's size.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from jobs import idtable  # noqa: E402
from jobs.reader import JobReader  # noqa: E402
from runner.files.inputs import Rereader  # noqa: E402
from scale import job_file  # noqa: E402


def read_all(path: Path, narrow: bool) -> tuple[float, int, int]:
    """(CPU seconds, ids read back, table bytes) of reading every line of `path`."""
    original = idtable.IdTable.__init__

    def init(self, recall, **kwargs):  # the reader's table, made narrow or wide
        kwargs["narrow"] = narrow
        original(self, recall, **kwargs)

    with Rereader.of(str(path)) as reread:
        idtable.IdTable.__init__ = init  # type: ignore[method-assign]
        try:
            reader = JobReader(str(path), reread=reread, expected_lines=reread.lines())
        finally:
            idtable.IdTable.__init__ = original  # type: ignore[method-assign]
        table = reader._first_line
        recall, recalls = table._recall, [0]

        def counted(line: int) -> str | None:
            recalls[0] += 1
            return recall(line)

        table._recall = counted
        started = time.process_time()
        with open(path, "rb") as f:
            for raw in f:
                reader.feed(raw[:-1])
        return time.process_time() - started, recalls[0], table.nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=ROOT / "bench" / "results" / "scale")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    path = job_file(args.dir, args.jobs)
    best: dict[bool, tuple[float, int, int]] = {}
    for _ in range(args.repeat):
        for narrow in (False, True):
            result = read_all(path, narrow)
            if narrow not in best or result[0] < best[narrow][0]:
                best[narrow] = result
    for narrow, (cpu, recalls, nbytes) in best.items():
        print(f"{'narrow' if narrow else 'wide':6}  CPU {cpu:6.2f} s  ids read back {recalls:>10,}"
              f"  table {nbytes / 1e6:6.1f} MB")
    print(f"narrow / wide: CPU {best[True][0] / best[False][0]:.2f}, "
          f"table {best[True][2] / best[False][2]:.2f}")


if __name__ == "__main__":
    main()
