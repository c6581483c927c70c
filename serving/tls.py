"""TLS for both ports from `--ssl_config_file`: TF Serving's SSLConfig text proto, whose fields hold PEM text.

    server_key: "-----BEGIN PRIVATE KEY-----\\n..."
    server_cert: "-----BEGIN CERTIFICATE-----\\n..."
    custom_ca: "-----BEGIN CERTIFICATE-----\\n..."   # clients' CA (optional)
    client_verify: true                              # mutual TLS: clients must present a cert signed by custom_ca

tensorflow_model_server applies it to gRPC only; here REST gets the same certificate and client rule, so
neither port is left in clear text by accident.
"""
from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

import grpc

from serving import protos


def load_ssl_config(path: str) -> object:
    """The SSLConfig, checked: a key and certificate that load together, client_verify only with a CA."""
    source = f"--ssl_config_file {path!r}"
    config = protos.parse_text(Path(path).read_text(), protos.SSLConfig, source)
    missing = [name for name in ("server_key", "server_cert") if not getattr(config, name).strip()]
    if missing:
        raise ValueError(f"{source}: {' and '.join(missing)} missing; both hold PEM text (not file names)")
    if config.client_verify and not config.custom_ca.strip():
        raise ValueError(f"{source}: client_verify needs custom_ca, the CA that signs client certificates")
    try:
        rest_context(config)
    except ssl.SSLError as e:
        raise ValueError(f"{source}: the key and certificate do not load ({e.reason or e}); they must be PEM text, "
                         f"the certificate matching the key") from None
    return config


def rest_context(config) -> ssl.SSLContext:
    """An SSLContext for the REST port (the ssl module reads a key pair only from files: a private
    temporary directory holds them while it loads)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="maas-tls-") as directory:
        cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
        for path, text in ((cert, config.server_cert), (key, config.server_key)):
            path.write_text(text)
            os.chmod(path, 0o600)
        context.load_cert_chain(cert, key)
    if config.custom_ca.strip():
        context.load_verify_locations(cadata=config.custom_ca)
    context.verify_mode = ssl.CERT_REQUIRED if config.client_verify else ssl.CERT_NONE
    return context


def grpc_credentials(config) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(config.server_key.encode(), config.server_cert.encode())],
                                       root_certificates=config.custom_ca.encode() or None,
                                       require_client_auth=config.client_verify)
