"""The model registry: what each published version is, which labels point where, and how they got there.

A SQLite file beside the model repository (`<repository>/registry.sqlite`, outside every model's base
path) holds one row per version (run, config hash, the test metrics of exactly the model in the version and of
the trained model it came from, data fingerprint, compression variant, size, infra-validation result), the labels of each model and the history of every label change.
The version directory is the truth about what exists: push writes the record into the version as
`maas.json` before the version appears, then into the database; a crash between the two is repaired
when the registry is next opened (versions without a row are recorded from their `maas.json`, rows
whose directory is gone are marked deleted).

Labels reach servers through `<repository>/models.config` (text-format ModelServerConfig: a labelled
model serves exactly its labelled versions, `specific` policy, with `version_labels`; an unlabelled
one its latest version), which `python -m pipeline.registry` rewrites (write + rename) after each change,
and `rollout` applies to running servers.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import repository
from pipeline.errors import PipelineError

DB_NAME = "registry.sqlite"
CONFIG_NAME = "models.config"
MIGRATIONS = (  # one entry per schema version; never edit a released one, append
    """
    CREATE TABLE versions (
        model TEXT NOT NULL, version INTEGER NOT NULL, created TEXT NOT NULL, run_id TEXT, config_hash TEXT,
        metrics TEXT NOT NULL DEFAULT '{}', data_fingerprint TEXT, variant TEXT, saved_model_bytes INTEGER,
        infra_validation TEXT NOT NULL DEFAULT '{}', config TEXT NOT NULL DEFAULT '{}', content TEXT,
        deleted TEXT, PRIMARY KEY (model, version));
    CREATE TABLE labels (model TEXT NOT NULL, label TEXT NOT NULL, version INTEGER NOT NULL,
        PRIMARY KEY (model, label));
    CREATE TABLE label_history (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, label TEXT NOT NULL,
        previous INTEGER, version INTEGER NOT NULL, changed TEXT NOT NULL, action TEXT NOT NULL);
    """,
    # `metrics` are the version's own (its SavedModel on the test split); the trained model's, before compression
    # chose a variant, are kept beside them.
    """
    ALTER TABLE versions ADD COLUMN trained_metrics TEXT NOT NULL DEFAULT '{}';
    """,
    # Where the training data came from beyond its file: rows exported from request logs (pipeline.monitor).
    """
    ALTER TABLE versions ADD COLUMN data_origin TEXT NOT NULL DEFAULT '{}';
    """,
)
JSON_COLUMNS = ("metrics", "trained_metrics", "infra_validation", "config", "data_origin")
RECORD_COLUMNS = ("created", "run_id", "config_hash", "metrics", "trained_metrics", "data_fingerprint", "variant",
                  "saved_model_bytes", "infra_validation", "config", "content", "data_origin")


class RegistryError(PipelineError):
    """A registry operation that cannot be done as asked; the message says what was found and expected."""


class NotInRegistry(RegistryError):
    """An unknown model, version or label was named (bad input: exit 2)."""

    exit_code = 2


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Registry:
    def __init__(self, repository_dir: str | Path, timeout_s: float = 5.0, create: bool = True,
                 read_only: bool = False):
        """Open (or, with `create`, make) the registry of `repository_dir`, migrated and reconciled with the
        directories; `read_only` opens an existing one to read and changes nothing, not even that (planning)."""
        self.repository = Path(repository_dir)
        self.path = self.repository / DB_NAME
        if (read_only or not create) and not self.path.is_file():
            raise RegistryError(f"no registry at {self.path}: nothing was pushed to {self.repository} yet.")
        self._timeout_s = timeout_s
        if read_only:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", timeout=timeout_s, uri=True,
                                       isolation_level=None)
            self._db.row_factory = sqlite3.Row
            return
        self.repository.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self.transaction():
            self._migrate()
            self._reconcile()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing, and one writer at a time (BEGIN IMMEDIATE); locked and corrupt files explained."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as e:  # locked (OperationalError), or not a database
            raise RegistryError(self._unusable(e)) from None
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _unusable(self, error: sqlite3.Error) -> str:
        if "locked" in str(error):
            return (f"registry {self.path} is locked by another process (waited {self._timeout_s:g} s); try again "
                    f"when it is done (`fuser {self.path}` shows who holds it).")
        return (f"registry {self.path} is not a readable SQLite database ({error}). Move it aside: the next open "
                f"rebuilds it from the versions' {repository.LINEAGE} files and {CONFIG_NAME}.")

    def _migrate(self) -> None:
        try:
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.DatabaseError as e:
            raise RegistryError(self._unusable(e)) from None
        current = row["version"] if row else 0
        if current > len(MIGRATIONS):
            raise RegistryError(f"registry {self.path} has schema version {current}, newer than this program's "
                                f"{len(MIGRATIONS)}; upgrade the project to use it.")
        for script in MIGRATIONS[current:]:
            for statement in filter(str.strip, script.split(";")):
                self._db.execute(statement)
        if not row:
            self._db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
            self._labels_from_models_config()
        else:
            self._db.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))

    def _labels_from_models_config(self) -> None:
        """A new (or rebuilt) database takes the labels the repository's models.config already gives servers."""
        from serving.model_config import load_model_server_config

        if not (self.repository / CONFIG_NAME).is_file():
            return
        try:
            config = load_model_server_config(str(self.repository / CONFIG_NAME))
        except ValueError as e:
            raise RegistryError(f"{e} Fix or remove it, then open the registry again.") from None
        for model in config.model_config_list.config:
            for label, version in model.version_labels.items():
                self._db.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?)", (model.name, label, version))

    def _reconcile(self) -> None:
        """Make the database agree with the directories: record published versions it lacks, mark gone ones deleted."""
        on_disk = {}
        for model_dir in sorted(p for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version, path in repository.versions(model_dir).items():
                on_disk[(model_dir.name, version)] = path
        known = {(r["model"], r["version"]): r["deleted"] for r in self._db.execute(
            "SELECT model, version, deleted FROM versions")}
        for (model, version), path in on_disk.items():
            if (model, version) not in known:
                self._insert(model, version, repository.lineage(path))
        for (model, version), deleted in known.items():
            if (model, version) not in on_disk and not deleted:
                self._db.execute("UPDATE versions SET deleted = ? WHERE model = ? AND version = ?",
                                 (now(), model, version))

    def _insert(self, model: str, version: int, record: dict) -> None:
        values = {c: json.dumps(record.get(c, {})) if c in JSON_COLUMNS else record.get(c) for c in RECORD_COLUMNS}
        values["created"] = values["created"] or now()
        self._db.execute(f"INSERT OR REPLACE INTO versions (model, version, {', '.join(RECORD_COLUMNS)}, deleted) "
                         f"VALUES (?, ?, {', '.join('?' * len(RECORD_COLUMNS))}, NULL)",
                         (model, version, *values.values()))

    # -- reading --------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return [r["model"] for r in self._db.execute(
            "SELECT DISTINCT model FROM versions WHERE deleted IS NULL ORDER BY model")]

    def versions(self, model: str | None = None, include_deleted: bool = False) -> list[dict]:
        """Version records, newest first, each with its labels."""
        labels: dict[tuple[str, int], list[str]] = {}
        for row in self._db.execute("SELECT * FROM labels ORDER BY label"):
            labels.setdefault((row["model"], row["version"]), []).append(row["label"])
        rows = self._db.execute(
            "SELECT * FROM versions WHERE (? IS NULL OR model = ?) AND (? OR deleted IS NULL) "
            "ORDER BY model, version DESC", (model, model, include_deleted))
        return [self._as_record(row, labels.get((row["model"], row["version"]), [])) for row in rows]

    @staticmethod
    def _as_record(row: sqlite3.Row, labels: list[str]) -> dict:
        record = dict(row)
        for column in JSON_COLUMNS:
            record[column] = json.loads(record[column])
        return {**record, "labels": labels}

    def get(self, model: str, version_or_label: str | int) -> dict:
        """The record a version number or a label names; RegistryError naming what exists otherwise."""
        version = self.resolve(model, version_or_label)
        return next(r for r in self.versions(model, include_deleted=True) if r["version"] == version)

    def resolve(self, model: str, version_or_label: str | int) -> int:
        """The version number `version_or_label` names for `model` (a number, a label, or label:NAME)."""
        self.check_model(model)
        text = str(version_or_label).removeprefix("label:")
        labels = self.labels(model)
        if text in labels:
            return labels[text]
        if repository.version_number(text) is None:
            raise NotInRegistry(f"model {model!r} has no label {text!r}; its labels: "
                                f"{', '.join(f'{k}={v}' for k, v in sorted(labels.items())) or 'none'}.")
        version = int(text)
        row = self._db.execute("SELECT deleted FROM versions WHERE model = ? AND version = ?", (model, version)).fetchone()
        if row is None or row["deleted"]:
            live = [r["version"] for r in self.versions(model)]
            state = "was deleted" if row else "does not exist"
            raise NotInRegistry(f"version {version} of model {model!r} {state}; versions: {live or 'none'}.")
        return version

    def labels(self, model: str) -> dict[str, int]:
        return {r["label"]: r["version"] for r in self._db.execute(
            "SELECT label, version FROM labels WHERE model = ?", (model,))}

    def history(self, model: str, label: str) -> list[dict]:
        return [dict(r) for r in self._db.execute(
            "SELECT * FROM label_history WHERE model = ? AND label = ? ORDER BY id", (model, label))]

    def check_model(self, model: str) -> None:
        if model not in self.models():
            raise NotInRegistry(f"no model {model!r} in {self.repository}; models: {', '.join(self.models()) or 'none'}.")

    # -- changing ---------------------------------------------------------------------------------

    def record(self, model: str, version: int, record: dict) -> None:
        """A version just published (its directory complete): what push wrote into its maas.json."""
        with self.transaction():
            self._insert(model, version, record)

    def set_label(self, model: str, label: str, version: int, action: str) -> int | None:
        """Point `label` at `version` (inside the caller's transaction); returns the version it pointed at."""
        problem = repository.name_problem(label)
        if problem or repository.version_number(label) is not None:
            raise NotInRegistry(f"label {label!r}: {problem or 'a label cannot be a number (it would read as a version)'}")
        previous = self.labels(model).get(label)
        self._db.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?)", (model, label, version))
        self._db.execute("INSERT INTO label_history (model, label, previous, version, changed, action) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (model, label, previous, version, now(), action))
        return previous

    def mark_deleted(self, model: str, version: int) -> None:
        self._db.execute("UPDATE versions SET deleted = ? WHERE model = ? AND version = ?", (now(), model, version))

    def models_config(self, base_path_root: str | None = None, logging: dict | None = None):
        """The ModelServerConfig servers should run: labelled models serve their labelled versions, others
        their latest; each model logs requests as `logging` says (name -> LoggingConfig), by default as the
        models.config on disk does (`logging` below). Base paths are the repository's, or
        `<base_path_root>/<model>` (a container's view)."""
        from serving.model_config import ModelServerConfig

        logging = self.logging() if logging is None else logging
        config = ModelServerConfig()
        for model in self.models():
            base = f"{base_path_root.rstrip('/')}/{model}" if base_path_root else str((self.repository / model).resolve())
            entry = config.model_config_list.config.add(name=model, base_path=base, model_platform="tensorflow")
            labels = self.labels(model)
            if labels:
                entry.model_version_policy.specific.versions.extend(sorted(set(labels.values())))
                for label, version in sorted(labels.items()):
                    entry.version_labels[label] = version
            else:
                entry.model_version_policy.latest.num_versions = 1
            if model in logging:
                entry.logging_config.CopyFrom(logging[model])
        return config

    def logging(self) -> dict:
        """Each model's request logging (TF Serving's LoggingConfig) in the models.config on disk: kept when the
        file is rewritten, so a label change does not turn a model's logging off."""
        path = self.repository / CONFIG_NAME
        if not path.is_file():
            return {}
        from serving.model_config import load_model_server_config

        try:
            config = load_model_server_config(str(path))
        except ValueError as e:
            raise RegistryError(f"{e} Fix or remove it, then try again.") from None
        return {m.name: m.logging_config for m in config.model_config_list.config if m.HasField("logging_config")}

    def logging_changed(self, model: str, filename_prefix: str | None, sampling_rate: float) -> dict:
        """Every model's logging, with `model` logging to `filename_prefix`-* (TF Serving's tfrecord collector) at
        `sampling_rate`, or, without a prefix, not logging: what models_config and write_models_config take."""
        from serving.model_config import ModelConfig

        self.check_model(model)
        logging = dict(self.logging())
        logging.pop(model, None)
        if filename_prefix:
            config = ModelConfig().logging_config
            config.log_collector_config.type = "tfrecord"
            config.log_collector_config.filename_prefix = filename_prefix
            config.sampling_config.sampling_rate = sampling_rate
            logging[model] = config
        return logging

    def write_models_config(self, logging: dict | None = None) -> Path:
        """Write models.config beside the versions (temp file + rename: a poller never reads half of it)."""
        from google.protobuf import text_format

        path = self.repository / CONFIG_NAME
        temp = path.with_name(f".{CONFIG_NAME}.tmp")
        temp.write_text(text_format.MessageToString(self.models_config(logging=logging)))
        temp.replace(path)
        return path
