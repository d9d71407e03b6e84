"""`runner.heap`: with glibc, a large block freed goes back to the system however large the blocks
freed before it were (without the setting, they teach glibc to keep such blocks on its heap)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from runner.heap import return_freed_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * {page} / 2**20

if sys.argv[1] == "set":
    assert return_freed_memory()
big = b"t" * (16 << 20)  # a table of 16 MB, freed: glibc alone now keeps blocks below 16 MB
del big
before = rss_mb()
held = [b"x" * (1 << 20) for _ in range(24)]  # 24 reads of 1 MiB, held at once, then freed
del held
print(rss_mb() - before)
"""


def kept_mb(setting: str) -> float:
    """MB of RSS a fresh process still holds after freeing 24 blocks of 1 MiB."""
    code = PROBE.format(page=os.sysconf("SC_PAGE_SIZE"))
    out = subprocess.run([sys.executable, "-c", code, setting], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout)


def glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


@pytest.mark.slow  # starts two processes
@pytest.mark.skipif(not glibc() or not os.path.exists("/proc/self/statm"),
                    reason="glibc's malloc on Linux")
def test_blocks_freed_after_a_larger_one_go_back_to_the_system():
    assert kept_mb("unset") > 16  # the problem: glibc kept the freed MiBs on its heap
    assert kept_mb("set") < 4


def test_elsewhere_it_changes_nothing_and_says_so(monkeypatch):
    from runner import heap

    def not_glibc(name):
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(heap.os, "confstr", not_glibc)
    assert heap.return_freed_memory() is False
