"""A DICOM node (``clinreadnet listen``): a Storage SCP (``pynetdicom``) that scanners and PACS push CT
studies to; each series is scored once complete, into a ``score-archive`` results folder.

- Received: each CT instance is written whole (fsync, then rename) into ``OUT/spool/<series>/``
  before its C-STORE is acknowledged, so an acknowledged instance survives a kill. Objects that are
  not CT images (reports, dose screens, other modalities) are acknowledged and ignored, with a log
  line. Past the spool's size limit, instances are refused with "out of resources" (0xA700).
- Complete: a series is scored once no instance of it has come for ``series_timeout`` seconds. Its
  unit key names the series and the instances it holds, so instances arriving after it was scored
  make a follow-up unit, and a series scored just before a kill is not scored twice on restart.
- Scored: by the local engine with one model loaded once (``engine.archive.run_local``); the records,
  the manifest and ``series.parquet`` go to OUT as ``score-archive`` writes them, each series' SR
  to ``OUT/sr/`` (and, with ``forward``, to a DICOM peer by C-STORE); then its spooled files go.
- Restarted: series left in the spool are scored (at once where their last file is older than the
  timeout).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Callable

from ..decoding import DecodeSettings
from ..dicomnet.dicomweb import uid_file_name
from ..dicomnet.dimse import SUCCESS, Peer, send
from ..dicomnet.sr import write_reports
from .base import ArchiveOptions, ArchiveStore, Unit
from .allocator import return_freed_memory
from .local import DecodePool

OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0xA700, 0xC000
CT_IMAGE_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
POLL_SECONDS = 0.5

Log = Callable[[str, str], None]  # (level: info | warning | error, message)


class ListenError(OSError):
    """The node cannot serve on the port it was given."""


class Spool:
    """Received CT instances, ``folder/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, at most
    ``max_bytes`` on disk; tracks when each series last grew."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = Path(folder), max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # series -> when its newest instance came
        self._taken: set[str] = set()  # series being scored: their new instances wait
        self.used = 0
        for series in (s for s in self.folder.iterdir() if s.is_dir()):  # left by an earlier run
            for partial in series.glob(".*.tmp"):
                partial.unlink()  # a write a kill interrupted: it was never acknowledged
            files = list(series.glob("*.dcm"))
            if files:  # scored like new arrivals, once their timeout has passed
                self._last[series.name] = max(f.stat().st_mtime for f in files)
                self.used += sum(f.stat().st_size for f in files)

    def receive(self, encoded: bytes, series_uid: str, sop_uid: str) -> int:
        """Write one instance whole and durably; the C-STORE status to answer with."""
        with self._lock:
            if self.used + len(encoded) > self.max_bytes:
                return OUT_OF_RESOURCES
            self.used += len(encoded)
        folder = self.folder / uid_file_name(series_uid)
        folder.mkdir(exist_ok=True)
        final = folder / f"{uid_file_name(sop_uid)}.dcm"
        partial = folder / f".{final.name}.{threading.get_ident()}.tmp"
        try:
            with open(partial, "wb") as f:
                f.write(encoded)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, final)
        except OSError:
            partial.unlink(missing_ok=True)
            with self._lock:
                self.used -= len(encoded)
            return OUT_OF_RESOURCES
        with self._lock:
            self._last[folder.name] = time.time()
        return SUCCESS

    def complete(self, timeout: float) -> list[str]:
        """Series that have had no new instance for ``timeout`` seconds and are not being scored."""
        now = time.time()
        with self._lock:
            return [s for s, last in self._last.items() if now - last >= timeout and s not in self._taken]

    def take(self, series: str) -> list[Path]:
        with self._lock:
            self._taken.add(series)
            self._last.pop(series, None)
        return sorted((self.folder / series).glob("*.dcm"))

    def release(self, series: str, files: list[Path]) -> None:
        """Remove a scored series' files; instances that came while it was scored stay for the next unit."""
        freed = 0
        for path in files:
            freed += path.stat().st_size
            path.unlink()
        with self._lock:
            self.used -= freed
            self._taken.discard(series)
            if any((self.folder / series).glob("*.dcm")):
                self._last.setdefault(series, time.time())
            else:
                (self.folder / series).rmdir()


def series_unit(series_uid: str, files: list[Path]) -> Unit:
    """The unit of a received series: its key names the instances it holds."""
    digest = hashlib.sha1("\n".join(sorted(p.name for p in files)).encode()).hexdigest()[:12]
    return Unit(f"series:{series_uid}:{digest}", tuple(str(p) for p in files))


