"""Feedback items in the store: questionable records sent back to the node and department
that own them, and the owners' answers.

An item (a blocking rule that failed on a child's row, or a user's objection) is kept in
`tongyuan.feedback` where it was raised and travels down the links, as a replaced set
per parent, to the node that owns the record. The owner's answers are data: rows of the
log entity `feedback_responses` in its change log, so they travel upward like any change
and every tier above sees them. A correction is simply a newer version of the record.

So no tier keeps a state column to keep in step: each derives an item's state at read
time from what it holds — a newer version of the record from its owner ('corrected', a
delete included), else the owner's latest answer, else 'open'. The same correction that
reaches every tier closes the item at every tier, in the same transaction as the data.

Discrepancies (`node/store/sources.py`) are feedback items too, but keep their own table
and lifecycle (found and closed by each tier's cross-check, resolved at the source);
`FeedbackService` lists them alongside the items here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from node.catalog.freshness import clock
from node.divisions import ancestors, is_within
from node.entities import Column, Entity
from node.errors import UserError
from node.store.database import register_arrow, unregister_arrow
from node.store.schema import entity_table, quote, stored_columns
from node.store.sources import delivery_digest, norm_key_sql, subtree_condition

if TYPE_CHECKING:
    from node.store.audit import Evidence
    from node.store.store import Store

# The owners' answers (acknowledged, confirmed-correct, rejected): a log entity, so they
# travel upward like data and every tier above sees them.
FEEDBACK_RESPONSES = Entity(
    name="feedback_responses",
    key="response_id",
    description="An owner's answer to a feedback item about one of its records.",
    columns=tuple(
        Column(name, "string") for name in ("response_id", "item_id", "state", "actor", "note")
    ),
)

FEEDBACK_COLUMNS = (
    "id",
    "kind",
    "entity",
    "resource",
    "record_key",
    "owner_node",
    "owner_dept",
    "record_seq",
    "reason",
    "raised_node",
    "raised_by",
    "raised_at",
)
FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field(
            name,
            pa.int64()
            if name == "record_seq"
            else pa.timestamp("us", tz="UTC")
            if name.endswith("_at")
            else pa.string(),
        )
        for name in FEEDBACK_COLUMNS
    ]
)

# Derived states, in the order an item usually moves through them.
OPEN, ACKNOWLEDGED, CORRECTED = "open", "acknowledged", "corrected"
CONFIRMED, REJECTED = "confirmed-correct", "rejected"
STATES = (OPEN, ACKNOWLEDGED, CORRECTED, CONFIRMED, REJECTED)
# What an owner may answer (a correction is a new version of the record, not an answer).
ANSWERS = (ACKNOWLEDGED, CONFIRMED, REJECTED)
CLOSED = (CORRECTED, CONFIRMED, REJECTED)
# The kinds kept in tongyuan.feedback. Discrepancies (`node/store/sources.py`) are
# feedback items too, with a lifecycle of their own; the service lists them alongside.
KINDS = ("rule", "objection")

_COLS = ", ".join(FEEDBACK_COLUMNS)
# One row per item: this node's own first, else the copy its parent delivered.
_ITEMS = "SELECT DISTINCT ON (id) * FROM tongyuan.feedback ORDER BY id, received_from NULLS FIRST"


def _key_text(entity: Entity, alias: str) -> str:
    """SQL for a record's key as text (a string key as it is, so scans can skip by it)."""
    column = f"{alias}.{quote(entity.key)}"
    return column if entity.column(entity.key).type == "string" else f"CAST({column} AS VARCHAR)"


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def overdue_cutoff(overdue_hours: float | None, now: datetime | None = None) -> datetime | None:
    """Items raised before this are overdue unless closed (None: nothing is). The node's
    clock, so a configured skew counts."""
    if overdue_hours is None:
        return None
    return (now or clock()) - timedelta(hours=overdue_hours)


