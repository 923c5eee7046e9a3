"""Keep freed CPU memory in the process: glibc malloc settings for batched torch work.

PyTorch allocates CPU tensors with ``malloc``.  glibc serves every block
above its mmap threshold with a fresh ``mmap`` and hands freed heap tops back
to the kernel, so a batched energy evaluation (a few dozen [B, N, N]
temporaries of ~2 MB each) page-faults its way through fresh memory on every
call.  On the 2-core CI machine that doubled the time of the compiled energy
kernel (ADP, B = 1024: 25 -> 13 us per frame).  :func:`retain_freed_memory`
is the runtime equivalent of ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``: blocks up to ``mmap_threshold`` come from the
heap and freed memory stays mapped for reuse (the resident size stays at its
peak, as with jemalloc or tcmalloc).

It changes the whole process, so it is called explicitly by the processes
that do the heavy CPU work (the CLI, Ray Train workers, the benchmarks), never
on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems


def retain_freed_memory(mmap_threshold: int = _MMAP_THRESHOLD_MAX) -> bool:
    """Serve blocks up to mmap_threshold bytes from the heap and never trim it; True if applied.

    Returns False (and changes nothing) where the C library is not glibc.
    """
    if not 0 < mmap_threshold <= _MMAP_THRESHOLD_MAX:
        raise ValueError(f"mmap_threshold: expected 1..{_MMAP_THRESHOLD_MAX} bytes, got {mmap_threshold!r}")
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
