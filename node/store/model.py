"""The model's tables: the model this node works with, the one its parent offers, the
mapping it publishes for its children, its children's proposals, and the history.

Moving the store to another model (publishing one's own, or adopting the parent's) is
one transaction: the entity tables are renamed, widened or narrowed, the catalogue
entries that name them are rewritten as new versions, and the active model is
recorded, so a failure leaves the store on the model it had.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from node.divisions import division_codes
from node.entities import COLUMN_TYPES
from node.errors import UserError
from node.model.adoption import Plan, Step
from node.model.schema import (
    Model,
    NodeMapping,
    mapping_from_document,
    model_from_json,
)
from node.store.schema import ensure_entity_tables, entity_table, quote

if TYPE_CHECKING:
    from node.store.audit import Evidence
    from node.store.store import Store

ACTIVE = "active"
OFFERED = "offered"


@dataclass(frozen=True)
class Offer:
    """The model a parent delivered, with the parent's names for this node's entities."""

    model: Model
    mapping: NodeMapping
    parent: str
    digest: str
    received_at: datetime


@dataclass(frozen=True)
class ChildModel:
    child: str
    model: Model
    digest: str
    fetched_at: datetime


def delivery_digest(model: Model, mapping: NodeMapping) -> str:
    """Digest of a model delivery (model and the child's mapping), checked on receipt."""
    text = model.to_json() + json.dumps(mapping.document(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ModelStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.db
        # Bumped when the active model or the children's mappings change, so links offer
        # the model to the children again.
        self.generation = 0

    # ----- reading ---------------------------------------------------------------------

    @staticmethod
    def read_active(cur: duckdb.DuckDBPyConnection) -> Model | None:
        """The active model, inside an open (before the store object exists)."""
        row = cur.execute(
            "SELECT doc FROM tongyuan.model_state WHERE role = ?", [ACTIVE]
        ).fetchone()
        return model_from_json(row[0]) if row else None

    def active(self) -> Model | None:
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT doc FROM tongyuan.model_state WHERE role = ?", [ACTIVE]
            ).fetchone()
        return model_from_json(row[0]) if row else None

    def offer(self) -> Offer | None:
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT doc, mapping, source, digest, updated_at FROM tongyuan.model_state "
                "WHERE role = ?",
                [OFFERED],
            ).fetchone()
        if row is None:
            return None
        return Offer(
            model=model_from_json(row[0]),
            mapping=mapping_from_document(json.loads(row[1] or "{}")),
            parent=str(row[2]),
            digest=str(row[3]),
            received_at=row[4],
        )

    def offered_digest(self, parent: str) -> str:
        offer = self.offer()
        return offer.digest if offer is not None and offer.parent == parent else ""

    def child_mapping(self, child: str) -> NodeMapping:
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT doc FROM tongyuan.model_mappings WHERE child_code = ?", [child]
            ).fetchone()
        return mapping_from_document(json.loads(row[0])) if row else NodeMapping()

    def child_mappings(self) -> dict[str, NodeMapping]:
        with self._db.read() as cur:
            rows = cur.execute("SELECT child_code, doc FROM tongyuan.model_mappings").fetchall()
        return {str(r[0]): mapping_from_document(json.loads(r[1])) for r in rows}

    def child_models(self) -> list[ChildModel]:
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT child_code, doc, digest, fetched_at FROM tongyuan.child_models "
                "ORDER BY child_code"
            ).fetchall()
        return [ChildModel(r[0], model_from_json(r[1]), r[2], r[3]) for r in rows]

    def child_model_digest(self, child: str) -> str:
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT digest FROM tongyuan.child_models WHERE child_code = ?", [child]
            ).fetchone()
        return str(row[0]) if row else ""

    def history(self) -> list[dict[str, Any]]:
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT name, version, digest, action, actor, happened_at, note "
                "FROM tongyuan.model_history ORDER BY happened_at, rowid"
            ).fetchall()
        keys = ("name", "version", "digest", "action", "actor", "happened_at", "note")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # ----- writing -----------------------------------------------------------------------

    @staticmethod
    def record_active(
        cur: duckdb.DuckDBPyConnection, model: Model, action: str, actor: str, note: str = ""
    ) -> None:
        now = datetime.now(UTC)
        cur.execute("DELETE FROM tongyuan.model_state WHERE role = ?", [ACTIVE])
        cur.execute(
            "INSERT INTO tongyuan.model_state VALUES (?, ?, ?, NULL, ?, ?)",
            [ACTIVE, model.to_json(), model.digest(), model.published_by, now],
        )
        cur.execute(
            "INSERT INTO tongyuan.model_history VALUES (?, ?, ?, ?, ?, ?, ?)",
            [model.name, model.version, model.digest(), action, actor, now, note],
        )

    def save_child_mappings(self, mappings: Mapping[str, NodeMapping]) -> None:
        with self._db.write() as cur:
            self._save_child_mappings(cur, mappings)
        self.generation += 1

    @staticmethod
    def _save_child_mappings(
        cur: duckdb.DuckDBPyConnection, mappings: Mapping[str, NodeMapping]
    ) -> None:
        for child, mapping in mappings.items():
            cur.execute("DELETE FROM tongyuan.model_mappings WHERE child_code = ?", [child])
            cur.execute(
                "INSERT INTO tongyuan.model_mappings VALUES (?, ?)",
                [child, json.dumps(mapping.document(), ensure_ascii=False)],
            )

    def receive_offer(
        self,
        parent: str,
        model: Model,
        mapping: NodeMapping,
        digest: str,
        evidence: Evidence | None = None,
    ) -> None:
        with self._db.write() as cur:
            if evidence is not None:  # the audit entry commits with the offer
                evidence(cur)
            cur.execute("DELETE FROM tongyuan.model_state WHERE role = ?", [OFFERED])
            cur.execute(
                "INSERT INTO tongyuan.model_state VALUES (?, ?, ?, ?, ?, ?)",
                [
                    OFFERED,
                    model.to_json(),
                    digest,
                    json.dumps(mapping.document(), ensure_ascii=False),
                    parent,
                    datetime.now(UTC),
                ],
            )

    def save_child_model(self, child: str, model: Model) -> None:
        with self._db.write() as cur:
            cur.execute("DELETE FROM tongyuan.child_models WHERE child_code = ?", [child])
            cur.execute(
                "INSERT INTO tongyuan.child_models VALUES (?, ?, ?, ?)",
                [child, model.to_json(), model.digest(), datetime.now(UTC)],
            )

    def forget_child(self, child: str) -> None:
        with self._db.write() as cur:
            cur.execute("DELETE FROM tongyuan.child_models WHERE child_code = ?", [child])

    # ----- migrating the store -------------------------------------------------------------

    def migrate(
        self,
        plan: Plan,
        *,
        action: str,
        actor: str,
        child_mappings: Mapping[str, NodeMapping] | None = None,
        rewrite_names: Callable[[duckdb.DuckDBPyConnection, Plan], list[str]],
    ) -> None:
        """Run `plan` and make its target the active model, all in one transaction.

        Values that do not fit the target (outside a code list, missing where required)
        are refused before anything changes, naming the first record and attribute.
        `rewrite_names` rewrites what names renamed entities or attributes (catalogue
        entries, observations) inside the same transaction and returns the log entities
        it wrote.
        """
        store = self._store
        publication = store.publication()
        heads: dict[str, int] = {}

        def switch() -> None:
            # Still holding the writer, before anyone hears of the new head: readers
            # never see the new tables under the old model.
            store.use_model(plan.target, heads)
            publication.fire()

        try:
            self._migrate(
                plan, action, actor, child_mappings, rewrite_names, heads, switch, publication
            )
        except duckdb.Error as exc:  # a step the plan did not foresee; rolled back
            raise UserError(
                f"moving the store to model {plan.target.label()} failed, nothing was changed: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        self.generation += 1

    def _migrate(
        self,
        plan: Plan,
        action: str,
        actor: str,
        child_mappings: Mapping[str, NodeMapping] | None,
        rewrite_names: Callable[[duckdb.DuckDBPyConnection, Plan], list[str]],
        heads: dict[str, int],
        switch: Callable[[], None],
        publication: Any,
    ) -> None:
        store = self._store
        with self._db.write(
            arrow={"model_codes": model_codes_table(plan.target)}, on_commit=switch
        ) as cur:
            for step in plan.steps:
                self._run_step(cur, step, plan.target)
            entities = plan.target.storage_entities()
            ensure_entity_tables(cur, list(entities.values()))
            for entity_name, attribute_name in plan.checks:
                self._check_fits(cur, plan.target, entity_name, attribute_name)
            self.record_active(
                cur,
                plan.target,
                action,
                actor,
                "; ".join(s.describe() for s in plan.steps) or "no change to the store",
            )
            if child_mappings:
                self._save_child_mappings(cur, child_mappings)
            written = rewrite_names(cur, plan)
            head = int(cur.execute("SELECT seq FROM tongyuan.head").fetchone()[0])  # type: ignore[index]
            publication.set(head, written)
            heads.update(store.read_entity_heads(store.log_entities_of(plan.target), cur))

    @staticmethod
    def _run_step(cur: duckdb.DuckDBPyConnection, step: Step, target: Model) -> None:
        """One step on the entity's table; its view is recreated after all steps
        (`ensure_entity_tables`), since a view names the columns it shows."""
        if step.kind in ("add_entity", "add_attribute"):
            return  # ensure_entity_tables creates what is missing
        table = f"tongyuan.{quote('rows_' + step.entity)}"
        column = quote(step.attribute or "")
        new_name = step.new_name or ""
        cur.execute(f"DROP VIEW IF EXISTS main.{quote(step.entity)}")
        if step.kind == "rename_entity":
            cur.execute(f"ALTER TABLE {table} RENAME TO {quote('rows_' + new_name)}")
        elif step.kind == "drop_entity":
            cur.execute(f"DROP TABLE {table}")
        elif step.kind == "rename_attribute":
            cur.execute(f"ALTER TABLE {table} RENAME COLUMN {column} TO {quote(new_name)}")
        elif step.kind == "drop_attribute":
            cur.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        elif step.kind == "change_type":
            sql_type = COLUMN_TYPES[str(step.new_type)][0]
            entity = target.entity(step.entity)
            key = quote(entity.key) if entity is not None else column
            if not step.loses_data:
                # A widening in kind may still not hold a value (DECIMAL(18,2) ends at 10^16).
                row = cur.execute(
                    f"SELECT origin_node, {key}, CAST({column} AS VARCHAR) FROM {table} "
                    f"WHERE {column} IS NOT NULL AND TRY_CAST({column} AS {sql_type}) IS NULL "
                    "LIMIT 1"
                ).fetchone()
                if row is not None:
                    raise UserError(
                        f"record {step.entity} {row[1]!r} (from {row[0]}): attribute "
                        f"{step.attribute} value {row[2]} does not fit {step.new_type} "
                        f"({sql_type}); nothing was changed"
                    )
            cur.execute(
                f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {sql_type} "
                f"USING TRY_CAST({column} AS {sql_type})"
            )

    @staticmethod
    def _check_fits(
        cur: duckdb.DuckDBPyConnection, target: Model, entity_name: str, attribute_name: str
    ) -> None:
        entity = target.entity(entity_name)
        assert entity is not None
        attribute = entity.attribute(attribute_name)
        assert attribute is not None
        table = entity_table(entity.to_entity())
        column = quote(attribute_name)
        key = quote(entity.key)
        problems = []
        fix = "correct them at their source first"
        if attribute.required:
            problems.append(
                (
                    f"{column} IS NULL",
                    "is required but empty",
                    "publish the attribute as optional first, let the sources fill it, then "
                    "make it required",
                )
            )
        code_list = target.code_list(attribute.code_list) if attribute.code_list else None
        if code_list is not None:
            list_name = code_list.external or code_list.name
            problems.append(
                (
                    f"{column} IS NOT NULL AND CAST({column} AS VARCHAR) NOT IN "
                    "(SELECT code FROM model_codes WHERE list = "
                    f"'{list_name.replace(chr(39), chr(39) * 2)}')",
                    f"is not a code of {code_list.name}",
                    fix,
                )
            )
        for condition, what, advice in problems:
            row = cur.execute(
                f"SELECT origin_node, {key}, CAST({column} AS VARCHAR), count(*) OVER () "
                f"FROM {table} WHERE NOT _deleted AND {condition} LIMIT 1"
            ).fetchone()
            if row is not None:
                raise UserError(
                    f"record {entity_name} {entity.key}={row[1]!r} (from {row[0]}): attribute "
                    f"{attribute_name} value {row[2]!r} {what} in model {target.label()} "
                    f"({row[3]} records like it); {advice} — nothing was changed"
                )


def model_codes_table(model: Model) -> pa.Table:
    """Every code a model's code lists allow, as (list, code) rows the store's SQL joins;
    an external list (GB/T 2260) is listed under its own name from the division table."""
    names: list[str] = []
    codes: list[str] = []
    for code_list in model.code_lists:
        if code_list.external == "GB/T 2260":
            known = division_codes()
            names += [code_list.external] * len(known)
            codes += known
        else:
            names += [code_list.name] * len(code_list.values)
            codes += list(code_list.codes)
    return pa.table({"list": pa.array(names, pa.string()), "code": pa.array(codes, pa.string())})
