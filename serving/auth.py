"""Who may call what: bearer tokens from `--auth_token_file`, each with a role and the models it may use.

    tokens:
      - {id: dashboards, token: "<32+ random characters>", role: predict, models: [digits]}
      - {id: ci-deploy, token: "<...>", role: admin}

`predict` may run inference (predict, classify, regress, multi-inference) and read status and metadata of
its models (all models when `models` is left out); `admin` may also reload the server's config. REST
sends `Authorization: Bearer <token>`, gRPC the `authorization` metadata with the same value. A missing
or unknown token is UNAUTHENTICATED (401), a known one used beyond its role or models PERMISSION_DENIED
(403). Tokens are compared in constant time and never logged or echoed; the file is re-read on SIGHUP
(a broken file keeps the tokens in force and logs why).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from serving.errors import PermissionDenied, Unauthenticated

log = logging.getLogger("serving")

ROLES = ("predict", "admin")
INFERENCE = ("predict", "classify", "regress", "multi_inference")
READ = ("status", "metadata")
ADMIN = ("reload",)
MIN_TOKEN_CHARS = 16  # shorter secrets can be guessed; `openssl rand -hex 32` makes a good one


@dataclass(frozen=True)
class Token:
    id: str
    digest: bytes  # sha256 of the secret: equal-length values for compare_digest, no secret kept in memory
    role: str
    models: frozenset[str] | None  # None: every model

    def may(self, action: str, model: str) -> bool:
        """`model` is "" for what concerns no model (the metrics page, a malformed request)."""
        if action in ADMIN:
            return self.role == "admin"
        return self.models is None or not model or model in self.models


def load_tokens(path: str | Path) -> list[Token]:
    """The token file's entries, checked; every problem is named (by entry and id, never by secret)."""
    source = f"--auth_token_file {str(path)!r}"
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{source}: cannot be read as YAML: {str(e).splitlines()[0]}") from None
    entries = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a mapping with a non-empty list `tokens:` of "
                         f"{{id, token, role, models}}, received {type(document).__name__}")
    tokens, problems = [], []
    for i, entry in enumerate(entries):
        where = f"tokens[{i}]" + (f" (id {entry.get('id')!r})" if isinstance(entry, dict) and entry.get("id") else "")
        try:
            tokens.append(_token(entry))
        except ValueError as e:
            problems.append(f"{where}: {e}")
    ids = [t.id for t in tokens]
    problems += [f"id {name!r} is used by more than one token" for name in sorted({i for i in ids if ids.count(i) > 1})]
    digests = [t.digest for t in tokens]
    if len(set(digests)) < len(digests):
        problems.append("two entries have the same token: each caller needs its own")
    if problems:
        raise ValueError(f"{source} ({len(problems)} problem{'s' * (len(problems) > 1)}):\n    " + "\n    ".join(problems))
    return tokens


def _token(entry: object) -> Token:
    if not isinstance(entry, dict):
        raise ValueError(f"expected a mapping {{id, token, role, models}}, received {type(entry).__name__}")
    unknown = sorted(set(entry) - {"id", "token", "role", "models"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; expected id, token, role, models")
    token_id, secret, role, models = entry.get("id"), entry.get("token"), entry.get("role"), entry.get("models")
    if not isinstance(token_id, str) or not token_id:
        raise ValueError(f"id: expected a non-empty string, received {token_id!r}")
    if not isinstance(secret, str) or len(secret) < MIN_TOKEN_CHARS:
        raise ValueError(f"token: expected a string of at least {MIN_TOKEN_CHARS} characters "
                         f"(received {type(secret).__name__}" + (f" of {len(secret)}" if isinstance(secret, str) else "")
                         + "); make one with `openssl rand -hex 32`")
    if role not in ROLES:
        raise ValueError(f"role: expected one of {list(ROLES)}, received {role!r}")
    if models is not None and not (isinstance(models, list) and all(isinstance(m, str) and m for m in models)):
        raise ValueError(f"models: expected a list of model names (or no key: every model), received {models!r}")
    return Token(token_id, _digest(secret), role, None if models is None else frozenset(models))


def _digest(secret: str) -> bytes:
    """The secret's SHA-256, over its bytes as sent: a header that is not UTF-8 reaches aiohttp's str as surrogate
    escapes, and is a token like any other (one that matches none: 401), not an encoding error."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class Access:
    """The server's access rule for one request: authenticate the credential a request carries, then
    authorize an action on a model. With no token file, everyone may do everything but reload from
    another machine (the front ends keep that rule)."""

    def __init__(self, token_file: str = "", allow_status: bool = False):
        self.token_file = token_file
        self.allow_status = allow_status
        self._tokens = load_tokens(token_file) if token_file else []

    @property
    def enabled(self) -> bool:
        return bool(self.token_file)

    def reload(self) -> None:
        """Re-read the token file (SIGHUP); a broken one raises ValueError and leaves the tokens in force."""
        self._tokens = load_tokens(self.token_file)
        log.info("Reloaded %d tokens from %s", len(self._tokens), self.token_file)

    def authenticate(self, authorization: str | None) -> Token | None:
        """The token an `Authorization` value carries (None when auth is off). Every token is compared, in
        constant time, so timing says nothing about which one nearly matched."""
        if not self.enabled:
            return None
        scheme, _, secret = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("Missing credentials: send 'Authorization: Bearer <token>' (gRPC: the "
                                  "'authorization' metadata)")
        digest = _digest(secret.strip())
        found = None
        for token in self._tokens:
            if hmac.compare_digest(token.digest, digest):
                found = token
        if found is None:
            raise Unauthenticated("Invalid credentials: the token is not known to this server")
        return found

    def authorize(self, token: Token | None, action: str, model: str = "") -> None:
        if token is None:  # auth off
            return
        if not token.may(action, model):
            what = "reload the server's config" if action in ADMIN else f"use model '{model[:100]}'"
            raise PermissionDenied(f"Token '{token.id}' (role {token.role}) may not {what}")

    def is_open(self, action: str) -> bool:
        """Whether `action` needs no token (status, with --auth_allow_status: health checks)."""
        return not self.enabled or (self.allow_status and action == "status")
