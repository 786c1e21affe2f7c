"""One DICOM Structured Report per scored series (``highdicom``): a Comprehensive 3D SR holding a TID
1500 Measurement Report, which a PACS files under the source study and its viewers list beside the
images.

Content (the codes are explained in docs/dicom-network.md):
- one measurement group (TID 1501) per scored slice, referencing its image by SOP Instance UID:
  the score as DCM 111029 "Image Quality Rating" (0 bad ... 4 excellent, unit ``{score}``), the
  grade as a qualitative evaluation in the private scheme 99CLINREADNET (DICOM's image-quality
  codes have no "fair" or "bad"), and the noise figure in HU where it was measured;
- one group for the series, referencing every scored image: DCM 111694 "Image Set Quality
  Rating" as the mean and as the minimum of the slices' scores (SCT derivations), the number of
  slices and of slices below the threshold;
- the weights' name and SHA-256 as the algorithm identification of every group.

Patient and study attributes are copied from the source images (highdicom reads them from the
evidence), so the report joins the study it describes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ..atomic import atomic_path
from ..version import __version__

if TYPE_CHECKING:
    from pydicom import Dataset

    from .dicomweb import RemoteSeries

SCHEME = "99CLINREADNET"  # private coding scheme of the concepts DICOM has no code for
SERIES_NUMBER = 9901  # where the reports sort in a viewer's series list: after the images
SR_SUFFIX = ".sr.dcm"
GRADES = ("bad", "poor", "fair", "good", "excellent")
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _codes():
    """The concepts, built once pydicom is imported (the module itself imports no DICOM library)."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    return {
        "title": codes.DCM.ImagingMeasurementReport,
        "procedure": codes.SCT.ComputedTomography,
        "slice_score": Code("111029", "DCM", "Image Quality Rating"),
        "series_score": Code("111694", "DCM", "Image Set Quality Rating"),
        "grade": Code("grade", SCHEME, "Image quality grade (0-4 scale)"),
        "grades": {g: Code(g, SCHEME, g.capitalize()) for g in GRADES},
        "noise": Code("noise-hu", SCHEME, "Noise, standard deviation in uniform tissue"),
        "slices": Code("slices", SCHEME, "Slices scored"),
        "below": Code("slices-below", SCHEME, "Slices scoring below the threshold"),
        "mean": codes.SCT.Mean,
        "minimum": codes.SCT.Minimum,
        "score_unit": Code("{score}", "UCUM", "score"),
        "count_unit": Code("{slices}", "UCUM", "slices"),
        "hu": codes.UCUM.HounsfieldUnit,
    }


def source_headers(records: list[dict], remote: "RemoteSeries | None") -> dict[str, "Dataset"]:
    """The scored images' headers by SOP Instance UID (no pixel data): read from the files, or, for
    a DICOMweb series, from its WADO-RS metadata (the instances themselves are not fetched again)."""
    from pydicom import Dataset

    from ..readers.dicom import read_header

    if remote is not None:
        from .dicomweb import fetch_metadata

        headers = [Dataset.from_json(item) for item in fetch_metadata(remote)]
    else:
        headers = [read_header(Path(path)) for path in dict.fromkeys(r["path"] for r in records)]
    return {str(h.SOPInstanceUID): h for h in headers if "SOPInstanceUID" in h}


