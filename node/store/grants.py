"""Grants and return flows (数据回流) in the store.

Both ends of a grant live here. At the child, `tongyuan.grant_requests` holds the
requests it made to its parent and, once the parent delivers them, the parent's
decisions; the returned rows sit in `tongyuan.returned_<entity>` (one table per entity,
with the grant they came under), shown read-only as `main.returned_<entity>`. They are
never in the change log (`rows_<entity>`), so returned data cannot travel back up. At the
parent, `tongyuan.grants` holds each child's requests as pulled and the decision on each.

A filter is structured — attribute = value pairs, ANDed — and compiled here to SQL with
every value a quoted literal cast to the attribute's type; attributes are checked against
the entity (or the lineage columns origin_node / origin_dept) before they are quoted as
identifiers. The same compiled filter selects the slice at the parent and checks every
delivered window at the child, so a window carrying a row outside the filter it holds is
refused whole.

The parent keeps, per grant, the records it delivered (`tongyuan.grant_sent`: origin node,
key as stored, key as sent). A record the child holds that leaves the slice (deleted,
changed so that the filter no longer holds, no longer shared, or now sent in another form)
is sent as a departure: `_deleted`, its origin node and its key exactly as it was sent (a
pseudonym where the key was pseudonymised), every other column NULL. Records the child
never held produce nothing, so no key outside the filter ever leaves. The table is a
superset of what the child holds: pairs are added before a window is sent and removed
only once the child's receipt confirms the departure (a departure for a key the child
does not hold changes nothing there).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from node.entities import LINEAGE_COLUMNS, Entity
from node.errors import UserError
from node.store.database import arrow_of, register_arrow, unregister_arrow
from node.store.outbound import pseudonym
from node.store.schema import entity_table, quote

if TYPE_CHECKING:
    from node.store.store import Store

# Lineage columns a filter may name besides the entity's attributes.
FILTER_LINEAGE = ("origin_node", "origin_dept")
PENDING, APPROVED, DENIED, REVOKED, EXPIRED, PURGED, REFUSED = (
    "pending",
    "approved",
    "denied",
    "revoked",
    "expired",
    "purged",
    # At the child: a grant this node would not take (named in its reason); nothing of it
    # is held, and the parent's next word on it is taken afresh.
    "refused",
)
# A grant the parent has ended: the child's copy must go.
ENDED = (REVOKED, EXPIRED)
# The request fields that travel up (GetGrantRequests) and are never changed afterwards.
REQUEST_FIELDS = (
    "id",
    "resource",
    "filters",
    "purpose",
    "expires_at",
    "requested_by",
    "requested_at",
)
# The decision fields that travel down (DeliverGrants).
GRANT_FIELDS = (
    "id",
    "resource",
    "entity",
    "filters",
    "purpose",
    "state",
    "expires_at",
    "decided_by",
    "decided_at",
    "reason",
)
# Bookkeeping columns of a window at the parent, dropped before it leaves.
_RECORD_KEY, _SENT_KEY = "_record_key", "_sent_key"
# `grant_digests` role: per grant at the parent, the outbound stamp its child's copy was
# sent under (set when the child confirms a window from 0; see `read_return`).
_RETURN_STAMP = "return-stamp"


class ReturnRefused(UserError):
    """A return-flow delivery (or grant set) this node will not take; nothing was applied.

    `reason` is 'precondition' (unknown, denied, revoked, expired grant; a gap),
    'outside' (a row the grant's filter does not admit) or 'invalid' (malformed)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class GrantFilter:
    attribute: str
    value: str


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _time_or_none(value: Any) -> datetime | None:
    """A time as sent, or None where it cannot be read (an ending is taken regardless)."""
    try:
        return _parse_time(value)
    except (ValueError, TypeError):
        return None


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def digest_of(document: Any) -> str:
    """Digest of a JSON-able document as it travels (sorted keys, no spaces)."""
    text = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sql_literal(value: str) -> str:
    """A string as a SQL literal: quotes doubled (DuckDB has no backslash escapes in
    standard strings); NUL refused, since it could end the string early elsewhere."""
    if "\x00" in value:
        raise UserError("a filter value cannot contain a NUL character")
    return "'" + value.replace("'", "''") + "'"


_VALUE_CHECKS: dict[str, Callable[[str], object]] = {
    "integer": int,
    "double": float,
    "decimal": Decimal,
    "date": date.fromisoformat,
    "timestamp": datetime.fromisoformat,
}


def _filter_type(entity: Entity, attribute: str) -> str:
    if attribute in FILTER_LINEAGE:
        return "string"
    if attribute in entity.column_names:
        return entity.column(attribute).type
    allowed = ", ".join([*entity.column_names, *FILTER_LINEAGE])
    raise UserError(
        f"filter attribute {attribute!r} is not an attribute of {entity.name} nor a lineage "
        f"column a filter may name ({allowed})"
    )


def check_filters_shape(filters: Sequence[GrantFilter]) -> None:
    """At least one filter, each attribute once (they are ANDed), no NUL in a value:
    what can be checked before the entity is known."""
    if not filters:
        raise UserError("a grant needs at least one filter (ATTR=VALUE) saying which rows")
    seen: set[str] = set()
    for f in filters:
        if f.attribute in seen:
            raise UserError(
                f"filter attribute {f.attribute!r} given twice: filters are ANDed, one value "
                "per attribute"
            )
        seen.add(f.attribute)
        sql_literal(f.value)


def check_filters(entity: Entity, filters: Sequence[GrantFilter]) -> list[GrantFilter]:
    """The filters in their canonical order (by attribute), each attribute known to the
    entity (or origin_node / origin_dept), once, with a value its type can hold."""
    check_filters_shape(filters)
    for f in filters:
        kind = _filter_type(entity, f.attribute)
        if kind == "boolean":
            if f.value.lower() not in ("true", "false"):
                raise UserError(f"filter {f.attribute}={f.value!r}: give true or false")
        elif kind in _VALUE_CHECKS:
            try:
                _VALUE_CHECKS[kind](f.value)
            except (ValueError, InvalidOperation):
                raise UserError(
                    f"filter {f.attribute}={f.value!r}: not a value of type {kind}"
                ) from None
    return sorted(filters, key=lambda f: f.attribute)


def _sql_type(entity: Entity, attribute: str) -> str:
    return "VARCHAR" if attribute in FILTER_LINEAGE else entity.column(attribute).sql_type


def filter_sql(entity: Entity, filters: Sequence[GrantFilter], alias: str = "") -> str:
    """The filters as one SQL condition, true only where every one holds (NULL counts as
    not holding). Attributes are checked, values are quoted literals."""
    prefix = f"{alias}." if alias else ""
    terms = []
    for f in check_filters(entity, filters):
        kind = _filter_type(entity, f.attribute)
        column = f"{prefix}{quote(f.attribute)}"
        literal = sql_literal(f.value)
        if kind == "string":
            terms.append(f"{column} = {literal}")
        else:
            terms.append(f"{column} = CAST({literal} AS {_sql_type(entity, f.attribute)})")
    return "COALESCE(" + " AND ".join(terms) + ", false)"


def filters_to_json(filters: Sequence[GrantFilter]) -> list[dict[str, str]]:
    return [{"attribute": f.attribute, "value": f.value} for f in filters]


def filters_from_json(document: Any) -> list[GrantFilter]:
    """Filters from their JSON form; anything but a list of attribute/value strings is
    refused."""
    if isinstance(document, str):
        document = json.loads(document)
    if not isinstance(document, list):
        raise UserError("grant filters must be a list")
    found = []
    for item in document:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("attribute"), str)
            or not isinstance(item.get("value"), str)
        ):
            raise UserError(f"grant filter {item!r} is not an attribute and a value")
        found.append(GrantFilter(item["attribute"], item["value"]))
    return found


