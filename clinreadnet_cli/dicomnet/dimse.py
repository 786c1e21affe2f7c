"""DIMSE: a Structured Report sent to a DICOM peer by C-STORE (``pynetdicom``), as ``listen --forward`` does."""

from __future__ import annotations

from dataclasses import dataclass

SUCCESS = 0x0000


@dataclass(frozen=True)
class Peer:
    """A DICOM peer written AE@HOST:PORT."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Peer":
        ae, _, address = text.partition("@")
        host, _, port = address.rpartition(":")
        if not ae or not host or not port.isdigit() or len(ae) > 16:
            raise ValueError(f"{text!r}: a DICOM peer is written AE_TITLE@HOST:PORT (AE title up to 16 characters)")
        return cls(ae, host, int(port))


def send(dataset, peer: Peer, own_ae_title: str) -> None:
    """C-STORE one object to ``peer``; raises OSError when it is not stored."""
    from pynetdicom import AE

    ae = AE(ae_title=own_ae_title)
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    association = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not association.is_established:
        raise OSError(f"{peer.ae_title}@{peer.host}:{peer.port} did not accept an association")
    try:
        status = association.send_c_store(dataset)
    finally:
        association.release()
    code = getattr(status, "Status", None)
    if code != SUCCESS:
        raise OSError(f"{peer.ae_title}@{peer.host}:{peer.port} answered C-STORE with status "
                      f"{'none' if code is None else hex(code)}")
