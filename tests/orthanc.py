"""A real Orthanc PACS for the DICOM network tests: Debian's ``orthanc`` with its DICOMweb plugin
(``orthanc-dicomweb``), started from a temporary configuration on free ports and stopped at the end."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "radiology", "s3cret-pass"


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    aet: str = "ORTHANC"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root as clinreadnet takes it."""
        return f"dicomweb+{self.rest}/dicom-web"

    def get(self, path: str):
        response = requests.get(f"{self.rest}{path}", auth=(USER, PASSWORD), timeout=30)
        response.raise_for_status()
        return response

    def upload(self, path: Path) -> dict:
        response = requests.post(f"{self.rest}/instances", data=path.read_bytes(), auth=(USER, PASSWORD), timeout=30)
        response.raise_for_status()
        return response.json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_orthanc(folder: Path, modalities: dict | None = None) -> Iterator[Orthanc]:
    """Orthanc on free ports, storing in ``folder``, with HTTP basic authentication (USER, PASSWORD).
    ``modalities``: its DICOM peers, name -> [AE title, host, port]. Skips the test where Orthanc is
    not installed (.ci/run installs it)."""
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if binary is None or not DICOMWEB_PLUGIN.exists():
        pytest.skip("no Orthanc with its DICOMweb plugin here (.ci/run installs Debian's orthanc, orthanc-dicomweb)")
    server = Orthanc(free_port(), free_port())
    config = {
        "Name": "clinreadnet-tests", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": server.http_port, "DicomPort": server.dicom_port, "DicomAet": server.aet,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": modalities or {}, "DicomCheckCalledAet": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("w")
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.get("/system")
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
