"""Grants and return flows (数据回流) as users see them.

A child asks its parent for a slice of a resource the parent holds — its own, or one
harvested from elsewhere in its subtree — with a structured row filter (attribute =
value, ANDed), a purpose and an expiry: `grant request`. The request travels up when the
parent next pulls (GetGrantRequests, when the digest the child reports in GetInfo
differs); the parent's operator approves, denies or later revokes it; the decisions travel
down (DeliverGrants), taken by the child grant by grant (one it cannot take is `refused`
with the reason; an ending always lands). For each grant in force the parent's return
worker (node/federation/links.py) sends the slice in windows (DeliverReturn) and keeps
it in step; the child keeps it apart from its own data, read-only (`returned_<entity>`,
which shows grants in force only), and purges it when the grant expires or is revoked.

Wire documents (JSON):

- requests (GetGrantRequests): a list of {id, resource, filters, purpose, expires_at,
  requested_by, requested_at}, `filters` a list of {attribute, value};
- grants (DeliverGrants): a list of {id, resource, entity, filters, purpose, state
  (approved, denied, revoked, expired), expires_at, decided_by, decided_at, reason}.

Digests are SHA-256 over the JSON with sorted keys and no spaces (node/store/grants.py).
No SQL here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from node.config import NodeConfig
from node.divisions import is_within, lookup_division
from node.errors import UserError
from node.store import Store
from node.store.grants import (
    APPROVED,
    DENIED,
    EXPIRED,
    FILTER_LINEAGE,
    PENDING,
    PURGED,
    REVOKED,
    GrantFilter,
    check_filters,
    check_filters_shape,
    describe_filters,
)

log = logging.getLogger(__name__)

_ATTRIBUTE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RESOURCE = re.compile(r"^(\d{6})-\S+$")


def parse_filters(texts: Sequence[str]) -> list[GrantFilter]:
    """`ATTR=VALUE` pairs as typed; the value is everything after the first '='."""
    found = []
    for text in texts:
        attribute, sep, value = text.partition("=")
        attribute = attribute.strip()
        if not sep or not _ATTRIBUTE.match(attribute) or value == "":
            raise UserError(
                f"filter {text!r}: write ATTRIBUTE=VALUE, e.g. origin_node=320102 or "
                "division_code=320104 (filters are ANDed)"
            )
        found.append(GrantFilter(attribute, value))
    if not found:
        raise UserError("give at least one --filter ATTRIBUTE=VALUE saying which rows")
    return found


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """A duration (`30s`, `15m`, `12h`, `90d`, `2w`) from now, a date (the end of that day,
    UTC) or an ISO date and time; it must lie ahead."""
    now = now or datetime.now(UTC)
    text = text.strip()
    duration = _DURATION.match(text)
    if duration:
        value = now + timedelta(**{_UNITS[duration.group(2)]: int(duration.group(1))})
    else:
        try:
            if len(text) == 10:
                day = datetime.fromisoformat(text).date()
                value = datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
            else:
                value = datetime.fromisoformat(text)
                value = value if value.tzinfo else value.replace(tzinfo=UTC)
        except ValueError:
            raise UserError(
                f"expiry {text!r}: give a duration (30s, 15m, 12h, 90d, 2w), a date "
                "(YYYY-MM-DD, until the end of that day, UTC) or a date and time"
            ) from None
    if value <= now:
        raise UserError(f"expiry {text!r} is not in the future")
    return value


def check_request(
    store: Store, child: str, resource: str, filters: Sequence[GrantFilter]
) -> tuple[str | None, str | None]:
    """At the parent, a child's request as pulled: (entity, problem). A resource this
    node does not know, one that is not shared, one the child holds already, or a filter
    the entity cannot take is a problem: the request is recorded as denied with it."""
    entries = store.catalog.entries_with_code(resource)
    published = [e for e in entries if e.get("status") == "published"]
    if not published:
        return None, f"resource {resource} is not a published resource known here"
    entry = published[0]
    entity = store.entities.get(str(entry["entity"]))
    if entity is None:
        return None, f"resource {resource} carries entity {entry['entity']!r}, not in the model"
    if entry.get("sharing_kind") == "none":
        return entity.name, f"resource {resource} is not shared: its records never leave"
    origin = str(entry.get("origin_node") or "")
    if origin and is_within(origin, child):
        return entity.name, f"resource {resource} is node {origin}'s own: it is held there"
    try:
        check_filters(entity, filters)
    except UserError as exc:
        return entity.name, str(exc)
    return entity.name, None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)


class GrantService:
    """`tongyuan grant …` at either end of a link."""

    def __init__(self, config: NodeConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.grants = store.grants
        if not store.db.read_only:
            # A node opened for writing (a command while it is not serving, or `serve`):
            # slices whose grant ended go now, not only when a scheduler next runs.
            self.purge_ended()

    def purge_ended(self) -> list[dict[str, Any]]:
        """Purge the returned slices of grants that expired or were ended; logged."""
        try:
            done = self.grants.purge_ended()
        except Exception:  # the view hides them anyway; opening the node must not fail
            log.exception("purging returned rows of ended grants failed")
            return []
        for purge in done:
            log.info(
                "grant %s %s: purged %d returned rows",
                purge["id"],
                purge["ended"],
                purge["rows_purged"],
            )
        return done

    def _parent(self, to: str | None) -> str:
        code = self.config.code
        if to:
            try:
                lookup_division(to)
            except UserError as exc:
                raise UserError(f"--to {to}: {exc}") from None
            if to == code or not is_within(code, to):
                raise UserError(f"--to {to}: node {to} is not above node {code}")
            return to
        parents = sorted({p.parent_code for p in self.store.parents()})
        if len(parents) == 1:
            return parents[0]
        if not parents:
            raise UserError(
                f"no parent has pulled from node {code} yet: give the parent with --to CODE"
            )
        raise UserError(f"node {code} has parents {', '.join(parents)}: choose one with --to")

    def request(
        self,
        resource: str,
        filters: Sequence[str],
        purpose: str,
        expires: str,
        to: str | None = None,
        actor: str = "unknown",
    ) -> dict[str, Any]:
        """Ask the parent for a slice of `resource`; it travels up at the next pull."""
        code = self.config.code
        if not purpose.strip():
            raise UserError("a grant request needs a --purpose saying what the data is for")
        parsed = parse_filters(filters)
        prefix = _RESOURCE.match(resource)
        if not prefix:
            raise UserError(
                f"resource {resource!r} is not a catalogue code (the owner's division code, "
                "a dash, then its own part); see the parent's `tongyuan catalog list`"
            )
        if is_within(prefix.group(1), code):
            raise UserError(
                f"resource {resource} belongs to node {prefix.group(1)}, this node or below "
                "it: its rows are here already, nothing to request"
            )
        # The resource is the parent's, so this node does not know its entity: the parent
        # checks the filters against it when it pulls the request (and denies with the
        # reason); here only what no entity of this node's model could take.
        known = {c for e in self.store.entities.values() for c in e.column_names}
        known.update(FILTER_LINEAGE)
        for f in parsed:
            if f.attribute not in known:
                raise UserError(
                    f"filter attribute {f.attribute!r} is not an attribute of any entity "
                    f"of node {code}'s model nor origin_node / origin_dept"
                )
        check_filters_shape(parsed)
        parent = self._parent(to)
        expires_at = parse_expiry(expires)
        grant_id = self.grants.add_request(
            parent=parent,
            resource=resource,
            filters=parsed,
            purpose=purpose.strip(),
            expires_at=expires_at,
            actor=actor,
        )
        return self._requested(self.grants.held_grant(parent, grant_id))

    def _requested(self, item: dict[str, Any] | None) -> dict[str, Any]:
        """A request made here as users see it, with the state as of now."""
        assert item is not None
        state = item["state"]
        expires = item["granted_expires_at"] or item["expires_at"]
        if state == APPROVED and expires <= datetime.now(UTC):
            state = EXPIRED  # the purge job is about to drop the rows
        elif state == PURGED:
            state = f"{PURGED} ({item['ended']})"
        return {
            "side": "requested",
            "id": item["id"],
            "peer": item["parent_code"],
            "resource": item["resource"],
            "entity": item["entity"] or None,
            "filter": describe_filters([GrantFilter(**f) for f in item["filters"]]),
            "filters": item["filters"],
            "purpose": item["purpose"],
            "state": state,
            "expires_at": _iso(expires),
            "requested_by": item["requested_by"],
            "requested_at": _iso(item["requested_at"]),
            "decided_by": item["decided_by"],
            "decided_at": _iso(item["decided_at"]),
            "reason": item["reason"],
            "rows_held": item["rows_held"],
            "checkpoint": item["checkpoint"],
            "purged_at": _iso(item["purged_at"]),
            "rows_purged": item["rows_purged"],
        }

    def _given(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "side": "given",
            "id": item["id"],
            "peer": item["child_code"],
            "resource": item["resource"],
            "entity": item["entity"] or None,
            "filter": describe_filters([GrantFilter(**f) for f in item["filters"]]),
            "filters": item["filters"],
            "purpose": item["purpose"],
            "state": item["state"],
            "expires_at": _iso(item["expires_at"] or item["requested_expires_at"]),
            "requested_by": item["requested_by"],
            "requested_at": _iso(item["requested_at"]),
            "decided_by": item["decided_by"],
            "decided_at": _iso(item["decided_at"]),
            "reason": item["reason"],
            "rows_held": None,
        }

    def list(self) -> list[dict[str, Any]]:
        """Requests made here (with the parent's decision and the rows held) and grants
        decided here for the children."""
        made = [self._requested(r) for r in self.grants.requests()]
        return made + [self._given(g) for g in self.grants.given()]

    def approve(
        self, grant_id: str, expires: str | None = None, actor: str = "unknown"
    ) -> dict[str, Any]:
        """Approve a child's request (until `expires`, else the expiry it asked for)."""
        expires_at = parse_expiry(expires) if expires else None
        return self._given(
            self.grants.decide(
                grant_id,
                state=APPROVED,
                actor=actor,
                allowed_from=(PENDING,),
                expires_at=expires_at,
            )
        )

    def deny(self, grant_id: str, reason: str, actor: str = "unknown") -> dict[str, Any]:
        if not reason.strip():
            raise UserError(f"deny {grant_id}: give a --reason; it travels to the child")
        return self._given(
            self.grants.decide(
                grant_id, state=DENIED, actor=actor, allowed_from=(PENDING,), reason=reason.strip()
            )
        )

    def revoke(self, grant_id: str, reason: str = "", actor: str = "unknown") -> dict[str, Any]:
        """End a grant now: the child purges its copy when the grant set reaches it."""
        return self._given(
            self.grants.decide(
                grant_id,
                state=REVOKED,
                actor=actor,
                allowed_from=(APPROVED,),
                reason=reason.strip() or None,
            )
        )

    def summary(self) -> dict[str, Any]:
        return self.grants.counts()
