"""DICOMweb sources: series found by QIDO-RS and fetched by WADO-RS (``dicomweb-client``).

A source is written ``dicomweb+http://HOST:PORT/PREFIX`` (or ``dicomweb+https://``); credentials come
from the environment (``CLINREADNET_DICOMWEB_TOKEN``, or ``CLINREADNET_DICOMWEB_USER`` and
``CLINREADNET_DICOMWEB_PASSWORD``), never from the address, so they appear in no record, log or
process list.

A series is fetched where it is decoded, one instance at a time, into a spool folder of its own
(each file written whole, then renamed) in the stored transfer syntax; the readers then check and
read it as they read files on disk, and the folder is removed once its slices are decoded. So no
study is held in memory, and a record names its instance by its WADO-RS address. A failed request
is retried; after RETRIES tries the series becomes one error naming it and the HTTP status.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping
from urllib.parse import urlsplit

from ..atomic import atomic_path
from ..decoding import Batch, DecodeSettings, PreparedSlice, series_batches
from ..readers import InputError, discover

if TYPE_CHECKING:
    from dicomweb_client.api import DICOMwebClient

SCHEMES = {"dicomweb+http": "http", "dicomweb+https": "https"}
TOKEN_ENV = "CLINREADNET_DICOMWEB_TOKEN"
USER_ENV = "CLINREADNET_DICOMWEB_USER"
PASSWORD_ENV = "CLINREADNET_DICOMWEB_PASSWORD"
RETRIES = 3  # tries of one request before its series fails
RETRY_WAIT_SECONDS = 0.5  # doubled after each failed try
TIMEOUT_SECONDS = 30.0  # connecting, or waiting for the next bytes of a response
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # as stored: compressed data is decoded by our readers

SERIES_UID, STUDY_UID, SOP_UID, MODALITY = "0020000E", "0020000D", "00080018", "00080060"


class DicomWebError(Exception):
    """A DICOMweb request that failed RETRIES times, said the way a user can act on it."""


def is_dicomweb(text: str) -> bool:
    return text.split("://", 1)[0].lower() in SCHEMES if "://" in text else False


@dataclass(frozen=True)
class DicomWebServer:
    """A DICOMweb service and the credentials to use it (kept out of ``repr``)."""

    url: str  # http(s)://host:port/prefix, no trailing slash
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_locator(cls, locator: str, environ: Mapping[str, str] = os.environ) -> "DicomWebServer":
        """``dicomweb+http(s)://host:port/prefix``; raises ValueError for anything else."""
        scheme, _, rest = locator.partition("://")
        parts = urlsplit(f"{SCHEMES.get(scheme.lower(), scheme)}://{rest}")
        if scheme.lower() not in SCHEMES or not parts.hostname:
            raise ValueError(f"{locator}: a DICOMweb source is written dicomweb+http://HOST:PORT/PREFIX "
                             "(or dicomweb+https://)")
        if parts.username or parts.password:
            raise ValueError(f"a DICOMweb address carries no credentials: set ${USER_ENV} and ${PASSWORD_ENV} "
                             f"(or ${TOKEN_ENV}) instead")
        if parts.query or parts.fragment:
            raise ValueError(f"{locator}: a DICOMweb source is the service's root, without ?query or #fragment")
        token = environ.get(TOKEN_ENV) or None
        user, password = environ.get(USER_ENV) or None, environ.get(PASSWORD_ENV)
        if token and user:
            raise ValueError(f"both ${TOKEN_ENV} and ${USER_ENV} are set: give one way to sign in")
        if user and password is None:
            raise ValueError(f"${USER_ENV} is set but ${PASSWORD_ENV} is not")
        return cls(parts.geturl().rstrip("/"), token, user, password)

    def client(self) -> "DICOMwebClient":
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        if self.user:
            session.auth = (self.user, self.password or "")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        client = DICOMwebClient(self.url, session=session, headers=headers, timeout=TIMEOUT_SECONDS)
        client.set_http_retry_params(retry=False)  # ours (``_with_retries``) also covers lost connections
        return client