def describe_filters(filters: Sequence[GrantFilter]) -> str:
    return " AND ".join(f"{f.attribute}={f.value}" for f in filters)


def filters_evidence(filters: Sequence[GrantFilter], key: bytes) -> str:
    """Filters as an audit entry holds them (entries travel up, GetAudit, and into
    exports): each value as its pseudonym under the federation key, so a filter naming
    a person (`id_number=…`) never reaches a tier that was not sent it."""
    return " AND ".join(f"{f.attribute}={pseudonym(f.value, key)}" for f in filters)


def returned_table(entity: Entity) -> str:
    return f"tongyuan.{quote('returned_' + entity.name)}"


_REQUEST_COLS = (
    "id, parent_code, resource, entity, filters, purpose, expires_at, requested_by, "
    "requested_at, state, granted_expires_at, decided_by, decided_at, reason, checkpoint, "
    "ended, purged_at, rows_purged"
)
_GRANT_COLS = (
    "id, child_code, resource, entity, filters, purpose, requested_expires_at, requested_by, "
    "requested_at, state, expires_at, decided_by, decided_at, reason, received_at"
)


@dataclass(frozen=True)
class ReturnWindow:
    """One window of a grant's slice at the parent: (after_seq, last_seq] of its log.
    `table` is what leaves; `keys` (origin_node, record key as stored, key as sent,
    _deleted) stays here for the bookkeeping of what the child holds; `stamp` is the
    outbound stamp it was read under (`OutboundStore.stamp`)."""

    grant_id: str
    entity: str
    after_seq: int
    last_seq: int
    table: pa.Table
    keys: pa.Table
    stamp: str = ""

    @property
    def departures(self) -> int:
        return int(pc.sum(self.table.column("_deleted")).as_py() or 0)

    @property
    def live(self) -> int:
        return self.table.num_rows - self.departures


@dataclass(frozen=True)
class GrantsReceived:
    """A grant set as taken: how many grants, and those not taken (each with why)."""

    count: int
    problems: list[str]


