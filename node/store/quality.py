"""The rule library's layers, quarantine and warning flags in the store.

Screening runs inside the writer's transaction of an import or of a child's batch, so a
row is either applied or held, never both and never lost: rows failing a blocking rule
go to `tongyuan.quarantine` with rule, reason and origin (the whole row as JSON, so a
release re-validates and applies it); rows failing only warning rules are applied and
the version is flagged in `tongyuan.quality_flags`. A held row from a child also becomes
a feedback item that travels down to the record's owner.

Rules compile to expressions that cannot fail on a value (TRY_CAST, RE2 patterns checked
when the library is loaded); should the screening query fail anyway, the import or
batch is refused whole with the rule library named, and nothing is written.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa

from node.entities import Entity
from node.errors import UserError
from node.quality.checksums import division_codes_table
from node.quality.engine import Screen, applicable, compile_screen, literal
from node.quality.files import check_library_json, layer_from_json, layer_json
from node.quality.rules import RuleLayer, RuleLibrary, layer_from_document
from node.store.database import register_arrow, unregister_arrow
from node.store.feedback import FEEDBACK_SCHEMA
from node.store.schema import entity_table, quote

if TYPE_CHECKING:
    from node.store.store import Store

RECEIVED, PUBLISHED, LOCAL = "received", "published", "local"
QUARANTINE_STATES = ("held", "released", "dropped", "superseded")
_EVAL = "quality_eval"


@dataclass(frozen=True)
class Screening:
    """What screening an import did: rows held (by rule) and rows flagged."""

    held: int = 0
    flagged: int = 0
    held_by_rule: tuple[tuple[str, int], ...] = ()


class QualityStore:
    def __init__(self, store: Store, node_code: str) -> None:
        self._store = store
        self._db = store.db
        self._code = node_code
        # Bumped when the library passed down changes, so links deliver it again.
        self.generation = 0
        self._lock = threading.Lock()
        self._library: RuleLibrary | None = None
        self._screens: dict[tuple[str, str, tuple[str, ...] | None], Screen | None] = {}

    # ----- the library -----------------------------------------------------------------

    def _layers(self) -> dict[str, tuple[list[RuleLayer], str, str]]:
        """role → (layers, digest, source) as stored."""
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT role, doc, digest, source FROM tongyuan.rule_layers"
            ).fetchall()
        found: dict[str, tuple[list[RuleLayer], str, str]] = {}
        for role, doc, digest, source in rows:
            if role == RECEIVED:
                layers = [layer_from_document(d) for d in json.loads(doc)["layers"]]
            else:
                layers = [layer_from_json(doc)]
            found[role] = (layers, digest, source)
        return found

    def library(self) -> RuleLibrary:
        """The rules this node applies: from above (province first), its own, its local."""
        with self._lock:
            if self._library is None:
                stored = self._layers()
                layers = [
                    layer
                    for role in (RECEIVED, PUBLISHED, LOCAL)
                    for layer in stored.get(role, ([], "", ""))[0]
                ]
                self._library = RuleLibrary(tuple(layers))
            return self._library

    def own_layer(self, role: str) -> RuleLayer | None:
        layers = self._layers().get(role)
        return layers[0][0] if layers else None

    def received_from(self) -> str | None:
        received = self._layers().get(RECEIVED)
        return received[2] if received else None

    def downward_library(self) -> tuple[str, str]:
        """What this node's children apply: the layers from above and its published one."""
        down = RuleLibrary(tuple(layer for layer in self.library().layers if not layer.local))
        return down.digest(), down.to_json()

    def received_digest(self, parent: str) -> str:
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT digest FROM tongyuan.rule_layers WHERE role = ? AND source = ?",
                [RECEIVED, parent],
            ).fetchone()
        return str(row[0]) if row else ""

    def receive_library(self, parent: str, library_json: str, digest: str) -> None:
        """The parent's library replaces the one received before (from any parent)."""
        library = check_library_json(library_json, f"rule library delivered by {parent}")
        if library.digest() != digest:
            raise UserError(f"rule library delivered by {parent} does not match its digest")
        self._replace(RECEIVED, library.to_json(), digest, parent)

    def set_own_layer(self, role: str, layer: RuleLayer, actor: str) -> None:
        self._replace(role, layer_json(layer), RuleLibrary((layer,)).digest(), actor)

    def remove_own_layer(self, role: str) -> bool:
        with self._db.write() as cur:
            (count,) = cur.execute(
                "SELECT count(*) FROM tongyuan.rule_layers WHERE role = ?", [role]
            ).fetchone()  # type: ignore[misc]
            cur.execute("DELETE FROM tongyuan.rule_layers WHERE role = ?", [role])
        self._changed()
        return bool(count)

    def _replace(self, role: str, doc: str, digest: str, source: str) -> None:
        with self._db.write() as cur:
            cur.execute("DELETE FROM tongyuan.rule_layers WHERE role = ?", [role])
            cur.execute(
                "INSERT INTO tongyuan.rule_layers VALUES (?, ?, ?, ?, ?)",
                [role, doc, digest, source, datetime.now(UTC)],
            )
        self._changed()

    def _changed(self) -> None:
        with self._lock:
            self._library = None
            self._screens.clear()
        self.generation += 1

    def applicability(self) -> list[dict[str, Any]]:
        """Every rule of the library, with where it comes from and whether it applies."""
        return [
            {
                **rule.document(),
                "layer": layer.label,
                "origin": "local" if layer.local else layer.node,
                "applies": why is None,
                "waiting_because": why,
            }
            for layer, rule, why in applicable(self.library(), self._store.model)
        ]

    def screen(self, entity: Entity, fields: Sequence[str] | None) -> Screen | None:
        library = self.library()
        model = self._store.model
        key = (entity.name, library.digest() + model.digest(), tuple(fields) if fields else None)
        with self._lock:
            if key not in self._screens:
                self._screens[key] = compile_screen(
                    library, model, entity, tuple(fields) if fields else None
                )
            return self._screens[key]

    # ----- screening (inside the writer's transaction) ---------------------------------

    def _evaluate(
        self, cur: duckdb.DuckDBPyConnection, screen: Screen, source: str, row_id: str, where: str
    ) -> None:
        try:
            select = screen.select_sql(source, row_id, where)
            cur.execute(f"CREATE OR REPLACE TEMP TABLE {_EVAL} AS {select}")
        except duckdb.Error as exc:
            raise UserError(
                f"the rule library could not be applied to {screen.entity} rows ({exc}); "
                "nothing was written: check the rules with `tongyuan quality rules show`"
            ) from None

    def relations(self) -> dict[str, pa.Table]:
        """The Arrow relations screening reads, registered by the write transaction."""
        return {"model_codes": self._store._model_codes, "division_codes": division_codes_table()}

    def screen_import(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        fields: Sequence[str],
        *,
        origin_node: str,
        department: str,
        resource: str | None,
        batch_id: str,
        file_label: str,
        locate: Callable[[int], str],
        now: datetime,
        releasing: Sequence[str] = (),
    ) -> Screening:
        """Screen `ingest_stage`; held rows go to quarantine and are listed in the temp
        table `ingest_held` (the caller leaves them out). With `releasing` (quarantine
        ids, one per staged row), rows that pass are marked released and rows that fail
        again stay held with their new reasons instead of being held twice."""
        screen = self.screen(entity, fields)
        cur.execute("CREATE OR REPLACE TEMP TABLE ingest_held (_row BIGINT)")
        if screen is None:
            self._settle_released(cur, releasing, [], now)
            return Screening()
        source = f"(SELECT *, {literal(origin_node)} AS origin_node FROM ingest_stage)"
        self._evaluate(cur, screen, source, "_row", "true")
        cur.execute(f"INSERT INTO ingest_held SELECT _id FROM {_EVAL} WHERE len(_blocking) > 0")
        held_rows = cur.execute("SELECT _row FROM ingest_held ORDER BY _row").fetchnumpy()["_row"]
        if releasing:
            self._settle_released(cur, releasing, held_rows, now)
        elif len(held_rows):
            where = pa.table(
                {
                    "_row": pa.array(held_rows, pa.int64()),
                    "_where": pa.array([f"{file_label} {locate(int(r))}" for r in held_rows]),
                }
            )
            struct = ", ".join(f"{quote(f)} := s.{quote(f)}" for f in fields)
            key = quote(entity.key)
            register_arrow(cur, "quality_where", where)
            try:
                cur.execute(
                    "CREATE OR REPLACE TEMP TABLE quality_new AS SELECT "
                    f"CAST(s.{key} AS VARCHAR) AS record_key, w._where, "
                    f"CAST(to_json(struct_pack({struct})) AS VARCHAR) AS row_json, "
                    "list_transform(e._blocking, lambda x: x.rule) AS rules, "
                    "list_transform(e._blocking, lambda x: x.reason) AS reasons "
                    f"FROM {_EVAL} e JOIN ingest_stage s ON s._row = e._id "
                    "JOIN quality_where w ON w._row = e._id WHERE len(e._blocking) > 0"
                )
            finally:
                unregister_arrow(cur, "quality_where")
            # The same row imported again is held once; another version of a held record
            # replaces the one waiting.
            mine = (
                "q.state = 'held' AND q.entity = ? AND q.origin_node = ? "
                "AND q.received_from IS NULL AND q.record_key = n.record_key"
            )
            cur.execute(
                "UPDATE tongyuan.quarantine q SET state = 'superseded', settled_at = ? "
                f"FROM quality_new n WHERE {mine} AND q.row_json <> n.row_json",
                [now, entity.name, origin_node],
            )
            cur.execute(
                "INSERT INTO tongyuan.quarantine SELECT "
                "left(replace(CAST(gen_random_uuid() AS VARCHAR), '-', ''), 16), ?, "
                "n.record_key, ?, ?, NULL, ?, NULL, ?, n._where, ?, n.row_json, n.rules, "
                "n.reasons, ?, 'held', NULL, NULL FROM quality_new n WHERE NOT EXISTS "
                f"(SELECT 1 FROM tongyuan.quarantine q WHERE {mine} AND q.row_json = n.row_json)",
                [
                    entity.name,
                    origin_node,
                    department,
                    resource,
                    batch_id,
                    list(fields),
                    now,
                    entity.name,
                    origin_node,
                ],
            )
            cur.execute("DROP TABLE quality_new")
        by_rule = cur.execute(
            "SELECT r, count(*) FROM (SELECT unnest(list_transform(_blocking, lambda x: x.rule)) "
            f"AS r FROM {_EVAL}) GROUP BY r ORDER BY count(*) DESC, r"
        ).fetchall()
        (flagged,) = cur.execute(
            f"SELECT count(*) FROM {_EVAL} WHERE len(_blocking) = 0"
        ).fetchone()  # type: ignore[misc]
        return Screening(len(held_rows), int(flagged), tuple((r, int(n)) for r, n in by_rule))

    def _settle_released(
        self,
        cur: duckdb.DuckDBPyConnection,
        releasing: Sequence[str],
        held_rows: Any,
        now: datetime,
        offset: int = 0,
    ) -> None:
        """Released rows that passed are settled; those that failed again keep their place
        with the new reasons. `held_rows` are positions in `releasing`; the screening's
        row ids are positions + `offset`."""
        if not releasing:
            return
        still = {int(r) for r in held_rows}
        passed = [q for i, q in enumerate(releasing) if i not in still]
        if passed:
            cur.execute(
                "UPDATE tongyuan.quarantine SET state = 'released', settled_at = ? "
                "WHERE list_contains(?, id)",
                [now, passed],
            )
        if still:
            ids = pa.table(
                {
                    "_row": pa.array(sorted(still), pa.int64()),
                    "id": pa.array([releasing[i] for i in sorted(still)], pa.string()),
                }
            )
            register_arrow(cur, "quality_released", ids)
            try:
                cur.execute(
                    "UPDATE tongyuan.quarantine q SET "
                    "rules = list_transform(e._blocking, lambda x: x.rule), "
                    "reasons = list_transform(e._blocking, lambda x: x.reason), quarantined_at = ? "
                    f"FROM quality_released r JOIN {_EVAL} e ON e._id = r._row + ? "
                    "WHERE q.id = r.id",
                    [now, offset],
                )
            finally:
                unregister_arrow(cur, "quality_released")

    def flag_import(
        self, cur: duckdb.DuckDBPyConnection, entity: Entity, origin_node: str, now: datetime
    ) -> None:
        """Flag the versions an import just wrote that failed a warning rule; earlier
        held versions of the records it wrote are superseded."""
        key = quote(entity.key)
        if self.has_held(cur, entity.name):
            cur.execute(
                "UPDATE tongyuan.quarantine q SET state = 'superseded', settled_at = ? "
                "FROM ingest_delta d WHERE q.state = 'held' AND q.entity = ? "
                "AND q.origin_node = ? AND q.received_from IS NULL "
                f"AND q.record_key = CAST(d.{key} AS VARCHAR)",
                [now, entity.name, origin_node],
            )
        if not self._has_eval(cur):
            return
        table = entity_table(entity)
        cur.execute(
            "INSERT INTO tongyuan.quality_flags SELECT ?, t.origin_node, CAST(t.{k} AS VARCHAR), "
            "t.origin_seq, w.rule, w.reason, ? FROM (SELECT _id, unnest(_warning) AS w "
            f"FROM {_EVAL} WHERE len(_blocking) = 0) e JOIN ingest_delta d ON d._row = e._id "
            f"JOIN {table} t ON t.origin_node = ? AND t.{key} = d.{key}".replace("{k}", key),
            [entity.name, now, origin_node],
        )

    @staticmethod
    def _has_eval(cur: duckdb.DuckDBPyConnection) -> bool:
        (found,) = cur.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = ?", [_EVAL]
        ).fetchone()  # type: ignore[misc]
        return bool(found)

    def drop_eval(self, cur: duckdb.DuckDBPyConnection) -> None:
        cur.execute(f"DROP TABLE IF EXISTS {_EVAL}")
        cur.execute("DROP TABLE IF EXISTS ingest_held")

    def screen_incoming(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        source: str,
        child: str,
        now: datetime,
        releasing: Sequence[str] = (),
    ) -> np.ndarray | None:
        """Screen a child's rows (`source`, with `_ord`); returns the `_ord`s held, or None
        when the entity has no rules. Held rows go to quarantine and become feedback items
        for their owner; warned rows are flagged (by version, so only the version that
        wins counts in scores)."""
        screen = self.screen(entity, None)
        if screen is None:
            return None
        self._evaluate(cur, screen, source, "_ord", "NOT s._deleted")
        (held_count, warned) = cur.execute(
            f"SELECT count(*) FILTER (len(_blocking) > 0), count(*) FILTER (len(_blocking) = 0) "
            f"FROM {_EVAL}"
        ).fetchone()  # type: ignore[misc]
        key = quote(entity.key)
        if releasing:
            failed = cur.execute(f"SELECT _id FROM {_EVAL} WHERE len(_blocking) > 0").fetchnumpy()[
                "_id"
            ]
            # `_ord` n is the n-th row released.
            self._settle_released(cur, releasing, [int(o) - 1 for o in failed], now, offset=1)
            cur.execute(f"DROP TABLE {_EVAL}")
            return np.asarray(failed, dtype=np.int64)
        if warned:
            cur.execute(
                "INSERT INTO tongyuan.quality_flags SELECT ?, i.origin_node, "
                f"CAST(i.{key} AS VARCHAR), i.origin_seq, w.rule, w.reason, ? FROM "
                f"(SELECT _id, unnest(_warning) AS w FROM {_EVAL} WHERE len(_blocking) = 0) e "
                f"JOIN {source} i ON i._ord = e._id",
                [entity.name, now],
            )
        held = np.empty(0, dtype=np.int64)
        if held_count:
            cur.execute(
                "INSERT INTO tongyuan.quarantine SELECT "
                "left(replace(CAST(gen_random_uuid() AS VARCHAR), '-', ''), 16), ?, "
                f"CAST(i.{key} AS VARCHAR), i.origin_node, i.origin_dept, i.origin_seq, "
                "i.origin_resource, ?, i.origin_batch, ?, ?, to_json(i), "
                "list_transform(e._blocking, lambda x: x.rule), "
                "list_transform(e._blocking, lambda x: x.reason), ?, 'held', NULL, NULL "
                f"FROM {_EVAL} e JOIN {source} i ON i._ord = e._id WHERE len(e._blocking) > 0",
                [entity.name, child, f"child {child}", list(entity.column_names), now],
            )
            items = cur.sql(
                "SELECT 'r' || left(md5(concat_ws('|', ?, i.origin_node, "
                f"CAST(i.{key} AS VARCHAR), i.origin_seq)), 15) AS id, 'rule' AS kind, "
                f"? AS entity, i.origin_resource AS resource, CAST(i.{key} AS VARCHAR) AS "
                "record_key, i.origin_node AS owner_node, i.origin_dept AS owner_dept, "
                "i.origin_seq AS record_seq, "
                "array_to_string(list_transform(e._blocking, "
                "lambda x: x.rule || ': ' || x.reason), '; ') AS reason, ? AS raised_node, "
                "'rule library' AS raised_by, "
                f"?::TIMESTAMPTZ AS raised_at FROM {_EVAL} e JOIN {source} i ON i._ord = e._id "
                "WHERE len(e._blocking) > 0",
                params=[entity.name, entity.name, self._code, now],
            ).to_arrow_table()
            self._store.feedback.raise_in(cur, items.cast(FEEDBACK_SCHEMA))
            held = cur.execute(f"SELECT _id FROM {_EVAL} WHERE len(_blocking) > 0").fetchnumpy()[
                "_id"
            ]
        cur.execute(f"DROP TABLE {_EVAL}")
        return held

    def supersede_incoming(
        self, cur: duckdb.DuckDBPyConnection, entity: Entity, source: str, now: datetime
    ) -> None:
        """Held versions from children that a newer applied version replaced."""
        key = quote(entity.key)
        cur.execute(
            "UPDATE tongyuan.quarantine q SET state = 'superseded', settled_at = ? "
            f"FROM {source} i WHERE q.state = 'held' AND q.entity = ? "
            "AND q.origin_node = i.origin_node AND q.record_key = CAST(i.{k} AS VARCHAR) "
            "AND i.origin_seq > q.origin_seq".replace("{k}", key),
            [now, entity.name],
        )

    @staticmethod
    def rename_for_model(
        cur: duckdb.DuckDBPyConnection,
        renames: Sequence[tuple[str, str, Sequence[tuple[str, str]]]],
    ) -> None:
        """Inside a model migration: held rows and flags of a renamed entity follow it.
        (A held row keeps its attribute names as read; a release after an attribute
        rename reads the renamed attribute as empty, and the rules judge it so.)"""
        for old, new, _ in renames:
            if old != new:
                for table in ("quarantine", "quality_flags"):
                    cur.execute(
                        f"UPDATE tongyuan.{table} SET entity = ? WHERE entity = ?", [new, old]
                    )

    def has_held(self, cur: duckdb.DuckDBPyConnection, entity: str) -> bool:
        (found,) = cur.execute(
            "SELECT count(*) FROM tongyuan.quarantine WHERE state = 'held' AND entity = ? LIMIT 1",
            [entity],
        ).fetchone()  # type: ignore[misc]
        return bool(found)

    # ----- quarantine ------------------------------------------------------------------

    _COLUMNS = (
        "id, entity, record_key, origin_node, origin_dept, origin_seq, origin_resource, "
        "received_from, batch_id, source, fields, row_json, rules, reasons, quarantined_at, "
        "state, settled_at, settled_by"
    )

    def quarantined(
        self,
        *,
        state: str | None = "held",
        ids: Sequence[str] = (),
        rule: str | None = None,
        resource: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        conditions: list[str] = ["true"]
        params: list[Any] = []
        if state is not None:
            conditions.append("state = ?")
            params.append(state)
        if ids:
            conditions.append("list_contains(?, id)")
            params.append(list(ids))
        if rule is not None:
            conditions.append("list_contains(rules, ?)")
            params.append(rule)
        if resource is not None:
            conditions.append("origin_resource = ?")
            params.append(resource)
        cap = f" LIMIT {int(limit)}" if limit else ""
        with self._db.read() as cur:
            cur.execute(
                f"SELECT {self._COLUMNS} FROM tongyuan.quarantine WHERE {' AND '.join(conditions)} "
                f"ORDER BY quarantined_at, source, id{cap}",
                params,
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def settle_released_all(self, cur: duckdb.DuckDBPyConnection, ids: Sequence[str]) -> None:
        """No rule applies any more: every released row passes."""
        self._settle_released(cur, ids, [], datetime.now(UTC))

    def settle(self, ids: Sequence[str], state: str, actor: str) -> int:
        with self._db.write() as cur:
            (count,) = cur.execute(
                "SELECT count(*) FROM tongyuan.quarantine WHERE state = 'held' "
                "AND list_contains(?, id)",
                [list(ids)],
            ).fetchone()  # type: ignore[misc]
            cur.execute(
                "UPDATE tongyuan.quarantine SET state = ?, settled_at = ?, settled_by = ? "
                "WHERE state = 'held' AND list_contains(?, id)",
                [state, datetime.now(UTC), actor, list(ids)],
            )
        return int(count)

    def mark_released(self, ids: Sequence[str], actor: str) -> None:
        with self._db.write() as cur:
            cur.execute(
                "UPDATE tongyuan.quarantine SET settled_by = ? "
                "WHERE state = 'released' AND list_contains(?, id)",
                [actor, list(ids)],
            )

    def counts(self) -> dict[str, Any]:
        with self._db.read() as cur:
            held = cur.execute(
                "SELECT entity, coalesce(origin_resource, ''), count(*) FROM tongyuan.quarantine "
                "WHERE state = 'held' GROUP BY ALL ORDER BY ALL"
            ).fetchall()
            (flags,) = cur.execute("SELECT count(*) FROM tongyuan.quality_flags").fetchone()  # type: ignore[misc]
        return {
            "held": sum(int(n) for _, _, n in held),
            "held_by_resource": [
                {"entity": e, "resource": r or None, "rows": int(n)} for e, r, n in held
            ],
            "flags": int(flags),
        }

    def held_rows(self, ids: Sequence[str], columns: Sequence[tuple[str, str]]) -> pa.Table:
        """Quarantined rows `ids` (in that order) as a table of `columns` (name, SQL type),
        read back from their JSON."""
        select = ", ".join(
            f"TRY_CAST(json_extract_string(row_json, {literal('$.' + json.dumps(n))}) AS {t}) "
            f"AS {quote(n)}"
            for n, t in columns
        )
        with self._db.read() as cur:
            return cur.sql(
                f"SELECT {select} FROM tongyuan.quarantine WHERE list_contains(?, id) "
                "ORDER BY list_position(?, id)",
                params=[list(ids), list(ids)],
            ).to_arrow_table()