@dataclass(frozen=True)
class RemoteSeries:
    """One series of a DICOMweb source: a unit of work, decoded where it is fetched."""

    server: DicomWebServer
    study_uid: str
    series_uid: str

    @property
    def url(self) -> str:
        return f"{self.server.url}/studies/{self.study_uid}/series/{self.series_uid}"

    def instance_url(self, sop_uid: str) -> str:
        return f"{self.url}/instances/{sop_uid}"


@dataclass(frozen=True)
class SeriesQuery:
    """Which series of a DICOMweb source to score: one study (``score``) or a QIDO-RS query of the
    whole archive (``score-archive``), of one modality, from a study date on."""

    study_uid: str | None = None
    series_uid: str | None = None
    modality: str = "CT"
    since: str | None = None  # YYYYMMDD: studies of that date or later

    def __post_init__(self) -> None:
        if self.series_uid and not self.study_uid:
            raise ValueError("--series needs --study")
        if self.since is not None and not (len(self.since) == 8 and self.since.isdigit()):
            raise ValueError(f"--since {self.since!r}: a date is written YYYYMMDD (or YYYY-MM-DD)")


def find_series(server: DicomWebServer, query: SeriesQuery) -> tuple[list[RemoteSeries], list[str]]:
    """The series ``query`` names, by QIDO-RS (every page), with a note for each series of a study
    skipped for its modality. Raises DicomWebError when the server cannot say, ValueError when a
    study or series it names is not there."""
    client = server.client()
    filters = {"StudyDate": f"{query.since}-"} if query.since else {}
    if query.series_uid:
        filters["SeriesInstanceUID"] = query.series_uid
    if query.study_uid:
        where = f"{server.url}/studies/{query.study_uid}/series"
        found = _with_retries(lambda: client.search_for_series(study_instance_uid=query.study_uid,
                                                               search_filters=filters, get_remaining=True), where)
        if not found:
            what = f"series {query.series_uid} of study" if query.series_uid else "study"
            raise ValueError(f"{server.url}: no {what} {query.study_uid} (QIDO-RS found nothing)")
    else:
        filters["Modality"] = query.modality
        found = _with_retries(lambda: client.search_for_series(search_filters=filters, get_remaining=True),
                              f"{server.url}/series")
    series, notes = [], []
    for item in found:
        remote = RemoteSeries(server, _value(item, STUDY_UID) or query.study_uid, _value(item, SERIES_UID))
        modality = _value(item, MODALITY)
        if modality != query.modality:
            notes.append(f"{remote.url}: skipped, modality {modality or 'not given'} (not {query.modality})")
        else:
            series.append(remote)
    return series, notes


def fetch_series(series: RemoteSeries, folder: Path) -> dict[Path, str]:
    """Every instance of ``series`` written to ``folder`` as ``<SOPInstanceUID>.dcm``; returns each
    file's WADO-RS address. The series is streamed once; after a failure only the instances not yet
    on disk are asked for, one by one. Raises DicomWebError after RETRIES failed tries."""
    client = series.server.client()
    fetched: dict[Path, str] = {}

    def keep(dataset) -> None:
        sop = str(dataset.SOPInstanceUID)
        path = folder / f"{uid_file_name(sop)}.dcm"
        with atomic_path(path) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
        fetched[path] = series.instance_url(sop)

    try:
        for dataset in client.iter_series(series.study_uid, series.series_uid, media_types=ANY_TRANSFER_SYNTAX):
            keep(dataset)
        return fetched
    except Exception as exc:  # noqa: BLE001 - any failure of the stream: go on instance by instance
        if not _retriable(exc):
            raise DicomWebError(_describe(exc, series.url, 1)) from None
    listed = _with_retries(lambda: client.search_for_instances(series.study_uid, series.series_uid,
                                                               get_remaining=True), series.url)
    have = set(fetched.values())
    for sop in [uid for uid in (_value(item, SOP_UID) for item in listed) if series.instance_url(uid) not in have]:
        keep(_with_retries(lambda sop=sop: client.retrieve_instance(series.study_uid, series.series_uid, sop,
                                                                    media_types=ANY_TRANSFER_SYNTAX),
                           series.instance_url(sop)))
    return fetched


