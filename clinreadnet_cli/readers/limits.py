"""What an input may declare before any pixel data is read (docs/inputs.md: "Input rules").

Limits are checked against the header (rows, columns, frames, bytes) so that a hostile file is
refused before it can allocate; they raise InputError naming the file and the reason.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .types import InputError


@dataclass(frozen=True)
class Limits:
    """Caps on what one input may declare (docs/inputs.md: "Input rules"). Override with --limit NAME=VALUE."""

    max_side: int = 4096  # rows or columns of a slice
    max_aspect: float = 4.0  # longer side / shorter side (slices are padded to a square)
    max_slices: int = 4096  # frames of a DICOM file, slices of a volume, pages of a TIFF
    max_volume_mib: int = 1024  # a NIfTI / MHA / NRRD volume is read whole: its declared size

    @classmethod
    def from_pairs(cls, pairs: list[str]) -> "Limits":
        """``["max_side=8192", ...]`` -> Limits. Raises ValueError naming the bad pair."""
        values: dict[str, float] = {}
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        for pair in pairs:
            name, _, text = pair.partition("=")
            name = name.strip().replace("-", "_")
            if name not in fields:
                raise ValueError(f"unknown limit {name!r}; choose from {', '.join(fields)}")
            try:
                value = float(text) if fields[name] == "float" else int(text)
            except ValueError:
                raise ValueError(f"limit {name} needs a number, got {text!r}") from None
            if not value > 0:
                raise ValueError(f"limit {name} must be > 0, got {text!r}")
            values[name] = value
        return cls(**values)

    def check_slices(self, path: Path, rows: int, columns: int, slices: int, bytes_per_pixel: float) -> None:
        """Refuse declared sizes beyond the caps (before anything is allocated)."""
        if rows < 1 or columns < 1 or slices < 1:
            raise InputError(path, f"declares {rows} x {columns} pixels x {slices} slice(s): nothing to read")
        if max(rows, columns) > self.max_side:
            raise InputError(path, f"slices of {rows} x {columns} pixels exceed the limit of {self.max_side} "
                                   "(--limit max_side=N)")
        if max(rows, columns) / min(rows, columns) > self.max_aspect:
            raise InputError(path, f"slices of {rows} x {columns} pixels are not a CT slice "
                                   f"(aspect ratio above {self.max_aspect:g}; --limit max_aspect=X)")
        if slices > self.max_slices:
            raise InputError(path, f"declares {slices} slices, above the limit of {self.max_slices} "
                                   "(--limit max_slices=N)")

    def check_volume(self, path: Path, rows: int, columns: int, slices: int, bytes_per_pixel: float) -> None:
        self.check_slices(path, rows, columns, slices, bytes_per_pixel)
        mib = rows * columns * slices * bytes_per_pixel / 2**20
        if mib > self.max_volume_mib:
            raise InputError(path, f"declares a {mib:,.0f} MiB volume, above the limit of "
                                   f"{self.max_volume_mib} MiB (--limit max_volume_mib=N)")


DEFAULT_LIMITS = Limits()


def regular_file_problem(path: Path) -> str | None:
    """None for a regular file (links followed); otherwise why it is not read."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if path.is_symlink():
            return f"broken symbolic link (to {os.readlink(path)})"
        return "no such file or directory" if exc.errno == errno.ENOENT else f"cannot be read ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
             stat.S_IFBLK: "a block device"}
    return f"not a regular file ({kinds.get(stat.S_IFMT(mode), 'a special file')})"
