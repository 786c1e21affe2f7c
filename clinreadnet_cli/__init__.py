"""clinreadnet: no-reference CT image quality scores on the radiologists' 0-4 scale (ClinReadNet).

``score_array`` and ``score_paths`` (see ``clinreadnet_cli.api``) are imported on first use, so
the command line starts without torch.
"""

from .version import __version__

__all__ = ["__version__", "score_array", "score_paths", "Scorer"]


def __getattr__(name: str):
    if name in ("score_array", "score_paths", "Scorer"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'clinreadnet_cli' has no attribute {name!r}")
