"""Removing what runs leave behind under `output_dir`: staging dirs of runs that were killed, and
(`python -m pipeline.run --gc --keep N`) old runs with the cache entries only they used.

Only `output_dir` is touched: published models (the model repository) are never removed here.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from repository import process_alive

STAGING_PREFIXES = (".tmp-", ".old-")  # a stage's output being written; a replaced entry being removed


def remove_stale_staging(root: Path) -> list[Path]:
    """Staging dirs whose writing process is gone (their names carry its pid): a killed run's leftovers."""
    removed = []
    for path in (root / ".cache").glob("*/.*-*"):
        if path.name.startswith(STAGING_PREFIXES) and not _alive(path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def staging_name(prefix: str, key: str, token: str) -> str:
    """`<prefix><key>-<pid>-<token>`: the pid says whether the process writing it still runs."""
    return f"{prefix}{key[:12]}-{os.getpid()}-{token}"


def _alive(name: str) -> bool:
    parts = name.split("-")
    return len(parts) >= 4 and parts[2].isdigit() and process_alive(int(parts[2]))


def collect_garbage(root: Path, keep: int) -> dict[str, int]:
    """Remove all but the newest `keep` runs (by when they started: their config.json is written first),
    then every cache entry no remaining run links to."""
    runs = sorted((p for p in root.iterdir() if (p / "config.json").is_file() and not p.is_symlink()),
                  key=lambda p: (p / "config.json").stat().st_mtime_ns) if root.is_dir() else []
    old = runs[: max(len(runs) - keep, 0)]
    freed = sum(_size(p) for p in old)
    for run in old:
        shutil.rmtree(run)
    used = {link.resolve() for run in runs[len(old):] for link in run.iterdir() if link.is_symlink()}
    entries = [e for e in (root / ".cache").glob("*/*") if not e.name.startswith(".") and e.resolve() not in used]
    freed += sum(_size(e) for e in entries)
    for entry in entries:
        shutil.rmtree(entry)
    latest = root / "latest"
    if latest.is_symlink() and not latest.exists():
        latest.unlink()
    return {"runs_removed": len(old), "entries_removed": len(entries), "bytes_freed": freed}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
