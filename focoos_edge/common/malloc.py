"""glibc's allocator, set for a daemon holding video frames: two arenas and a fixed mmap threshold.

By default glibc gives every thread that allocates its own arena (up to 8 per core) and raises its
mmap threshold to the size of the largest block freed so far. Decoded frames are megabytes each:
once one has been freed, later frames come from the arenas and their pages stay resident after
they are freed, in every camera thread's arena. Two arenas and a 128 KiB threshold (blocks above it
are mapped and unmapped with their allocation) took four 1080p cameras from about 186 MB to about
153 MB (scripts/bench.py, docs/performance.md). The cost, a fresh mapping per large block, is why
sampled frames are converted into shared buffers (capture/source.py, ConversionBuffers).

Applied by ``focoos-edge run`` first, before the config's imports and before any thread starts. ``MALLOC_ARENA_MAX`` or
``MALLOC_MMAP_THRESHOLD_`` in the environment win (glibc reads them at start); elsewhere than glibc
(musl has no mallopt) nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD_BYTES = 128 * 1024
ENV = {M_ARENA_MAX: "MALLOC_ARENA_MAX", M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_"}


def tune_malloc(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Set the arena count and mmap threshold unless the environment sets them; returns what was
    set (by environment variable name), empty where mallopt is not available."""
    env = os.environ if env is None else env
    mallopt = _mallopt()
    if mallopt is None:
        log.debug("malloc: no mallopt in this C library; allocator left as it is")
        return {}
    applied = {}
    for param, value in ((M_ARENA_MAX, ARENA_MAX), (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)):
        if ENV[param] in env:
            continue
        if mallopt(param, value) == 1:
            applied[ENV[param]] = value
    log.debug("malloc: %s", applied or "set by the environment")
    return applied


def _mallopt():
    # The process's own symbols: the C library it runs on, found without find_library's ldconfig
    # subprocess at every start.
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
