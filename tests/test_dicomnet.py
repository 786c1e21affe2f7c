"""The DICOM network against a real Orthanc: studies pulled over DICOMweb, results as Structured Reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import requests
import torch

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import save_weights
from clinreadnet_cli.dicomnet import dicomweb
from clinreadnet_cli.dicomnet.dicomweb import DicomWebError, DicomWebServer
from clinreadnet_cli.dicomnet.sr import series_records, series_report, source_headers

from .conftest import tiny_config
from .orthanc import PASSWORD, USER, free_port, running_orthanc

SERIES = Path(__file__).resolve().parents[1] / "sample_data" / "dicom" / "lungfcp-01-0001"  # 4 CT slices


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_weights(create_model(tiny_config()), tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """Two CT studies of one series each: the sample series, and a copy of it under new UIDs."""
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("studies")
    shutil.copytree(SERIES, root / "first")
    (root / "second").mkdir()
    study, series = generate_uid(), generate_uid()
    for path in sorted(SERIES.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, series, "SECOND"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(root / "second" / path.name)
    return root


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, studies):
    """Orthanc holding the two CT studies."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        for path in sorted(studies.glob("*/*.dcm")):
            server.upload(path)
        yield server


@pytest.fixture
def signed_in(monkeypatch):
    monkeypatch.setenv(dicomweb.USER_ENV, USER)
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, PASSWORD)
    monkeypatch.setattr(dicomweb, "RETRY_WAIT_SECONDS", 0.0)


def study_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)


def command(*args) -> subprocess.CompletedProcess:
    """``clinreadnet ARGS`` in a process of its own, as a user runs it (the DICOM libraries, its
    decoding processes and its model stay out of the test process)."""
    return subprocess.run([sys.executable, "-m", "clinreadnet_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def score(*args) -> tuple[int, list[dict], str]:
    result = command("score", *args, "--format", "jsonl")
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def test_a_study_pulled_over_dicomweb_gets_the_records_of_its_files(pacs, weights, signed_in):
    code, remote, _ = score(pacs.dicomweb, "--study", study_uid(SERIES), "--weights", weights)
    assert code == 0
    code, local, _ = score(SERIES, "--weights", weights)
    assert code == 0 and len(remote) == len(local) == 4
    for r, f in zip(remote, local):
        assert abs(r["score"] - f["score"]) <= 1e-4
        assert {k: v for k, v in r.items() if k not in ("path", "score")} == \
               {k: v for k, v in f.items() if k not in ("path", "score")}
        # Named by its WADO-RS address: the instance can be fetched again from the record alone
        assert r["path"] == (f"{pacs.rest}/dicom-web/studies/{r['study_uid']}/series/{r['series_uid']}"
                             f"/instances/{r['sop_uid']}")


def test_one_series_by_uid_and_usage_errors(pacs, weights, signed_in):
    series = str(pydicom.dcmread(next(SERIES.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
    code, records, _ = score(pacs.dicomweb, "--study", study_uid(SERIES), "--series", series, "--weights", weights)
    assert code == 0 and {r["series_uid"] for r in records} == {series}
    for args, message in [
        ((pacs.dicomweb,), "needs --study"),
        ((pacs.dicomweb, "--study", "1.2.3.4"), "no study 1.2.3.4"),
        ((pacs.dicomweb.replace("://", f"://{USER}:{PASSWORD}@"), "--study", "1.2.3"), "carries no credentials"),
        ((SERIES, "--study", "1.2.3"), "choose what to score from a DICOMweb source"),
        ((pacs.dicomweb, "--study", study_uid(SERIES), "--store-sr"), "give both"),
    ]:
        result = command("score", *args, "--weights", weights)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert PASSWORD not in result.stdout + result.stderr


def test_a_server_that_refuses_or_is_gone_is_one_error_record(pacs, weights, signed_in, monkeypatch):
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, "wrong")
    code, records, err = score(pacs.dicomweb, "--study", study_uid(SERIES), "--weights", weights)
    assert code == 1 and len(records) == 1
    assert "HTTP 401" in records[0]["error"] and "check the credentials" in records[0]["error"]
    assert "wrong" not in err
    gone = f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web"
    code, records, _ = score(gone, "--study", "1.2.3", SERIES, "--weights", weights)
    assert code == 1
    assert "cannot connect (after 3 tries)" in records[0]["error"]
    assert sum("score" in r for r in records) == 4  # the files beside it are still scored


def test_retries_are_bounded_and_only_for_what_may_pass(monkeypatch):
    monkeypatch.setattr(dicomweb, "RETRY_WAIT_SECONDS", 0.0)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise requests.ConnectionError("reset")
        return "answer"

    assert dicomweb._with_retries(flaky, "x") == "answer" and len(calls) == 3

    def forbidden():
        calls.append(1)
        response = requests.Response()
        response.status_code, response.reason = 403, "Forbidden"
        raise requests.HTTPError(response=response)

    calls.clear()
    with pytest.raises(DicomWebError, match="HTTP 403 Forbidden: check the credentials, for x"):
        dicomweb._with_retries(forbidden, "x")
    assert len(calls) == 1  # a 4xx is not asked again


def test_credentials_come_from_the_environment_only():
    server = DicomWebServer.from_locator("dicomweb+https://pacs.example:443/dicom-web/",
                                         {dicomweb.TOKEN_ENV: "tok"})
    assert server.url == "https://pacs.example:443/dicom-web" and server.token == "tok"
    assert "tok" not in repr(server)
    with pytest.raises(ValueError, match="both"):
        DicomWebServer.from_locator("dicomweb+http://h/x", {dicomweb.TOKEN_ENV: "t", dicomweb.USER_ENV: "u"})
    with pytest.raises(ValueError, match="is not"):
        DicomWebServer.from_locator("dicomweb+http://h/x", {dicomweb.USER_ENV: "u"})
    with pytest.raises(ValueError, match="dicomweb\\+http://HOST"):
        DicomWebServer.from_locator("dicomweb+ftp://h/x", {})


def _measurements(sr) -> dict[str, dict]:
    """Per referenced SOP Instance UID: its group's measurements (meaning -> value) and grade."""
    found = {}
    for group in sr.content.get_image_measurement_groups():
        images = group.source_images
        if len(images) != 1:
            continue
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        grade = [q.value.meaning for q in group.get_qualitative_evaluations()]
        found[images[0].referenced_sop_instance_uid] = {**values, "grade": grade[0].lower()}
    return found


def test_the_sr_names_every_scored_image_and_orthanc_files_it_under_the_study(pacs, weights, signed_in, tmp_path):
    study = study_uid(SERIES)
    code, records, err = score(pacs.dicomweb, "--study", study, "--weights", weights, "--sr", tmp_path,
                               "--store-sr")
    assert code == 0, err
    [written] = tmp_path.glob("*.sr.dcm")
    assert written.name == f"{records[0]['series_uid']}.sr.dcm"
    sr = hd.sr.srread(written)
    source = pydicom.dcmread(next(SERIES.glob("*.dcm")), stop_before_pixels=True)
    assert (sr.StudyInstanceUID, sr.PatientID, sr.Modality) == (study, source.PatientID, "SR")
    per_image = _measurements(sr)
    assert set(per_image) == {r["sop_uid"] for r in records}
    for r in records:
        assert per_image[r["sop_uid"]]["Image Quality Rating"] == pytest.approx(r["score"], abs=1e-4)
        assert per_image[r["sop_uid"]]["grade"] == r["grade"]
    # Orthanc filed it under the source study, beside the CT series
    [orthanc_study] = [s for s in pacs.get("/studies?expand").json() if s["MainDicomTags"]["StudyInstanceUID"] == study]
    modalities = sorted(pacs.get(f"/series/{s}").json()["MainDicomTags"]["Modality"] for s in orthanc_study["Series"])
    assert modalities == ["CT", "SR"]
    stored_id = next(s for s in orthanc_study["Series"]
                     if pacs.get(f"/series/{s}").json()["MainDicomTags"]["Modality"] == "SR")
    [instance] = pacs.get(f"/series/{stored_id}/instances").json()
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(pacs.get(f"/instances/{instance['ID']}/file").content)
    assert _measurements(hd.sr.srread(stored)) == per_image
    # Scored again: the same report, not a second one; the SR series is skipped with a note
    code, _, err = score(pacs.dicomweb, "--study", study, "--weights", weights, "--sr", tmp_path, "--store-sr")
    assert code == 0 and "modality SR (not CT)" in err
    assert len(pacs.get(f"/series/{stored_id}/instances").json()) == 1


def test_files_get_their_reports_too(weights, studies, tmp_path):
    code, records, err = score(studies, "--weights", weights, "--sr", tmp_path / "sr")
    assert code == 0, err
    reports = sorted((tmp_path / "sr").glob("*.sr.dcm"))
    assert len(reports) == 2
    scored = {r["sop_uid"]: r for r in records}
    for path in reports:
        sr = hd.sr.srread(path)
        per_image = _measurements(sr)
        assert len(per_image) == 4
        for uid, values in per_image.items():
            assert values["Image Quality Rating"] == pytest.approx(scored[uid]["score"], abs=1e-4)
            assert values.get("Noise, standard deviation in uniform tissue") == pytest.approx(scored[uid]["noise_hu"])
        assert sr.StudyInstanceUID == scored[next(iter(per_image))]["study_uid"]


def test_a_report_does_not_keep_highdicoms_table_of_the_standard(weights, studies):
    """highdicom reads the standard's module table (about 65 MiB as Python objects) for each SR and
    would keep it; a node would then hold it through every later series' scoring."""
    standard = pytest.importorskip("highdicom._standard_utils")
    code, records, err = score(studies, "--weights", weights)
    assert code == 0, err
    series = next(iter(series_records(records).values()))
    first = series_report(series, source_headers(series, None), 2.0)
    assert standard.get_module_attribute_map.cache_info().currsize == 0
    again = series_report(series, source_headers(series, None), 2.0)  # read again, the same report
    assert again.PatientID == first.PatientID and again.StudyInstanceUID == first.StudyInstanceUID
    read = [hd.sr.Comprehensive3DSR.from_dataset(report) for report in (first, again)]
    assert _measurements(read[1]) == _measurements(read[0]) and len(_measurements(read[0])) == len(series)


def test_score_archive_queries_the_archive_by_date_and_resumes(pacs, studies, weights, signed_in, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "results"
    args = ["score-archive", pacs.dicomweb, "--out", out, "--weights", weights, "--since", "2000-01-01"]
    first = command(*args)
    assert first.returncode == 0, first.stderr
    records = pq.read_table(out / "records").to_pylist()
    assert len(records) == 8 and {r["sop_uid"] for r in records} == {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in studies.glob("*/*.dcm")}
    again = command(*args)
    assert again.returncode == 0 and "2 already finished" in again.stderr and "0 to score" in again.stderr
    future = command("score-archive", pacs.dicomweb, "--out", tmp_path / "none", "--weights", weights, "--since",
                     "2999-01-01")
    assert "0 series planned" in future.stderr
    refused = command("score-archive", studies, "--out", tmp_path / "x", "--since", "2000-01-01")
    assert refused.returncode == 2 and "query a DICOMweb source" in refused.stderr


