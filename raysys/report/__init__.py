"""Run reports: `build_report(run_dir)` writes report.html (see raysys.report.report)."""

from raysys.report.report import build_report

__all__ = ["build_report"]
