"""Persistent state: an SQLite database of records plus artifact files under the data dir.

Files are written to a temporary name and renamed into place (`atomic_write`), and a record
points at a file only after the rename, so nothing half-written is ever served.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

SCHEMA = """
CREATE TABLE IF NOT EXISTS tensor_sets (
  id TEXT PRIMARY KEY, name TEXT, path TEXT, sha256 TEXT, total_bytes INTEGER,
  tensors TEXT, created REAL);
CREATE TABLE IF NOT EXISTS models (
  id TEXT PRIMARY KEY, name TEXT, spec TEXT, weights_path TEXT, n_parameters INTEGER,
  created REAL);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, model_id TEXT, request TEXT, state TEXT, error TEXT, graph_id TEXT,
  device TEXT, created REAL, started REAL, finished REAL);
CREATE TABLE IF NOT EXISTS graphs (
  id TEXT PRIMARY KEY, job_id TEXT, model_id TEXT, path TEXT, layers TEXT, n_nodes INTEGER,
  n_edges INTEGER, n_samples INTEGER, summary TEXT, created REAL);
"""

TMP_SUFFIX = ".partial"


def new_id(prefix: str) -> str:
    """A fresh opaque id, e.g. ``g_3f9a0c1d2e4b``."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; renamed onto `path` when the block succeeds."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary sibling of `path` for writing; rename it into place on success."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


class Store:
    """Thread-safe SQLite store of tensor sets, models, jobs and graphs."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir).resolve()
        for sub in ("tensors", "graphs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for stale in self.root.rglob(f"*{TMP_SUFFIX}*"):
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "intermod.sqlite3", check_same_thread=False,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def dir(self, sub: str) -> Path:
        return self.root / sub

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    # tensor sets
    def add_tensor_set(self, rec: dict[str, Any]) -> None:
        self._exec("INSERT INTO tensor_sets VALUES (?,?,?,?,?,?,?)",
                   (rec["id"], rec["name"], rec["path"], rec["sha256"], rec["total_bytes"],
                    json.dumps(rec["tensors"]), rec["created"]))

    def tensor_set(self, id_: str) -> dict[str, Any] | None:
        rows = self._exec("SELECT * FROM tensor_sets WHERE id=?", (id_,))
        if not rows:
            return None
        rows[0]["tensors"] = json.loads(rows[0]["tensors"])
        return rows[0]

    # models
    def add_model(self, rec: dict[str, Any]) -> None:
        self._exec("INSERT INTO models VALUES (?,?,?,?,?,?)",
                   (rec["id"], rec["name"], json.dumps(rec["spec"]), rec["weights_path"],
                    rec["n_parameters"], rec["created"]))

    def models(self) -> list[dict[str, Any]]:
        rows = self._exec("SELECT * FROM models ORDER BY created")
        for r in rows:
            r["spec"] = json.loads(r["spec"])
        return rows

    # jobs
    def add_job(self, rec: dict[str, Any]) -> None:
        self._exec("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (rec["id"], rec["model_id"], rec["request"], rec["state"], "", "",
                    rec["device"], rec["created"], None, None))

    def update_job(self, id_: str, **fields: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        self._exec(f"UPDATE jobs SET {cols} WHERE id=?", (*fields.values(), id_))

    def job(self, id_: str) -> dict[str, Any] | None:
        rows = self._exec("SELECT * FROM jobs WHERE id=?", (id_,))
        return rows[0] if rows else None

    def interrupt_unfinished_jobs(self, reason: str) -> int:
        """Mark jobs left queued or running by a previous server process as interrupted; a job
        whose graph was stored had finished (the process died between storing the graph and
        marking the job), so it is marked succeeded with that graph instead (first: a kill
        between the two updates leaves the rest for the next start)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state='succeeded', error='', finished=?, "
                "graph_id=(SELECT g.id FROM graphs g WHERE g.job_id = jobs.id) "
                "WHERE state IN ('queued','running') AND EXISTS (SELECT 1 FROM graphs g WHERE g.job_id = jobs.id)",
                (now,))
            cur = self._db.execute(
                "UPDATE jobs SET state='interrupted', error=?, finished=? "
                "WHERE state IN ('queued','running')", (reason, now))
            return cur.rowcount

    # graphs
    def add_graph(self, rec: dict[str, Any]) -> None:
        self._exec("INSERT INTO graphs VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (rec["id"], rec["job_id"], rec["model_id"], rec["path"],
                    json.dumps(rec["layers"]), rec["n_nodes"], rec["n_edges"], rec["n_samples"],
                    json.dumps(rec["summary"]), rec["created"]))

    def graph(self, id_: str) -> dict[str, Any] | None:
        rows = self._exec("SELECT * FROM graphs WHERE id=?", (id_,))
        return self._decode_graph(rows[0]) if rows else None

    def graphs(self) -> list[dict[str, Any]]:
        return [self._decode_graph(r) for r in self._exec("SELECT * FROM graphs ORDER BY created")]

    def delete_graph(self, id_: str) -> None:
        self._exec("DELETE FROM graphs WHERE id=?", (id_,))

    @staticmethod
    def _decode_graph(row: dict[str, Any]) -> dict[str, Any]:
        row["layers"] = json.loads(row["layers"])
        row["summary"] = json.loads(row["summary"])
        return row
