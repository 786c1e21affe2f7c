"""What every benchmark reports besides its numbers: the machine, and a JSON copy of the results."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

# The CT sources beside the checkout; CLINREADNET_CT_SOURCES points elsewhere (a machine without them).
SOURCES = Path(os.environ.get("CLINREADNET_CT_SOURCES",
                              Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_sources"))


def machine(device: str = "cpu") -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device}


def write_json(path: str | None, results, args=None, device: str = "cpu") -> None:
    if path:
        record = {"machine": machine(device), **({"args": vars(args)} if args else {}), "results": results}
        Path(path).write_text(json.dumps(record, indent=2) + "\n")
