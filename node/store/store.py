"""The node's store: every SQL statement the node runs, behind methods named by intent.

Other modules ask `store.ingest(...)`, `store.apply_batches(...)`,
`store.read_window(...)`; none of them writes SQL. A second implementation (for
example Parquet/Iceberg for a province's collected data) would implement the same
methods.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from node.entities import INTERNAL_NAMES, Column, Entity
from node.errors import InputFileError, UserError
from node.model import load_base_model
from node.model.schema import Model
from node.store.audit import AuditStore, windows_digest
from node.store.catalog import CATALOG, NODES, CatalogStore
from node.store.database import Database, register_arrow, unregister_arrow
from node.store.feedback import FEEDBACK_RESPONSES, FeedbackStore
from node.store.grants import GrantsStore
from node.store.model import ModelStore, model_codes_table
from node.store.outbound import OutboundStore
from node.store.quality import QualityStore, Screening
from node.store.schema import (
    WIRE_LINEAGE,
    apply_migrations,
    ensure_entity_tables,
    entity_table,
    existing_entity_tables,
    quote,
    stored_columns,
)
from node.store.scores import ScoresStore
from node.store.sources import OBSERVATIONS, SourcesStore

Progress = Callable[[str, int, int], None]
MAX_REPORTED_ERRORS = 5
# What a value of each column type must look like, for error messages.
EXPECTED_VALUE = {
    "integer": "a whole number",
    "double": "a number",
    "decimal": "a number with at most 16 digits before and 2 after the decimal point",
    "boolean": "true or false",
    "date": "a date (YYYY-MM-DD, YYYYMMDD or YYYY/MM/DD, years 1–9999)",
    "timestamp": "a date and time (YYYY-MM-DD HH:MM:SS, years 1–9999)",
}
# Tables of the node's own in the change log (they travel upward like data).
INTERNAL_ENTITIES: tuple[Entity, ...] = (CATALOG, NODES, OBSERVATIONS, FEEDBACK_RESPONSES)
# Below this many rows an apply skips the existence probe (fewer statements, lower latency).
SMALL_BATCH_ROWS = 2048


def _now() -> datetime:
    return datetime.now(UTC)


def _log_entities(model: Model) -> dict[str, Entity]:
    """A model's entities and the node's own log tables: everything in the change log."""
    entities = model.storage_entities()
    data = {n: e for n, e in entities.items() if n not in INTERNAL_NAMES}
    return {**data, **{e.name: e for e in INTERNAL_ENTITIES}}


@dataclass(frozen=True)
class Identity:
    code: str
    name: str
    tier: str
    node_id: str
    created_at: str


@dataclass(frozen=True)
class IngestResult:
    batch_id: str
    entity: str
    file: str
    snapshot: bool
    rows_read: int
    inserted: int
    updated: int
    deleted: int
    unchanged: int
    first_seq: int | None
    last_seq: int | None
    # Rows held in quarantine by a blocking rule, rows written but flagged by a warning
    # rule, and the held rows per rule.
    quarantined: int = 0
    flagged: int = 0
    held_by_rule: tuple[tuple[str, int], ...] = ()

    @property
    def changes(self) -> int:
        return self.inserted + self.updated + self.deleted


@dataclass(frozen=True)
class ChangeWindow:
    """Changes (after_seq, last_seq] of this node's log, one Arrow table per entity."""

    after_seq: int
    last_seq: int
    head_seq: int
    tables: dict[str, pa.Table]


@dataclass(frozen=True)
class IncomingBatch:
    """A decoded window from a child, ready to apply."""

    after_seq: int
    last_seq: int
    head_seq: int
    tables: dict[str, pa.Table]
    # The child's model digest (heartbeats carry it; "" otherwise).
    model_digest: str = ""
    # SHA-256 over the window's Arrow IPC parts as received (the audit entry's evidence).
    digest: str = ""

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables.values())


@dataclass(frozen=True)
class ApplyResult:
    checkpoint: int
    received: int
    applied: int
    redelivered: bool


@dataclass(frozen=True)
class LinkRecord:
    child_code: str
    checkpoint: int
    child_head: int | None
    last_pull: datetime | None
    caught_up_at: datetime | None
    rows_applied: int
    batches_applied: int
    last_error: str | None
    last_error_at: datetime | None


@dataclass(frozen=True)
class ParentRecord:
    parent_code: str
    acked_seq: int
    first_seen: datetime
    last_seen: datetime


class BatchGap(UserError):
    """A child sent a window that starts after our checkpoint: applying it would lose data."""


@dataclass
class _Validation:
    problems: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        if len(self.problems) < MAX_REPORTED_ERRORS:
            self.problems.append(message)


