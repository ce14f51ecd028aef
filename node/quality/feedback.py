"""Feedback items and objections as users see them: list them, raise an objection about a
record, and answer one at the node that owns the record.

An objection names a record the way a user finds it — a catalogue resource (its own or
one harvested from the subtree) and a key as typed — and becomes an item addressed to
the node and department that own the record, which travels down the links to them. The
owner acknowledges, confirms the record is right, rejects the objection, or corrects the
record by importing it again; answers and corrections travel up like any change, so
every tier sees the same state. No SQL here: the store derives states (see
node/store/feedback.py).

Discrepancies — an observer's value of an attribute that disagrees with its authoritative
source (node/store/sources.py) — are feedback items too, of kind `discrepancy`, about the
source's record and owned by the source's node and department. They travel down the
links on their own and keep their own lifecycle, so they are listed here as items but
answered with `tongyuan discrepancies resolve ID`; their states map onto the items' (see
`discrepancy_item`). Counts stay per kind: `counts` is rule items and objections, the
discrepancies are counted on their own line of status and in their own metric.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from node.config import NodeConfig
from node.errors import UserError
from node.store import Store
from node.store.feedback import (
    ACKNOWLEDGED,
    ANSWERS,
    CLOSED,
    CONFIRMED,
    CORRECTED,
    OPEN,
    STATES,
    overdue_cutoff,
)

DISCREPANCY = "discrepancy"
# The discrepancy's resolution that records the source deleting its record.
RECORD_DELETED = "record deleted"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def discrepancy_item(row: dict[str, Any], cutoff: datetime | None) -> dict[str, Any]:
    """A discrepancy (a row of `SourcesStore.discrepancies`) as a feedback item about the
    source's record, owned by the source's node and department and raised by the node
    whose cross-check found it.

    States: an open discrepancy is 'open'; at the source, 'confirmed-correct' once it
    confirmed its value (`discrepancies resolve --confirm`: the discrepancy stays open, the
    values still differ, but the owner has answered), and 'acknowledged' once it corrected
    its value while the discrepancy is still open (the correction is on its way up to the
    cross-check that closes it, or the observer holds a third value). Those actions are
    kept at the source only, so the tiers above see 'open' until the cross-check closes
    it, and one from before the discrepancy was (re)opened does not count. A resolved one
    is 'corrected' whatever closed it — the source's value now agrees, the source deleted
    its record, or the observer withdrew its copy: like a corrected item, it was closed by
    a newer version of the data rather than by an answer, and nothing is left to answer."""
    found_at = _utc(row["found_at"])
    acted_at = _utc(row.get("acted_at"))
    action = row.get("action")
    if acted_at is None or (found_at is not None and acted_at < found_at):
        action = None  # nothing done here since it was (re)opened
    if row["state"] != "open":
        state = CORRECTED
    elif action == "confirmed":
        state = CONFIRMED
    elif action == "corrected":
        state = ACKNOWLEDGED
    else:
        state = OPEN
    responses = []
    if action is not None:
        responses.append(
            {
                "state": CONFIRMED if action == "confirmed" else CORRECTED,
                "actor": row["actor"],
                "note": row.get("note") or "",
                "node": row["source_node"],
                "at": acted_at,
            }
        )
    observer = f"{row['observer_node']} {row['observer_dept'] or ''}".strip()
    reason = (
        f"{row['attribute']}: source says {row['authoritative_value']!r}, {observer} "
        f"observed {row['observed_value']!r}"
    )
    closed = state in CLOSED
    corrected = state == CORRECTED
    return {
        "id": row["id"],
        "kind": DISCREPANCY,
        "entity": row["entity"],
        "resource": row.get("source_resource"),
        # The key as the source holds the record (the observer's may be typed differently).
        "record_key": row.get("source_key") or row["record_key"],
        "owner_node": row["source_node"],
        "owner_dept": row["source_dept"],
        "record_seq": None,
        "reason": reason,
        "raised_node": row["found_by"],
        "raised_by": "cross-check",
        "raised_at": found_at,
        "received_from": row.get("received_from"),
        "state": state,
        "closed": closed,
        "overdue": not closed and cutoff is not None and found_at is not None and found_at < cutoff,
        "corrected_seq": None,
        "corrected_at": _utc(row.get("resolved_at")) if corrected else None,
        "corrected_by_delete": corrected and row.get("resolution") == RECORD_DELETED,
        "responses": responses,
        "discrepancy": {
            "attribute": row["attribute"],
            "authoritative_value": row["authoritative_value"],
            "observed_value": row["observed_value"],
            "observer_node": row["observer_node"],
            "observer_dept": row["observer_dept"],
            "observer_resource": row.get("observer_resource"),
            "observed_key": row["record_key"],
            "found_at_nodes": row.get("found_at_nodes") or [],
            "resolution": row.get("resolution"),
        },
    }


class FeedbackService:
    def __init__(self, config: NodeConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.tables = store.feedback

    @property
    def _overdue_hours(self) -> float:
        return self.config.quality.feedback_overdue_hours

    def _view(self, item: dict[str, Any]) -> dict[str, Any]:
        """An item as users see it: where it is and where it travels, JSON-able."""
        owner = item["owner_node"]
        return _jsonable(
            {
                **item,
                "at_owner": owner == self.config.code,
                # Items about a record below this node go down the links to its owner.
                "travels_to": None if owner == self.config.code else owner,
                "overdue_hours": self._overdue_hours,
            }
        )

    def pending(self, limit: int) -> list[dict[str, Any]]:
        """At most `limit` open and acknowledged rule items and objections, oldest first
        (filtered and limited by the store: the status page shows these; discrepancies
        have a table of their own there)."""
        found = self.tables.items(
            overdue_hours=self._overdue_hours, include_closed=False, limit=limit
        )
        return [self._view(i) for i in found]

    def _discrepancies(self, include_resolved: bool) -> list[dict[str, Any]]:
        # Cross-check first (as `discrepancies list` does), so the latest imports count.
        if not self.store.db.read_only:
            self.store.sources.crosscheck()
        cutoff = overdue_cutoff(self._overdue_hours)
        rows = self.store.sources.discrepancies(include_resolved=include_resolved)
        return [discrepancy_item(row, cutoff) for row in rows]

    def list(
        self, state: str | None = None, include_closed: bool = False, overdue: bool = False
    ) -> list[dict[str, Any]]:
        """Items known here (raised here or received from the parent) and discrepancies
        (kind `discrepancy`), oldest first: open and acknowledged ones; with
        `include_closed` or a closed `state`, closed ones too."""
        if state is not None and state not in STATES:
            raise UserError(f"feedback state {state!r} is not one of {', '.join(STATES)}")
        everything = include_closed or state in CLOSED
        items = self.tables.items(overdue_hours=self._overdue_hours, include_closed=everything)
        items += self._discrepancies(include_resolved=everything)
        items.sort(key=lambda i: (i["raised_at"] or datetime.min.replace(tzinfo=UTC), i["id"]))
        if state is not None:
            items = [i for i in items if i["state"] == state]
        elif not include_closed:
            items = [i for i in items if not i["closed"]]
        if overdue:
            items = [i for i in items if i["overdue"]]
        return [self._view(i) for i in items]

    def respond(
        self, item_id: str, state: str, note: str = "", actor: str = "unknown"
    ) -> dict[str, Any]:
        """The owner's answer (acknowledged, confirmed-correct or rejected) to one item about
        one of this node's records; it travels upward to every tier above."""
        if state not in ANSWERS:
            raise UserError(
                f"feedback answer {state!r} is not one of {', '.join(ANSWERS)}; a correction "
                "is made by importing the corrected record into its resource"
            )
        if self.tables.item(item_id) is None:
            found = self.store.sources.discrepancy(item_id)
            if found is not None:
                raise UserError(
                    f"{item_id} is a discrepancy about node {found['source_node']}'s "
                    f"{found['entity']}.{found['attribute']}: answer it with `tongyuan "
                    f"discrepancies resolve {item_id}` (--confirm, --accept-observed or "
                    "--value V) at the node that is its source"
                )
        response = self.tables.respond(item_id, state, actor, note)
        item = self.tables.item(item_id, self._overdue_hours)
        assert item is not None
        return {**self._view(item), "response": _jsonable(response)}

    def raise_objection(
        self, resource: str, key: str, reason: str, actor: str = "unknown"
    ) -> dict[str, Any]:
        """Object to record `key` of catalogue resource `resource` (as `catalog list` shows
        it, this node's or its subtree's): an item for the record's owner, sent down to it."""
        code = self.config.code
        if not reason.strip():
            raise UserError(
                f"objection to {resource} {key!r}: give a --reason saying what is wrong with "
                "the record; it travels to the record's owner"
            )
        if not key.strip():
            raise UserError(f"objection to {resource}: the record's key is empty")
        entries = self.store.catalog.entries_with_code(resource)
        if not entries:
            raise UserError(
                f"resource {resource!r} is not in the catalogue known to node {code}; "
                "see `tongyuan catalog list`"
            )
        entry = next((e for e in entries if e["status"] == "published"), entries[0])
        entity = self.store.entities.get(entry["entity"])
        if entity is None:
            raise UserError(
                f"resource {resource} carries entity {entry['entity']!r}, which the model of "
                f"node {code} does not have"
            )
        # The record's owner: the resource's authoritative source (its own node, unless
        # the resource only observes another node's records).
        owner = entry.get("source_node") or entry["origin_node"]
        item_id = self.tables.raise_objection(
            entity=entity,
            resource=resource,
            owner_node=owner,
            key=key.strip(),
            reason=reason.strip(),
            actor=actor,
        )
        item = self.tables.item(item_id, self._overdue_hours)
        assert item is not None
        return self._view(item)

    def counts(self) -> dict[str, Any]:
        """Rule items and objections known here by state, for status and metrics (open
        discrepancies are counted apart, by `SourcesStore.counts`: not twice)."""
        return self.tables.counts(self._overdue_hours)
