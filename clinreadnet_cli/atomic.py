"""Write files so that readers see the old file or the complete new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, TextIO


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed over ``path``, on error removed.

    The file gets the permissions a new file would (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot take an output file, or None; checked before any work is done.

    Only a regular file is ever replaced: a link, a device (``/dev/null``) or a folder is refused.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a symbolic link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        return f"{path} exists and is {kind}; give a new or regular file"
    folder = path.parent
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable"
    return None


@contextlib.contextmanager
def streaming_output(path: str | Path) -> Iterator[TextIO]:
    """A text file beside ``path`` (``NAME.XXXX.partial``) to stream records into, renamed to
    ``path`` when the block ends. A failure removes it; an interruption (Ctrl-C) keeps it, with
    every record written so far, and re-raises with its name in ``partial_path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            yield stream
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except KeyboardInterrupt as exc:
        exc.partial_path = Path(tmp)  # type: ignore[attr-defined]
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
