"""clinreadnet: no-reference CT image quality scores on the radiologists' 0-4 scale (ClinReadNet)."""

__version__ = "0.1.0"