class Store:
    """A node's DuckDB store."""

    def __init__(self, db: Database, model: Model) -> None:
        self.db = db
        self.use_model(model, self.read_entity_heads(_log_entities(model)))
        self._head = self._read_head()
        code = self.identity().code
        self.catalog = CatalogStore(self, code)
        self.models = ModelStore(self)
        self.sources = SourcesStore(self, code)
        self.feedback = FeedbackStore(self, code)
        self.quality = QualityStore(self, code)
        self.scores = ScoresStore(self, code)
        # What may leave this node and in which form (sharing attribute, grades).
        self.outbound = OutboundStore(self, code)
        self.audit = AuditStore(self, code)
        self.grants = GrantsStore(self, code)

    def use_model(self, model: Model, heads: dict[str, int]) -> None:
        """Work with `model`'s entities from now on (their tables exist: see ModelStore).
        `heads` is each log entity's last sequence, read with the tables it describes."""
        self.model = model
        self.model_digest = model.digest()
        log_entities = _log_entities(model)
        # Data entities (what users import and query) …
        self.entities = {n: e for n, e in log_entities.items() if n not in INTERNAL_NAMES}
        # … and everything in the change log (which travels to the parent) with each one's
        # last sequence, so a window skips entities with no change. One attribute, so a
        # window reader never pairs one model's entities with another's heads.
        self._log_state = (log_entities, heads)
        self.model_codes = model_codes_table(model)

    @property
    def log_entities(self) -> dict[str, Entity]:
        return self._log_state[0]

    @staticmethod
    def log_entities_of(model: Model) -> dict[str, Entity]:
        return _log_entities(model)

    # ----- lifecycle ---------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, *, code: str, name: str, tier: str, model: Model) -> Store:
        """Create a new store with the node's identity and model; refuses an existing file."""
        if path.exists():
            raise UserError(f"{path} already exists; refusing to overwrite a node's store")
        db = Database(path)
        with db.write() as cur:
            apply_migrations(cur)
            ensure_entity_tables(cur, [*model.storage_entities().values(), *INTERNAL_ENTITIES])
            ModelStore.record_active(cur, model, "initialised", "tongyuan init")
            identity = {
                "code": code,
                "name": name,
                "tier": tier,
                "node_id": str(uuid.uuid4()),
                "created_at": _now().isoformat(timespec="seconds"),
            }
            cur.executemany("INSERT INTO tongyuan.meta VALUES (?, ?)", list(identity.items()))
        return cls(db, model)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        read_only: bool = False,
        memory_limit: str = "1GB",
    ) -> Store:
        """Open a node's store on the model it works with (a store from before models
        existed works with the base model)."""
        if not path.exists():
            raise UserError(
                f"store {path} is missing but its config is there: restore the store from a "
                "backup, or move the directory aside and run `tongyuan init` again"
            )
        db = Database(path, read_only=read_only, memory_limit=memory_limit)
        if not read_only:
            with db.write() as cur:
                apply_migrations(cur)
                model = ModelStore.read_active(cur)
                if model is None:
                    model = load_base_model()
                    ModelStore.record_active(cur, model, "initialised", "upgrade")
                ensure_entity_tables(cur, [*model.storage_entities().values(), *INTERNAL_ENTITIES])
        else:
            # A read-only open cannot create tables a config gained since the node last
            # ran; those entities are simply empty until it does.
            with db.read() as cur:
                present = existing_entity_tables(cur)
                model = ModelStore.read_active(cur) if "rows_observations" in present else None
            if model is None or not all("rows_" + e.name in present for e in INTERNAL_ENTITIES):
                db.close()
                raise UserError(
                    f"store {path} was written by an older Tongyuan; start the node once "
                    "(`tongyuan serve`) or run a writing command so it can upgrade the store"
                )
        return cls(db, model)

    def close(self) -> None:
        self.db.close()

    def checkpoint(self) -> None:
        self.db.checkpoint()

    # ----- identity and heads ------------------------------------------------------

    def identity(self) -> Identity:
        with self.db.read() as cur:
            values = dict(cur.execute("SELECT key, value FROM tongyuan.meta").fetchall())
        return Identity(
            code=values["code"],
            name=values["name"],
            tier=values["tier"],
            node_id=values["node_id"],
            created_at=values["created_at"],
        )

    def _read_head(self) -> int:
        with self.db.read() as cur:
            row = cur.execute("SELECT seq FROM tongyuan.head").fetchone()
        return int(row[0]) if row else 0

    def read_entity_heads(
        self, log_entities: dict[str, Entity], cur: duckdb.DuckDBPyConnection | None = None
    ) -> dict[str, int]:
        """Each log entity's last sequence; with `cur`, inside that transaction."""
        if cur is None:
            with self.db.read() as reader:
                return self.read_entity_heads(log_entities, reader)
        heads = {}
        for entity in log_entities.values():
            row = cur.execute(f"SELECT max(_seq) FROM {entity_table(entity)}").fetchone()
            heads[entity.name] = int(row[0]) if row and row[0] is not None else 0
        return heads

    @property
    def head_seq(self) -> int:
        return self._head

    def wait_for_head(self, after: int, timeout: float) -> int:
        """Block until the change log passes `after` or `timeout` elapses; returns the head."""
        with self.db.head_changed:
            if self._head <= after and not self.db.closed:
                self.db.head_changed.wait(timeout)
        return self._head

    def reserve_seqs(self, cur: duckdb.DuckDBPyConnection, count: int) -> tuple[int, int]:
        """Reserve `count` sequence numbers inside the current write; returns (base, new head)."""
        base = int(cur.execute("SELECT seq FROM tongyuan.head").fetchone()[0])  # type: ignore[index]
        if count:
            cur.execute("UPDATE tongyuan.head SET seq = ?", [base + count])
        return base, base + count

    def publication(self) -> _Publication:
        """What a write transaction will make visible once committed (see `_publish`)."""
        return _Publication(self._publish)

    def _publish(self, head: int, entities: Iterable[str] = ()) -> None:
        """Make a committed head visible to window readers; called in commit order."""
        for name in entities:
            heads = self._log_state[1]
            heads[name] = max(heads.get(name, 0), head)
        if head > self._head:
            self._head = head
            self.db.notify_head()

    # ----- local ingest -------------------------------------------------------------

    def ingest(
        self,
        entity: Entity,
        source: pa.Table,
        *,
        file_label: str,
        locate: Callable[[int], str],
        origin_node: str,
        department: str,
        snapshot: bool,
        allow_empty: bool = False,
        progress: Progress | None = None,
        resource: str | None = None,
        columns: Sequence[str] | None = None,
        observing: tuple[str, str] | None = None,
        releasing: Sequence[str] = (),
    ) -> IngestResult:
        """Validate a file's rows and apply its effective changes in one transaction.

        Rows equal to the stored version produce no change; with `snapshot`, this
        node's records missing from the file become deletes. Any problem raises
        InputFileError naming file, row and column, and nothing is written. With
        `resource`, an import that changed something also records the change time on
        the resource's catalogue entry (its freshness), in the same transaction.
        With `observing` (source node, department), the resource is not the attributes'
        authoritative source: its values are recorded as observations of that source's
        records instead of changing them. Otherwise the rule library screens the rows:
        rows failing a blocking rule are held in quarantine (and left out), rows failing a
        warning rule are written and flagged. `releasing` names the quarantined rows the
        file re-imports (one id per row), settled instead of held twice.
        """
        report = progress or (lambda phase, done, total: None)
        fields = list(columns or entity.column_names)
        self._check_columns(source, file_label, fields, resource or entity.name)
        rows = source.num_rows
        if snapshot and rows == 0 and not allow_empty:
            raise InputFileError(
                f"{file_label}: a snapshot without rows would delete every {entity.name} record "
                f"of department {department!r}; refusing (use --allow-empty if that is meant)"
            )
        src = source.append_column("_row", pa.array(np.arange(rows, dtype=np.int64)))
        batch_id = uuid.uuid4().hex[:16]
        now = _now()
        publication = self.publication()
        arrow = {"ingest_source": src, **self.quality.relations()}
        with self.db.write(arrow=arrow, on_commit=publication.fire) as cur:
            if resource is not None:
                self.catalog.check_importable(cur, resource)
            report("validating", 0, rows)
            self._stage(cur, entity, source.column_names)
            self._validate_stage(cur, entity, source, file_label, locate, fields)
            screening = Screening()
            if observing is None:
                report("checking rules", 0, rows)
                screening = self.quality.screen_import(
                    cur,
                    entity,
                    fields,
                    origin_node=origin_node,
                    department=department,
                    resource=resource,
                    batch_id=batch_id,
                    file_label=file_label,
                    locate=locate,
                    now=now,
                    releasing=releasing,
                )
            else:
                self.sources.stage_observations(
                    cur,
                    entity,
                    fields,
                    resource=resource or entity.name,
                    source_node=observing[0],
                    source_dept=observing[1],
                )
                entity, fields = OBSERVATIONS, list(OBSERVATIONS.column_names)
                (staged,) = cur.execute("SELECT count(*) FROM ingest_stage").fetchone()  # type: ignore[misc]
                rows = int(staged)
            table = entity_table(entity)
            key = quote(entity.key)
            report("comparing", rows, rows)
            # Only the attributes the resource carries are compared and written; the
            # others keep what the record holds (another resource of this node may
            # provide them).
            compare = " OR ".join(
                f"s.{quote(c)} IS DISTINCT FROM c.{quote(c)}" for c in fields if c != entity.key
            )
            values = ", ".join(
                f"{'s' if c in fields else 'c'}.{quote(c)} AS {quote(c)}"
                for c in entity.column_names
                if c != entity.key
            )
            current = f"(SELECT * FROM {table} WHERE origin_node = ? AND NOT _deleted)"
            # Held rows are left out; a snapshot still counts them as present, so their
            # records are not deleted while they wait in quarantine.
            not_held = "AND s._row NOT IN (SELECT _row FROM ingest_held)" if screening.held else ""
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE ingest_delta AS "
                f"SELECT s._row, s.{key}, {values}, c.{key} IS NULL AS _is_new "
                f"FROM ingest_stage s LEFT JOIN {current} c ON s.{key} = c.{key} "
                f"WHERE (c.{key} IS NULL OR {compare or 'false'}) {not_held}",
                [origin_node],
            )
            # A snapshot is one resource's complete set: it deletes only records that
            # resource last wrote (older records by their department), never another's.
            if not snapshot:
                scope, scope_params = "AND false", []
            elif resource is not None:
                scope = (
                    "AND (c.origin_resource = ? "
                    "OR (c.origin_resource IS NULL AND c.origin_dept = ?))"
                )
                scope_params = [resource, department]
            else:
                scope, scope_params = "AND c.origin_dept = ?", [department]
            cur.execute(
                f"CREATE OR REPLACE TEMP TABLE ingest_gone AS SELECT c.{key} FROM {current} c "
                f"WHERE NOT EXISTS (SELECT 1 FROM ingest_stage s WHERE s.{key} = c.{key}) "
                f"{scope}",
                [origin_node, *scope_params],
            )
            inserted, updated = cur.execute(
                "SELECT count(*) FILTER (_is_new), count(*) FILTER (NOT _is_new) FROM ingest_delta"
            ).fetchone()  # type: ignore[misc]
            (deleted,) = cur.execute("SELECT count(*) FROM ingest_gone").fetchone()  # type: ignore[misc]
            changes = int(inserted) + int(updated) + int(deleted)
            report("applying", 0, changes)
            touch = bool(changes and resource)
            base, head = self.reserve_seqs(cur, changes + touch)
            if changes:
                self._write_ingest(
                    cur, entity, origin_node, department, resource, batch_id, now, base
                )
            if observing is None:
                screening = replace(
                    screening,
                    flagged=self.quality.flag_import(cur, entity, origin_node, resource, now),
                )
            stamped = touch and self.catalog.touch_entry(cur, resource, head, now)  # type: ignore[arg-type]
            n_delta = int(inserted) + int(updated)
            result = IngestResult(
                batch_id=batch_id,
                entity=entity.name,
                file=file_label,
                snapshot=snapshot,
                rows_read=source.num_rows,
                inserted=int(inserted),
                updated=int(updated),
                deleted=int(deleted),
                unchanged=rows - n_delta - screening.held,
                quarantined=screening.held,
                flagged=screening.flagged,
                held_by_rule=screening.held_by_rule,
                first_seq=base + 1 if changes else None,
                last_seq=base + changes if changes else None,
            )
            cur.execute(
                "INSERT INTO tongyuan.ingest_batches (batch_id, entity, file, department, "
                "snapshot, rows_read, inserted, updated, deleted, first_seq, last_seq, "
                "finished_at, resource) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    batch_id,
                    entity.name,
                    file_label,
                    department,
                    snapshot,
                    source.num_rows,
                    result.inserted,
                    result.updated,
                    result.deleted,
                    result.first_seq,
                    result.last_seq,
                    now,
                    resource,
                ],
            )
            report("applying", changes, changes)
            for temp in ("ingest_stage", "ingest_delta", "ingest_gone"):
                cur.execute(f"DROP TABLE {temp}")
            self.quality.drop_screening(cur)
            changed = [entity.name, "catalog"] if stamped else [entity.name]
            publication.set(head, changed if changes else [])
        return result

    @staticmethod
    def _check_columns(
        source: pa.Table, file_label: str, fields: Sequence[str], label: str
    ) -> None:
        names = source.column_names
        unknown = [n for n in names if n not in fields]
        missing = [n for n in fields if n not in names]
        if unknown:
            raise InputFileError(
                f"{file_label}: column {', '.join(map(repr, unknown))} is not part of resource "
                f"{label!r} (its columns: {', '.join(fields)})"
            )
        if missing:
            raise InputFileError(
                f"{file_label}: missing column {', '.join(map(repr, missing))} of resource "
                f"{label!r} (the header must name all of: {', '.join(fields)})"
            )

    @staticmethod
    def _typed(column: Column, raw: str) -> str:
        """SQL turning a trimmed text value into the column's type, NULL if it does not fit."""
        if column.type == "string":
            return raw
        if column.type == "date":
            value = (
                f"COALESCE(TRY_CAST({raw} AS DATE), "
                f"CAST(TRY_STRPTIME({raw}, ['%Y%m%d', '%Y/%m/%d', '%Y.%m.%d']) AS DATE))"
            )
            # Years 1–9999 only: anything else cannot be read back by clients.
            return f"CASE WHEN year({value}) BETWEEN 1 AND 9999 THEN {value} END"
        if column.type == "timestamp":
            value = f"TRY_CAST({raw} AS TIMESTAMP)"
            return f"CASE WHEN year({value}) BETWEEN 1 AND 9999 THEN {value} END"
        if column.type == "decimal":
            # Refuse rather than round: 12.345 does not fit two decimal places.
            exact = f"TRY_CAST({raw} AS DECIMAL(38,10))"
            return (
                f"CASE WHEN {exact} = TRY_CAST({raw} AS {column.sql_type}) "
                f"THEN TRY_CAST({raw} AS {column.sql_type}) END"
            )
        return f"TRY_CAST({raw} AS {column.sql_type})"

    def _stage(self, cur: duckdb.DuckDBPyConnection, entity: Entity, names: list[str]) -> None:
        # Attributes the resource does not carry are empty.
        raw = ", ".join(
            [f"NULLIF(trim({quote(n)}), '') AS {quote(n)}" for n in names]
            + [f"NULL::VARCHAR AS {quote(c)}" for c in entity.column_names if c not in names]
        )
        typed = ", ".join(
            f"{self._typed(c, 'r.' + quote(c.name))} AS {quote(c.name)}" for c in entity.columns
        )
        bad = (
            " OR ".join(
                f"(r.{quote(c.name)} IS NOT NULL AND "
                f"{self._typed(c, 'r.' + quote(c.name))} IS NULL)"
                for c in entity.columns
                if c.type != "string"
            )
            or "false"
        )
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE ingest_stage AS SELECT r._row, {typed}, "
            f"({bad}) AS _bad FROM (SELECT _row, {raw} FROM ingest_source) r"
        )

    def _validate_stage(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        source: pa.Table,
        file_label: str,
        locate: Callable[[int], str],
        fields: Sequence[str],
    ) -> None:
        found = _Validation()
        self._validate_model_fit(cur, entity, fields, file_label, locate, found)
        bad_rows = [
            int(r[0])
            for r in cur.execute(
                "SELECT _row FROM ingest_stage WHERE _bad ORDER BY _row "
                f"LIMIT {MAX_REPORTED_ERRORS}"
            ).fetchall()
        ]
        for row in bad_rows:
            for column in entity.columns:
                if column.type == "string" or column.name not in source.column_names:
                    continue
                raw_value = source.column(column.name)[row].as_py()
                if raw_value is None or not str(raw_value).strip():
                    continue
                (ok,) = cur.execute(
                    f"SELECT {self._typed(column, '$1')} IS NOT NULL", [str(raw_value).strip()]
                ).fetchone()  # type: ignore[misc]
                if not ok:
                    found.add(
                        f"{file_label} {locate(row)}, column {column.name}: "
                        f"{raw_value!r} is not {EXPECTED_VALUE[column.type]}"
                    )
        key = quote(entity.key)
        for (row,) in cur.execute(
            f"SELECT _row FROM ingest_stage WHERE {key} IS NULL ORDER BY _row "
            f"LIMIT {MAX_REPORTED_ERRORS}"
        ).fetchall():
            found.add(f"{file_label} {locate(int(row))}, column {entity.key}: key is empty")
        for value, rows in cur.execute(
            f"SELECT {key}, list(_row ORDER BY _row) FROM ingest_stage WHERE {key} IS NOT NULL "
            f"GROUP BY {key} HAVING count(*) > 1 ORDER BY min(_row) LIMIT {MAX_REPORTED_ERRORS}"
        ).fetchall():
            where = " and ".join(locate(int(r)) for r in rows[:3])
            more = f" (and {len(rows) - 3} more)" if len(rows) > 3 else ""
            found.add(
                f"{file_label}: duplicate key {entity.key}={value!r} at {where}{more}, "
                f"column {entity.key}"
            )
        if found.problems:
            count = len(found.problems)
            head = "" if count == 1 else f"nothing imported; the first {count} problems:\n  "
            raise InputFileError(head + "\n  ".join(found.problems))

    def _validate_model_fit(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        fields: Sequence[str],
        file_label: str,
        locate: Callable[[int], str],
        found: _Validation,
    ) -> None:
        """Values the model forbids: empty where required, outside the attribute's code list."""
        declared = self.model.entity(entity.name)
        if declared is None:
            return
        for attribute in declared.attributes:
            if attribute.name not in fields or attribute.name == entity.key:
                continue
            column = quote(attribute.name)
            code_list = self.model.code_list(attribute.code_list) if attribute.code_list else None
            checks: list[tuple[str, list[Any], str]] = []
            if attribute.required:
                checks.append((f"{column} IS NULL", [], "a value is required"))
            if code_list is not None:
                list_name = code_list.external or code_list.name
                shown = f" ({', '.join(code_list.codes[:12])})" if code_list.codes else ""
                checks.append(
                    (
                        f"{column} IS NOT NULL AND CAST({column} AS VARCHAR) NOT IN "
                        "(SELECT code FROM model_codes WHERE list = ?)",
                        [list_name],
                        f"is not a code of {code_list.name}{shown}",
                    )
                )
            for condition, params, what in checks:
                for row, value in cur.execute(
                    f"SELECT _row, CAST({column} AS VARCHAR) FROM ingest_stage WHERE {condition} "
                    f"ORDER BY _row LIMIT {MAX_REPORTED_ERRORS}",
                    params,
                ).fetchall():
                    shown_value = "" if value is None else f"{value!r} "
                    found.add(
                        f"{file_label} {locate(int(row))}, column {attribute.name}: "
                        f"{shown_value}{what} (model {self.model.label()})"
                    )

    def _write_ingest(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        origin_node: str,
        department: str,
        resource: str | None,
        batch_id: str,
        now: datetime,
        base: int,
    ) -> None:
        table = entity_table(entity)
        key = quote(entity.key)
        cols = ", ".join(quote(c) for c in entity.column_names)
        nulls = ", ".join(key if c == entity.key else "NULL" for c in entity.column_names)
        cur.execute(
            f"DELETE FROM {table} WHERE origin_node = ? AND {key} IN "
            f"(SELECT {key} FROM ingest_delta UNION ALL SELECT {key} FROM ingest_gone)",
            [origin_node],
        )
        cur.execute(
            f"INSERT INTO {table} ({stored_columns(entity)}) "
            f"SELECT {cols}, false, ?, ? + row_number() OVER (ORDER BY _row), "
            "?, ?, ?, ?, ? + row_number() OVER (ORDER BY _row), ?, ? FROM ingest_delta",
            [origin_node, base, department, batch_id, now, resource, base, origin_node, now],
        )
        (n_delta,) = cur.execute("SELECT count(*) FROM ingest_delta").fetchone()  # type: ignore[misc]
        tomb_base = base + int(n_delta)
        cur.execute(
            f"INSERT INTO {table} ({stored_columns(entity)}) "
            f"SELECT {nulls}, true, ?, ? + row_number() OVER (ORDER BY {key}), "
            f"?, ?, ?, ?, ? + row_number() OVER (ORDER BY {key}), ?, ? FROM ingest_gone",
            [
                origin_node,
                tomb_base,
                department,
                batch_id,
                now,
                resource,
                tomb_base,
                origin_node,
                now,
            ],
        )

    # ----- serving a parent ----------------------------------------------------------

    def read_window(self, after_seq: int, max_changes: int) -> ChangeWindow:
        """The next window of the change log after `after_seq`, at most `max_changes` long."""
        head = self._head
        last = min(head, after_seq + max_changes)
        tables: dict[str, pa.Table] = {}
        if last > after_seq:
            log_entities, heads = self._log_state
            # An error's text may quote the outbound SQL: it leaves without the key's pads.
            with self.db.read() as cur, self.outbound.without_secrets():
                for entity in log_entities.values():
                    if heads.get(entity.name, 0) <= after_seq:
                        continue
                    # Sharing attribute and grades, enforced before the rows leave.
                    columns, shared = self.outbound.select(entity)
                    table = cur.sql(
                        f"SELECT {columns} FROM {entity_table(entity)} "
                        f"WHERE _seq > {int(after_seq)} AND _seq <= {int(last)} AND {shared}"
                    ).to_arrow_table()
                    if table.num_rows:
                        tables[entity.name] = table
        return ChangeWindow(after_seq=after_seq, last_seq=last, head_seq=head, tables=tables)

    def record_parent_ack(self, parent_code: str, acked_seq: int) -> None:
        """Remember how far a parent has durably applied our log (bounds compaction)."""
        now = _now()
        with self.db.write() as cur:
            row = cur.execute(
                "SELECT first_seen, acked_seq FROM tongyuan.parents WHERE parent_code = ?",
                [parent_code],
            ).fetchone()
            first_seen = row[0] if row else now
            # The latest report, not the highest: a parent restored from a backup is
            # behind again, and compaction must wait for it.
            cur.execute("DELETE FROM tongyuan.parents WHERE parent_code = ?", [parent_code])
            cur.execute(
                "INSERT INTO tongyuan.parents VALUES (?, ?, ?, ?)",
                [parent_code, acked_seq, first_seen, now],
            )

    def parents(self) -> list[ParentRecord]:
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT parent_code, acked_seq, first_seen, last_seen FROM tongyuan.parents "
                "ORDER BY last_seen DESC"
            ).fetchall()
        return [ParentRecord(r[0], int(r[1]), r[2], r[3]) for r in rows]

    def compact(self, parent_timeout: timedelta, min_age: timedelta) -> int:
        """Drop tombstones every active parent has applied; returns how many went.

        The log already keeps only the latest version per record, which is exactly
        what a new parent needs for a full backfill; tombstones are only needed by
        parents that hold the record, so they go once acknowledged and older than
        `min_age` (which also covers a stale copy arriving late by a second path
        while a child moves). With no parent ever seen, nobody above holds anything.
        The highest sequence dropped is remembered: a parent whose checkpoint is
        below it may have missed deletes and is refused (`compacted_through`).
        """
        now = _now()
        active = [p.acked_seq for p in self.parents() if p.last_seen >= now - parent_timeout]
        floor = min(active) if active else self._head
        removed = 0
        with self.db.write() as cur:
            dropped_through = self._compacted_through(cur)
            for entity in self.log_entities.values():
                table = entity_table(entity)
                (n, highest) = cur.execute(
                    f"SELECT count(*), max(_seq) FROM {table} "
                    "WHERE _deleted AND _seq <= ? AND _applied_at <= ?",
                    [floor, now - min_age],
                ).fetchone()  # type: ignore[misc]
                if n:
                    cur.execute(
                        f"DELETE FROM {table} WHERE _deleted AND _seq <= ? AND _applied_at <= ?",
                        [floor, now - min_age],
                    )
                    removed += int(n)
                    dropped_through = max(dropped_through, int(highest))
            cur.execute("DELETE FROM tongyuan.meta WHERE key = 'compacted_through'")
            cur.execute(
                "INSERT INTO tongyuan.meta VALUES ('compacted_through', ?)", [str(dropped_through)]
            )
        return removed

    @staticmethod
    def _compacted_through(cur: duckdb.DuckDBPyConnection) -> int:
        row = cur.execute(
            "SELECT value FROM tongyuan.meta WHERE key = 'compacted_through'"
        ).fetchone()
        return int(row[0]) if row else 0

    def compacted_through(self) -> int:
        """Highest sequence of a tombstone compaction dropped (0 if none)."""
        with self.db.read() as cur:
            return self._compacted_through(cur)

    # ----- pulling from children --------------------------------------------------------

    def ensure_link(self, child_code: str) -> None:
        with self.db.write() as cur:
            self._ensure_link(cur, child_code)

    @staticmethod
    def _ensure_link(cur: duckdb.DuckDBPyConnection, child_code: str) -> int:
        row = cur.execute(
            "SELECT checkpoint FROM tongyuan.links WHERE child_code = ?", [child_code]
        ).fetchone()
        if row is None:
            cur.execute("INSERT INTO tongyuan.links (child_code) VALUES (?)", [child_code])
            return 0
        return int(row[0])

    def link_node_id(self, child_code: str) -> str | None:
        """The node id of the child store this link has pulled from, if any."""
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT child_node_id FROM tongyuan.links WHERE child_code = ?", [child_code]
            ).fetchone()
        return str(row[0]) if row and row[0] else None

    def set_link_node_id(self, child_code: str, node_id: str) -> None:
        with self.db.write() as cur:
            self._ensure_link(cur, child_code)
            cur.execute(
                "UPDATE tongyuan.links SET child_node_id = ? WHERE child_code = ?",
                [node_id, child_code],
            )

    def links(self) -> list[LinkRecord]:
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT child_code, checkpoint, child_head, last_pull, caught_up_at, rows_applied, "
                "batches_applied, last_error, last_error_at FROM tongyuan.links ORDER BY child_code"
            ).fetchall()
        return [
            LinkRecord(r[0], int(r[1]), r[2], r[3], r[4], int(r[5]), int(r[6]), r[7], r[8])
            for r in rows
        ]

    def link(self, child_code: str) -> LinkRecord | None:
        return next((lk for lk in self.links() if lk.child_code == child_code), None)

    def record_link_error(self, child_code: str, message: str) -> None:
        with self.db.write() as cur:
            self._ensure_link(cur, child_code)
            cur.execute(
                "UPDATE tongyuan.links SET last_error = ?, last_error_at = ? WHERE child_code = ?",
                [message[:2000], _now(), child_code],
            )

    def apply_batches(
        self,
        child_code: str,
        self_code: str,
        batches: Sequence[IncomingBatch],
        *,
        screen: bool = True,
    ) -> ApplyResult:
        """Apply consecutive windows from a child and advance its checkpoint, atomically.

        Within each record identity (origin_node, key) the higher origin_seq wins, so
        re-delivery, overlap and arrival by another path are no-ops. A window starting
        after the checkpoint is refused: applying it would skip changes. With `screen`,
        the rule library holds back rows that fail a blocking rule (the link leaves it
        off when the child already applies every rule this node would).
        """
        now = _now()
        received = sum(b.rows for b in batches)
        incoming: dict[str, pa.Table] = {}
        for name in self.log_entities:
            parts = [b.tables[name] for b in batches if name in b.tables]
            if parts:
                table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
                ordinal = np.arange(1, table.num_rows + 1, dtype=np.int64)
                incoming[name] = table.append_column("_ord", pa.array(ordinal))
        publication = self.publication()
        arrow = {f"incoming_{n}": t for n, t in incoming.items()}
        if any(n in self.entities for n in incoming):
            arrow.update(self.quality.relations())
        with self.db.write(arrow=arrow, on_commit=publication.fire) as cur:
            row = cur.execute(
                "SELECT (SELECT seq FROM tongyuan.head), "
                "(SELECT checkpoint FROM tongyuan.links WHERE child_code = ?)",
                [child_code],
            ).fetchone()
            assert row is not None
            base = int(row[0])
            checkpoint = int(row[1]) if row[1] is not None else self._ensure_link(cur, child_code)
            fresh = [b for b in batches if b.last_seq > checkpoint]
            if not fresh:
                return ApplyResult(checkpoint, received, 0, redelivered=True)
            if fresh[0].after_seq > checkpoint:
                raise BatchGap(
                    f"child {child_code} sent changes after seq {fresh[0].after_seq} but our "
                    f"checkpoint is {checkpoint}; refusing to skip changes"
                )
            for prev, nxt in itertools.pairwise(fresh):
                if nxt.after_seq > prev.last_seq:
                    raise BatchGap(
                        f"child {child_code} sent non-contiguous windows "
                        f"({prev.last_seq} then after {nxt.after_seq})"
                    )
            applied = 0
            changed: list[str] = []
            head = base
            # The catalogue first: screening reads which resources a child protects.
            for name, rows in sorted(incoming.items(), key=lambda item: item[0] != CATALOG.name):
                entity = self.log_entities[name]
                table, source = rows, f"incoming_{name}"
                if name in self.entities:
                    table, source, _ = self._screen_incoming(
                        cur, entity, rows, child_code, now, screen=screen
                    )
                count = self._apply_entity(
                    cur, entity, table, self_code, child_code, now, head, source
                )
                if source != f"incoming_{name}":
                    unregister_arrow(cur, source)
                if count:
                    # Sequence numbers are base + _ord of the rows as received (held ones
                    # leave gaps), so the head moves past all of them.
                    head += rows.num_rows
                    applied += count
                    changed.append(name)
            if head != base:
                cur.execute("UPDATE tongyuan.head SET seq = ?", [head])
            last = fresh[-1]
            cur.execute(
                "UPDATE tongyuan.links SET checkpoint = ?, child_head = ?, last_pull = ?, "
                "caught_up_at = CASE WHEN ? >= ? THEN ? ELSE caught_up_at END, "
                "rows_applied = rows_applied + ?, batches_applied = batches_applied + ?, "
                "last_error = NULL WHERE child_code = ?",
                [
                    last.last_seq,
                    last.head_seq,
                    now,
                    last.last_seq,
                    last.head_seq,
                    now,
                    applied,
                    len(fresh),
                    child_code,
                ],
            )
            # The evidence commits with the change it records (node/store/audit.py).
            self.audit.record(
                "batch.applied",
                {
                    "child": child_code,
                    "after_seq": fresh[0].after_seq,
                    "last_seq": last.last_seq,
                    "windows": len(fresh),
                    "rows_received": sum(b.rows for b in fresh),
                    "rows_applied": applied,
                    "head_seq": head,
                    "digest": windows_digest([b.digest for b in fresh]),
                },
                actor=child_code,
                cur=cur,
            )
            publication.set(head, changed)
        return ApplyResult(last.last_seq, received, applied, redelivered=False)

    def apply_released(
        self, entity: Entity, table: pa.Table, ids: Sequence[str], child: str, self_code: str
    ) -> int:
        """Re-validate quarantined rows from `child` (wire columns, in `ids` order) and
        apply those that pass like a batch; returns how many still fail."""
        now = _now()
        ordinal = np.arange(1, table.num_rows + 1, dtype=np.int64)
        table = table.append_column("_ord", pa.array(ordinal))
        source = f"incoming_{entity.name}"
        publication = self.publication()
        arrow = {source: table, **self.quality.relations()}
        with self.db.write(arrow=arrow, on_commit=publication.fire) as cur:
            rows = table
            table, source, still = self._screen_incoming(
                cur, entity, rows, child, now, releasing=ids
            )
            (base,) = cur.execute("SELECT seq FROM tongyuan.head").fetchall()[0]
            count = self._apply_entity(cur, entity, table, self_code, child, now, base, source)
            if count:
                head = int(base) + rows.num_rows
                cur.execute("UPDATE tongyuan.head SET seq = ?", [head])
                publication.set(head, [entity.name])
            if source != f"incoming_{entity.name}":
                unregister_arrow(cur, source)
        return still

    def _screen_incoming(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        table: pa.Table,
        child_code: str,
        now: datetime,
        *,
        screen: bool = True,
        releasing: Sequence[str] = (),
    ) -> tuple[pa.Table, str, int]:
        """A child's rows of one entity without those the rule library holds back: the
        rows, the relation to apply them from, and how many were held."""
        source = f"incoming_{entity.name}"
        held = None
        if screen or releasing:
            held = self.quality.screen_incoming(cur, entity, source, child_code, now, releasing)
        if held is None and releasing:
            self.quality.settle_released_all(cur, releasing)
        if held is not None and len(held):
            keep = pc.invert(pc.is_in(table.column("_ord"), pa.array(held, pa.int64())))
            table = table.filter(keep)
            source = f"screened_{entity.name}"
            register_arrow(cur, source, table)
        if not releasing and self.quality.has_held(cur, entity.name):
            self.quality.supersede_incoming(cur, entity, source, now)
        return table, source, 0 if held is None else len(held)

    @staticmethod
    def _apply_entity(
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        incoming: pa.Table,
        self_code: str,
        via: str,
        now: datetime,
        base: int,
        source: str,
    ) -> int:
        """Apply one entity's incoming rows; returns how many became new versions.

        Set-based and without temp copies of the rows: superseded versions are
        deleted by a join on identity, then incoming rows that still have no stored
        version are appended. Each incoming row already carries `_ord` (1..n), so its
        sequence number is `base + _ord` without a window function; numbers of rows
        that lose are simply skipped (the log allows gaps). Statements cost ~2 ms
        each whatever their size, so small batches skip the existence probe.
        """
        table = entity_table(entity)
        key = quote(entity.key)
        cols = ", ".join(quote(c) for c in entity.column_names)
        lineage = WIRE_LINEAGE
        identities = incoming.select(["origin_node", entity.key]).group_by(
            ["origin_node", entity.key]
        )
        if identities.aggregate([]).num_rows != incoming.num_rows:
            # Several windows carried versions of one record: keep the newest only.
            cur.execute(
                f"CREATE OR REPLACE TEMP TABLE apply_newest AS SELECT * FROM {source} "
                f"QUALIFY row_number() OVER (PARTITION BY origin_node, {key} "
                "ORDER BY origin_seq DESC) = 1"
            )
            source = "apply_newest"
        match = f"s.origin_node = i.origin_node AND s.{key} = i.{key}"
        existing = 1
        if incoming.num_rows > SMALL_BATCH_ROWS:
            (existing,) = cur.execute(
                f"SELECT count(*) FROM {source} i SEMI JOIN {table} s ON {match}"
            ).fetchone()  # type: ignore[misc]
        if existing:
            cur.execute(
                f"DELETE FROM {table} s USING {source} i WHERE {match} "
                "AND i.origin_seq > s.origin_seq AND i.origin_node <> ?",
                [self_code],
            )
            fresh = f"AND NOT EXISTS (SELECT 1 FROM {table} s WHERE {match})"
        else:
            fresh = ""
        (inserted,) = cur.execute(
            f"INSERT INTO {table} ({stored_columns(entity)}) "
            f"SELECT {cols}, {lineage}, ? + _ord, ?, ? FROM {source} i "
            f"WHERE i.origin_node <> ? {fresh}",
            [base, via, now, self_code],
        ).fetchone()  # type: ignore[misc]
        if source == "apply_newest":
            cur.execute("DROP TABLE apply_newest")
        return int(inserted)

    # ----- observation -----------------------------------------------------------------

    def record_lag_samples(
        self,
        sampled_at: datetime,
        samples: Sequence[tuple[str, int | None, float | None]],
        keep_since: datetime,
    ) -> None:
        """Record each child's lag (child, sequences, seconds) at one moment and drop
        samples older than `keep_since`, in one transaction."""
        table = pa.table(
            {
                "child_code": pa.array([s[0] for s in samples], pa.string()),
                "lag_seq": pa.array([s[1] for s in samples], pa.int64()),
                "lag_seconds": pa.array([s[2] for s in samples], pa.float64()),
            }
        )
        with self.db.write(arrow={"incoming_lag": table}) as cur:
            if samples:
                cur.execute(
                    "INSERT INTO tongyuan.lag_samples "
                    "SELECT child_code, ?, lag_seq, lag_seconds FROM incoming_lag",
                    [sampled_at],
                )
            cur.execute("DELETE FROM tongyuan.lag_samples WHERE sampled_at < ?", [keep_since])

    def lag_history(
        self, since: datetime
    ) -> dict[str, list[tuple[float, int | None, float | None]]]:
        """Lag samples since `since` per child, oldest first: (unix seconds, sequences,
        seconds)."""
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT child_code, epoch(sampled_at), lag_seq, lag_seconds "
                "FROM tongyuan.lag_samples WHERE sampled_at >= ? ORDER BY child_code, sampled_at",
                [since],
            ).fetchall()
        history: dict[str, list[tuple[float, int | None, float | None]]] = {}
        for child, at, lag_seq, lag_seconds in rows:
            history.setdefault(str(child), []).append((float(at), lag_seq, lag_seconds))
        return history

    # ----- reading -------------------------------------------------------------------

    def entity_counts(self) -> dict[str, dict[str, Any]]:
        """Live records per entity, split by the link they arrived through."""
        result: dict[str, dict[str, Any]] = {}
        with self.db.read() as cur:
            for entity in self.entities.values():
                rows = cur.execute(
                    f"SELECT _via, count(*) FROM {entity_table(entity)} WHERE NOT _deleted "
                    "GROUP BY _via ORDER BY _via"
                ).fetchall()
                by_via = {str(v): int(n) for v, n in rows}
                result[entity.name] = {"rows": sum(by_via.values()), "by_link": by_via}
        return result

    def last_ingests(self, limit: int = 5) -> list[dict[str, Any]]:
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT batch_id, entity, file, inserted, updated, deleted, finished_at "
                "FROM tongyuan.ingest_batches ORDER BY finished_at DESC LIMIT ?",
                [limit],
            ).fetchall()
        keys = ("batch_id", "entity", "file", "inserted", "updated", "deleted", "finished_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def query(self, sql: str) -> pa.Table:
        """Run one read-only SELECT and return all of its rows."""
        batches = list(self.query_batches(sql))
        if not batches:
            return pa.table({})
        return pa.Table.from_batches(batches)

    def query_batches(self, sql: str, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
        """Run one read-only SELECT and stream its rows, so a large answer does not sit
        in the serving node's memory; anything but a SELECT is refused before it runs."""
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise UserError(f"query: {exc}") from None
        if len(statements) != 1:
            raise UserError("query: give exactly one SQL statement")
        if statements[0].type is not duckdb.StatementType.SELECT:
            raise UserError(
                "query: only read-only SELECT statements are allowed, "
                f"not {statements[0].type.name}"
            )
        with self.db.read() as cur:
            if not self.db.read_only:
                cur.execute("BEGIN TRANSACTION")
            try:
                try:
                    reader = cur.sql(sql).to_arrow_reader(batch_rows)
                except duckdb.Error as exc:
                    raise UserError(f"query: {exc}") from None
                yield from _batches(reader)
            finally:
                if not self.db.read_only:
                    cur.execute("ROLLBACK")


class _Publication:
    """What a write transaction will publish once it has committed (see Database.write)."""

    def __init__(self, publish: Callable[[int, Iterable[str]], None]) -> None:
        self._publish = publish
        self._pending: tuple[int, list[str]] | None = None

    def set(self, head: int, entities: list[str]) -> None:
        self._pending = (head, entities)

    def fire(self) -> None:
        if self._pending is not None:
            self._publish(*self._pending)


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """The reader's batches (at least one, so the schema travels), errors as UserError."""
    sent = False
    try:
        for batch in reader:
            sent = True
            yield batch
    except (duckdb.Error, pa.ArrowException) as exc:
        raise UserError(f"query: {exc}") from None
    if not sent:
        yield pa.RecordBatch.from_pylist([], schema=reader.schema)
