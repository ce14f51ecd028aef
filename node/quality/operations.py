"""Rules and quarantine as users see them: publish a library (for this node and every
node below) or local rules (this node only), see which rules apply, and list, release
or drop quarantined rows.

A release re-validates: the rows go through the rules again exactly as on their first
arrival — an import's rows as an import of the same resource, a child's rows as a
batch from that child — so a row that still fails stays held, with its new reasons.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from node.config import NodeConfig
from node.errors import UserError
from node.model.schema import SEMVER
from node.quality.files import load_rules
from node.quality.report import QualityReporter
from node.store import Store
from node.store.quality import LOCAL, PUBLISHED


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
    out["row"] = json.loads(out.pop("row_json"))
    return out


def _version(text: str) -> tuple[int, ...]:
    match = SEMVER.match(text)
    return tuple(int(g) for g in match.groups()) if match else (0, 0, 0)


class QualityService:
    def __init__(self, config: NodeConfig, store: Store, reporter: QualityReporter) -> None:
        self.config = config
        self.store = store
        self.reporter = reporter
        self.tables = store.quality

    def summary(self) -> dict[str, Any]:
        """The quality lines of `status`: the library in force, quarantine, feedback."""
        return {
            "library": [layer.label for layer in self.tables.library().layers],
            "quarantine": self.tables.counts(),
            "feedback": self.store.feedback.counts(self.config.quality.feedback_overdue_hours),
        }

    # ----- rules -----------------------------------------------------------------------

    def rules_show(self) -> dict[str, Any]:
        library = self.tables.library()
        return {
            "received_from": self.tables.received_from(),
            "layers": [
                {
                    "label": layer.label,
                    "node": layer.node,
                    "name": layer.name,
                    "version": layer.version,
                    "local": layer.local,
                    "rules": len(layer.rules),
                }
                for layer in library.layers
            ],
            "rules": self.tables.applicability(),
            "model": self.store.model.label(),
        }

    def rules_publish(self, path: str, actor: str = "unknown") -> dict[str, Any]:
        """This node's library for itself and every node below it."""
        return self._set_layer(PUBLISHED, path, actor)

    def rules_local(
        self, path: str | None = None, remove: bool = False, actor: str = "unknown"
    ) -> dict[str, Any]:
        """Extra rules for this node only (never passed down)."""
        if remove:
            removed = self.tables.remove_own_layer(LOCAL)
            if not removed:
                raise UserError(f"node {self.config.code} has no local rules to remove")
            return {"removed": True, "role": LOCAL}
        if path is None:
            raise UserError("name the local rule file (or --remove)")
        return self._set_layer(LOCAL, path, actor)

    def _set_layer(self, role: str, path: str, actor: str) -> dict[str, Any]:
        layer = load_rules(Path(path), self.store.model, self.config.code, local=role == LOCAL)
        before = self.tables.own_layer(role)
        if before is not None and before.name == layer.name:
            if before == layer:
                return {
                    "role": role,
                    "layer": layer.label,
                    "rules": len(layer.rules),
                    "changed": False,
                }
            if _version(layer.version) <= _version(before.version):
                raise UserError(
                    f"{path}: {layer.name} {before.version} is already in force with other "
                    f"rules; raise the version (above {before.version}) to change it"
                )
        self.tables.set_own_layer(role, layer, actor)
        waiting = [r for r in self.tables.applicability() if not r["applies"]]
        return {
            "role": role,
            "layer": layer.label,
            "rules": len(layer.rules),
            "changed": True,
            "waiting": len(waiting),
            "children": [c.code for c in self.config.children] if role == PUBLISHED else [],
        }

    # ----- quarantine ------------------------------------------------------------------

    def quarantine_list(
        self,
        state: str = "held",
        rule: str | None = None,
        resource: str | None = None,
        limit: int = 200,
    ) -> dict[str, Any]:
        shown = None if state == "all" else state
        rows = self.tables.quarantined(state=shown, rule=rule, resource=resource, limit=limit)
        return {"rows": [_jsonable(r) for r in rows], "counts": self.tables.counts()}

    def _selected(self, ids: list[str], everything: bool) -> list[dict[str, Any]]:
        if ids and everything:
            raise UserError("give quarantined row IDs or --all, not both")
        if not ids and not everything:
            raise UserError("name quarantined rows by ID, or say --all")
        rows = self.tables.quarantined(state=None if ids else "held", ids=ids)
        if ids:
            found = {r["id"]: r for r in rows}
            missing = [i for i in ids if i not in found]
            if missing:
                raise UserError(
                    f"no quarantined row {missing[0]!r} at node {self.config.code} "
                    "(`tongyuan quality quarantine list` shows them)"
                )
            settled = [r for r in rows if r["state"] != "held"]
            if settled:
                raise UserError(
                    f"quarantined row {settled[0]['id']} is already {settled[0]['state']}"
                )
        return rows

    def quarantine_release(
        self, ids: list[str] | None = None, everything: bool = False, actor: str = "unknown"
    ) -> dict[str, Any]:
        """Apply quarantined rows that pass the rules now; the others stay held."""
        rows = self._selected(list(ids or []), everything)
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[
                (
                    row["entity"],
                    row["received_from"],
                    row["origin_resource"],
                    row["origin_dept"],
                    tuple(row["fields"]),
                )
            ].append(row)
        still = 0
        for (entity_name, child, resource, department, fields), members in groups.items():
            entity = self.store.entities.get(entity_name)
            if entity is None:
                raise UserError(
                    f"quarantined {entity_name} rows cannot be released: model "
                    f"{self.store.model.label()} has no entity {entity_name}"
                )
            group_ids = [m["id"] for m in members]
            if child is None:
                still += self._release_import(entity, group_ids, fields, resource, department)
            else:
                table = self.tables.held_wire_rows(group_ids, entity)
                still += self.store.apply_released(
                    entity, table, group_ids, child, self.config.code
                )
        self.tables.mark_released([r["id"] for r in rows], actor)
        return {"released": len(rows) - still, "still_held": still, "rows": len(rows)}

    def _release_import(
        self,
        entity: Any,
        ids: list[str],
        fields: tuple[str, ...],
        resource: str | None,
        department: str,
    ) -> int:
        """Rows from an import go through the import again (text values, as read)."""
        gone = [f for f in fields if f not in entity.column_names]
        if gone:
            raise UserError(
                f"held {entity.name} rows carry {', '.join(gone)}, which model "
                f"{self.store.model.label()} no longer has: drop them "
                "(`tongyuan quality quarantine drop ID…`) and import the records again"
            )
        table = self.tables.held_rows(ids, [(f, "VARCHAR") for f in fields])
        table = pa.table({f: table.column(f) for f in fields})
        result = self.store.ingest(
            entity,
            table,
            file_label="quarantine release",
            locate=lambda row: f"row {ids[row]}",
            origin_node=self.config.code,
            department=department,
            snapshot=False,
            resource=resource,
            columns=list(fields),
            releasing=ids,
        )
        return result.quarantined

    def quarantine_drop(
        self, ids: list[str] | None = None, everything: bool = False, actor: str = "unknown"
    ) -> dict[str, Any]:
        """Give up on quarantined rows: they stay listed as dropped, never applied."""
        rows = self._selected(list(ids or []), everything)
        dropped = self.tables.settle([r["id"] for r in rows], "dropped", actor)
        return {"dropped": dropped}