# --- the DICOM node --------------------------------------------------------------------------------

def push(paths, port: int, calling: str = "SCANNER") -> list[int]:
    """C-STORE each file to the node, in one association; the status of each (None: no answer)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title="CLINREADNET")
    if not association.is_established:
        return []
    try:
        return [getattr(association.send_c_store(str(path)), "Status", None) for path in paths]
    finally:
        association.release()


class Listener:
    """``clinreadnet listen`` as its own process, as a department would run it."""

    def __init__(self, out: Path, weights: Path, *options: str):
        import subprocess
        import sys
        import time

        self.port = free_port()
        self.log = out.parent / f"{out.name}-listen.log"
        command = [sys.executable, "-m", "clinreadnet_cli", "listen", "--out", str(out), "--port", str(self.port),
                   "--weights", str(weights), *options]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        deadline = time.monotonic() + 120
        while "listening on" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "listen did not start"
            time.sleep(0.2)

    def wait_for(self, condition, seconds: float = 120):
        import time

        deadline = time.monotonic() + seconds
        while not condition():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.3)

    def stop(self, kill: bool = False) -> None:
        self.process.kill() if kill else self.process.terminate()
        self.process.wait(timeout=60)


def manifest(out: Path) -> list[dict]:
    path = out / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_listen_scores_a_pushed_series_and_forwards_its_sr(pacs, studies, weights, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "node"
    node = Listener(out, weights, "--series-timeout", "1", "--allow", "SCANNER",
                    "--forward", f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}")
    try:
        # A node serves on the C allocator (engine.allocator.run_on_system_allocator), in the process started
        environ = Path(f"/proc/{node.process.pid}/environ")
        assert not environ.exists() or {b"PYTHONMALLOC=malloc", b"MALLOC_ARENA_MAX=1"} <= set(
            environ.read_bytes().split(b"\0"))
        files = sorted(SERIES.glob("*.dcm"))
        report = _an_sr(tmp_path, weights)
        assert push([*files, report], node.port) == [0] * 5  # the SR is acknowledged and ignored
        assert push(files[:1], node.port, calling="INTRUDER") == []  # not in --allow: refused
        node.wait_for(lambda: len(manifest(out)) == 1)
        later = sorted((studies / "second").glob("*.dcm"))  # a second series, to the same model
        assert push(later, node.port) == [0] * 4
        node.wait_for(lambda: len(manifest(out)) == 2)
        node.wait_for(lambda: node.log.read_text().count("sent the SR") == 2)
        assert "ignored SR" in node.log.read_text()
        # Two series' records and tables written, by a child each time (engine.tables): Arrow's
        # libraries never enter the node, whose every later series would carry them
        maps = Path(f"/proc/{node.process.pid}/maps")
        assert not maps.exists() or "libarrow" not in maps.read_text()
    finally:
        node.stop()
    records = pq.read_table(out / "records").to_pylist()
    sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files + later}
    assert {r["sop_uid"] for r in records} == sops and all(r["error"] is None for r in records)
    assert pq.read_table(out / "series.parquet").num_rows == 2
    assert not any((out / "spool").rglob("*.dcm"))  # scored: the received files are gone
    sr_path = out / "sr" / f"{pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID}.sr.dcm"
    assert set(_measurements(hd.sr.srread(sr_path))) == sops - {str(pydicom.dcmread(p, stop_before_pixels=True)
                                                                     .SOPInstanceUID) for p in later}
    study = study_uid(SERIES)
    [orthanc_study] = [s for s in pacs.get("/studies?expand").json() if s["MainDicomTags"]["StudyInstanceUID"] == study]
    assert "SR" in {pacs.get(f"/series/{s}").json()["MainDicomTags"]["Modality"] for s in orthanc_study["Series"]}


def _an_sr(tmp_path: Path, weights: Path) -> Path:
    code, _, err = score(SERIES, "--weights", weights, "--sr", tmp_path / "sr")
    assert code == 0, err
    return next((tmp_path / "sr").glob("*.sr.dcm"))


def test_a_kill_mid_push_loses_no_acknowledged_instance(weights, tmp_path):
    import pyarrow.parquet as pq
    from pynetdicom import AE

    out = tmp_path / "node"
    files = sorted(SERIES.glob("*.dcm"))
    node = Listener(out, weights, "--series-timeout", "600")
    ae = AE(ae_title="SCANNER")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", node.port, ae_title="CLINREADNET")
    acknowledged = []
    for path in files[:3]:
        if getattr(association.send_c_store(str(path)), "Status", None) == 0:
            acknowledged.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    node.stop(kill=True)  # mid-push: the association is still open
    association.abort()
    assert len(acknowledged) == 3
    spooled = {p.stem for p in (out / "spool").rglob("*.dcm")}
    assert spooled == set(acknowledged)
    restarted = Listener(out, weights, "--series-timeout", "1")
    try:
        restarted.wait_for(lambda: len(manifest(out)) == 1)
    finally:
        restarted.stop()
    records = pq.read_table(out / "records").to_pylist()
    assert sorted(r["sop_uid"] for r in records) == sorted(acknowledged)


def test_a_full_spool_refuses_with_out_of_resources(weights, tmp_path):
    node = Listener(tmp_path / "node", weights, "--max-spool-gib", "0.000001")  # about 1 KiB
    try:
        assert push(sorted(SERIES.glob("*.dcm"))[:1], node.port) == [0xA700]
    finally:
        node.stop()
    assert "spool full" in node.log.read_text()


def test_a_stream_cut_halfway_is_completed_instance_by_instance(pacs, signed_in, monkeypatch, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    server = DicomWebServer.from_locator(pacs.dicomweb)
    [remote], _ = dicomweb.find_series(server, dicomweb.SeriesQuery(study_uid(SERIES)))
    stream = DICOMwebClient.iter_series
    streamed, asked = [], []

    def cut_after_two(self, *args, **kwargs):
        for count, dataset in enumerate(stream(self, *args, **kwargs)):
            if count == 2:
                raise requests.ConnectionError("connection reset by peer")
            streamed.append(str(dataset.SOPInstanceUID))
            yield dataset

    def counted(self, study, series, sop, **kwargs):
        asked.append(sop)
        return retrieve(self, study, series, sop, **kwargs)

    retrieve = DICOMwebClient.retrieve_instance
    monkeypatch.setattr(DICOMwebClient, "iter_series", cut_after_two)
    monkeypatch.setattr(DICOMwebClient, "retrieve_instance", counted)
    fetched = dicomweb.fetch_series(remote, tmp_path)
    on_disk = {p.stem for p in tmp_path.glob("*.dcm")}
    assert len(on_disk) == 4 and set(fetched.values()) == {remote.instance_url(uid) for uid in on_disk}
    # only the two the stream did not bring, each once
    assert len(asked) == len(set(asked)) == 2 and not set(asked) & set(streamed)


def test_a_port_that_is_taken_is_a_usage_error(weights, tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "clinreadnet_cli", "listen", "--out", str(tmp_path / "node"),
                               "--host", "127.0.0.1", "--port", str(port), "--weights", str(weights)],
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
