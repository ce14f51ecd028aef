"""The model's operations as users see them: show, diff, publish, calibrate, adopt.

Every operation takes and returns JSON-able values, so the CLI reaches it the same way
whether the node serves (admin API) or not. File arguments are paths on this machine
(the admin API listens on loopback only).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from node.config import NodeConfig
from node.errors import UserError
from node.model.adoption import Plan, carry_mappings, plan_adoption
from node.model.calibrate import calibrate
from node.model.compat import breaking, check_version, diff, required_bump
from node.model.files import load_mapping, load_model, mapping_toml
from node.model.schema import Model, NodeMapping
from node.store import Store


def _changes(old: Model, new: Model) -> dict[str, Any]:
    changes = diff(old, new)
    return {
        "from": old.label(),
        "to": new.label(),
        "changes": [asdict(c) for c in changes],
        "breaking": len(breaking(changes)),
        "required_bump": required_bump(changes),
    }


def _plan_doc(plan: Plan) -> list[dict[str, Any]]:
    return [{"step": s.describe(), "kind": s.kind, "loses_data": s.loses_data} for s in plan.steps]


class ModelService:
    def __init__(self, config: NodeConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.tables = store.models

    # ----- reading -----------------------------------------------------------------------

    def _model(self, which: str) -> Model:
        """`active`, `offered`, a child's code (its proposal), or a model file."""
        if which == "active":
            return self.store.model
        if which == "offered":
            offer = self.tables.offer()
            if offer is None:
                raise UserError(
                    f"node {self.config.code} has no model offered by a parent yet (a parent "
                    "delivers its model when it pulls from this node)"
                )
            return offer.model
        for child in self.tables.child_models():
            if child.child == which:
                return child.model
        path = Path(which)
        if path.suffix.lower() in (".toml", ".yaml", ".yml") or path.exists():
            return load_model(path)
        raise UserError(
            f"{which!r} is not a model file, `active`, `offered`, or a child of node "
            f"{self.config.code} whose model has been pulled"
        )

    def summary(self) -> dict[str, Any]:
        """The model this node works with, what its parent offers, and its children's."""
        active = self.store.model
        offer = self.tables.offer()
        offered: dict[str, Any] | None = None
        if offer is not None:
            offered = {
                "label": offer.model.label(),
                "parent": offer.parent,
                "digest": offer.model.digest(),
                "received_at": offer.received_at.isoformat(),
                "adopted": offer.model.digest() == active.digest(),
            }
        return {
            "active": {
                "label": active.label(),
                "name": active.name,
                "version": active.version,
                "published_by": active.published_by,
                "digest": active.digest(),
                "entities": [e.name for e in active.entities],
            },
            "offered": offered,
            "children": [
                {
                    "code": c.child,
                    "label": c.model.label(),
                    "digest": c.digest,
                    "same_as_ours": c.digest == active.digest(),
                    "fetched_at": c.fetched_at.isoformat(),
                }
                for c in self.tables.child_models()
            ],
        }

    def show(self, which: str = "active") -> dict[str, Any]:
        model = self._model(which)
        return {
            "label": model.label(),
            "digest": model.digest(),
            "document": model.document(),
            "summary": self.summary(),
            "history": [
                {**h, "happened_at": h["happened_at"].isoformat()} for h in self.tables.history()
            ],
        }

    def diff(self, old: str, new: str) -> dict[str, Any]:
        return _changes(self._model(old), self._model(new))

    # ----- publishing and adopting -----------------------------------------------------------

    def publish(
        self,
        path: str,
        mapping: str | None = None,
        allow_breaking: bool = False,
        actor: str = "unknown",
    ) -> dict[str, Any]:
        """Make a model file this node's model (and the one its children are offered):
        refused if its version does not move on, or if it breaks compatibility without
        `allow_breaking`. The store migrates in the same transaction."""
        model = replace(load_model(Path(path)), published_by=self.config.code)
        active = self.store.model
        report = _changes(active, model)
        changes = diff(active, model)
        if model.name == active.name:
            problem = check_version(active, model, changes)
            if problem:
                raise UserError(f"{path}: {problem}")
        broken = breaking(changes)
        if broken and not allow_breaking:
            listed = "; ".join(f"{c.subject}: {c.detail}" for c in broken)
            raise UserError(
                f"{path}: model {model.label()} breaks compatibility with {active.label()} "
                f"({listed}); nothing was changed — publish it with --allow-breaking if that "
                "is intended"
            )
        mappings = load_mapping(Path(mapping), model) if mapping else {}
        # An entry under this node's own code renames attributes of its own store (a
        # rename is otherwise a drop and an add, and the values would go).
        own = mappings.pop(self.config.code, NodeMapping())
        plan = self._plan(active, model, own)
        notes = self._migrate(plan, f"published by {self.config.code}", actor, mappings)
        return report | {"plan": _plan_doc(plan), "published": model.label(), "notes": notes}

    def adopt(
        self, allow_breaking: bool = False, dry_run: bool = False, actor: str = "unknown"
    ) -> dict[str, Any]:
        """Move this node to the model its parent offers, through the parent's mapping of
        this node's local names. Steps that may lose data need `allow_breaking`."""
        offer = self.tables.offer()
        if offer is None:
            raise UserError(
                f"node {self.config.code} has no model to adopt: its parent delivers one when "
                "it pulls from this node"
            )
        active = self.store.model
        plan = self._plan(active, offer.model, offer.mapping)
        result = {
            "from": active.label(),
            "to": offer.model.label(),
            "parent": offer.parent,
            "plan": _plan_doc(plan),
            "adopted": False,
        }
        if offer.model.digest() == active.digest():
            return result | {"adopted": True, "plan": []}
        if dry_run:
            return result
        if plan.loses_data and not allow_breaking:
            lossy = "; ".join(s.describe() for s in plan.steps if s.loses_data)
            raise UserError(
                f"adopting {offer.model.label()} would lose data ({lossy}); nothing was "
                "changed — review the plan (`tongyuan model adopt --dry-run`) and rerun with "
                "--allow-breaking to consent"
            )
        notes = self._migrate(plan, f"adopted from {offer.parent}", actor, {})
        return result | {"adopted": True, "notes": notes}

    def _plan(self, active: Model, target: Model, mapping: NodeMapping) -> Plan:
        try:
            return plan_adoption(active, target, mapping)
        except ValueError as exc:
            raise UserError(f"model {target.label()}: {exc}") from None

    def _migrate(
        self,
        plan: Plan,
        action: str,
        actor: str,
        mappings: dict[str, NodeMapping],
    ) -> list[str]:
        """Move the store; the children's mappings (new ones, else the saved ones carried
        along) are saved in the same transaction. Returns notes on mappings dropped."""
        saved = {c: m for c, m in self.tables.child_mappings().items() if c not in mappings}
        carried, notes = carry_mappings(saved, plan)
        carried.update(mappings)  # new ones already name the target's attributes
        types = {(e.name, a.name): a.type for e in plan.target.entities for a in e.attributes}
        catalog, sources = self.store.catalog, self.store.sources
        feedback, quality = self.store.feedback, self.store.quality

        def rewrite_names(cur: Any, p: Plan) -> list[str]:
            feedback.rename_for_model(cur, p.renames)
            quality.rename_for_model(cur, p.renames)
            return [
                *catalog.rewrite_for_model(
                    cur, p.renames, p.dropped_attributes, types, actor, f"model {action}"
                ),
                *sources.rename_for_model(cur, p.renames),
            ]

        self.tables.migrate(
            plan, action=action, actor=actor, child_mappings=carried, rewrite_names=rewrite_names
        )
        return notes

    def set_mapping(self, path: str) -> dict[str, Any]:
        """Replace this node's mapping of its children's local names (without a new model)."""
        mappings = load_mapping(Path(path), self.store.model)
        self.tables.save_child_mappings(mappings)
        return {"children": sorted(mappings)}

    # ----- calibration ---------------------------------------------------------------------

    def calibrate(self, write_mapping: str | None = None) -> dict[str, Any]:
        """Where the children's models differ from this node's and from each other, with a
        suggested mapping (written to `write_mapping` for the operator to edit)."""
        children = {c.child: c.model for c in self.tables.child_models()}
        if not children:
            raise UserError(
                f"node {self.config.code} holds no child models yet: they are pulled from "
                "each child on connection (`tongyuan children list` shows the links)"
            )
        report = calibrate(self.store.model, children)
        result: dict[str, Any] = {
            "standard": self.store.model.label(),
            "children": {code: model.label() for code, model in sorted(children.items())},
            **report.document(),
        }
        if write_mapping:
            target = Path(write_mapping)
            if target.exists():
                raise UserError(f"{target} exists; refusing to overwrite an edited mapping")
            target.write_text(mapping_toml(report.suggested_mappings()), encoding="utf-8")
            result["mapping_file"] = str(target)
        return result
