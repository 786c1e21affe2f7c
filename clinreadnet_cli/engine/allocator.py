"""glibc's allocator, set for what each process does: decoding workers keep what they free for the
next slice, a node hands back what a burst of work freed and runs without Python's own allocator.
Imports nothing heavy: ``listen`` calls ``run_on_system_allocator`` before anything else."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def glibc():
    """glibc's allocator functions (``mallopt``, ``malloc_trim``), or None where they are not there
    (other systems, musl): the functions here then change nothing."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def reuse_freed_memory() -> None:
    """Keep freed memory in this process for the next slice instead of handing it back to the
    system. A slice's decoding allocates and frees arrays of about 1 MB many times over; by
    default glibc maps each afresh from the system and returns it on free, and touching the new
    pages again cost more CPU than the arithmetic (2.4 of 3.4 ms of the 9 x 9 mean,
    benchmarks/decode_cost.py). A worker's peak memory is unchanged: it holds its largest
    slice's arrays either way."""
    libc = glibc()
    if libc is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 2**20)  # arrays below this come from the heap, reused
    libc.mallopt(m_trim_threshold, 256 * 2**20)  # free heap kept up to this much


def return_freed_memory() -> None:
    """Hand the memory freed so far back to the system: a long-running process after a burst of
    work, such as the threads that received a pushed series, whose freed memory would otherwise
    stay counted against it."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def run_on_system_allocator() -> None:
    """Start this command again in this process (same PID and arguments) with Python's small-object
    allocator off (``PYTHONMALLOC=malloc``), unless ``PYTHONMALLOC`` is set already.

    That allocator takes memory in 1 MiB arenas and hands one back only once every object in it is
    freed. In a node scoring series after series, the few objects each series leaves behind end
    up among the many short-lived ones its Structured Report is built of, and each series kept
    about 0.1 MiB a slice for good (the node grew 605 -> 654 MiB over 12 series of 30 slices,
    benchmarks/listen_memory.py --series 12); without the SR, or on glibc's allocator, whose freed
    memory ``return_freed_memory`` hands back, the same loop stayed flat. Only where glibc is, and
    only in a process started as clinreadnet (not a program that calls the command as a library)."""
    if "PYTHONMALLOC" in os.environ or glibc() is None:  # an allocator the user chose is kept
        return
    entry = Path(sys.argv[0])
    if entry.name != "clinreadnet" and entry != Path(__file__).resolve().parents[1] / "__main__.py":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # One heap for every thread: the receiving threads' own heaps raised a 150-slice series' peak
    # by 42 MiB, where one heap kept it below pymalloc's (benchmarks/listen_memory.py)
    environment = {"MALLOC_ARENA_MAX": "1", **os.environ, "PYTHONMALLOC": "malloc"}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
