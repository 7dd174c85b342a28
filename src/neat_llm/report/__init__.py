"""The HTML report of a run (``neat report``): html.py builds the page, charts.py draws inline SVG,
examples.py computes the top neurons' token-level examples at find time, browser.py checks a page
in headless Chromium."""

from .html import REPORT_FILE, read_run_folder, render_report, write_report

__all__ = ["REPORT_FILE", "read_run_folder", "render_report", "write_report"]
