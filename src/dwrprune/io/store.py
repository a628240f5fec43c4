"""The sample store: one SQLite file per run, written as each sample finishes.

Each sample is one row, keyed by the job that produced it (``d/3`` is the third step of the
depth chain, ``mix/1`` the second mixed point).  A row is inserted only after the job's model
checkpoint is on disk, in one transaction, so a run killed at any moment loses at most the
job in progress, and a restarted run skips every job whose key is already stored.  The run's
collection config and a fingerprint of the model are stored too; opening the store with a
different config is refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import DwrpruneError
from .settings import check_same_settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,          -- original | chain | mixed | holdout | bn_recal
    chain TEXT,                  -- d | w | r for chain samples
    step INTEGER,
    d REAL NOT NULL, w REAL NOT NULL, r REAL NOT NULL,
    resolution INTEGER NOT NULL,
    macs INTEGER NOT NULL, params INTEGER NOT NULL,
    val_acc REAL NOT NULL, val_loss REAL NOT NULL,
    parent TEXT,                 -- key of the sample whose model this one was pruned from
    finetune_steps INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    seconds REAL NOT NULL,       -- wall-clock cost of producing this sample
    checkpoint TEXT,             -- model file, relative to the run folder
    created REAL NOT NULL
);
"""


_HELD: set[str] = set()  # locks this process holds (re-entrancy)


