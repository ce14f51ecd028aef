"""The node's operations as the CLI and the admin API see them.

One object, two ways in: the CLI calls it directly when the node is not serving, and
the admin servicer calls it inside a serving node. Either way it talks to the store
by intent and to the link manager when there is one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from node.catalog.entries import Entry
from node.catalog.operations import CatalogService
from node.config import Child, NodeConfig, delete_child, save_child, validate_address
from node.divisions import Tier, is_within, lookup_division
from node.errors import ConfigError, UserError
from node.federation.links import LinkManager, LinkStatus
from node.model.operations import ModelService
from node.quality.feedback import FeedbackService
from node.quality.operations import QualityService
from node.quality.report import QualityReporter
from node.readers import read_source_file
from node.security.audit import AuditService, operation_entry
from node.security.grants import GrantService
from node.security.pki_operations import PkiService
from node.security.sharing import SharingService
from node.sources.operations import SourcesService
from node.store import Store

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class IngestOptions:
    """How to import a file: the CLI's flags, carried unchanged to a serving node."""

    snapshot: bool = False
    file_format: str | None = None
    allow_empty: bool = False


DEFAULT_INGEST = IngestOptions()
_TIER_RANK = {Tier.COUNTY: 0, Tier.CITY: 1, Tier.PROVINCE: 2}


def _latest(applied: datetime | None, live: LinkStatus | None) -> datetime | None:
    """Last contact with a child: its last applied batch, or a later heartbeat."""
    if live is None or live.last_heartbeat is None:
        return applied
    heard = datetime.fromtimestamp(live.last_heartbeat, UTC)
    return heard if applied is None or heard > applied else applied


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="milliseconds") if value else None


