"""Give a running server (ours or tensorflow_model_server) a new ModelServerConfig without failing a request.

TF Serving refuses a label that names a version it has not loaded, so a label change takes two
reloads: first the versions both configs serve, with the labels as they are (the target version
loads while the current ones keep answering), then, once the target is AVAILABLE, the new config
(labels moved; versions no longer wanted unload). It is done when the label answers with the target.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.registry import RegistryError


def apply(server: str, current, target, model: str, label: str, version: int, timeout_s: float = 120.0,
          client_options: dict | None = None) -> None:
    """Move `label` of `model` to `version` on the server at `server` (host:port, gRPC), from `current` to `target`;
    `client_options` are GrpcClient's token and TLS options."""
    from serving.client import GrpcClient, ServingClientError

    with GrpcClient(server, timeout_s=min(timeout_s, 60), **(client_options or {})) as client:
        try:
            serving = {m.name: _serving(client, m.name) for m in target.model_config_list.config}
            client.reload_config(_both(current, target, serving))
            _wait(lambda: _available(client, model, version), timeout_s,
                  f"version {version} of {model!r} to be AVAILABLE on {server}")
            client.reload_config(target)
            _wait(lambda: client.metadata(model, label=label)["version"] == version, timeout_s,
                  f"label {label!r} of {model!r} to answer with version {version} on {server}")
        except ServingClientError as e:
            raise RegistryError(f"server {server} refused moving label {label!r} of {model!r} to version {version} "
                                f"({e.status}: {e.message}); it keeps serving its previous labels, and the registry is "
                                f"unchanged.") from None


def reload(server: str, target, what: str, timeout_s: float = 120.0, client_options: dict | None = None) -> None:
    """Give the server at `server` the config `target` in one reload (a change that moves no label: `what`, in
    words); it has taken effect when this returns."""
    from serving.client import GrpcClient, ServingClientError

    with GrpcClient(server, timeout_s=min(timeout_s, 60), **(client_options or {})) as client:
        try:
            client.reload_config(target)
        except ServingClientError as e:
            raise RegistryError(f"server {server} refused {what} ({e.status}: {e.message}); it keeps its previous "
                                f"config, and models.config is unchanged.") from None


def _both(current, target, serving: dict[str, set[int]]):
    """`target`'s models, each serving the versions `target` wants and those the server serves now (`serving`),
    with the labels of `current` (none for a model `current` lacks)."""
    staged = type(target)()
    staged.CopyFrom(target)
    labels = {m.name: dict(m.version_labels) for m in current.model_config_list.config}
    for model in staged.model_config_list.config:
        wanted = set(model.model_version_policy.specific.versions)
        if wanted:
            model.model_version_policy.specific.ClearField("versions")
            model.model_version_policy.specific.versions.extend(sorted(wanted | serving.get(model.name, set())))
        model.ClearField("version_labels")
        for label, version in labels.get(model.name, {}).items():
            model.version_labels[label] = version
    return staged


def _serving(client, model: str) -> set[int]:
    """The versions of `model` the server has AVAILABLE now (none if it does not know the model)."""
    from serving.client import ServingClientError

    try:
        return {s["version"] for s in client.status(model) if s["state"] == "AVAILABLE"}
    except ServingClientError:
        return set()


def _available(client, model: str, version: int) -> bool:
    from serving.client import ServingClientError

    try:
        (status,) = client.status(model, version=version)
    except ServingClientError:
        return False  # not known to the server yet
    if status["state"] == "END" and status["error_code"] != "OK":
        raise RegistryError(f"version {version} of {model!r} failed to load on the server: {status['error_message']}")
    return status["state"] == "AVAILABLE"


def _wait(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise RegistryError(f"timed out after {timeout_s:g} s waiting for {what}.")
        time.sleep(0.05)