def series_report(records: list[dict], headers: dict[str, "Dataset"], threshold: float) -> "Dataset":
    """The SR of one series' scored records (records of one SeriesInstanceUID, with ``sop_uid``).
    Raises ValueError when a record's image has no header (nothing to reference)."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    code = _codes()
    missing = [r["sop_uid"] for r in records if r.get("sop_uid") not in headers]
    if missing:
        raise ValueError(f"no DICOM header for {len(missing)} scored image(s), e.g. SOP Instance UID {missing[0]}")
    first = records[0]
    algorithm = hd.sr.AlgorithmIdentification(name="clinreadnet", version=__version__,
                                              parameters=[f"weights={first['weights']}",
                                                          f"weights_sha256={first['weights_sha256']}"])

    def image(record: dict):
        header = headers[record["sop_uid"]]
        return hd.sr.SourceImageForMeasurementGroup(str(header.SOPClassUID), str(header.SOPInstanceUID))

    def group(name: str, images, measurements, evaluations=None, algorithm_id=None):
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=name),
            algorithm_id=algorithm_id, measurements=measurements, qualitative_evaluations=evaluations,
            source_images=images)

    groups = []
    for record in records:
        measurements = [hd.sr.Measurement(code["slice_score"], float(record["score"]), code["score_unit"])]
        if record.get("noise_hu") is not None:
            measurements.append(hd.sr.Measurement(code["noise"], float(record["noise_hu"]), code["hu"]))
        grade = hd.sr.QualitativeEvaluation(code["grade"], code["grades"][record["grade"]])
        groups.append(group(f"slice {record['slice']}", [image(record)], measurements, [grade]))
    scores = [float(r["score"]) for r in records]
    groups.append(group("series", [image(r) for r in records], [
        hd.sr.Measurement(code["series_score"], sum(scores) / len(scores), code["score_unit"],
                          derivation=code["mean"]),
        hd.sr.Measurement(code["series_score"], min(scores), code["score_unit"], derivation=code["minimum"]),
        hd.sr.Measurement(code["slices"], float(len(scores)), code["count_unit"]),
        hd.sr.Measurement(code["below"], float(sum(s < threshold for s in scores)), code["count_unit"],
                          method=hd.sr.CodedConcept(f"below-{threshold:g}", SCHEME, f"Score below {threshold:g}")),
    ], algorithm_id=algorithm))  # once for the report: every group of it comes from the same weights
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(entropy_srcs=["clinreadnet", __version__]),
                                                       name="clinreadnet",
                                                       manufacturer_name="clinreadnet",
                                                       model_name=f"clinreadnet {__version__}")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=code["procedure"],
                                     imaging_measurements=groups, title=code["title"])
    evidence = [_evidence(headers[r["sop_uid"]], patient_and_study=i == 0) for i, r in enumerate(records)]
    # The same images scored by the same weights make the same report UIDs: sent again, it replaces
    # (or is refused as a copy of) the first, instead of piling up beside it in the PACS
    identity = [first["weights_sha256"], str(first.get("sampling_grids")), *sorted(r["sop_uid"] for r in records)]
    with warnings.catch_warnings():  # the source's patient name is copied as it is, one component or not
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        sr = hd.sr.Comprehensive3DSR(evidence=evidence, content=report,
                                     series_instance_uid=generate_uid(entropy_srcs=[*identity, "series"]),
                                     series_number=SERIES_NUMBER,
                                     sop_instance_uid=generate_uid(entropy_srcs=[*identity, "instance"]),
                                     instance_number=1, manufacturer="clinreadnet", is_complete=True,
                                     is_final=False)
    sr.SeriesDescription = "clinreadnet image quality"
    forget_standard_tables()
    return sr


def forget_standard_tables() -> None:
    """Drop highdicom's table of the standard's module attributes, which it reads (a 22 MB JSON
    file, about 65 MiB as Python objects) to copy the patient and study modules and then keeps for
    the process: a node, or a run of many series, would hold it through every later series'
    scoring. Reading it again costs about half a second a report."""
    try:
        from highdicom._standard_utils import get_module_attribute_map
    except ImportError:  # a highdicom that keeps no such cache
        return
    getattr(get_module_attribute_map, "cache_clear", lambda: None)()


def _evidence(header: "Dataset", patient_and_study: bool) -> "Dataset":
    """What the SR takes from a source image: its UIDs and, from the first, the patient and study
    attributes it copies (type 2: empty where the source leaves one out). A few elements instead of
    the whole header, which the SR would copy (300 full headers cost seconds and 100+ MiB)."""
    from pydicom import Dataset

    kept = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                    *(("SpecificCharacterSet",) if patient_and_study else ())):
        if keyword in header:
            setattr(kept, keyword, header.data_element(keyword).value)
    if patient_and_study:
        for keyword in TYPE2_COPIED:
            setattr(kept, keyword, header.data_element(keyword).value if keyword in header else "")
    return kept


def series_records(records: Iterable[dict]) -> dict[str, list[dict]]:
    """Scored DICOM records grouped by SeriesInstanceUID (other records have nothing to reference)."""
    grouped: dict[str, list[dict]] = {}
    for record in records:
        if record.get("score") is not None and record.get("series_uid") and record.get("sop_uid"):
            grouped.setdefault(record["series_uid"], []).append(record)
    return grouped


def write_report(sr: "Dataset", folder: Path) -> Path:
    """``folder/<source SeriesInstanceUID>.sr.dcm``, written whole then renamed."""
    source_series = str(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID)
    path = Path(folder) / f"{source_series}{SR_SUFFIX}"
    with atomic_path(path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return path


def write_reports(records: list[dict], remote: "RemoteSeries | None", folder: Path,
                  threshold: float) -> Iterator[tuple[str, "Dataset", Path]]:
    """The SR of each scored DICOM series among ``records`` written into ``folder``, as it is made:
    (source SeriesInstanceUID, report, file). ``remote``: the DICOMweb series they came from, if any.
    Raises ValueError, DicomWebError or OSError for the series it is on."""
    for uid, series in series_records(records).items():
        sr = series_report(series, source_headers(series, remote), threshold)
        yield uid, sr, write_report(sr, folder)


class UnitReports:
    """The SRs of a stream of records that arrive unit by unit, in unit order (``in_unit_order``): a
    unit's series are reported once the next unit's first record comes, or at ``finish``. Each
    report goes to ``folder`` and, with ``send``, back to the DICOMweb source of its series;
    ``before_report`` runs first (``Scorer.release_memory``: the report is made in the memory the
    model's buffers held)."""

    def __init__(self, units: list, folder: Path, threshold: float, send: bool = False,
                 before_report: Callable[[], None] = lambda: None):
        self.units, self.folder, self.threshold, self.send = units, Path(folder), threshold, send
        self.before_report = before_report
        self.current: int | None = None
        self.records: list[dict] = []
        self.written: list[Path] = []

    def add(self, unit_index: int, record: dict) -> list[str]:
        """Keep ``record``; returns the errors of the unit this one ends, if any."""
        errors = self.finish() if unit_index != self.current else []
        self.current = unit_index
        self.records.append(record)
        return errors

    def finish(self) -> list[str]:
        """Report the unit in hand; one error per unit whose report could not be made or sent."""
        from .dicomweb import DicomWebError, store

        if self.current is None:
            return []
        unit, records = self.units[self.current], self.records
        self.current, self.records = None, []
        self.before_report()
        try:
            for _, sr, path in write_reports(records, unit.remote, self.folder, self.threshold):
                self.written.append(path)
                if self.send:
                    store(unit.remote.server, sr, str(sr.StudyInstanceUID))
        except (ValueError, DicomWebError, OSError) as exc:
            return [f"{unit.paths[0]}: no Structured Report: {exc}"]
        return []
