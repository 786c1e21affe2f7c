"""One machine: worker processes decode units while this process runs the model.

Workers take units from a queue and put back batches of prepared slices; the queue of batches is
bounded (``prefetch`` batches), so memory does not grow with the archive, and a worker that dies
(a reader library crashing on a hostile file) costs its unit, not the run. Start the pool before
importing torch and the workers fork without it: their start-up then overlaps the model's.
Started later, in a process that already runs threads of its own, the workers come from a clean
fork server instead (see ``start_method``).
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import queue
import signal
import sys
import threading
from collections import defaultdict, deque
from typing import Callable, Iterator, Sequence

from ..readers import InputError
from .allocator import reuse_freed_memory
from ..decoding import Batch, DecodeSettings
from ..scoring import nvidia_gpus_listed
from .base import Unit, decode_unit

END = None  # marks a unit's last batch in the event stream
POLL_SECONDS = 1.0  # how often a silent queue makes us check that the workers are alive
# Libraries that run thread pools of their own once loaded. A fork copies their locks, perhaps held,
# into a child that has none of their threads: a decoding worker forked from a long-lived process
# holding them can wait forever on such a lock.
THREADED_LIBRARIES = ("torch", "onnxruntime", "openvino", "ray", "pynetdicom")


def start_method() -> str:
    """How decoding workers start: ``fork`` (instant, copy-on-write) while this process runs only
    its main thread and has loaded none of ``THREADED_LIBRARIES``, as the CLI does by starting its
    pool first; otherwise ``forkserver``, whose server is a fresh interpreter that forks the workers
    without any of this process's threads or locks (``spawn`` where Linux's fork is not there)."""
    if sys.platform != "linux":
        return "spawn"
    threaded = threading.active_count() > 1 or any(name in sys.modules for name in THREADED_LIBRARIES)
    return "forkserver" if threaded else "fork"


def decode_workers(choice: str, device: str) -> int:
    """The number of decoding processes ``--workers`` asks for: a count, or ``auto``.

    auto: with a GPU (``device`` cuda, or auto on a machine with an NVIDIA driver), every free core
    but the one that feeds the GPU, since the model no longer uses them; on the CPU one, since the
    model takes every core and a slice's decoding costs a few percent of its forward.
    Raises ValueError for anything else."""
    if choice != "auto":
        if not choice.isdigit() or int(choice) < 1:
            raise ValueError(f"--workers takes a count >= 1 or auto, not {choice!r}")
        return int(choice)
    gpu = device == "cuda" or (device == "auto" and nvidia_gpus_listed())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1) if gpu else 1


def _worker(tasks, conn, settings: DecodeSettings, inherited: list) -> None:
    # Forked with every pipe's receiving end: close them, so that when the main process dies our
    # sends fail (and we end) instead of filling a pipe nobody reads.
    for end in inherited:
        end.close()
    reuse_freed_memory()
    parent = os.getppid()  # the main process, or the fork server that ends with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if "torch" in sys.modules:  # forked from a process that has torch: keep its thread pool out
        import torch

        torch.set_num_threads(1)
    while True:
        try:
            task = tasks.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:  # the main process is gone (killed, or ended by a closed pipe)
                os._exit(0)
            continue
        if task is None:
            return
        tag, unit = task
        # conn.send returns once the message is in the pipe: batches sent survive a later crash
        try:
            for batch in decode_unit(unit, settings):
                conn.send(("batch", tag, batch))
        except Exception as exc:  # a reader failing in a way of its own: this unit only
            conn.send(("batch", tag, Batch([InputError(unit.paths[0], f"cannot read ({type(exc).__name__}: {exc})")])))
        conn.send(("end", tag, None))


class DecodePool:
    """``workers`` decoding processes; ``events(units)`` yields (unit index, Batch | END).

    Each worker has its own task queue and its own pipe back, so this process knows which units a
    worker holds and which of its batches arrived: when one dies (a reader library crashing on a
    hostile file), the unit it was reading fails, the ones queued behind it go to its successor,
    and no other worker's messages are touched. A thread here drains the pipes into a queue of at
    most ``prefetch`` batches: memory stays flat however large the archive.
    """

    def __init__(self, settings: DecodeSettings, workers: int = 2, prefetch: int = 32, units_ahead: int = 2):
        self.settings = settings
        self.units_ahead = units_ahead  # units queued per worker beyond the one it reads
        self._inbox: queue.Queue = queue.Queue(maxsize=max(2, prefetch))
        self._lock = threading.Lock()
        self._pipes: dict = {}  # receiving end -> worker index
        self._closed = False
        self._workers = [self._start(w) for w in range(max(1, workers))]
        self._receiver = threading.Thread(target=self._receive, name="clinreadnet-receive", daemon=True)
        self._receiver.start()

    def _start(self, w: int):
        # Asked at every start: a dead worker's successor starts once this process runs the receiving
        # thread and the model's thread pools, so it comes from the fork server, not a fork.
        method = start_method()
        context = mp.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload([__name__])  # the readers, imported once in the server
        tasks = context.Queue()
        receiving, sending = context.Pipe(duplex=False)
        with self._lock:
            inherited = [receiving, *self._pipes] if method == "fork" else []  # only a fork copies our ends
        process = context.Process(target=_worker, args=(tasks, sending, self.settings, inherited),
                                  daemon=True, name="clinreadnet-decode")
        process.start()
        sending.close()  # only the worker writes: its death closes the pipe, which is how we notice
        with self._lock:
            self._pipes[receiving] = w
        return process, tasks

    def _receive(self) -> None:
        while not self._closed:
            with self._lock:
                pipes = dict(self._pipes)
            for pipe in mp_connection.wait(list(pipes), timeout=POLL_SECONDS):
                try:
                    kind, tag, payload = pipe.recv()
                except (EOFError, OSError):  # the worker died; everything it sent whole came before this
                    with self._lock:
                        del self._pipes[pipe]
                    pipe.close()
                    kind, tag, payload = "died", None, None
                self._deliver((kind, pipes[pipe], tag, payload))

    def _deliver(self, message) -> None:
        while not self._closed:
            try:
                return self._inbox.put(message, timeout=POLL_SECONDS)
            except queue.Full:
                continue

    def events(self, units: Sequence[Unit]) -> Iterator[tuple[int, Batch | None]]:
        """Every unit's batches in order, then END for it; units run in parallel, each on one worker.

        The first units are handed out here, not on the first ``next()``: call this before loading
        the model and the workers decode while it loads."""
        waiting = iter(range(len(units)))
        held: list[deque[int]] = [deque() for _ in self._workers]  # per worker: its units, oldest first

        def hand_out(w: int) -> None:
            while len(held[w]) <= self.units_ahead and (tag := next(waiting, None)) is not None:
                held[w].append(tag)
                self._workers[w][1].put((tag, units[tag]))

        for w in range(len(self._workers)):
            hand_out(w)
        return self._collect(units, held, hand_out)

    def _collect(self, units: Sequence[Unit], held: list[deque[int]],
                 hand_out: Callable[[int], None]) -> Iterator[tuple[int, Batch | None]]:
        remaining = len(units)
        while remaining:
            kind, w, tag, payload = self._inbox.get()
            if kind == "batch":
                yield tag, payload
                continue
            if kind == "died":
                dead, _ = self._workers[w]
                dead.join(timeout=5)
                self._workers[w] = self._start(w)
                if not held[w]:
                    continue
                tag = held[w].popleft()
                reason = f"the decoding process died (exit code {dead.exitcode}) while reading this input"
                yield tag, Batch([InputError(units[tag].paths[0], reason)])
                for queued in held[w]:
                    self._workers[w][1].put((queued, units[queued]))
            else:
                held[w].popleft()
            hand_out(w)
            remaining -= 1
            yield tag, END

    def close(self) -> None:
        """Stop the workers: they hold nothing that is not already delivered or given up."""
        self._closed = True
        for process, tasks in self._workers:
            process.terminate()
            tasks.cancel_join_thread()
        for process, _ in self._workers:
            process.join(timeout=5)
        self._receiver.join(timeout=5)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def score_events(events: Iterator[tuple[int, Batch | None]], scorer,
                 on_warning: Callable[[str], None] = lambda text: None) -> Iterator[tuple[int, list | None]]:
    """(unit index, scored items | END) as a pool's batches (``DecodePool.events``) come through
    ``scorer`` (an ``api.Scorer``, built after the pool has forked)."""
    for tag, batch in events:
        if batch is END:
            yield tag, END
            continue
        for text in batch.warnings:
            on_warning(text)
        yield tag, scorer.score_items(batch.items)


def in_unit_order(events: Iterator[tuple[int, list | None]]) -> Iterator[tuple[int, list]]:
    """Re-order per-unit results into unit order, streaming the earliest unfinished unit as it
    comes and holding the others back until their turn."""
    held: dict[int, list] = defaultdict(list)
    finished: set[int] = set()
    head = 0
    for tag, items in events:
        if items is END:
            finished.add(tag)
        elif tag == head:
            yield tag, items
        else:
            held[tag].extend(items)
        while head in finished:
            head += 1
            if held.get(head):
                yield head, held.pop(head)
