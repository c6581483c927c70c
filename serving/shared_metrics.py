"""The metrics of a server run as several processes (--server_processes): each process publishes its Prometheus text
to a directory their parent made, every PUBLISH_EVERY_S; a scrape, which reaches one of them, is answered with its
own text merged with its siblings' latest. Merged per series: counters and histograms summed; gauges the largest
(a version's state, the config file error, the bytes a log prefix holds: each process counts those whole), creation
times (`*_created`) the earliest. So a sibling's figures are at most PUBLISH_EVERY_S old.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.utils import floatToGoString

PUBLISH_EVERY_S = 1.0


class SharedMetrics:
    """One process's view of the directory the processes of one server publish their metrics to."""

    def __init__(self, directory: Path, index: int):
        self.directory = Path(directory)
        self.own = self.directory / f"{index}.prom"

    def publish(self, text: bytes) -> None:
        """This process's text, replaced whole (a sibling never reads half of it)."""
        partial = self.own.with_suffix(".partial")
        partial.write_bytes(text)
        os.replace(partial, self.own)

    def merged(self, own_text: bytes) -> bytes:
        """The whole server's metrics: `own_text` (this process's, live) and the siblings' latest."""
        siblings = [path.read_bytes() for path in sorted(self.directory.glob("*.prom")) if path != self.own]
        return merge([own_text, *siblings])


def merge(texts: list[bytes]) -> bytes:
    """Prometheus text expositions of processes serving alike, as one: each family's comment lines once, then its
    series, in the order first seen; a series' values combined by its family's TYPE (see the module's docstring)."""
    families: dict[str, _Family] = {}
    for text in texts:
        family = None
        for line in text.decode().splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                _, keyword, name, *rest = line.split(" ", 3)
                family = families.setdefault(name, _Family(name))
                if line not in family.comments:
                    family.comments.append(line)
                if keyword == "TYPE":
                    family.kind = rest[0]
            elif line and not line.startswith("#") and family is not None:
                key, _, value = line.rpartition(" ")
                family.series.setdefault(key, []).append(value)
    lines = [line for family in families.values() for line in family.lines()]
    return ("\n".join(lines) + "\n").encode()


@dataclass
class _Family:
    name: str
    kind: str = "untyped"
    comments: list[str] = field(default_factory=list)
    series: dict[str, list[str]] = field(default_factory=dict)  # "name{labels}" -> its value in each text

    def lines(self) -> list[str]:
        return self.comments + [f"{key} {_combine(values, self.kind, self.name)}"
                                for key, values in self.series.items()]


def _combine(values: list[str], kind: str, family: str) -> str:
    numbers = [float(value) for value in values]
    if kind == "gauge":
        total = min(numbers) if family.endswith("_created") else max(numbers)
    else:
        total = sum(numbers)
    if all(value.lstrip("-").isdigit() for value in values):  # TF Serving's metrics are written as integers
        return str(int(total))
    return floatToGoString(total)
