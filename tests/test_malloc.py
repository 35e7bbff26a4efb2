"""The allocator settings `focoos-edge run` applies (common/malloc.py), seen through glibc itself:
after a 6 MB block has been freed, a 1 MB block is still mapped on its own (and so returned to the
system when freed) instead of coming from the heap, where it would stay resident."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from focoos_edge.common.malloc import tune_malloc

PROBE = r"""
import ctypes, json, sys
from focoos_edge.common.malloc import tune_malloc
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = MallInfo2
applied = tune_malloc() if sys.argv[1] == "tuned" else {}
libc.free(libc.malloc(6 << 20))  # glibc's dynamic threshold would now rise to 6 MB
before = libc.mallinfo2().hblkhd
block = libc.malloc(1 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({"applied": applied, "mapped": mapped}))
"""


def probe(mode: str, env: dict[str, str] | None = None) -> dict:
    clean = {"PATH": "/usr/bin:/bin", **(env or {})}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60,
                         env=clean, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module", autouse=True)
def glibc():
    if not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"):
        pytest.skip("not glibc 2.33+: no mallinfo2 to observe the allocator with")


def test_tuned_allocator_maps_large_blocks_after_a_frame_was_freed():
    default, tuned = probe("default"), probe("tuned")
    assert default["mapped"] == 0  # from the heap: glibc raised its threshold after the 6 MB free
    assert tuned["mapped"] >= 1 << 20
    assert tuned["applied"] == {"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 131072}


def test_the_environment_wins_over_the_daemons_settings():
    got = probe("tuned", {"MALLOC_MMAP_THRESHOLD_": str(64 << 20)})
    assert got["applied"] == {"MALLOC_ARENA_MAX": 2}
    assert got["mapped"] == 0  # the user's 64 MB threshold: a 1 MB block comes from the heap


def test_tune_malloc_reports_what_it_set_in_this_process():
    assert tune_malloc({"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "1"}) == {}
