"""What a measurement ran on, written next to its numbers (benchmarks, the batching sweep): the host's
speed drifts, so a number means little without the machine and the date."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def machine() -> dict:
    """CPU model, core count, Python and TensorFlow versions, the date, and the load average when it started
    (other work on a shared host skews the numbers)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import tensorflow as tf

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "tensorflow": tf.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_1m": round(os.getloadavg()[0], 2)}


def described(m: dict) -> str:
    """A machine() as a results file's Machine line begins: "AMD EPYC, 2 cores, Python 3.11.7, TF 2.21.0, <date>"."""
    return f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, TF {m['tensorflow']}, {m['date']}"
