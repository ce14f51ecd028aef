"""Feedback items and objections as users see them: list them, raise an objection about a
record, and answer one at the node that owns the record.

An objection names a record the way a user finds it — a catalogue resource (its own or
one harvested from the subtree) and a key as typed — and becomes an item addressed to
the node and department that own the record, which travels down the links to them. The
owner acknowledges, confirms the record is right, rejects the objection, or corrects the
record by importing it again; answers and corrections travel up like any change, so
every tier sees the same state. No SQL here: the store derives states (see
node/store/feedback.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from node.config import NodeConfig
from node.errors import UserError
from node.store import Store
from node.store.feedback import ANSWERS, STATES


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


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

    def list(
        self, state: str | None = None, include_closed: bool = False, overdue: bool = False
    ) -> list[dict[str, Any]]:
        """Items known here (raised here or received from the parent), oldest first: open
        and acknowledged ones; with `include_closed` or a closed `state`, closed ones too."""
        if state is not None and state not in STATES:
            raise UserError(f"feedback state {state!r} is not one of {', '.join(STATES)}")
        items = self.tables.items(overdue_hours=self._overdue_hours)
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
        """Items known here by state, for status and metrics."""
        return self.tables.counts(self._overdue_hours)
