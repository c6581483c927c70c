"""Embedded model server compatible with TensorFlow Serving (`python -m serving`), its clients, and
`serving.Server`, the server as a context manager for notebooks and scripts."""
from serving import quiet_tensorflow  # noqa: F401 -- TensorFlow without the lines it prints on a machine without a GPU


def __getattr__(name: str):
    if name == "Server":  # imported on first use: `python -m serving` needs none of it
        from serving.process import Server

        return Server
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
