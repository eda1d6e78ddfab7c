"""Freed volumes go back to the operating system (glibc's malloc), so memory stays bounded.

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap``, which
``free`` unmaps at once. The threshold starts at 128 KiB but is *dynamic*: each time such a block
is freed it rises to that block's size (up to 32 MiB). After the first freed volume, volume-sized
arrays (a 96³ float32 volume is 3.4 MiB, its float64 temporaries 7 MiB) then come from the
heap arenas of whichever thread allocated them (the reader, model and scoring threads each get
one), and memory freed there mostly stays in the process: peak RSS grows with the number of
volumes although only a few are alive at a time. Fixing the threshold (``mallopt``) turns the
dynamic rise off. Measured with ``benchmarks/bench_volumes.py`` (peak RSS of ``medfail run``,
10 vs 1 volumes of 96³): see ``benchmarks/latest.json: volume_memory_ratio``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys

#: ``M_MMAP_THRESHOLD`` of glibc's ``mallopt``
M_MMAP_THRESHOLD = -3
#: allocations of at least this many bytes are mapped (and unmapped when freed)
MMAP_THRESHOLD = 1 << 20


def return_freed_volumes() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (process-wide); returns whether it
    was set (False off Linux/glibc, where nothing is changed). Allocations under 1 MiB (2D
    images, tables) are served as before."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