def remote_batches(series: RemoteSeries, settings: DecodeSettings) -> Iterator[Batch]:
    """A DICOMweb series' batches, as ``engine.base.decode_unit`` makes them for files: fetched into
    a spool folder that is removed once the last batch is out (or the consumer stops)."""
    with tempfile.TemporaryDirectory(prefix="clinreadnet-dicomweb-") as spool:
        folder = Path(spool) / uid_file_name(series.series_uid)  # a series without a description is labelled so
        folder.mkdir()
        try:
            addresses = fetch_series(series, folder)
        except DicomWebError as exc:
            yield Batch([InputError(series.url, str(exc))])
            return
        found = discover([folder], settings.input_range, settings.limits, settings.all_orientations)
        located = [_relocated_text(text, addresses) for text in found.notes + found.warnings]
        for batch in series_batches(found.series, settings.cfg, settings.batch_size, found.errors, located):
            yield Batch([_relocated(item, addresses) for item in batch.items], batch.warnings)


def _relocated(item, addresses: dict[Path, str]):
    """A decoded item that names its instance by WADO-RS address instead of its spooled file."""
    address = addresses.get(Path(item.path))
    if address is None:
        return item
    if isinstance(item, PreparedSlice):
        return replace(item, path=address)
    return InputError(address, item.reason, item.slice)


def _relocated_text(text: str, addresses: dict[Path, str]) -> str:
    for path, address in addresses.items():
        text = text.replace(str(path), address)
    return text


def _with_retries(request, what: str):
    """``request()``, tried up to RETRIES times while it fails in a way that may pass."""
    attempt = 1
    while True:
        try:
            return request()
        except Exception as exc:  # noqa: BLE001 - sorted here: retried, or said as a DicomWebError
            if attempt == RETRIES or not _retriable(exc):
                raise DicomWebError(_describe(exc, what, attempt)) from None
        time.sleep(RETRY_WAIT_SECONDS * 2 ** (attempt - 1))
        attempt += 1


def _retriable(exc: Exception) -> bool:
    """Lost connections, time-outs and the statuses a busy server answers with; not 4xx (a wrong
    address or credentials do not change by asking again)."""
    import requests

    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status in (408, 429) or (status is not None and status >= 500)
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))


def _describe(exc: Exception, what: str, tries: int) -> str:
    import requests

    after = f" (after {tries} tries)" if tries > 1 else ""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        reason = exc.response.reason or ""
        hint = {401: ": check the credentials", 403: ": check the credentials"}.get(exc.response.status_code, "")
        return f"DICOMweb: HTTP {exc.response.status_code} {reason}{hint}{after}, for {what}".replace("  ", " ")
    if isinstance(exc, requests.ConnectionError):
        return f"DICOMweb: cannot connect{after}, for {what}"
    if isinstance(exc, requests.Timeout):
        return f"DICOMweb: no answer within {TIMEOUT_SECONDS:g} s{after}, for {what}"
    return f"DICOMweb: {type(exc).__name__}: {exc}{after}, for {what}"


def _value(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or [None]
    return None if values[0] is None else str(values[0])


def uid_file_name(uid: str) -> str:
    """A UID as a file name (UIDs are digits and dots; anything else a server sends is replaced)."""
    return "".join(c if c.isdigit() or c == "." else "_" for c in uid) or "_"


def fetch_metadata(series: RemoteSeries) -> list[dict]:
    """The series' instance headers as DICOM JSON (WADO-RS metadata: no pixel data)."""
    client = series.server.client()
    return _with_retries(lambda: client.retrieve_series_metadata(series.study_uid, series.series_uid),
                         f"{series.url}/metadata")


def store(server: DicomWebServer, dataset, study_uid: str) -> None:
    """Send one object to the server's study by STOW-RS (storing the same SOP Instance again replaces it)."""
    client = server.client()
    _with_retries(lambda: client.store_instances([dataset], study_uid), f"{server.url}/studies/{study_uid}")