class Node:
    """The Storage SCP and the loop that scores completed series (``serve``)."""

    def __init__(self, out: Path, spec, options: ArchiveOptions, ae_title: str, series_timeout: float,
                 max_spool_bytes: int, allow: list[str] | None = None, forward: Peer | None = None,
                 log: Log = lambda level, message: None):
        self.out, self.spec, self.options = Path(out), spec, options
        self.ae_title, self.series_timeout, self.allow, self.forward, self.log = (
            ae_title, series_timeout, allow, forward, log)
        self.max_spool_bytes = max_spool_bytes
        self.settings = DecodeSettings(spec.config(), spec.slices_per_batch(), options.input_range, options.limits,
                                       options.all_orientations)
        self.scorer = self.pool = self.store = self.spool = None  # started by serve(), kept for every series

    def handle_store(self, event) -> int:
        """C-STORE: a CT image is spooled before the answer; anything else is acknowledged and ignored."""
        sop_class = str(event.request.AffectedSOPClassUID)
        calling = event.assoc.requestor.ae_title
        try:
            dataset = event.dataset
            modality, series_uid = str(dataset.get("Modality", "")), str(dataset.get("SeriesInstanceUID", ""))
            sop_uid = str(event.request.AffectedSOPInstanceUID)
        except Exception as exc:  # noqa: BLE001 - a dataset pydicom cannot parse: refused, said why
            self.log("error", f"from {calling}: cannot read the dataset ({type(exc).__name__}: {exc}); refused")
            return CANNOT_UNDERSTAND
        if sop_class not in CT_IMAGE_CLASSES or modality != "CT" or not series_uid:
            self.log("info", f"from {calling}: ignored {modality or 'an object'} of SOP class {sop_class} "
                             f"(not a CT image)")
            return SUCCESS
        status = self.spool.receive(event.encoded_dataset(), series_uid, sop_uid)
        if status == OUT_OF_RESOURCES:
            self.log("error", f"from {calling}: spool full or not writable ({self.spool.used / 2**30:.2f} GiB "
                              f"held); instance {sop_uid} refused")
        return status

    def score_series(self, series: str) -> None:
        from .archive import run_local

        files = self.spool.take(series)
        return_freed_memory()  # what receiving the series freed, before scoring needs its own
        unit = series_unit(series, files)
        if self.store.status(unit) is not None:  # scored just before a kill, its files not yet removed
            self.log("info", f"series {series}: already scored ({len(files)} instances)")
            self.spool.release(series, files)
            return
        entries: list[dict] = []
        run_local([unit], self.settings, self.spec, self.store, self.options, entries.append,
                  lambda text: self.log("warning", text), scorer=self.scorer, pool=self.pool,
                  on_records=self._report)
        self.store.write_series_table()
        for entry in entries:
            level = "error" if entry["status"] == "failed" else "info"
            self.log(level, f"series {series}: {entry['slices']} slice(s) scored, {entry['errors']} error(s)"
                            + "".join(f"; mean {s['mean']:.2f}, min {s['min']:.2f}" for s in entry["series"]))
        self.spool.release(series, files)

    def _report(self, unit: Unit, records: list[dict]) -> None:
        """The unit's SR into OUT/sr (and to the forward peer); a failure is logged, the records stay.
        The model's working memory is handed back first: the report is made in it, and the node
        waits for the next series without it."""
        self.scorer.release_memory()
        try:
            for uid, sr, path in write_reports(records, None, self.out / "sr", self.options.threshold):
                self.log("info", f"wrote {path}")
                if self.forward is not None:
                    send(sr, self.forward, self.ae_title)
                    self.log("info", f"sent the SR of series {uid} to {self.forward.ae_title}@{self.forward.host}")
        except (ValueError, OSError) as exc:  # a unit of the node is one series
            self.log("error", f"{unit.key}: no Structured Report: {exc}")
        return_freed_memory()  # before the records' Parquet writer starts beside this process

    def serve(self, port: int, host: str = "", stop: threading.Event | None = None,
              on_listening: Callable[[], None] = lambda: None) -> None:
        """Receive and score until ``stop`` is set; unscored series stay spooled for the next start."""
        stop = stop or threading.Event()
        # As score does: the decoding processes fork first, without torch, pyarrow, pynetdicom or the
        # server's threads; the results folder and the model are opened before listening, so that
        # one that cannot be used stops the node at once (ArchiveError, WeightsError).
        with DecodePool(self.settings, self.options.workers) as self.pool:
            from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
            from pynetdicom.sop_class import Verification

            from ..checkpoint import read_config
            from .archive import run_info

            self.store = ArchiveStore(self.out, run_info(self.spec, self.options),
                                      assumed={"sampling_grids": read_config(self.spec.weights).sampling_grids})
            self.spool = Spool(self.out / "spool", self.max_spool_bytes)
            self.scorer = self.spec.build()
            ae = AE(ae_title=self.ae_title)
            for context in AllStoragePresentationContexts:  # compressed too: instances are kept as they come
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
            ae.add_supported_context(Verification)
            ae.maximum_pdu_size = 0
            if self.allow:
                ae.require_calling_aet = self.allow
            try:
                server = ae.start_server((host, port), block=False,
                                         evt_handlers=[(evt.EVT_C_STORE, self.handle_store)])
            except OSError as exc:  # the port is taken, or not ours to use
                raise ListenError(f"cannot listen on {host or '*'}:{port}: {exc.strerror or exc}") from None
            on_listening()
            try:
                while not stop.is_set():
                    for series in self.spool.complete(self.series_timeout):
                        self.score_series(series)
                    stop.wait(POLL_SECONDS)
            finally:
                server.shutdown()