class GrantsStore:
    """Requests made here and grants received (child side); requests pulled from
    children and the decisions on them (parent side); returned rows."""

    def __init__(self, store: Store, node_code: str) -> None:
        self._store = store
        self._db = store.db
        self._code = node_code
        # Bumped whenever a grant decided here changed (the set delivered downward).
        self.generation = 0
        self._migrated = False
        # Requests made here change only by `add_request` (never afterwards): their wire
        # document and digest per parent are kept until the next one (GetInfo asks often).
        self._requests_generation = 0
        self._requests_cache: dict[str, tuple[int, str, str]] = {}
        self._requests_lock = threading.Lock()

    def _present(self) -> bool:
        """False only in a store opened read-only before its grants migration ran (then
        there are no grants to show)."""
        if not self._migrated:
            with self._db.read() as cur:
                self._migrated = bool(
                    cur.execute(
                        "SELECT 1 FROM information_schema.tables WHERE table_schema = "
                        "'tongyuan' AND table_name = 'grant_requests'"
                    ).fetchall()
                )
        return self._migrated

    def _audit(
        self, kind: str, detail: dict[str, Any], actor: str, cur: duckdb.DuckDBPyConnection
    ) -> None:
        self._store.audit.record(kind, detail, actor=actor, cur=cur)

    def _key(self) -> bytes:
        """The federation key, for filter values in audit entries (`filters_evidence`)."""
        return self._store.outbound.federation_key()

    # ----- the child: requests -------------------------------------------------------------

    def add_request(
        self,
        *,
        parent: str,
        resource: str,
        filters: Sequence[GrantFilter],
        purpose: str,
        expires_at: datetime,
        actor: str,
    ) -> str:
        """Record a request to `parent`; it travels up when the parent next asks."""
        grant_id = uuid.uuid4().hex[:12]
        ordered = sorted(filters, key=lambda f: f.attribute)
        with self._db.write() as cur:
            cur.execute(
                f"INSERT INTO tongyuan.grant_requests ({_REQUEST_COLS}) VALUES "
                "(?, ?, ?, '', ?, ?, ?, ?, ?, 'pending', NULL, NULL, NULL, NULL, 0, NULL, "
                "NULL, NULL)",
                [
                    grant_id,
                    parent,
                    resource,
                    json.dumps(filters_to_json(ordered), ensure_ascii=False),
                    purpose,
                    expires_at,
                    actor,
                    _now(),
                ],
            )
            detail = {
                "grant": grant_id,
                "parent": parent,
                "resource": resource,
                "filter_pseudonym": filters_evidence(ordered, self._key()),
                "purpose": purpose,
                "expires_at": _iso(expires_at),
            }
            self._audit("grant.requested", detail, actor, cur)
        with self._requests_lock:
            self._requests_generation += 1
        return grant_id

    def requests_document(self, parent: str) -> tuple[str, str]:
        """(JSON, digest) of this node's requests to `parent`, as they travel up; built
        once per change, not per call."""
        with self._requests_lock:
            generation = self._requests_generation
            cached = self._requests_cache.get(parent)
        if cached is not None and cached[0] == generation:
            return cached[1], cached[2]
        built = self._build_requests_document(parent)
        with self._requests_lock:
            if self._requests_generation == generation:
                self._requests_cache[parent] = (generation, *built)
        return built

    def requests_digest(self, parent: str) -> str:
        """The digest of this node's requests to `parent` (GetInfo), from the cache."""
        return self.requests_document(parent)[1]

    def _build_requests_document(self, parent: str) -> tuple[str, str]:
        if not self._present():
            return "[]", ""
        with self._db.read() as cur:
            rows = cur.execute(
                f"SELECT {', '.join(REQUEST_FIELDS)} FROM tongyuan.grant_requests "
                "WHERE parent_code = ? ORDER BY requested_at, id",
                [parent],
            ).fetchall()
        document = [
            {
                "id": r[0],
                "resource": r[1],
                "filters": json.loads(r[2]),
                "purpose": r[3],
                "expires_at": _iso(r[4]),
                "requested_by": r[5],
                "requested_at": _iso(r[6]),
            }
            for r in rows
        ]
        if not document:
            return "[]", ""
        return json.dumps(document, ensure_ascii=False), digest_of(document)

    def received_digest(self, parent: str) -> str:
        return self._digest("grants", parent)

    def _digest(self, role: str, peer: str, cur: duckdb.DuckDBPyConnection | None = None) -> str:
        sql = "SELECT digest FROM tongyuan.grant_digests WHERE role = ? AND peer = ?"
        if cur is not None:
            row = cur.execute(sql, [role, peer]).fetchall()
        else:
            with self._db.read() as reader:
                row = reader.execute(sql, [role, peer]).fetchall()
        return str(row[0][0]) if row else ""

    @staticmethod
    def _set_digest(cur: duckdb.DuckDBPyConnection, role: str, peer: str, digest: str) -> None:
        cur.execute("DELETE FROM tongyuan.grant_digests WHERE role = ? AND peer = ?", [role, peer])
        cur.execute("INSERT INTO tongyuan.grant_digests VALUES (?, ?, ?)", [role, peer, digest])

    def return_checkpoints(self, parent: str) -> list[tuple[str, int]]:
        """(grant, parent's sequence through which this node holds the slice) for every
        grant from `parent` in force here."""
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT id, checkpoint FROM tongyuan.grant_requests "
                "WHERE parent_code = ? AND state = 'approved' ORDER BY id",
                [parent],
            ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def receive_grants(self, parent: str, grants_json: str, digest: str) -> GrantsReceived:
        """Take the parent's decisions on this node's requests (the set replaces the last
        one), grant by grant. A revoked or expired grant is always taken and its returned
        rows purged in the same transaction, whatever else is wrong with it. A grant this
        node cannot take (for another resource or filter than it asked for, an entity its
        model lacks, a filter or time it cannot read) is marked refused with the reason
        (and anything held under it dropped); one it never requested is ignored. Either
        way the rest of the set is taken. Only a set that is not a list of grants or does
        not match its digest is refused whole."""
        try:
            document = json.loads(grants_json)
        except ValueError as exc:
            raise ReturnRefused(f"grants delivery: {exc}", "invalid") from None
        if digest_of(document) != digest:
            raise ReturnRefused("grants delivery does not match its digest", "invalid")
        if not isinstance(document, list):
            raise ReturnRefused("grants delivery must be a list", "invalid")
        problems: list[str] = []
        with self._db.write() as cur:
            for grant in document:
                problem = self._take_grant(cur, parent, grant)
                if problem:
                    problems.append(problem)
            self._set_digest(cur, "grants", parent, digest)
        return GrantsReceived(len(document), problems)

    def _take_grant(self, cur: duckdb.DuckDBPyConnection, parent: str, grant: Any) -> str | None:
        """One grant of a delivered set; returns why it was not taken as it came, if so."""
        grant_id = grant.get("id") if isinstance(grant, dict) else None
        if not isinstance(grant_id, str):
            return f"grant {str(grant)[:200]!r} from {parent} has no id; ignored"
        row = cur.execute(
            "SELECT resource, filters, state, reason FROM tongyuan.grant_requests "
            "WHERE id = ? AND parent_code = ?",
            [grant_id, parent],
        ).fetchall()
        if not row:
            return (
                f"grant {grant_id} from {parent}: node {self._code} made no such request; ignored"
            )
        resource, filters, held_state, held_reason = row[0]
        if held_state == PURGED:
            return None  # its rows are gone; the parent's later word changes nothing
        state = grant.get("state")
        if state in ENDED:
            # Ending a grant only takes data away: always taken, whatever else is wrong.
            cur.execute(
                "UPDATE tongyuan.grant_requests SET state = ?, decided_by = ?, decided_at = ?, "
                "reason = ? WHERE id = ?",
                [
                    state,
                    _text_or_none(grant.get("decided_by")),
                    _time_or_none(grant.get("decided_at")),
                    _text_or_none(grant.get("reason")),
                    grant_id,
                ],
            )
            if state != held_state:
                self._audit(
                    f"grant.{state}",
                    {"grant": grant_id, "parent": parent, "resource": resource},
                    str(grant.get("decided_by") or ""),
                    cur,
                )
            self._purge(cur, grant_id, str(state))
            return None
        problem = self._grant_problem(grant, resource, filters, parent)
        if problem is not None:
            if held_state != REFUSED or held_reason != problem:
                self._drop_held(cur, grant_id)
                cur.execute(
                    "UPDATE tongyuan.grant_requests SET state = 'refused', reason = ?, "
                    "checkpoint = 0 WHERE id = ?",
                    [problem, grant_id],
                )
                self._audit(
                    "grant.refused",
                    {"grant": grant_id, "parent": parent, "resource": resource, "reason": problem},
                    "",
                    cur,
                )
            return f"grant {grant_id} from {parent} refused: {problem}"
        cur.execute(
            "UPDATE tongyuan.grant_requests SET entity = ?, state = ?, "
            "granted_expires_at = ?, decided_by = ?, decided_at = ?, reason = ? "
            "WHERE id = ?",
            [
                grant["entity"],
                state,
                _parse_time(grant["expires_at"]),
                grant["decided_by"],
                _parse_time(grant["decided_at"]),
                grant["reason"],
                grant_id,
            ],
        )
        if state != held_state:
            self._audit(
                f"grant.{state}",
                {"grant": grant_id, "parent": parent, "resource": resource},
                str(grant["decided_by"] or ""),
                cur,
            )
        return None

    def _grant_problem(
        self, grant: dict[str, Any], resource: str, filters: str, parent: str
    ) -> str | None:
        """Why an approved or denied grant cannot be taken as it came (None: it can)."""
        missing = sorted(set(GRANT_FIELDS) - set(grant))
        if missing:
            return f"it lacks {', '.join(missing)}"
        if grant["state"] not in (APPROVED, DENIED):
            return f"its state {grant['state']!r} is not one a grant can have"
        try:
            asked = filters_from_json(filters)
            given = filters_from_json(grant["filters"])
            expires = _parse_time(grant["expires_at"])
            _parse_time(grant["decided_at"])
        except (UserError, ValueError, TypeError) as exc:
            return f"it cannot be read: {exc}"
        if resource != grant["resource"] or asked != given:
            return (
                f"it is for {grant['resource']} where {describe_filters(given)}, but node "
                f"{self._code} asked for {resource} where {describe_filters(asked)}"
            )
        if grant["state"] != APPROVED:
            return None
        if expires is None:
            return "it is approved without an expiry"
        entity = self._store.entities.get(str(grant["entity"] or ""))
        if entity is None:
            return f"entity {grant['entity']!r} is not in the model of node {self._code}"
        try:  # checked here as it will be on every window
            filter_sql(entity, given)
        except UserError as exc:
            return str(exc)
        return None

    def _drop_held(self, cur: duckdb.DuckDBPyConnection, grant_id: str) -> int:
        """Delete what is held under a grant (no state change); returns the rows."""
        (entity_name,) = cur.execute(
            "SELECT entity FROM tongyuan.grant_requests WHERE id = ?", [grant_id]
        ).fetchone()  # type: ignore[misc]
        entity = self._store.entities.get(str(entity_name))
        if entity is None or not self._has_returned(cur, entity):
            return 0
        (dropped,) = cur.execute(
            f"DELETE FROM {returned_table(entity)} WHERE grant_id = ?", [grant_id]
        ).fetchone()  # type: ignore[misc]
        return int(dropped)

    def held_grant(self, parent: str, grant_id: str) -> dict[str, Any] | None:
        rows = self._requests("id = ? AND parent_code = ?", [grant_id, parent])
        return rows[0] if rows else None

    def apply_return(
        self,
        parent: str,
        grant_id: str,
        entity_name: str,
        after_seq: int,
        last_seq: int,
        table: pa.Table,
        now: datetime | None = None,
    ) -> tuple[int, int]:
        """Apply one window of a grant's slice and advance its checkpoint, in one
        transaction; returns (checkpoint, rows changed). Refused, with nothing applied: a
        grant not in force here, a window that leaves a gap, another entity, columns this
        node's model lacks, and any row the grant's filter does not admit."""
        now = now or _now()
        with self._db.write() as cur:
            row = cur.execute(
                "SELECT resource, entity, filters, state, granted_expires_at, checkpoint "
                "FROM tongyuan.grant_requests WHERE id = ? AND parent_code = ?",
                [grant_id, parent],
            ).fetchall()
            if not row:
                raise ReturnRefused(
                    f"return flow for grant {grant_id}: node {self._code} holds no grant "
                    f"{grant_id} from {parent}",
                    "precondition",
                )
            resource, entity_held, filters, state, expires_at, checkpoint = row[0]
            expires = _parse_time(expires_at)
            if state != APPROVED or expires is None or expires <= now:
                shown = EXPIRED if state == APPROVED else state
                raise ReturnRefused(
                    f"return flow for grant {grant_id}: the grant is {shown} at node "
                    f"{self._code}; nothing applied",
                    "precondition",
                )
            if entity_name != entity_held or entity_name not in self._store.entities:
                raise ReturnRefused(
                    f"return flow for grant {grant_id} carries {entity_name!r}, but the grant "
                    f"is for {entity_held!r}",
                    "invalid",
                )
            if after_seq > checkpoint:
                raise ReturnRefused(
                    f"return flow for grant {grant_id} starts after seq {after_seq}, but node "
                    f"{self._code} holds it only through {checkpoint}",
                    "precondition",
                )
            if last_seq <= checkpoint and after_seq > 0:
                return int(checkpoint), 0  # held already (a window from 0 starts afresh)
            entity = self._store.entities[entity_name]
            columns = self._incoming_columns(entity, table, grant_id)
            self._ensure_returned(cur, entity)
            if after_seq == 0 and checkpoint > 0:
                # The parent sends the whole slice again (it compacted deletes not yet sent
                # here): what is held is replaced, not merged.
                cur.execute(f"DELETE FROM {returned_table(entity)} WHERE grant_id = ?", [grant_id])
            register_arrow(cur, "returned_incoming", table)
            try:
                condition = filter_sql(entity, filters_from_json(filters), "i")
                (outside,) = cur.execute(
                    "SELECT count(*) FROM returned_incoming i WHERE NOT i._deleted AND "
                    f"(i.origin_resource IS DISTINCT FROM ? OR NOT {condition})",
                    [resource],
                ).fetchone()  # type: ignore[misc]
                if outside:
                    shown_filter = describe_filters(filters_from_json(filters))
                    raise ReturnRefused(
                        f"return flow for grant {grant_id} from {parent}: {outside} of "
                        f"{table.num_rows} rows are outside the grant ({resource} where "
                        f"{shown_filter}); the window is refused and nothing applied",
                        "outside",
                    )
                self._replace_returned(cur, entity, columns, grant_id, now)
            except duckdb.Error as exc:  # values that do not fit this node's types
                raise ReturnRefused(f"return flow for grant {grant_id}: {exc}", "invalid") from None
            finally:
                with contextlib.suppress(duckdb.Error):  # the transaction may be aborted
                    unregister_arrow(cur, "returned_incoming")
            cur.execute(
                "UPDATE tongyuan.grant_requests SET checkpoint = ? WHERE id = ?",
                [last_seq, grant_id],
            )
            if table.num_rows:  # empty windows only move the checkpoint: no evidence needed
                detail = {
                    "grant": grant_id,
                    "parent": parent,
                    "entity": entity_name,
                    "after_seq": after_seq,
                    "last_seq": last_seq,
                    "rows": table.num_rows,
                }
                self._audit("return.applied", detail, "", cur)
        return last_seq, table.num_rows

    def _incoming_columns(self, entity: Entity, table: pa.Table, grant_id: str) -> list[str]:
        names = set(table.column_names)
        needed = {entity.key, "_deleted", "origin_node", "origin_resource"}
        missing = needed - names
        if missing:
            raise ReturnRefused(
                f"return flow for grant {grant_id} lacks columns {sorted(missing)}", "invalid"
            )
        known = {*entity.column_names, "_deleted", *LINEAGE_COLUMNS}
        extra = sorted(names - known)
        if extra:
            raise ReturnRefused(
                f"return flow for grant {grant_id} carries {extra}, which {entity.name} of node "
                f"{self._code}'s model lacks (adopt the parent's model)",
                "invalid",
            )
        return [c for c in (*entity.column_names, *LINEAGE_COLUMNS)]

    def _ensure_returned(self, cur: duckdb.DuckDBPyConnection, entity: Entity) -> None:
        """The entity's returned table (its attributes, lineage, the grant) and its
        read-only view `main.returned_<entity>`; columns the model gained are added."""
        table = returned_table(entity)
        existing = {
            str(r[0])
            for r in cur.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'tongyuan' AND table_name = ?",
                ["returned_" + entity.name],
            ).fetchall()
        }
        if not existing:
            columns = ", ".join(f"{quote(c.name)} {c.sql_type}" for c in entity.columns)
            cur.execute(
                f"CREATE TABLE {table} ({columns}, origin_node VARCHAR NOT NULL, "
                "origin_seq BIGINT, origin_dept VARCHAR, origin_batch VARCHAR, "
                "origin_time TIMESTAMPTZ, origin_resource VARCHAR, grant_id VARCHAR NOT NULL, "
                "received_at TIMESTAMPTZ NOT NULL)"
            )
        else:
            for column in entity.columns:
                if column.name not in existing:
                    cur.execute(
                        f"ALTER TABLE {table} ADD COLUMN {quote(column.name)} {column.sql_type}"
                    )
        if "returned_" + entity.name not in self._store.entities:
            # Only rows of grants in force now: an expired or revoked slice is unreadable
            # even before the purge runs (a node that is not serving runs no scheduler).
            select = ", ".join(f"r.{quote(c)}" for c in (*entity.column_names, *LINEAGE_COLUMNS))
            cur.execute(
                f"CREATE OR REPLACE VIEW main.{quote('returned_' + entity.name)} AS "
                f"SELECT {select}, r.grant_id, r.received_at FROM {table} r "
                "JOIN tongyuan.grant_requests g ON g.id = r.grant_id "
                "WHERE g.state = 'approved' AND g.granted_expires_at > now()"
            )

    def _replace_returned(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        columns: list[str],
        grant_id: str,
        now: datetime,
    ) -> int:
        """Set-based: drop held versions of incoming records and departed records, then
        insert the incoming live rows. Returns the rows inserted."""
        table = returned_table(entity)
        key = quote(entity.key)
        # A live row replaces the held version; a departure carries the key as it was
        # sent here, so it matches the held row whatever form the key travels in.
        cur.execute(
            f"DELETE FROM {table} r WHERE r.grant_id = ? AND EXISTS (SELECT 1 FROM "
            "returned_incoming i WHERE i.origin_node = r.origin_node AND "
            f"i.{key} = r.{key})",
            [grant_id],
        )
        present = set(_columns_of(cur, "returned_incoming"))
        select = ", ".join(quote(c) if c in present else f"NULL AS {quote(c)}" for c in columns)
        names = ", ".join(quote(c) for c in columns)
        (inserted,) = cur.execute(
            f"INSERT INTO {table} ({names}, grant_id, received_at) "
            f"SELECT {select}, ?, ? FROM returned_incoming WHERE NOT _deleted",
            [grant_id, now],
        ).fetchone()  # type: ignore[misc]
        return int(inserted)

    def _purge(self, cur: duckdb.DuckDBPyConnection, grant_id: str, ended: str) -> int:
        """Drop a grant's returned rows and record the purge (state 'purged')."""
        purged = self._drop_held(cur, grant_id)
        cur.execute(
            "UPDATE tongyuan.grant_requests SET state = 'purged', ended = ?, purged_at = ?, "
            "rows_purged = ?, checkpoint = 0 WHERE id = ?",
            [ended, _now(), int(purged), grant_id],
        )
        self._audit(
            "grant.purged", {"grant": grant_id, "ended": ended, "rows": int(purged)}, "", cur
        )
        return int(purged)

    @staticmethod
    def _has_returned(cur: duckdb.DuckDBPyConnection, entity: Entity) -> bool:
        return bool(
            cur.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = 'tongyuan' "
                "AND table_name = ?",
                ["returned_" + entity.name],
            ).fetchall()
        )

    def purge_ended(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Scheduler job at the child: purge the returned rows of every grant that expired
        (by its own clock) or that the parent ended, and record each purge. Also run when
        a writing command opens a node that is not serving (nothing purges it otherwise)."""
        now = now or _now()
        done: list[dict[str, Any]] = []
        if self._db.read_only or not self._present():
            return done
        ended_sql = (
            "SELECT id, state FROM tongyuan.grant_requests WHERE state IN "
            "('revoked', 'expired') OR (state = 'approved' AND granted_expires_at <= ?)"
        )
        # Read first: most rounds find nothing, and need not take the writer.
        with self._db.read() as reader:
            if not reader.execute(ended_sql, [now]).fetchall():
                return done
        with self._db.write() as cur:
            rows = cur.execute(ended_sql, [now]).fetchall()
            for grant_id, state in rows:
                ended = EXPIRED if state == APPROVED else str(state)
                if state == APPROVED:
                    self._audit("grant.expired", {"grant": grant_id}, "", cur)
                purged = self._purge(cur, str(grant_id), ended)
                done.append({"id": grant_id, "ended": ended, "rows_purged": purged})
        return done

    def _requests(self, where: str, params: list[Any]) -> list[dict[str, Any]]:
        if not self._present():
            return []
        with self._db.read() as cur:
            found = _records(cur, _REQUEST_COLS, "tongyuan.grant_requests", where, params)
            for item in found:
                item["filters"] = filters_to_json(filters_from_json(item["filters"]))
                item["rows_held"] = 0
                entity = self._store.entities.get(item["entity"] or "")
                if entity is not None and self._has_returned(cur, entity):
                    (held,) = cur.execute(
                        f"SELECT count(*) FROM {returned_table(entity)} WHERE grant_id = ?",
                        [item["id"]],
                    ).fetchone()  # type: ignore[misc]
                    item["rows_held"] = int(held)
        return found

    def requests(self) -> list[dict[str, Any]]:
        """Requests made here, with the parent's decision and what is held."""
        return self._requests("true", [])

    # ----- the parent: requests pulled, decisions --------------------------------------

    def child_requests_digest(self, child: str) -> str:
        return self._digest("requests", child)

    def receive_requests(
        self, child: str, requests_json: str, digest: str, check: Any
    ) -> tuple[int, list[str]]:
        """Keep a child's requests as pulled. A request is never changed once known here
        (an id sent again with another resource, filter or expiry is ignored and reported),
        so a child cannot widen a grant after it is decided. `check(request)` returns
        (entity, problem): a request with a problem is recorded as denied with it.
        Returns (new requests, problems)."""
        try:
            document = json.loads(requests_json)
        except ValueError as exc:
            raise UserError(f"grant requests of child {child}: {exc}") from None
        if not isinstance(document, list) or digest_of(document) != digest:
            raise UserError(f"grant requests of child {child} do not match their digest")
        problems = []
        added = 0
        now = _now()
        with self._db.write() as cur:
            for request in document:
                if not isinstance(request, dict) or set(REQUEST_FIELDS) - set(request):
                    problems.append(f"request {request!r} lacks fields")
                    continue
                known = cur.execute(
                    "SELECT resource, filters, purpose, requested_expires_at, child_code "
                    "FROM tongyuan.grants WHERE id = ?",
                    [request["id"]],
                ).fetchall()
                try:
                    filters = filters_from_json(request["filters"])
                    expires = _parse_time(request["expires_at"])
                    requested_at = _parse_time(request["requested_at"])
                except (UserError, ValueError) as exc:
                    problems.append(f"request {request.get('id')}: {exc}")
                    continue
                if known:
                    resource, held, purpose, held_expires, held_child = known[0]
                    same = (
                        held_child == child
                        and resource == request["resource"]
                        and filters_from_json(held) == sorted(filters, key=lambda f: f.attribute)
                        and purpose == request["purpose"]
                        and _parse_time(held_expires) == expires
                    )
                    if not same:
                        problems.append(
                            f"request {request['id']} changed after it was made; the request "
                            "as first received stands"
                        )
                    continue
                entity, problem = check(request["resource"], filters)
                state, reason, decided_by, decided_at = PENDING, None, None, None
                if problem:
                    state, reason, decided_by, decided_at = (
                        DENIED,
                        problem,
                        f"node {self._code}",
                        now,
                    )
                    self.generation += 1
                ordered = sorted(filters, key=lambda f: f.attribute)
                cur.execute(
                    f"INSERT INTO tongyuan.grants ({_GRANT_COLS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
                    [
                        request["id"],
                        child,
                        request["resource"],
                        entity or "",
                        json.dumps(filters_to_json(ordered), ensure_ascii=False),
                        request["purpose"],
                        expires,
                        request["requested_by"],
                        requested_at,
                        state,
                        decided_by,
                        decided_at,
                        reason,
                        now,
                    ],
                )
                detail = {
                    "grant": request["id"],
                    "child": child,
                    "resource": request["resource"],
                    "filter_pseudonym": filters_evidence(ordered, self._key()),
                    "purpose": request["purpose"],
                }
                self._audit("grant.requested", detail, str(request["requested_by"]), cur)
                if problem:
                    self._audit(
                        "grant.denied", {**detail, "reason": problem}, decided_by or "", cur
                    )
                added += 1
            self._set_digest(cur, "requests", child, digest)
        return added, problems

    def given(self, grant_id: str | None = None) -> list[dict[str, Any]]:
        """Grants decided (or to decide) here, with the state as of now: an approved grant
        past its expiry is 'expired' even before the expiry job has noted it."""
        if not self._present():
            return []
        where, params = ("id = ?", [grant_id]) if grant_id else ("true", [])
        with self._db.read() as cur:
            found = _records(cur, _GRANT_COLS, "tongyuan.grants", where, params)
        now = _now()
        for item in found:
            item["filters"] = json.loads(item["filters"])
            if item["state"] == APPROVED and item["expires_at"] and item["expires_at"] <= now:
                item["state"] = EXPIRED
        return found

    def decide(
        self,
        grant_id: str,
        *,
        state: str,
        actor: str,
        allowed_from: Sequence[str],
        expires_at: datetime | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Approve, deny or revoke a grant decided here; refused (nothing written) unless
        it is in one of `allowed_from` now."""
        found = self.given(grant_id)
        if not found:
            raise UserError(f"no grant {grant_id} at node {self._code}; see `tongyuan grant list`")
        grant = found[0]
        if grant["state"] not in allowed_from:
            raise UserError(
                f"grant {grant_id} is {grant['state']}: only a grant that is "
                f"{' or '.join(allowed_from)} can become {state}"
            )
        now = _now()
        expires = expires_at if expires_at is not None else grant["expires_at"]
        if state == APPROVED:
            expires = expires_at or _parse_time(grant["requested_expires_at"])
            if expires is None or expires <= now:
                raise UserError(
                    f"grant {grant_id}: its expiry {_iso(expires)} has passed; approve it with "
                    "a later --expires"
                )
        with self._db.write() as cur:
            cur.execute(
                "UPDATE tongyuan.grants SET state = ?, expires_at = ?, decided_by = ?, "
                "decided_at = ?, reason = ? WHERE id = ?",
                [state, expires, actor, now, reason, grant_id],
            )
            if state != APPROVED:  # nothing more is sent: the record of what was goes
                cur.execute("DELETE FROM tongyuan.grant_sent WHERE grant_id = ?", [grant_id])
            detail = {
                "grant": grant_id,
                "child": grant["child_code"],
                "resource": grant["resource"],
                "filter_pseudonym": filters_evidence(
                    filters_from_json(grant["filters"]), self._key()
                ),
                "expires_at": _iso(expires),
                "reason": reason,
            }
            self._audit(f"grant.{state}", detail, actor, cur)
        self.generation += 1
        return self.given(grant_id)[0]

    def expire_given(self, now: datetime | None = None) -> list[str]:
        """Scheduler job at the parent: note approved grants past their expiry as
        expired (recorded; the child learns it with the next grant set)."""
        now = now or _now()
        due_sql = (
            "SELECT id, child_code FROM tongyuan.grants WHERE state = 'approved' "
            "AND expires_at <= ?"
        )
        with self._db.read() as reader:  # most rounds find nothing: no writer then
            if not reader.execute(due_sql, [now]).fetchall():
                return []
        with self._db.write() as cur:
            rows = cur.execute(due_sql, [now]).fetchall()
            for grant_id, child in rows:
                cur.execute("UPDATE tongyuan.grants SET state = 'expired' WHERE id = ?", [grant_id])
                cur.execute("DELETE FROM tongyuan.grant_sent WHERE grant_id = ?", [grant_id])
                self._audit("grant.expired", {"grant": grant_id, "child": child}, "", cur)
        if rows:
            self.generation += 1
        return [str(r[0]) for r in rows]

    def downward_set(self, child: str) -> tuple[str, str]:
        """(digest, JSON) of every grant decided here for `child`."""
        with self._db.read() as cur:
            rows = cur.execute(
                f"SELECT {', '.join(GRANT_FIELDS)} FROM tongyuan.grants "
                "WHERE child_code = ? AND state <> 'pending' ORDER BY id",
                [child],
            ).fetchall()
        document = [
            {
                "id": r[0],
                "resource": r[1],
                "entity": r[2],
                "filters": json.loads(r[3]),
                "purpose": r[4],
                "state": r[5],
                "expires_at": _iso(r[6]),
                "decided_by": r[7],
                "decided_at": _iso(r[8]),
                "reason": r[9],
            }
            for r in rows
        ]
        if not document:
            return "", "[]"
        return digest_of(document), json.dumps(document, ensure_ascii=False)

    def active_for(self, child: str, now: datetime | None = None) -> list[dict[str, Any]]:
        """Grants in force for `child` now (approved, not expired): what the parent sends."""
        now = now or _now()
        return [
            g
            for g in self.given()
            if g["child_code"] == child and g["state"] == APPROVED and g["expires_at"] > now
        ]

    def in_force(self, grant_id: str, now: datetime | None = None) -> bool:
        """The parent's own check before each window leaves it."""
        found = self.given(grant_id)
        return (
            bool(found)
            and found[0]["state"] == APPROVED
            and found[0]["expires_at"] > (now or _now())
        )

    def read_return(
        self, grant: dict[str, Any], after_seq: int, max_changes: int
    ) -> ReturnWindow | None:
        """The next window of a grant's slice after `after_seq` (None when the child is
        at the head): the resource's live rows the filter admits, as the outbound rules
        let them leave, and departures of records the child was sent that are no longer
        admitted (or now leave in another form): key as sent, everything else NULL.

        When the form rows leave this node in changed since the child's copy was sent (a
        resource no longer shared, a grade, the model or the federation key; see
        `OutboundStore.stamp`), the window starts at 0 whatever `after_seq` says: a window
        from 0 replaces everything the child holds, so rows it may no longer have, or has
        in an old form, go."""
        stamp = self._store.outbound.stamp()  # before the SELECT is compiled: see confirm
        if after_seq > 0 and self._digest(_RETURN_STAMP, grant["id"]) != stamp:
            after_seq = 0
        head = self._store.head_seq
        last = min(head, after_seq + max_changes)
        if last <= after_seq:
            return None
        entity = self._store.entities.get(grant["entity"])
        if entity is None:
            raise UserError(
                f"grant {grant['id']}: entity {grant['entity']!r} is no longer in the model"
            )
        filters = filters_from_json(grant["filters"])
        condition = filter_sql(entity, filters, "r")
        # Sharing attribute and grades, as on every path out of this node.
        select_list, shared = self._store.outbound.select(entity)
        # A filtered attribute leaves as the filter's own value: the child knows it
        # already, and it can check every row against the filter it holds.
        replace = ", ".join(
            f"CAST({sql_literal(f.value)} AS {_sql_type(entity, f.attribute)}) "
            f"AS {quote(f.attribute)}"
            for f in filters
        )
        key = quote(entity.key)
        key_type = entity.column(entity.key).sql_type
        table = entity_table(entity)
        # Every record of the entity changed in the window (any resource: one that another
        # resource wrote last has left this grant's resource), whether the grant admits it.
        admitted = (
            f"COALESCE(NOT r._deleted AND r.origin_resource = ? AND {condition} "
            f"AND ({shared}), false)"
        )
        sql = (
            f"WITH w AS (SELECT {select_list}, CAST(r.{key} AS VARCHAR) AS {_RECORD_KEY}, "
            f"{admitted} AS _admitted FROM {table} r "
            f"WHERE r._seq > {int(after_seq)} AND r._seq <= {int(last)}), "
            # Each row as it would leave (what `v` holds for rows not admitted is unused).
            f"v AS (SELECT * REPLACE ({replace}) FROM w), "
            "s AS (SELECT origin_node, record_key, sent_key FROM tongyuan.grant_sent "
            "WHERE grant_id = ?), "
            "live AS (SELECT * EXCLUDE (_admitted) FROM v WHERE _admitted), "
            f"gone AS (SELECT CAST(s.sent_key AS {key_type}) AS {key}, true AS _deleted, "
            f"s.origin_node, s.record_key AS {_RECORD_KEY} FROM v JOIN s ON "
            f"s.origin_node = v.origin_node AND s.record_key = v.{_RECORD_KEY} "
            f"WHERE NOT v._admitted OR CAST(v.{key} AS VARCHAR) IS DISTINCT FROM s.sent_key) "
            f"SELECT *, CAST({key} AS VARCHAR) AS {_SENT_KEY} FROM "
            "(SELECT * FROM live UNION ALL BY NAME SELECT * FROM gone)"
        )
        with self._db.read() as cur, self._store.outbound.without_secrets():
            result = arrow_of(cur, sql, [grant["resource"], grant["id"]])
        keys = result.select(["origin_node", _RECORD_KEY, _SENT_KEY, "_deleted"])
        wire = result.drop_columns([_RECORD_KEY, _SENT_KEY])
        return ReturnWindow(grant["id"], entity.name, after_seq, last, wire, keys, stamp)

    def next_window(
        self, grant: dict[str, Any], after_seq: int, max_changes: int, max_bytes: int
    ) -> tuple[ReturnWindow, bytes] | None:
        """`read_return` and the window's Arrow IPC, the window halved until the IPC is
        under `max_bytes` (wide rows; as PullChanges does) or it spans one sequence."""
        from node.wire import encode_table  # node.wire imports the store

        window = self.read_return(grant, after_seq, max_changes)
        if window is None:
            return None
        payload = encode_table(window.table)
        while len(payload) > max_bytes and window.last_seq - window.after_seq > 1:
            start = window.after_seq  # 0 when the slice is sent again (see read_return)
            smaller = self.read_return(grant, start, (window.last_seq - start) // 2)
            assert smaller is not None
            window, payload = smaller, encode_table(smaller.table)
        return window, payload

    def note_sending(self, window: ReturnWindow) -> bool:
        """Before a window leaves: the records it carries are (about to be) the child's.
        Added first, so the table is never short of what the child holds. Only while the
        grant is approved and unexpired, checked in the same write transaction (a
        revocation commits before or after it, never between); returns whether it is —
        if not, the window must not leave."""
        if not window.live:
            return self.in_force(window.grant_id)
        with self._db.write() as cur:
            if (
                cur.execute(
                    "SELECT 1 FROM tongyuan.grants WHERE id = ? AND state = ? AND expires_at > ?",
                    [window.grant_id, APPROVED, _now()],
                ).fetchone()
                is None
            ):
                return False
            register_arrow(cur, "return_keys", window.keys)
            try:
                cur.execute(
                    "INSERT INTO tongyuan.grant_sent SELECT DISTINCT ?, k.origin_node, "
                    f"k.{_RECORD_KEY}, k.{_SENT_KEY} FROM return_keys k WHERE NOT k._deleted "
                    f"AND k.{_SENT_KEY} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
                    "tongyuan.grant_sent s WHERE s.grant_id = ? AND s.origin_node = "
                    f"k.origin_node AND s.record_key = k.{_RECORD_KEY} AND s.sent_key = "
                    f"k.{_SENT_KEY})",
                    [window.grant_id, window.grant_id],
                )
            finally:
                unregister_arrow(cur, "return_keys")
        return True

    def confirm_return(self, window: ReturnWindow, child_seq: int) -> None:
        """After the child's receipt: once it holds the window, the records that departed
        are no longer its own (a window from 0 replaced everything it held)."""
        if child_seq < window.last_seq or (window.after_seq > 0 and not window.departures):
            return
        with self._db.write() as cur:
            register_arrow(cur, "return_keys", window.keys)
            try:
                if window.after_seq == 0:
                    cur.execute(
                        "DELETE FROM tongyuan.grant_sent s WHERE s.grant_id = ? AND NOT EXISTS "
                        "(SELECT 1 FROM return_keys k WHERE NOT k._deleted AND "
                        f"k.origin_node = s.origin_node AND k.{_SENT_KEY} = s.sent_key)",
                        [window.grant_id],
                    )
                    # The child's copy is now all of this stamp (read before the window).
                    self._set_digest(cur, _RETURN_STAMP, window.grant_id, window.stamp)
                else:
                    cur.execute(
                        "DELETE FROM tongyuan.grant_sent s WHERE s.grant_id = ? AND EXISTS "
                        "(SELECT 1 FROM return_keys k WHERE k._deleted AND "
                        f"k.origin_node = s.origin_node AND k.{_SENT_KEY} = s.sent_key) "
                        "AND NOT EXISTS (SELECT 1 FROM return_keys k WHERE NOT k._deleted AND "
                        f"k.origin_node = s.origin_node AND k.{_SENT_KEY} = s.sent_key)",
                        [window.grant_id],
                    )
            finally:
                unregister_arrow(cur, "return_keys")

    def record_sent(
        self,
        grant: dict[str, Any],
        child: str,
        after_seq: int,
        last_seq: int,
        rows: int,
        departures: int,
        windows: int,
    ) -> None:
        """Evidence at the parent: one entry per round per grant that carried rows."""
        detail = {
            "grant": grant["id"],
            "child": child,
            "resource": grant["resource"],
            "entity": grant["entity"],
            "after_seq": after_seq,
            "last_seq": last_seq,
            "rows": rows,
            "departures": departures,
            "windows": windows,
        }
        self._store.audit.record("return.sent", detail, actor="")

    def counts(self, now: datetime | None = None) -> dict[str, Any]:
        """For status: grants held here (from the parent) and given here, rows returned,
        the next expiry."""
        now = now or _now()
        held = [r for r in self.requests() if r["state"] in (APPROVED, PENDING)]
        in_force = [
            r
            for r in held
            if r["state"] == APPROVED
            and r["granted_expires_at"] is not None
            and r["granted_expires_at"] > now
        ]
        given = [g for g in self.given() if g["state"] == APPROVED]
        expiries = [r["granted_expires_at"] for r in in_force] + [g["expires_at"] for g in given]
        return {
            "held": len(in_force),
            "requested": len([r for r in held if r["state"] == PENDING]),
            "given": len(given),
            "to_decide": len([g for g in self.given() if g["state"] == PENDING]),
            "rows_returned": sum(r["rows_held"] for r in in_force),
            "next_expiry": _iso(min(expiries)) if expiries else None,
        }


def _records(
    cur: duckdb.DuckDBPyConnection, columns: str, table: str, where: str, params: list[Any]
) -> list[dict[str, Any]]:
    """Requests or grants as dicts named by `columns`, oldest first."""
    rows = cur.execute(
        f"SELECT {columns} FROM {table} WHERE {where} ORDER BY requested_at, id", params
    ).fetchall()
    names = [c.strip() for c in columns.split(",")]
    return [dict(zip(names, r, strict=True)) for r in rows]


def _columns_of(cur: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [str(d[0]) for d in cur.execute(f"SELECT * FROM {relation} LIMIT 0").description]
