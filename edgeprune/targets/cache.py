"""A sqlite cache of measurements keyed by target, runtime version, settings and model sha256.

Each entry is written in one transaction (sqlite's journal makes it atomic), and only for a
measurement that finished: a failed or interrupted measurement leaves no entry behind.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Optional

from edgeprune.targets.measurement import Measurement

_SCHEMA = """CREATE TABLE IF NOT EXISTS measurements (
    key TEXT PRIMARY KEY, target TEXT, runtime_version TEXT, settings TEXT,
    model_sha256 TEXT, created REAL, data TEXT)"""


def cache_dir() -> Path:
    """$EDGEPRUNE_CACHE_DIR, else ~/.cache/edgeprune: the measurement cache and the target locks."""
    return Path(os.environ.get("EDGEPRUNE_CACHE_DIR") or Path.home() / ".cache" / "edgeprune")


def default_cache_path() -> Path:
    """measurements.sqlite in cache_dir()."""
    return cache_dir() / "measurements.sqlite"


def cache_key(target: str, runtime_version: str, settings: dict[str, Any], model_sha256: str) -> str:
    """The key text: stable across runs (settings serialised with sorted keys)."""
    return json.dumps([target, runtime_version, settings, model_sha256], sort_keys=True)


def connect(path: os.PathLike, schema: str) -> sqlite3.Connection:
    """The cache's sqlite file (its folder made if missing), with `schema` applied."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0)
    conn.execute(schema)
    return conn


class MeasurementCache:
    """Get and put Measurements; one sqlite file, safe across processes."""

    def __init__(self, path: Optional[os.PathLike] = None) -> None:
        self.path = Path(path) if path else default_cache_path()

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, _SCHEMA)

    def get(self, key: str) -> Optional[Measurement]:
        """The cached measurement for `key`, or None."""
        conn = self._connect()
        try:
            row = conn.execute("SELECT data FROM measurements WHERE key = ?", (key,)).fetchone()
        finally:
            conn.close()
        if row is None:
            return None
        found = Measurement.from_dict(json.loads(row[0]))
        found.cached = True
        return found

    def put(self, key: str, m: Measurement, runtime_version: str, settings: dict[str, Any]) -> None:
        """Store a finished measurement (one atomic transaction)."""
        conn = self._connect()
        try:
            with conn:
                conn.execute("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (key, m.target, runtime_version, json.dumps(settings, sort_keys=True),
                              m.model_sha256, m.timestamp, json.dumps(m.to_dict())))
        finally:
            conn.close()

    def count(self, model_sha256: Optional[str] = None) -> int:
        """Number of entries (for one model when given)."""
        conn = self._connect()
        try:
            if model_sha256:
                return conn.execute("SELECT COUNT(*) FROM measurements WHERE model_sha256 = ?",
                                    (model_sha256,)).fetchone()[0]
            return conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
        finally:
            conn.close()
