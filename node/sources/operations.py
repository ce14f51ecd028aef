"""Discrepancies as users see them: list them, and resolve one at its source.

Resolving by correcting (`accept_observed` or a `value`) writes the authoritative record
through the resource that is the attribute's source, like any import: the change
travels upward and each tier's cross-check closes its copy of the discrepancy.
Confirming keeps the source's value and records who said so.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa

from node.catalog.operations import CatalogService
from node.config import NodeConfig
from node.errors import UserError
from node.store import Store


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


class SourcesService:
    def __init__(self, config: NodeConfig, store: Store, catalog: CatalogService) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        self.tables = store.sources

    def list(self, include_resolved: bool = False) -> list[dict[str, Any]]:
        # Cross-check first, so what the list shows includes the latest imports.
        if not self.store.db.read_only:
            self.tables.crosscheck()
        return [_jsonable(r) for r in self.tables.discrepancies(include_resolved=include_resolved)]

    def resolve(
        self,
        discrepancy_id: str,
        accept_observed: bool = False,
        value: str | None = None,
        confirm: bool = False,
        note: str = "",
        actor: str = "unknown",
    ) -> dict[str, Any]:
        """Resolve one discrepancy at its authoritative source (this node)."""
        if sum((accept_observed, value is not None, confirm)) != 1:
            raise UserError(
                "say how to resolve it: --accept-observed (the observation is right), "
                "--value V (both are wrong), or --confirm (the source is right)"
            )
        found = self.tables.discrepancy(discrepancy_id)
        if found is None:
            raise UserError(
                f"no discrepancy {discrepancy_id!r} at node {self.config.code} "
                "(`tongyuan discrepancies list --all` shows them)"
            )
        if found["source_node"] != self.config.code:
            raise UserError(
                f"discrepancy {discrepancy_id} is about node {found['source_node']}'s record: "
                f"resolve it there, at its authoritative source"
            )
        if found["state"] != "open":
            raise UserError(f"discrepancy {discrepancy_id} is already {found['state']}")
        if confirm:
            self.tables.record_action(discrepancy_id, "confirmed", None, actor, note)
            return {"id": discrepancy_id, "action": "confirmed", "note": note}
        corrected = found["observed_value"] if accept_observed else value
        entry = self.catalog.authoritative_resource(found["entity"], found["attribute"])
        if entry is None:
            raise UserError(
                f"node {self.config.code} has no published resource that is the source of "
                f"{found['entity']}.{found['attribute']}; publish it before correcting"
            )
        entity = self.store.entities[found["entity"]]
        key = found["source_key"] or found["record_key"]
        table = pa.table(
            {
                entity.key: pa.array([key], pa.string()),
                found["attribute"]: pa.array([corrected], pa.string()),
            }
        )
        result = self.store.ingest(
            entity,
            table,
            file_label=f"correction of discrepancy {discrepancy_id}",
            locate=lambda row: f"value {row + 1}",
            origin_node=self.config.code,
            department=entry.department,
            snapshot=False,
            resource=entry.code,
            columns=[entity.key, found["attribute"]],
        )
        self.tables.record_action(discrepancy_id, "corrected", corrected, actor, note)
        self.tables.crosscheck()
        return {
            "id": discrepancy_id,
            "action": "corrected",
            "value": corrected,
            "resource": entry.code,
            "changes": result.changes,
        }
