"""The catalogue's tables: drafts and history (local), published entries and the node
tree (in the change log, so they travel upward like data), standard items (downward).

Published and retired entries live in `tongyuan.rows_catalog`, an entity table like
any other: one row per (origin_node, code), its latest version or a tombstone, each
with its sequence number. So harvesting a child's catalogue rides the same windows,
the same checkpoint and the same transaction as its data, and a retirement or a
removal reaches every tier above exactly like a row update or delete. Drafts never
enter the log: only published resources travel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb

from node.catalog.entries import Entry, entry_from_document
from node.catalog.standards import StandardItem, digest, standard_from_document
from node.entities import Column, Entity
from node.errors import UserError
from node.store.schema import entity_table, stored_columns

if TYPE_CHECKING:
    from node.store.audit import Evidence
    from node.store.store import Store

CATALOG = Entity(
    name="catalog",
    key="code",
    description="Published and retired catalogue entries of this node and its subtree.",
    columns=tuple(
        Column(name, type_)
        for name, type_ in (
            ("code", "string"),
            ("name", "string"),
            ("summary", "string"),
            ("department", "string"),
            ("source_node", "string"),
            ("source_department", "string"),
            ("entity", "string"),
            ("fields", "string"),  # JSON list of information items
            ("format", "string"),
            ("update_frequency", "string"),
            ("sharing", "string"),
            ("sharing_kind", "string"),
            ("sharing_conditions", "string"),
            ("open_attribute", "string"),
            ("sensitivity", "string"),
            ("keywords", "string"),  # JSON list
            ("provides", "string"),
            ("version", "integer"),
            ("status", "string"),
            ("published_on", "date"),
            ("published_at", "timestamp"),
            ("last_change_at", "timestamp"),
            ("updated_by", "string"),
            ("updated_at", "timestamp"),
        )
    ),
)
# Which node sits below which: each parent records its children, so the province
# knows the whole tree (coverage, search paths) even where a county holds nothing yet.
NODES = Entity(
    name="federation_nodes",
    key="code",
    description="Nodes of the federation below this one, each recorded by its parent.",
    columns=(
        Column("code", "string"),
        Column("parent_code", "string"),
        Column("name", "string"),
        Column("tier", "string"),
    ),
)
_JSON_COLUMNS = ("fields", "keywords")
# A resource's last change is stamped on its entry at most this often (see touch_entry).
FRESHNESS_STAMP_INTERVAL = timedelta(seconds=60)
_TIME_COLUMNS = ("published_at", "last_change_at", "updated_at")


def _utc_naive(value: datetime | None) -> datetime | None:
    """TIMESTAMP columns hold UTC without a zone (the wire's column vocabulary)."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None)


def _entry_row(entry: Entry) -> list[Any]:
    doc = entry.document()
    values: list[Any] = []
    for column in CATALOG.columns:
        if column.name in _JSON_COLUMNS:
            values.append(json.dumps(doc[column.name], ensure_ascii=False))
        elif column.name in _TIME_COLUMNS:
            values.append(_utc_naive(getattr(entry, column.name)))
        else:
            values.append(getattr(entry, column.name))
    return values


def _entry_from_row(names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A stored row as an entry document plus where it came from."""
    doc = dict(zip(names, row, strict=True))
    for key in _JSON_COLUMNS:
        doc[key] = json.loads(doc[key]) if doc[key] else []
    for key in _TIME_COLUMNS:
        value = doc[key]
        doc[key] = value.replace(tzinfo=UTC).isoformat() if value is not None else None
    if isinstance(doc.get("published_on"), date):
        doc["published_on"] = doc["published_on"].isoformat()
    if isinstance(doc.get("applied_at"), datetime):
        doc["applied_at"] = doc["applied_at"].astimezone(UTC).isoformat()
    doc["version"] = int(doc["version"]) if doc["version"] is not None else 1
    return doc


_ENTRY_SELECT = (
    ", ".join(c.name for c in CATALOG.columns)
    + ", origin_node, _via AS via, _applied_at AS applied_at"
)
_ENTRY_NAMES = [c.name for c in CATALOG.columns] + ["origin_node", "via", "applied_at"]


class CatalogStore:
    """Catalogue reads and writes; every write is one transaction on the store's writer."""

    def __init__(self, store: Store, node_code: str) -> None:
        self._store = store
        self._db = store.db
        self.node_code = node_code
        # Bumped when the standard items change, so links know to offer them again.
        self.standards_generation = 0

    # ----- writing to the change log ---------------------------------------------------

    def _log_write(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        key: str,
        values: list[Any] | None,
        department: str | None,
        now: datetime,
    ) -> int:
        """Write this node's new version of one record (None = tombstone); returns its seq."""
        _, seq = self._store.reserve_seqs(cur, 1)
        table = entity_table(entity)
        cur.execute(
            f"DELETE FROM {table} WHERE origin_node = ? AND {entity.key} = ?",
            [self.node_code, key],
        )
        deleted = values is None
        row = values or [key if c.name == entity.key else None for c in entity.columns]
        lineage = [deleted, self.node_code, seq, department, None, now, None]
        local = [seq, self.node_code, now]
        placeholders = ", ".join("?" for _ in range(len(row) + len(lineage) + len(local)))
        cur.execute(
            f"INSERT INTO {table} ({stored_columns(entity)}) VALUES ({placeholders})",
            [*row, *lineage, *local],
        )
        return seq

    @staticmethod
    def _history(
        cur: duckdb.DuckDBPyConnection,
        code: str,
        version: int,
        action: str,
        actor: str,
        now: datetime,
        note: str = "",
    ) -> None:
        cur.execute(
            "INSERT INTO tongyuan.catalog_history VALUES (?, ?, ?, ?, ?, ?)",
            [code, version, action, actor, now, note],
        )

    # ----- drafts (local) ----------------------------------------------------------------

    def save_drafts(
        self, entries: Sequence[Entry], actor: str, action: str, note: str = ""
    ) -> None:
        """Create or replace drafts, all or none."""
        now = datetime.now(UTC)
        with self._db.write() as cur:
            for entry in entries:
                cur.execute("DELETE FROM tongyuan.catalog_drafts WHERE code = ?", [entry.code])
                doc = entry.with_changes(updated_by=actor, updated_at=now).document()
                cur.execute(
                    "INSERT INTO tongyuan.catalog_drafts VALUES (?, ?, ?, ?, ?)",
                    [entry.code, entry.version, json.dumps(doc, ensure_ascii=False), actor, now],
                )
                self._history(cur, entry.code, entry.version, action, actor, now, note)

    def draft(self, code: str) -> Entry | None:
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT doc FROM tongyuan.catalog_drafts WHERE code = ?", [code]
            ).fetchone()
        return entry_from_document(json.loads(row[0])) if row else None

    def drafts(self) -> list[Entry]:
        with self._db.read() as cur:
            rows = cur.execute("SELECT doc FROM tongyuan.catalog_drafts ORDER BY code").fetchall()
        return [entry_from_document(json.loads(r[0])) for r in rows]

    def delete_draft(self, code: str, actor: str, note: str = "") -> None:
        now = datetime.now(UTC)
        with self._db.write() as cur:
            row = cur.execute(
                "DELETE FROM tongyuan.catalog_drafts WHERE code = ? RETURNING version", [code]
            ).fetchone()
            if row is not None:
                self._history(cur, code, int(row[0]), "draft removed", actor, now, note)

    # ----- published entries (in the log) --------------------------------------------------

    def write_entries(
        self,
        entries: Sequence[Entry],
        actor: str,
        action: str,
        note: str = "",
        *,
        drop_drafts: bool = False,
    ) -> None:
        """Record published or retired versions of this node's entries, in one
        transaction; the drafts they came from (same version; any, with `drop_drafts`) go
        in the same transaction."""
        now = datetime.now(UTC)
        publication = self._store.publication()
        with self._db.write(on_commit=publication.fire) as cur:
            seq = 0
            for entry in entries:
                stamped = entry.with_changes(updated_by=actor, updated_at=now)
                seq = self._log_write(
                    cur, CATALOG, entry.code, _entry_row(stamped), entry.department, now
                )
                if drop_drafts:
                    cur.execute("DELETE FROM tongyuan.catalog_drafts WHERE code = ?", [entry.code])
                else:
                    cur.execute(
                        "DELETE FROM tongyuan.catalog_drafts WHERE code = ? AND version = ?",
                        [entry.code, entry.version],
                    )
                self._history(cur, entry.code, entry.version, action, actor, now, note)
            publication.set(seq, [CATALOG.name])

    def rewrite_for_model(
        self,
        cur: duckdb.DuckDBPyConnection,
        renames: Sequence[tuple[str, str, Sequence[tuple[str, str]]]],
        dropped: Sequence[tuple[str, str]],
        types: Mapping[tuple[str, str], str],
        actor: str,
        note: str,
    ) -> list[str]:
        """Inside a model migration: this node's entries and drafts naming a renamed entity
        or attribute, or a dropped attribute, become new versions in the model's names.
        `renames` is (old entity, new entity, [(old attribute, new attribute)]); `types`
        the new model's (entity, attribute) → type. Returns the log entities written."""
        now = datetime.now(UTC)
        by_entity = {old: (new, dict(attrs)) for old, new, attrs in renames}
        gone = set(dropped)

        def rewritten(entry: Entry) -> Entry | None:
            if entry.entity not in by_entity:
                return None
            new_entity, attrs = by_entity[entry.entity]
            fields = tuple(
                replace(
                    f,
                    name=attrs.get(f.name, f.name),
                    type=types.get((new_entity, attrs.get(f.name, f.name)), f.type),
                )
                for f in entry.fields
                if (entry.entity, f.name) not in gone
            )
            if new_entity == entry.entity and fields == entry.fields:
                return None
            return entry.with_changes(
                entity=new_entity,
                fields=fields,
                version=entry.version + 1,
                updated_by=actor,
                updated_at=now,
            )

        written = False
        for entry in [self.own_entry(code) for code in self._own_codes(cur)]:
            changed = rewritten(entry) if entry is not None else None
            if changed is not None:
                self._log_write(
                    cur, CATALOG, changed.code, _entry_row(changed), changed.department, now
                )
                self._history(cur, changed.code, changed.version, "model", actor, now, note)
                written = True
        for draft in self.drafts():
            changed = rewritten(draft)
            if changed is not None:
                cur.execute(
                    "UPDATE tongyuan.catalog_drafts SET doc = ?, version = ? WHERE code = ?",
                    [
                        json.dumps(changed.document(), ensure_ascii=False),
                        changed.version,
                        changed.code,
                    ],
                )
        return [CATALOG.name] if written else []

    def _own_codes(self, cur: duckdb.DuckDBPyConnection) -> list[str]:
        rows = cur.execute(
            f"SELECT code FROM {entity_table(CATALOG)} WHERE origin_node = ? AND NOT _deleted",
            [self.node_code],
        ).fetchall()
        return [str(r[0]) for r in rows]

    def remove_entry(self, code: str, version: int, actor: str, note: str = "") -> int:
        """Remove one of this node's entries: a tombstone tells every tier above."""
        now = datetime.now(UTC)
        publication = self._store.publication()
        with self._db.write(on_commit=publication.fire) as cur:
            seq = self._log_write(cur, CATALOG, code, None, None, now)
            cur.execute("DELETE FROM tongyuan.catalog_drafts WHERE code = ?", [code])
            self._history(cur, code, version, "removed", actor, now, note)
            publication.set(seq, [CATALOG.name])
        return seq

    def check_importable(self, cur: duckdb.DuckDBPyConnection, code: str) -> None:
        """Inside an ingest's transaction: the resource is still published (it may have
        been retired or removed while the file was being read)."""
        row = cur.execute(
            f"SELECT status FROM {entity_table(CATALOG)} "
            "WHERE origin_node = ? AND code = ? AND NOT _deleted",
            [self.node_code, code],
        ).fetchone()
        if row is None or row[0] != "published":
            state = "removed" if row is None else str(row[0])
            raise UserError(
                f"resource {code} was {state} while the file was being read; nothing imported"
            )

    def touch_entry(
        self, cur: duckdb.DuckDBPyConnection, code: str, seq: int, now: datetime
    ) -> bool:
        """Inside an ingest: the resource's last effective change is now, recorded as a
        new version of its entry so freshness travels upward with the data. At most one
        stamp a minute: each stamp is one more change every tier applies, which would
        double the latency of a stream of small imports, and freshness periods are
        minutes at the least (an unused sequence number is a gap the log allows)."""
        row = cur.execute(
            f"UPDATE {entity_table(CATALOG)} SET last_change_at = ?, _seq = ?, origin_seq = ?, "
            "origin_time = ?, _applied_at = ? WHERE origin_node = ? AND code = ? AND NOT _deleted "
            "AND (last_change_at IS NULL OR last_change_at <= ?)",
            [
                _utc_naive(now),
                seq,
                seq,
                now,
                now,
                self.node_code,
                code,
                _utc_naive(now - FRESHNESS_STAMP_INTERVAL),
            ],
        ).fetchone()
        return bool(row and row[0])

    def own_entry(self, code: str) -> Entry | None:
        """This node's published or retired entry `code`."""
        docs = self._select("origin_node = ? AND code = ?", [self.node_code, code])
        return entry_from_document(docs[0]) if docs else None

    def entries_with_code(self, code: str) -> list[dict[str, Any]]:
        return self._select("code = ?", [code])

    def entries(self, origin: str | None = None) -> list[dict[str, Any]]:
        """Published and retired entries, this node's and its subtree's, as documents."""
        if origin is None:
            return self._select("true", [])
        return self._select("origin_node = ?", [origin])

    def search(self, terms: Sequence[str]) -> list[dict[str, Any]]:
        """Entries whose text (name, summary, fields and their descriptions, departments,
        keywords, code) contains every term, case-insensitively; Chinese text included."""
        # Field names and descriptions only, not the JSON around them ("name", "type").
        field_text = (
            "array_to_string(regexp_extract_all(fields, "
            '\'"(?:name|description)": "((?:[^"\\\\]|\\\\.)*)"\', 1), \' \')'
        )
        haystack = (
            "lower(concat_ws(' ', code, name, summary, department, source_department, "
            f"entity, {field_text}, keywords, provides))"
        )
        where = " AND ".join(f"contains({haystack}, lower(?))" for _ in terms) or "true"
        return self._select(where, list(terms))

    def _select(self, where: str, params: list[Any]) -> list[dict[str, Any]]:
        with self._db.read() as cur:
            rows = cur.execute(
                f"SELECT {_ENTRY_SELECT} FROM {entity_table(CATALOG)} "
                f"WHERE NOT _deleted AND {where} ORDER BY origin_node, code",
                params,
            ).fetchall()
        return [_entry_from_row(_ENTRY_NAMES, r) for r in rows]

    def history(self, code: str) -> list[dict[str, Any]]:
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT version, action, actor, happened_at, note FROM tongyuan.catalog_history "
                "WHERE code = ? ORDER BY happened_at, rowid",
                [code],
            ).fetchall()
        return [
            {
                "version": int(v),
                "action": a,
                "by": who,
                "at": at.astimezone(UTC).isoformat(timespec="seconds"),
                "note": note,
            }
            for v, a, who, at, note in rows
        ]

    def counts(self) -> dict[str, int]:
        """This node's own entries by status, drafts included."""
        with self._db.read() as cur:
            rows = cur.execute(
                f"SELECT status, count(*) FROM {entity_table(CATALOG)} "
                "WHERE NOT _deleted AND origin_node = ? GROUP BY status",
                [self.node_code],
            ).fetchall()
            (drafts,) = cur.execute("SELECT count(*) FROM tongyuan.catalog_drafts").fetchone()  # type: ignore[misc]
        result = {"draft": 0, "published": 0, "retired": 0}
        result.update({str(s): int(n) for s, n in rows})
        result["draft"] = int(drafts)
        return result

    # ----- the node tree (in the log) ---------------------------------------------------

    def record_children(self, children: Iterable[tuple[str, str, str]]) -> None:
        """Make the node tree list exactly these children (code, name, tier): new or
        changed ones are recorded, ones no longer configured are removed."""
        now = datetime.now(UTC)
        wanted = {code: (name, tier) for code, name, tier in children}
        publication = self._store.publication()
        with self._db.write(on_commit=publication.fire) as cur:
            have = {
                str(code): (name, tier)
                for code, name, tier in cur.execute(
                    f"SELECT code, name, tier FROM {entity_table(NODES)} "
                    "WHERE origin_node = ? AND NOT _deleted",
                    [self.node_code],
                ).fetchall()
            }
            seq = 0
            for code, (name, tier) in sorted(wanted.items()):
                if have.get(code) != (name, tier):
                    row = [code, self.node_code, name, tier]
                    seq = self._log_write(cur, NODES, code, row, None, now)
            for code in sorted(set(have) - set(wanted)):
                seq = self._log_write(cur, NODES, code, None, None, now)
            if seq:
                publication.set(seq, [NODES.name])

    def forget_child(self, code: str) -> None:
        now = datetime.now(UTC)
        publication = self._store.publication()
        with self._db.write(on_commit=publication.fire) as cur:
            (present,) = cur.execute(  # type: ignore[misc]
                f"SELECT count(*) FROM {entity_table(NODES)} "
                "WHERE origin_node = ? AND code = ? AND NOT _deleted",
                [self.node_code, code],
            ).fetchone()
            if present:
                seq = self._log_write(cur, NODES, code, None, None, now)
                publication.set(seq, [NODES.name])

    def tree(self) -> dict[str, str]:
        """child code → parent code for every node known below this one."""
        with self._db.read() as cur:
            rows = cur.execute(
                f"SELECT code, parent_code FROM {entity_table(NODES)} WHERE NOT _deleted "
                "ORDER BY _seq"
            ).fetchall()
        return {str(code): str(parent) for code, parent in rows}

    # ----- standard items (downward) ------------------------------------------------------

    def save_standards(self, items: Sequence[StandardItem]) -> None:
        """Define or redefine this node's own standard items, all in one transaction."""
        now = datetime.now(UTC)
        with self._db.write() as cur:
            for item in items:
                cur.execute(
                    "DELETE FROM tongyuan.standard_items WHERE origin_node = ? AND code = ? "
                    "AND received_from IS NULL",
                    [item.origin_node, item.code],
                )
                self._insert_standard(cur, item, None, now)
        self.standards_generation += 1

    def withdraw_standard(self, code: str) -> bool:
        with self._db.write() as cur:
            row = cur.execute(
                "DELETE FROM tongyuan.standard_items WHERE code = ? AND received_from IS NULL "
                "RETURNING code",
                [code],
            ).fetchone()
        if row is not None:
            self.standards_generation += 1
        return row is not None

    def standards(self) -> list[tuple[StandardItem, str | None]]:
        """Every standard item this node knows: (item, parent it came from or None if own)."""
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT doc, received_from FROM tongyuan.standard_items ORDER BY code"
            ).fetchall()
        return [(standard_from_document(json.loads(doc)), parent) for doc, parent in rows]

    def own_standard(self, code: str) -> StandardItem | None:
        return next(
            (i for i, parent in self.standards() if i.code == code and parent is None), None
        )

    def downward_set(self) -> tuple[str, list[StandardItem]]:
        """What this node passes to its children: its own items and those from above."""
        items = [item for item, _ in self.standards()]
        return digest(items), items

    def replace_received(
        self,
        parent: str,
        items: Sequence[StandardItem],
        received: str,
        evidence: Evidence | None = None,
    ) -> None:
        """Take the parent's whole set in one transaction: items it withdrew go, and so
        does whatever a former parent delivered (a node has one parent at a time)."""
        self._replace_standards(items, parent, received, evidence)

    def _replace_standards(
        self,
        items: Sequence[StandardItem],
        parent: str,
        received: str,
        evidence: Evidence | None = None,
    ) -> None:
        now = datetime.now(UTC)
        with self._db.write() as cur:
            cur.execute("DELETE FROM tongyuan.standard_items WHERE received_from IS NOT NULL")
            for item in items:
                self._insert_standard(cur, item, parent, now)
            cur.execute("DELETE FROM tongyuan.received_sets")
            cur.execute(
                "INSERT INTO tongyuan.received_sets VALUES (?, ?, ?)", [parent, received, now]
            )
            if evidence is not None:  # the audit entry commits with the set
                evidence(cur)
        self.standards_generation += 1

    @staticmethod
    def _insert_standard(
        cur: duckdb.DuckDBPyConnection, item: StandardItem, parent: str | None, now: datetime
    ) -> None:
        cur.execute(
            "INSERT INTO tongyuan.standard_items VALUES (?, ?, ?, ?, ?)",
            [
                item.code,
                item.origin_node,
                parent,
                json.dumps(item.document(), ensure_ascii=False),
                now,
            ],
        )

    def received_digest(self, parent: str) -> str:
        """Digest of the set held from `parent` ("" if the set came from another node)."""
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT digest FROM tongyuan.received_sets WHERE parent_code = ?", [parent]
            ).fetchone()
        return str(row[0]) if row else ""
