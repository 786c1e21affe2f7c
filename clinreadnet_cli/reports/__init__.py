"""The study report: one self-contained HTML page per study (figures.py draws, study.py assembles)."""

from .study import ReportInputs, SliceView, build_report

__all__ = ["ReportInputs", "SliceView", "build_report"]
