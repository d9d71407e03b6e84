"""The C heap of a long run: a large block freed goes back to the system, not to a pool kept for later.

glibc's malloc serves each block of `MMAP_THRESHOLD` bytes or more with a mapping of its own,
unmapped when freed, until such a block is freed: the threshold then rises to that block's size
(up to 32 MiB on 64-bit), and the heap keeps up to twice that in free space before giving any
back. A run frees large blocks all the time (an id table of 16 MB when it doubles, a read of
1 MiB, a batch's journal line of 3 MB, a batch file being uploaded), so after the first one every
block below its size comes from the heap, and freed, stays with the process: at 1,000,000 jobs
through `--via batch`, 30 to 40 MB of peak RSS held by nothing (docs/benchmarks.md, "Batch API at
a million jobs").

`return_freed_memory()` sets the threshold to glibc's own starting value, which turns the rising
off (mallopt(3): setting M_MMAP_THRESHOLD disables the dynamic adjustment). Small blocks are
untouched (Python's own allocator serves them); a block of 128 KiB or more costs one mmap and one
munmap, next to which reading or parsing it is many times more. Elsewhere (not glibc: macOS,
musl) it does nothing.
"""
from __future__ import annotations

import os

M_MMAP_THRESHOLD = -3           # mallopt's parameter number (glibc <malloc.h>)
MMAP_THRESHOLD = 128 * 1024     # glibc's default, kept: blocks this large get a mapping of their own


def return_freed_memory() -> bool:
    """Keep glibc's mmap threshold where it starts (see the module docstring); True when set,
    False where the C library is not glibc (nothing is changed)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError, AttributeError):  # not glibc (no confstr at all on Windows)
        return False
    import ctypes  # noqa: PLC0415 (only where it is used: ~2 ms of import)

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