class NodeService:
    def __init__(
        self,
        config: NodeConfig,
        store: Store,
        links: LinkManager | None = None,
        listen: str | None = None,
        http: str | None = None,
    ) -> None:
        identity = store.identity()
        if identity.code != config.code:
            raise ConfigError(
                f"{config.config_path}: [node] code is {config.code} but the store belongs to "
                f"node {identity.code}; put the code back (a node's code cannot change)"
            )
        self.config = config
        self.store = store
        self.links = links
        self.listen = listen
        self.http = http  # the operator HTTP endpoint's bound address, when serving one
        self._children: dict[str, Child] = {c.code: c for c in config.children}
        self.catalog = CatalogService(config, store)
        self.model = ModelService(config, store)
        self.sources = SourcesService(config, store, self.catalog)
        self.reporter = QualityReporter(config, store)
        self.quality = QualityService(config, store, self.reporter)
        self.feedback = FeedbackService(config, store)
        self.grants = GrantService(config, store)
        self.pki = PkiService(config, store, links)
        self.sharing = SharingService(config, store)
        self.audit = AuditService(config.code, store)
        # Operations reached by name through `call` (the admin API's generic method).
        self._operations: dict[str, Callable[..., Any]] = {
            "catalog.add": self.catalog.add,
            "catalog.edit": self.catalog.edit,
            "catalog.publish": self.catalog.publish,
            "catalog.retire": self.catalog.retire,
            "catalog.remove": self.catalog.remove,
            "catalog.map": self.catalog.map_standard,
            "catalog.import": self.catalog.import_drafts,
            "catalog.show": self.catalog.show,
            "catalog.list": self.catalog.list_entries,
            "catalog.search": self.catalog.search,
            "catalog.export": self.catalog.export,
            "catalog.coverage": self.catalog.coverage,
            "catalog.standard_add": self.catalog.standard_add,
            "catalog.standard_withdraw": self.catalog.standard_withdraw,
            "catalog.standard_list": self.catalog.standard_list,
            "model.show": self.model.show,
            "model.diff": self.model.diff,
            "model.publish": self.model.publish,
            "model.adopt": self.model.adopt,
            "model.calibrate": self.model.calibrate,
            "model.mapping": self.model.set_mapping,
            "discrepancies.list": self.sources.list,
            "discrepancies.resolve": self.sources.resolve,
            "quality.rules_show": self.quality.rules_show,
            "quality.rules_publish": self.quality.rules_publish,
            "quality.rules_local": self.quality.rules_local,
            "quality.quarantine_list": self.quality.quarantine_list,
            "quality.quarantine_release": self.quality.quarantine_release,
            "quality.quarantine_drop": self.quality.quarantine_drop,
            "quality.report": self.reporter.report,
            "feedback.list": self.feedback.list,
            "feedback.respond": self.feedback.respond,
            "objection.raise": self.feedback.raise_objection,
            "grant.request": self.grants.request,
            "grant.list": self.grants.list,
            "grant.approve": self.grants.approve,
            "grant.deny": self.grants.deny,
            "grant.revoke": self.grants.revoke,
            "pki.init_root": self.pki.init_root,
            "pki.request": self.pki.request,
            "pki.issue": self.pki.issue,
            "pki.install": self.pki.install,
            "pki.revoke": self.pki.revoke,
            "pki.show": self.pki.show,
            "pki.list": self.pki.list_issued,
            "export.write": self.sharing.export,
            "audit.show": self.audit.show,
            "audit.verify": self.audit.verify,
            "audit.export": self.audit.export,
            "audit.forget_child": self.audit.forget_child,
        }

    @property
    def serving(self) -> bool:
        return self.links is not None

    # ----- ingest and query -------------------------------------------------------

    def call(self, method: str, args: dict[str, Any]) -> Any:
        """Run a named operation with keyword arguments (JSON-able in and out)."""
        operation = self._operations.get(method)
        if operation is None:
            raise UserError(f"node {self.config.code} has no operation {method!r}")
        try:
            inspect.signature(operation).bind(**args)
        except TypeError as exc:  # a client that does not match this node's version
            raise UserError(f"{method}: {exc}") from None
        result = operation(**args)
        # State-changing operations leave evidence in the audit chain (who, what, outcome).
        entry = operation_entry(method, args, result, self.store.outbound.federation_key)
        if entry is not None:
            self.store.audit.record(entry[0], entry[1], actor=str(args.get("actor", "")))
        return result

    def _importable(self, resource: str) -> tuple[Any, Entry]:
        """The published resource an import goes into: (entity, entry)."""
        catalog = self.store.catalog
        entry = catalog.own_entry(resource)
        if entry is None:
            draft = catalog.draft(resource)
            if draft is not None:
                raise UserError(
                    f"resource {resource} ({draft.name}) is a draft: publish it first with "
                    f"`tongyuan catalog publish {resource}`; only published resources accept "
                    "imports"
                )
            published = [
                f"{d['code']} ({d['name']})"
                for d in catalog.entries(self.config.code)
                if d["status"] == "published"
            ]
            known = ", ".join(published) or "none yet; register one with `tongyuan catalog add`"
            if resource in self.store.entities:
                raise UserError(
                    f"{resource!r} is an entity, not a resource: import into one of the "
                    f"published resources of node {self.config.code} ({known})"
                )
            raise UserError(
                f"unknown resource {resource!r} on node {self.config.code}; published "
                f"resources: {known}"
            )
        if entry.status == "retired":
            raise UserError(
                f"resource {resource} ({entry.name}) is retired (by {entry.updated_by} at "
                f"{entry.updated_at:%Y-%m-%d %H:%M}): it keeps its history but accepts no new data"
            )
        entity = self.store.entities.get(entry.entity)
        if entity is None:
            raise UserError(
                f"resource {resource} carries entity {entry.entity!r}, which this node's model "
                "no longer has"
            )
        return entity, entry

    def ingest(
        self,
        resource: str,
        path: Path,
        options: IngestOptions = DEFAULT_INGEST,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        entity, entry = self._importable(resource)
        department = entry.department
        observing = None
        if not self.catalog.is_authoritative(entry):
            observing = (entry.source_node, entry.source_department)
        if progress:
            progress("reading", 0, 0)
        source = read_source_file(path, options.file_format)
        result = self.store.ingest(
            entity,
            source.table,
            file_label=str(path.name),
            locate=source.locate,
            origin_node=self.config.code,
            department=department,
            snapshot=options.snapshot,
            allow_empty=options.allow_empty,
            progress=progress,
            resource=resource,
            columns=[f.name for f in entry.fields],
            observing=observing,
        )
        self.store.audit.record(
            "ingest",
            {
                "resource": resource,
                "department": department,
                "batch_id": result.batch_id,
                "file": path.name,
                "snapshot": options.snapshot,
                "rows_read": result.rows_read,
                "inserted": result.inserted,
                "updated": result.updated,
                "deleted": result.deleted,
                "quarantined": result.quarantined,
                "first_seq": result.first_seq,
                "last_seq": result.last_seq,
            },
        )
        return asdict(result) | {
            "resource": resource,
            "department": department,
            "observed_source": list(observing) if observing else None,
            "changes": result.changes,
            "node": self.config.code,
            "sheet": source.sheet,
            "ignored_sheets": list(source.other_sheets),
        }

    def query(self, sql: str) -> pa.Table:
        return self.store.query(sql)

    def query_batches(self, sql: str) -> Iterator[pa.RecordBatch]:
        return self.store.query_batches(sql)

    # ----- children --------------------------------------------------------------

    def _check_child(self, code: str, address: str) -> None:
        division = lookup_division(code)
        if division.retired:
            raise UserError(f"child {code}: division code {code} ({division.name}) is retired")
        if code == self.config.code:
            raise UserError(f"child {code}: a node cannot be its own child")
        if self.config.tier is Tier.COUNTY:
            raise UserError(f"node {self.config.code} is a county node: it has no children")
        if not is_within(code, self.config.code):
            raise UserError(
                f"child {code} ({division.name}) is not within {self.config.code} "
                f"({self.config.name}); only divisions below this node can be its children"
            )
        if _TIER_RANK[division.tier] >= _TIER_RANK[self.config.tier]:
            raise UserError(f"child {code} is a {division.tier.value}, not below this node")
        validate_address(address, f"child {code}")

    def add_child(self, code: str, address: str) -> list[dict[str, Any]]:
        self._check_child(code, address)
        child = Child(code=code, address=address)
        save_child(self.config.directory, child)
        self._children[code] = child
        self.store.ensure_link(code)
        self.record_children()
        self.store.audit.record("children.add", {"child": code, "address": address})
        if self.links is not None:
            self.links.add(child)
        return self.list_children()

    def remove_child(self, code: str) -> list[dict[str, Any]]:
        """Stop pulling from a child. Records it sent stay: they belong to their origin."""
        if code not in self._children:
            raise UserError(f"{code} is not a child of node {self.config.code}")
        delete_child(self.config.directory, code)
        del self._children[code]
        self.store.catalog.forget_child(code)
        self.store.scores.forget_child(code)
        self.store.audit.record("children.remove", {"child": code})
        if self.links is not None:
            self.links.remove(code)
        return self.list_children()

    def record_children(self) -> None:
        """Put this node's children in the node tree that travels upward."""
        self.store.catalog.record_children(
            (c, lookup_division(c).name, lookup_division(c).tier.value) for c in self._children
        )

    def list_children(self) -> list[dict[str, Any]]:
        records = {lk.child_code: lk for lk in self.store.links()}
        live = self.links.statuses() if self.links is not None else {}
        rows_by_link: dict[str, int] = {}
        for counts in self.store.entity_counts().values():
            for via, n in counts["by_link"].items():
                rows_by_link[via] = rows_by_link.get(via, 0) + n
        now = datetime.now(UTC)
        result = []
        for code, child in sorted(self._children.items()):
            record = records.get(code)
            status = live.get(code)
            checkpoint = record.checkpoint if record else 0
            head = status.child_head if status and status.child_head is not None else None
            if head is None and record is not None:
                head = record.child_head
            lag = max(head - checkpoint, 0) if head is not None else None
            lag_seconds: float | None = None
            if lag == 0:
                lag_seconds = 0.0
            elif lag is not None and record is not None and record.caught_up_at is not None:
                lag_seconds = round((now - record.caught_up_at).total_seconds(), 3)
            result.append(
                {
                    "code": code,
                    "name": lookup_division(code).name,
                    "address": child.address,
                    "state": status.state if status else "offline",
                    "checkpoint": checkpoint,
                    "child_head": head,
                    "lag": lag,
                    "lag_seconds": lag_seconds,
                    "last_pull": _iso(_latest(record.last_pull if record else None, status)),
                    "rows_applied": record.rows_applied if record else 0,
                    "rows": rows_by_link.get(code, 0),
                    # A serving node knows the link's current error; otherwise the last one.
                    "error": status.error if status else (record.last_error if record else None),
                }
            )
        return result

    # ----- status ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        identity = self.store.identity()
        counts = self.store.entity_counts()
        return {
            "code": identity.code,
            "name": self.config.name,
            "tier": identity.tier,
            "node_id": identity.node_id,
            "serving": self.serving,
            "security": self.pki.summary(),
            "listen": self.listen or self.config.listen,
            "http": self.http,
            "head_seq": self.store.head_seq,
            "parents": [
                {
                    "code": p.parent_code,
                    "acked_seq": p.acked_seq,
                    "last_seen": _iso(p.last_seen),
                }
                for p in self.store.parents()
            ],
            "children": self.list_children(),
            "entities": counts,
            "rows": {name: c["rows"] for name, c in counts.items()},
            "catalog": self.catalog.summary(),
            "model": self.model.summary(),
            "discrepancies": self.store.sources.counts(),
            "quality": self.quality.summary(),
            "grants": self.grants.summary(),
            "sharing": self.sharing.summary(),
            "audit": self.audit.summary(),
            "recent_ingests": [
                {**i, "finished_at": _iso(i["finished_at"])} for i in self.store.last_ingests()
            ],
        }
