"""Issue 22 benchmark: `jobs.idtable.IdTable`'s speed and size against another version of it.

    python bench/idtable.py --base 0d509d7      # 1M and 10M ids, about 10 minutes here
    python bench/idtable.py --ids 1000000 --repeat 5

The version in this tree and the one at git revision `--base` (default HEAD: the last commit,
for a change not committed yet) are loaded side by side and timed in turns, in one process, on
the same ids ("job-0" ... , hashed beforehand: the times are the table's own work), recalled
from a list (the owner's read of a line is not timed). For each id count:

- put_all:    `put_all` of every id into a table that grows from its least size (as OUTPUT's
              table when it is read without an estimate, the merge's of each output);
- reserved:   the same into a table given `reserve(count)` first (as OUTPUT's in a resume);
- setdefault: `setdefault` of every id, one by one, into a reserved table (the job reader's
              duplicate check: a fresh run's one table);
- find:       `find` of every id in the reserved table (a resume's "is it done?");
- miss:       `find` of as many ids it does not hold (the same for a job not done yet).

`--loads 0.6,0.7,0.75,0.8`: then reserved, find and miss again, for this tree's table made with
as many slots as hold the ids at each load (`IdTable(slots=...)`, not growing before), over the
base's reserved table: what each load costs.

Best of `--repeat` in CPU seconds of this process (the machine is shared and noisy: wall time
counts the others' work), and this tree's time over the base's. Then each table's size after
`reserve` and after growing, and its load.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def version_at(revision: str) -> ModuleType:
    """jobs/idtable.py as it was at `revision`."""
    source = subprocess.run(["git", "show", f"{revision}:jobs/idtable.py"], cwd=ROOT, check=True,
                            capture_output=True).stdout
    path = Path(tempfile.mkdtemp()) / "idtable_base.py"
    path.write_bytes(source)
    return module_at(path, "idtable_base")


def module_at(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(step) -> float:
    gc.collect()
    started = time.process_time()
    step()
    return time.process_time() - started


def steps(module: ModuleType, ids: list[str], others: list[str]) -> dict:
    """Seconds of each step for `module`'s IdTable; the tables' sizes."""
    recall = ids.__getitem__
    grown = module.IdTable(recall)
    times = {"put_all": timed(lambda: grown.put_all(ids, range(len(ids))))}
    sizes = {"grown": grown.nbytes}
    one_by_one = module.IdTable(recall)
    one_by_one.reserve(len(ids))
    times["setdefault"] = timed(lambda: all(one_by_one.setdefault(cid, n) < 0
                                            for n, cid in enumerate(ids)))
    grown = one_by_one = None  # their memory back before the next table
    reserved = module.IdTable(recall)
    reserved.reserve(len(ids))
    times.update(at_size(reserved, ids, others))
    sizes["reserved"] = reserved.nbytes
    return {"times": times, **sizes}


def at_size(table, ids: list[str], others: list[str]) -> dict[str, float]:
    """Seconds of `put_all`, `find` and a missing `find` of an empty `table`."""
    find = table.find
    times = {"reserved": timed(lambda: table.put_all(ids, range(len(ids)))),
             "find": timed(lambda: all(find(cid) >= 0 for cid in ids)),
             "miss": timed(lambda: not any(find(cid) >= 0 for cid in others))}
    assert len(table) == len(ids)
    return times


def keep(best: dict[str, float], times: dict[str, float]) -> None:
    """The least time of each step in `best`."""
    for step, seconds in times.items():
        best[step] = min(best.get(step, seconds), seconds)


def at_load(module: ModuleType, load: float, ids: list[str]):
    """An empty table of `module` with as many slots as hold `ids` at `load`, not growing
    before."""
    kept = module.MAX_LOAD
    module.MAX_LOAD = max(kept, load)  # read when the slots are allocated
    try:
        return module.IdTable(ids.__getitem__, slots=int(len(ids) / load) + 1)
    finally:
        module.MAX_LOAD = kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD", help="git revision to compare with (default HEAD)")
    ap.add_argument("--ids", default="1000000,10000000", help="id counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--loads", default="",
                    help="loads to time this tree's table at, comma-separated")
    args = ap.parse_args()
    loads = [float(load) for load in args.loads.split(",") if load]
    versions = {"base": version_at(args.base),
                "this": module_at(ROOT / "jobs" / "idtable.py", "idtable_this")}
    for n in map(int, args.ids.split(",")):
        ids = [f"job-{i}" for i in range(n)]
        others = [f"other-{i}" for i in range(n)]
        for cid in ids + others:
            hash(cid)  # cached in the str: every version gets its digests for free
        best: dict[str | float, dict[str, float]] = {name: {} for name in [*versions, *loads]}
        sizes: dict[str, dict] = {}
        for _ in range(args.repeat):
            for name, module in versions.items():  # in turns: the machine's noise falls on both
                sizes[name] = steps(module, ids, others)
                keep(best[name], sizes[name]["times"])
            for load in loads:
                keep(best[load], at_size(at_load(versions["this"], load, ids), ids, others))
        print(f"{n:,} ids, best of {args.repeat} (CPU seconds):")
        for step in best["this"]:
            base, this = best["base"][step], best["this"][step]
            print(f"  {step:10} base {base:7.2f}  this {this:7.2f}  this/base {this / base:5.2f}")
        for load in loads:
            ratios = (f"{step} {seconds / best['base'][step]:4.2f}"
                      for step, seconds in best[load].items())
            print(f"  this at load {load:.2f} (over base): " + "  ".join(ratios))
        for name in versions:
            got = sizes[name]
            print(f"  {name}: reserved {got['reserved'] / 1e6:6.1f} MB "
                  f"(load {8 * n / got['reserved']:.2f}), grown {got['grown'] / 1e6:6.1f} MB "
                  f"(load {8 * n / got['grown']:.2f})")
        del ids, others, sizes


if __name__ == "__main__":
    main()
