"""Reading the Prometheus text a server (or a Metrics) renders, in the server tests."""
from __future__ import annotations


def series_value(text: str, series: str) -> float:
    """The series' value; 0 before it has one (a labelled series appears with its first sample)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
