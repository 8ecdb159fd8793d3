"""Keep a pad of free memory at the top of glibc's heap, so erasure coding runs at speed.

PyECLib (liberasurecode + ISA-L) allocates fresh fragment buffers on every encode and
decode, and frees them when Python drops the fragments. glibc grows the heap for them,
and, once they are freed, gives the top back to the kernel (at once in Dask workers, whose
nanny sets ``MALLOC_TRIM_THRESHOLD_=65536``). The next call grows it again and the kernel
zeroes every page on first touch. Measured here on RS(4,2) of a 1 MiB value
(``benchmarks/bench_erasure.py``): ISA-L's Cauchy code encoded at 0.77 GB/s so, and at 14
GB/s with a 64 MiB pad; at 64 KiB values, 12 GB/s either way.

:func:`keep_pad` sets glibc's ``M_TOP_PAD`` (extra memory asked for on growth, and kept
on trim) to ``storage.coding-heap-pad`` the first time a codec is made in a process:
the price is at most that much memory kept by the process. ``0`` leaves the allocator as
it is; other C libraries than glibc are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

from swarmstore import config

__all__ = ["keep_pad"]

logger = logging.getLogger(__name__)

_M_TOP_PAD = -2  # glibc's malloc.h
_lock = threading.Lock()
_done = False


def keep_pad() -> int:
    """Apply ``storage.coding-heap-pad`` once per process; returns the pad set (0: none)."""
    global _done
    with _lock:
        if _done:
            return 0
        _done = True
        pad = int(config.value("storage.coding-heap-pad"))
        if pad <= 0:
            return 0
        mallopt = _mallopt()
        if mallopt is None or not mallopt(_M_TOP_PAD, min(pad, 2**31 - 1)):
            logger.debug("no glibc mallopt here: the heap pad for erasure coding is not set")
            return 0
        logger.debug("glibc M_TOP_PAD set to %d bytes for erasure coding", pad)
        return pad


def _mallopt() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn
