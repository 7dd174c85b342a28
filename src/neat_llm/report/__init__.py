"""The HTML report of a run (``neat report``): html.py builds the page from what the run folder
holds (the run, evaluation.json, hate.json, bias.json, behaviour-*.json), charts.py draws inline
SVG, browser.py checks a page in headless Chromium (the token-level examples are computed at find
time, in concepts/examples.py)."""

from .html import REPORT_FILE, read_run_folder, render_report, write_report

__all__ = ["REPORT_FILE", "read_run_folder", "render_report", "write_report"]