def check_store_file(path: Path) -> None:
    """An existing file is a store only if it is SQLite with our tables: a 0-byte or foreign
    file is an error, never silently a new, empty store that would overwrite chain models."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise DwrpruneError(f"cannot read sample store {path}: {e.strerror}") from None
    if head != b"SQLite format 3\x00":
        what = "an empty file" if not head else "not an SQLite database"
        raise DwrpruneError(f"{path} exists but is not a sample store ({what}); move it "
                            "away, or use a new --out folder")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            columns = {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")}
                       for t in ("meta", "samples") if t in tables}
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise DwrpruneError(f"{path} is not a usable sample store: {e}") from None
    if not {"meta", "samples"} <= tables:
        raise DwrpruneError(f"{path} is an SQLite database but not a dwrprune sample store "
                            f"(tables: {sorted(tables)[:6]}); use a new --out folder")
    want = {"meta": {"key", "value"}, "samples": {f.name for f in fields(Sample)}}
    for t, cols in want.items():
        if not cols <= columns[t]:
            raise DwrpruneError(f"{path}: table {t} lacks columns "
                                f"{sorted(cols - columns[t])[:6]}; it is not a dwrprune sample "
                                "store (or a damaged one): use a new --out folder")


@dataclass
class Sample:
    key: str
    kind: str
    d: float
    w: float
    r: float
    resolution: int
    macs: int
    params: int
    val_acc: float
    val_loss: float
    finetune_steps: int
    seed: int
    seconds: float
    chain: str | None = None
    step: int | None = None
    parent: str | None = None
    checkpoint: str | None = None
    created: float = 0.0


class SampleStore:
    """SQLite-backed samples of one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        existed = self.path.exists()
        if existed and not self.path.is_file():
            raise DwrpruneError(f"{self.path} is not a file, so it cannot be a sample store")
        if existed:  # whatever its size: an existing file must already be a store
            check_store_file(self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit + BEGIN
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise DwrpruneError(f"{self.path} is not a usable sample store: {e}") from None

    # ------------------------------------------------------------------ config and identity
    def get_meta(self, key: str):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if not row:
            return None
        try:
            return json.loads(row[0])
        except (TypeError, ValueError):
            raise DwrpruneError(f"{self.path}: the store's {key} record is damaged; use a new "
                                "--out folder (the samples cannot be trusted)") from None

    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (key, json.dumps(value, sort_keys=True)))

    def bind(self, config: dict, fingerprint: str, defaults: dict | None = None) -> None:
        """Record the collection config and model fingerprint, or check they match."""
        old_cfg, old_fp = self.get_meta("collect_config"), self.get_meta("model_fingerprint")
        if old_fp is not None and old_fp != fingerprint:
            raise DwrpruneError(
                f"run store {self.path} was collected from a different model (fingerprint "
                f"{str(old_fp)[:12]} vs {fingerprint[:12]}); use a new --out folder")
        check_same_settings(old_cfg, config, f"run store {self.path}", "collected", defaults)
        self.set_meta("collect_config", config)
        self.set_meta("model_fingerprint", fingerprint)

    def bind_data_path(self, version: int, resumed: bool) -> None:
        """Samples are made on one data path (see :mod:`dwrprune.training.device_data`):
        resuming a collection begun on another one is refused, since its remaining samples
        would see other batches than its first ones."""
        old = self.get_meta("data_path")
        if resumed and (old or 1) != version:
            raise DwrpruneError(
                f"run store {self.path} was collected on data path {old or 1} (an older "
                f"dwrprune's {'per-image transforms' if not old else 'batches'}); this one "
                f"makes batches on data path {version}, so the remaining samples would see "
                "other random crops than the first ones: finish the collection with the "
                "dwrprune that began it, or use a new --out folder")
        self.set_meta("data_path", version)

    # ------------------------------------------------------------------ one writer
    @contextmanager
    def exclusive(self, wait: bool = False, on_wait=None) -> Iterator[None]:
        """One collecting process per store (see :meth:`folder_lock`)."""
        with self.folder_lock(self.path, wait, on_wait):
            yield

    @staticmethod
    @contextmanager
    def folder_lock(path: Path, wait: bool = False, on_wait=None,
                    reentrant: bool = False) -> Iterator[None]:
        """One working process per run folder: the advisory lock beside the store at
        ``path`` (which need not exist yet).  A second process waits for the first
        (``wait``, e.g. benchmark processes sharing a collection) or gets a clear error.
        Taken with ``reentrant`` (as :meth:`dwrprune.pipeline.Run.lock` does), code running
        under it in this process may take it again (a stage calling another)."""
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: nothing to enforce
            yield
            return
        key = str(Path(path).resolve())
        if key in _HELD:
            yield
            return
        lock_path = Path(path).with_name(Path(path).name + ".lock")
        try:
            f = open(lock_path, "a+")  # noqa: SIM115 - closed in finally
        except OSError as e:
            raise DwrpruneError(f"cannot lock {lock_path.parent}: {e.strerror}") from None
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                if not wait:
                    raise DwrpruneError(
                        f"{holder} is already working in {lock_path.parent}; wait for it "
                        "to finish, or use another --out folder") from None
                if on_wait is not None:
                    on_wait(f"waiting for {holder}, which is working in {lock_path.parent}")
                fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}")
            f.flush()
            if reentrant:
                _HELD.add(key)
            try:
                yield
            finally:
                _HELD.discard(key)
                fcntl.flock(f, fcntl.LOCK_UN)
        finally:
            f.close()

    # ------------------------------------------------------------------ samples
    def add(self, sample: Sample) -> None:
        sample.created = sample.created or time.time()
        cols = [f.name for f in fields(Sample)]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                f"INSERT INTO samples ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [getattr(sample, c) for c in cols])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def has(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM samples WHERE key = ?", (key,)).fetchone() is not None

    def get(self, key: str) -> Sample | None:
        rows = self.samples(where="key = ?", params=(key,))
        return rows[0] if rows else None

    def samples(self, kinds: tuple[str, ...] | None = None, where: str | None = None,
                params: tuple = ()) -> list[Sample]:
        cols = [f.name for f in fields(Sample)]
        q = f"SELECT {', '.join(cols)} FROM samples"
        conds, args = [], list(params)
        if where:
            conds.append(where)
        if kinds:
            conds.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args += list(kinds)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += " ORDER BY created"
        return [Sample(**dict(zip(cols, row))) for row in self.db.execute(q, args)]

    def as_dicts(self) -> list[dict]:
        return [asdict(s) for s in self.samples()]

    def close(self) -> None:
        self.db.close()
