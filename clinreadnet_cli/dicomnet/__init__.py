"""clinreadnet on a DICOM network: DICOMweb sources (``dicomweb``), Structured Report results (``sr``)
and C-STORE to a peer (``dimse``).

Each is a source or a sink that the engines use like a folder: a DICOMweb series is a unit whose
files are fetched where it is decoded, and is then read by the same readers and checks as files on
disk; an SR is written from the records of one scored series. The DICOM node that receives pushed
studies is a workflow over the local engine: ``engine/node.py``.
"""
