"""The audit log (`--audit_log_file`): one JSON line per security-relevant event, appended and flushed.

    {"time": "2026-12-02T10:31:07.120Z", "token_id": "ci-deploy", "peer": "ipv4:10.0.0.7:51234",
     "action": "reload", "target": "digits,fraud", "result": "OK"}

Actions: `reload` (HandleReloadConfigRequest, or a rewritten --model_config_file applied by its watcher: peer
"config file", no token; a file it cannot apply is audited once, not at each poll that tries it again),
`label_change` (a label moved by a reload, `target` "model/label: 3 -> 4"), `auth_failure` (401/403: `target` the
request, `result` the status and reason), `token_reload` (SIGHUP). The token's id is written, never the token.
"""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path


class AuditLog:
    def __init__(self, path: str = ""):
        self.path = path
        self._lock = threading.Lock()
        self._file = Path(path).open("a", encoding="utf-8") if path else None

    def record(self, action: str, target: str, result: str, token_id: str | None = None, peer: str = "") -> None:
        if self._file is None:
            return
        line = json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                           "token_id": token_id, "peer": peer, "action": action, "target": target[:1000],
                           "result": result[:1000]}, ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def label_changes(self, before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
                      token_id: str | None, peer: str) -> None:
        """One `label_change` line per label a reload added, moved or removed."""
        for model in sorted(set(before) | set(after)):
            old, new = before.get(model, {}), after.get(model, {})
            for label in sorted(set(old) | set(new)):
                if old.get(label) != new.get(label):
                    self.record("label_change", f"{model}/{label}: {old.get(label, '-')} -> {new.get(label, '-')}",
                                "OK", token_id, peer)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
