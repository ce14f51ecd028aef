"""One DuckDB database per node: the single writer, per-thread readers, and change wake-ups.

DuckDB admits one writing process and, inside it, conflicts between concurrent writers;
so every write goes through `write()`, serialised by one lock on one cursor, and readers
take a fresh cursor each. Committed writes that advance the change log wake waiters
(subscribe streams) through `head_changed`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from node.errors import UserError


class StoreLocked(UserError):
    """Another process holds the store file."""


class Database:
    def __init__(self, path: Path, *, read_only: bool = False, memory_limit: str = "1GB") -> None:
        self.path = path
        self.read_only = read_only
        config: dict[str, str | bool | int | float | list[str]] = {
            # Small commits would otherwise trigger a checkpoint almost every time;
            # the node checkpoints on a timer and at shutdown instead.
            "checkpoint_threshold": "256MB",
            "memory_limit": memory_limit,
            # The store never reads or writes other files through SQL (imports go through
            # pyarrow), so `query` cannot be used to read /etc/passwd or write anywhere.
            "enable_external_access": False,
        }
        try:
            self._db = duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreLocked(
                    f"store {path} is in use by another process (is the node serving? "
                    "then its admin API should have been used — check run/admin.json)"
                ) from None
            raise UserError(f"cannot open store {path}: {exc}") from None
        except duckdb.Error as exc:  # e.g. a memory_limit DuckDB cannot parse
            raise UserError(f"cannot open store {path}: {exc}") from None
        self._write_lock = threading.Lock()
        self._writer = self._db.cursor()
        self.head_changed = threading.Condition()
        self.closed = False

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one thread's reads; close it when done."""
        return self._db.cursor()

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self._db.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @contextmanager
    def write(
        self,
        arrow: Mapping[str, pa.Table] | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction on the single writer; rolled back on any exception.

        `arrow` tables are visible to the transaction's SQL under their names; temp
        tables it creates vanish with a rollback, so failures need no cleanup SQL.
        `on_commit` runs after COMMIT while the writer is still held, so what it
        publishes (the change-log head) is published in commit order.
        """
        if self.read_only:
            raise UserError(f"store {self.path} is open read-only")
        with self._write_lock:
            cur = self._writer
            for name, table in (arrow or {}).items():
                cur.register(name, table)
            try:
                cur.execute("BEGIN TRANSACTION")
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
                if on_commit is not None:
                    on_commit()
            finally:
                for name in arrow or {}:
                    cur.unregister(name)

    def notify_head(self) -> None:
        with self.head_changed:
            self.head_changed.notify_all()

    def checkpoint(self) -> None:
        if self.read_only or self.closed:
            return
        with self._write_lock:
            self._writer.execute("CHECKPOINT")

    def close(self) -> None:
        """Checkpoint (so the next start needs no WAL replay) and release the file."""
        if self.closed:
            return
        with self._write_lock:
            if not self.read_only:
                self._writer.execute("CHECKPOINT")
            self._writer.close()
            self._db.close()
            self.closed = True
        self.notify_head()


def register_arrow(cur: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Make an Arrow table visible to SQL in the middle of a transaction. DuckDB refuses
    while a result is partly fetched (`fetchone()` of a one-row answer), so a fully
    fetched trivial query takes its place first."""
    cur.execute("SELECT 1").fetchall()
    cur.register(name, table)


def arrow_of(
    cur: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None
) -> pa.Table:
    """A query's answer as Arrow in the middle of a transaction (see register_arrow)."""
    cur.execute("SELECT 1").fetchall()
    return cur.sql(sql, params=params).to_arrow_table()


def unregister_arrow(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    cur.execute("SELECT 1").fetchall()
    cur.unregister(name)