class FeedbackStore:
    """Feedback items (raised here or received), their derived states, and answers."""

    def __init__(self, store: Store, node_code: str) -> None:
        self._store = store
        self._db = store.db
        self._code = node_code
        # Bumped whenever the set deliverable downward may have changed.
        self.generation = 0

    # ----- raising -----------------------------------------------------------------------

    def raise_in(self, cur: duckdb.DuckDBPyConnection, items: pa.Table) -> int:
        """Inside the caller's write transaction: record `items` (FEEDBACK_COLUMNS) as
        raised here; an id already raised here is kept as it is. Returns how many are new.

        The generation is bumped before the caller commits. Rule items come from the apply
        path of the link whose child owns the record, and that link delivers downward on its
        own thread before its next apply, so it always reads the committed items."""
        if not items.num_rows:
            return 0
        missing = [c for c in FEEDBACK_COLUMNS if c not in items.column_names]
        if missing:
            raise ValueError(f"feedback items lack columns {missing}")
        table = items.select(list(FEEDBACK_COLUMNS)).cast(FEEDBACK_SCHEMA)
        register_arrow(cur, "feedback_raised", table)
        try:
            (inserted,) = cur.execute(
                f"INSERT INTO tongyuan.feedback ({_COLS}, received_from) "
                f"SELECT DISTINCT ON (id) {_COLS}, NULL FROM feedback_raised WHERE id NOT IN "
                "(SELECT id FROM tongyuan.feedback WHERE received_from IS NULL)"
            ).fetchone()  # type: ignore[misc]
        finally:
            unregister_arrow(cur, "feedback_raised")
        if inserted:
            self.generation += 1
        return int(inserted)

    def raise_objection(
        self,
        *,
        entity: Entity,
        resource: str,
        owner_node: str,
        key: str,
        reason: str,
        actor: str,
        now: datetime | None = None,
    ) -> str:
        """Raise an objection here about `owner_node`'s record `key` of `entity` as this node
        holds it (the key also matched in its normalised form); returns the item's id.
        A record owned outside this node's subtree (items only travel down the links),
        an unknown or deleted record, or an open objection about the same version raised
        here already, is refused and nothing is written."""
        if not is_within(owner_node, self._code):
            above = next((a for a in ancestors(self._code) if is_within(owner_node, a)), None)
            where_to = (
                f"raise it at a node above {self._code} whose subtree includes {owner_node}, "
                f"such as {above}"
                if above is not None
                else f"raise it at a node of node {owner_node}'s own province"
            )
            raise UserError(
                f"{entity.name} {key!r} of resource {resource} is a record of node "
                f"{owner_node}, which is neither node {self._code} nor below it: an objection "
                f"travels down the links to the record's owner and cannot reach it from here; "
                f"{where_to}"
            )
        raised_at = now or datetime.now(UTC)
        table = entity_table(entity)
        key_text = _key_text(entity, "r")
        record = f"SELECT {key_text}, r.origin_seq, r.origin_dept, r._deleted FROM {table} r"
        with self._db.write() as cur:
            row = cur.execute(
                f"{record} WHERE r.origin_node = ? AND {key_text} = ?", [owner_node, key]
            ).fetchone()
            if row is None:  # as typed: full-width digits, a lower-case x, spaces
                row = cur.execute(
                    f"{record} WHERE r.origin_node = ? AND {norm_key_sql(key_text)} = "
                    f"{norm_key_sql('?')} ORDER BY r._deleted, r.origin_seq DESC LIMIT 1",
                    [owner_node, key],
                ).fetchone()
            where = f"resource {resource} (node {owner_node})"
            if row is None:
                raise UserError(
                    f"{entity.name} {key!r} is not a record of {where} held at node "
                    f"{self._code}; check the key with `tongyuan query`"
                )
            record_key, record_seq, owner_dept, deleted = row
            if deleted:
                raise UserError(
                    f"{entity.name} {record_key!r} of {where} was deleted by its owner; "
                    "there is no record left to object to"
                )
            same = self._select(
                cur,
                "i.kind = 'objection' AND i.received_from IS NULL AND i.entity = ? "
                "AND i.owner_node = ? AND i.record_key = ? AND i.record_seq = ?",
                [entity.name, owner_node, record_key, record_seq],
                cutoff=None,
            )
            pending = [s for s in same if s["state"] not in CLOSED]
            if pending:
                raise UserError(
                    f"an objection about {entity.name} {record_key!r} of {where} is already "
                    f"{pending[0]['state']}: item {pending[0]['id']} raised by "
                    f"{pending[0]['raised_by']}"
                )
            item_id = uuid.uuid4().hex[:12]
            cur.execute(
                f"INSERT INTO tongyuan.feedback ({_COLS}, received_from) "
                "VALUES (?, 'objection', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                [
                    item_id,
                    entity.name,
                    resource,
                    record_key,
                    owner_node,
                    owner_dept,
                    record_seq,
                    reason,
                    self._code,
                    actor,
                    raised_at,
                ],
            )
        self.generation += 1
        return item_id

    # ----- answers (the owner) -------------------------------------------------------------

    def respond(self, item_id: str, state: str, actor: str, note: str) -> dict[str, Any]:
        """The owner's answer to one item about its record, written to this node's change
        log so it travels upward. Refused (nothing written) for an unknown item, at a node
        that does not own the record, for an item already closed or already in `state`."""
        if state not in ANSWERS:
            raise UserError(
                f"feedback answer {state!r} is not one of {', '.join(ANSWERS)} "
                "(a correction is made by importing the corrected record)"
            )
        now = datetime.now(UTC)
        entity = FEEDBACK_RESPONSES
        publication = self._store.publication()
        with self._db.write(on_commit=publication.fire) as cur:
            found = self._select(cur, "i.id = ?", [item_id], cutoff=None)
            if not found:
                raise UserError(
                    f"no feedback item {item_id!r} at node {self._code} "
                    "(`tongyuan feedback list --all` shows them)"
                )
            item = found[0]
            if item["owner_node"] != self._code:
                raise UserError(
                    f"feedback item {item_id} is about a record of node {item['owner_node']} "
                    f"({item['owner_dept'] or 'its department'}): answer it there, at the node "
                    "that owns the record"
                )
            if item["state"] in CLOSED:
                raise UserError(f"feedback item {item_id} is already {item['state']}")
            if item["state"] == state:
                raise UserError(f"feedback item {item_id} is already {state}")
            response_id = uuid.uuid4().hex
            _, seq = self._store.reserve_seqs(cur, 1)
            row = [response_id, item_id, state, actor, note]
            lineage = [False, self._code, seq, item["owner_dept"], None, now, None]
            local = [seq, self._code, now]
            values = [*row, *lineage, *local]
            cur.execute(
                f"INSERT INTO {entity_table(entity)} ({stored_columns(entity)}) "
                f"VALUES ({', '.join('?' for _ in values)})",
                values,
            )
            publication.set(seq, [entity.name])
        return {
            "response_id": response_id,
            "item_id": item_id,
            "state": state,
            "actor": actor,
            "note": note,
            "node": self._code,
            "at": now,
            "seq": seq,
        }

    # ----- reading, with derived states ------------------------------------------------------

    def items(
        self,
        *,
        overdue_hours: float | None = None,
        include_closed: bool = True,
        item_id: str | None = None,
        limit: int | None = None,
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Items known here (one row per id, this node's own first), oldest first, with
        their derived state, whether each is closed and overdue, the owner's answers and
        the correcting version's time. Without `include_closed` only open and acknowledged
        ones; at most `limit` (both applied in SQL, so a long history is not read)."""
        cutoff = overdue_cutoff(overdue_hours, now)
        where, params = ("i.id = ?", [item_id]) if item_id is not None else ("true", [])
        with self._db.read() as cur:
            return self._select(
                cur, where, params, cutoff=cutoff, include_closed=include_closed, limit=limit
            )

    def item(self, item_id: str, overdue_hours: float | None = None) -> dict[str, Any] | None:
        found = self.items(overdue_hours=overdue_hours, item_id=item_id)
        return found[0] if found else None

    def counts(self, overdue_hours: float) -> dict[str, Any]:
        """Items known here: open (not acknowledged), acknowledged, closed, and overdue
        (open or acknowledged, raised longer ago than `overdue_hours`).

        Rule items and objections only: discrepancies, which `feedback list` shows as items
        too, are counted by `SourcesStore.counts` (status's own line, the metric
        `tongyuan_discrepancies`), so no metric counts one twice."""
        cutoff = overdue_cutoff(overdue_hours, None)
        with self._db.read() as cur:
            sql, params = self._items_sql(cur, "true", [], cutoff)
            open_, acknowledged, closed, overdue = cur.execute(
                f"SELECT count(*) FILTER (state = '{OPEN}'), "
                f"count(*) FILTER (state = '{ACKNOWLEDGED}'), count(*) FILTER (closed), "
                f"count(*) FILTER (overdue) FROM ({sql})",
                params,
            ).fetchone()  # type: ignore[misc]
        return {
            "open": int(open_),
            "acknowledged": int(acknowledged),
            "closed": int(closed),
            "overdue": int(overdue),
        }

    def _select(
        self,
        cur: duckdb.DuckDBPyConnection,
        where: str,
        params: list[Any],
        *,
        cutoff: datetime | None,
        include_closed: bool = True,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        sql, all_params = self._items_sql(cur, where, params, cutoff)
        sql = f"SELECT * FROM ({sql})"
        if not include_closed:
            sql += " WHERE NOT closed"
        sql += " ORDER BY raised_at, id"
        if limit is not None:
            sql += " LIMIT ?"
            all_params = [*all_params, max(int(limit), 0)]
        result = cur.execute(sql, all_params)
        names = [c[0] for c in result.description]
        rows = [dict(zip(names, r, strict=True)) for r in result.fetchall()]
        for row in rows:
            for name in ("raised_at", "corrected_at"):
                row[name] = _utc(row[name])
            row["responses"] = [{**r, "at": _utc(r["at"])} for r in row["responses"] or []]
        return rows

    def _items_sql(
        self,
        cur: duckdb.DuckDBPyConnection,
        where: str,
        params: list[Any],
        cutoff: datetime | None,
    ) -> tuple[str, list[Any]]:
        """SQL for the items (filtered by `where` on alias i) with their derived state."""
        named = {
            str(r[0])
            for r in cur.execute("SELECT DISTINCT entity FROM tongyuan.feedback").fetchall()
        }
        # The owner's version of each item's record, from the entity tables of this node's
        # model (an item about an entity it does not have can only be answered). Each table
        # is probed by key for the items' records only (the owner is matched below).
        versions = [
            f"SELECT '{e.name}' AS entity, {_key_text(e, 'r')} AS record_key, r.origin_node, "
            f"r.origin_seq, r.origin_time, r._deleted FROM {entity_table(e)} r "
            f"WHERE {_key_text(e, 'r')} IN "
            f"(SELECT record_key FROM items WHERE entity = '{e.name}')"
            for e in self._store.entities.values()
            if e.name in named
        ] or [
            "SELECT NULL::VARCHAR AS entity, NULL::VARCHAR AS record_key, "
            "NULL::VARCHAR AS origin_node, NULL::BIGINT AS origin_seq, "
            "NULL::TIMESTAMPTZ AS origin_time, NULL::BOOLEAN AS _deleted WHERE false"
        ]
        # A newer version the owner sent that this tier holds back in quarantine also
        # makes the item obsolete (it is about an older version; the newer one, if it
        # fails a rule, is an item of its own).
        versions.append(
            "SELECT entity, record_key, origin_node, origin_seq, quarantined_at AS origin_time, "
            "false AS _deleted FROM tongyuan.quarantine WHERE received_from IS NOT NULL "
            "AND record_key IN (SELECT record_key FROM items)"
        )
        versions_sql = (
            "SELECT entity, record_key, origin_node, max(origin_seq) AS origin_seq, "
            "arg_max(origin_time, origin_seq) AS origin_time, "
            "arg_max(_deleted, origin_seq) AS _deleted FROM ("
            + " UNION ALL ".join(versions)
            + ") GROUP BY entity, record_key, origin_node"
        )
        items = f"SELECT i.* FROM ({_ITEMS}) i WHERE {where}"
        responses = entity_table(FEEDBACK_RESPONSES)
        sql = (
            f"WITH items AS ({items}), versions AS ({versions_sql}), "
            "answers AS (SELECT item_id, origin_node, "
            "arg_max(state, origin_seq) AS answer, "
            "list({'state': state, 'actor': actor, 'note': note, 'node': origin_node, "
            "'at': origin_time} ORDER BY origin_seq) AS responses "
            f"FROM {responses} WHERE NOT _deleted AND item_id IN (SELECT id FROM items) "
            "GROUP BY item_id, origin_node), "
            "derived AS (SELECT i.*, v.origin_seq AS corrected_seq, "
            "v.origin_time AS corrected_at, v._deleted AS corrected_by_delete, "
            f"CASE WHEN v.origin_seq IS NOT NULL THEN '{CORRECTED}' "
            f"ELSE COALESCE(a.answer, '{OPEN}') END AS state, a.responses "
            "FROM items i LEFT JOIN versions v ON v.entity = i.entity "
            "AND v.origin_node = i.owner_node AND v.record_key = i.record_key "
            "AND v.origin_seq > i.record_seq "
            "LEFT JOIN answers a ON a.item_id = i.id AND a.origin_node = i.owner_node) "
            f"SELECT {_COLS}, received_from, state, "
            f"state IN ({', '.join(repr(s) for s in CLOSED)}) AS closed, "
            f"(state NOT IN ({', '.join(repr(s) for s in CLOSED)}) AND ?::TIMESTAMPTZ "
            "IS NOT NULL AND raised_at < ?::TIMESTAMPTZ) AS overdue, "
            "corrected_seq, corrected_at, corrected_by_delete, responses FROM derived"
        )
        return sql, [*params, cutoff, cutoff]

    # ----- model migrations -----------------------------------------------------------------

    @staticmethod
    def rename_for_model(
        cur: duckdb.DuckDBPyConnection,
        renames: Sequence[tuple[str, str, Sequence[tuple[str, str]]]],
    ) -> None:
        """Inside a model migration: items raised here about a renamed entity take its new
        name (attributes play no part in an item)."""
        for old, new, _ in renames:
            if old != new:
                cur.execute(
                    "UPDATE tongyuan.feedback SET entity = ? WHERE entity = ? "
                    "AND received_from IS NULL",
                    [new, old],
                )

    # ----- downward delivery ----------------------------------------------------------------

    def downward_set(self, child: str) -> tuple[str, pa.Table]:
        """Every item known here (raised here or received) about a record of `child` or a
        node below it, with a digest, for delivery to that child."""
        with self._db.read() as cur:
            table = cur.sql(
                f"SELECT {_COLS} FROM ({_ITEMS}) "
                f"WHERE {subtree_condition('owner_node', child)} ORDER BY id"
            ).to_arrow_table()
        table = table.cast(FEEDBACK_SCHEMA)
        return delivery_digest(table), table

    def received_digest(self, parent: str) -> str:
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT digest FROM tongyuan.received_feedback WHERE parent_code = ?", [parent]
            ).fetchone()
        return str(row[0]) if row else ""

    def replace_received(
        self, parent: str, table: pa.Table, digest: str, evidence: Evidence | None = None
    ) -> None:
        """The parent's set replaces what it delivered before, in one transaction (with
        its audit entry, `evidence`)."""
        delivered = table.select(list(FEEDBACK_COLUMNS)).cast(FEEDBACK_SCHEMA)
        with self._db.write(arrow={"feedback_delivered": delivered}) as cur:
            if evidence is not None:
                evidence(cur)
            cur.execute("DELETE FROM tongyuan.feedback WHERE received_from = ?", [parent])
            cur.execute(
                f"INSERT INTO tongyuan.feedback ({_COLS}, received_from) "
                f"SELECT {_COLS}, ? FROM feedback_delivered",
                [parent],
            )
            cur.execute("DELETE FROM tongyuan.received_feedback WHERE parent_code = ?", [parent])
            cur.execute("INSERT INTO tongyuan.received_feedback VALUES (?, ?)", [parent, digest])
        self.generation += 1
