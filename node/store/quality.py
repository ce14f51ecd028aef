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

from node.divisions import is_within
from node.entities import LINEAGE_COLUMNS, Entity
from node.errors import UserError
from node.quality.files import check_library_json, layer_from_json, layer_json
from node.quality.rules import RuleLayer, RuleLibrary, layer_from_document, rule_label
from node.store.checksums import division_codes_table
from node.store.database import arrow_of, register_arrow, unregister_arrow
from node.store.feedback import FEEDBACK_SCHEMA
from node.store.schema import entity_table, quote
from node.store.screening import (
    CompiledRule,
    Screen,
    applicable,
    compile_screen,
    literal,
    trial_sql,
)

if TYPE_CHECKING:
    from node.store.audit import Evidence
    from node.store.store import Store

RECEIVED, PUBLISHED, LOCAL = "received", "published", "local"
# A sequence no log reaches: "rows were never all screened with that library".
NEVER_SEQ = 2**63 - 1


def _above_or_same(node: str, ancestor: str) -> bool:
    try:
        return is_within(node, ancestor)
    except UserError:
        return False


QUARANTINE_STATES = ("held", "released", "dropped", "superseded")
_EVAL = "quality_eval"
_QUARANTINE_COLUMNS = (
    "id, entity, record_key, origin_node, origin_dept, origin_seq, origin_resource, "
    "received_from, batch_id, source, fields, row_json, rules, reasons, quarantined_at, state"
)
_FLAG_COLUMNS = "entity, origin_node, record_key, origin_seq, rule, reason, flagged_at"
# A short id users type (16 hex digits of a random UUID).
_NEW_ID = "left(replace(CAST(gen_random_uuid() AS VARCHAR), '-', ''), 16)"
# The lineage a row from a child carries on the wire (Entity.wire_schema), with SQL types:
# a held row keeps it, so a release applies the row as its batch would have.
_WIRE_LINEAGE: dict[str, str] = {
    "_deleted": "BOOLEAN",
    **dict.fromkeys(LINEAGE_COLUMNS, "VARCHAR"),
    "origin_seq": "BIGINT",
    "origin_time": "TIMESTAMPTZ",
}


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
        # Rules (by label) that failed their trial run here, with the error.
        self._broken: dict[str, str] = {}
        self._broken_for = ""
        # Entities with rows waiting in quarantine (None: read it again).
        self._held_entities: set[str] | None = None

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

    def must_screen(self, child_digest: str | None, since_seq: int, after_seq: int) -> bool:
        """Whether a child's rows after `after_seq` need screening here. Not when the child
        applies this node's downward library as it stands (`child_digest`) and screened
        with it every row it sends after `since_seq` (its own children's included), and
        this node adds no local rules."""
        library = self.library()
        if not library.layers:
            return False
        if any(layer.local for layer in library.layers) or after_seq < since_seq:
            return True
        return child_digest != self.downward_library()[0]

    def received_since(self, parent: str) -> int:
        """From which sequence of this node's log every row passed the library received
        from `parent` (NEVER_SEQ when some of its rules wait here)."""
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT since_seq FROM tongyuan.rule_layers WHERE role = ? AND source = ?",
                [RECEIVED, parent],
            ).fetchall()
        if not row:
            return NEVER_SEQ
        if any(not rule["applies"] for rule in self.applicability()):
            return NEVER_SEQ
        return int(row[0][0])

    def received_digest(self, parent: str) -> str:
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT digest FROM tongyuan.rule_layers WHERE role = ? AND source = ?",
                [RECEIVED, parent],
            ).fetchone()
        return str(row[0]) if row else ""

    def receive_library(
        self, parent: str, library_json: str, digest: str, evidence: Evidence | None = None
    ) -> None:
        """The parent's library replaces the one received before (from any parent); its
        layers can only be the parent's and those of nodes above it."""
        where = f"rule library delivered by {parent}"
        library = check_library_json(library_json, where)
        if library.digest() != digest:
            raise UserError(f"{where} does not match its digest")
        for layer in library.layers:
            if not _above_or_same(parent, layer.node):
                raise UserError(
                    f"{where} carries a layer of node {layer.node}, which is not {parent} "
                    "or above it"
                )
        self._replace(RECEIVED, library.to_json(), digest, parent, evidence)

    def set_own_layer(self, role: str, layer: RuleLayer, actor: str) -> None:
        self._replace(role, layer_json(layer), RuleLibrary((layer,)).digest(), actor)

    def remove_own_layer(self, role: str) -> bool:
        with self._db.write(on_commit=self._changed) as cur:
            (count,) = cur.execute(
                "SELECT count(*) FROM tongyuan.rule_layers WHERE role = ?", [role]
            ).fetchall()[0]
            cur.execute("DELETE FROM tongyuan.rule_layers WHERE role = ?", [role])
        return bool(count)

    def _replace(
        self, role: str, doc: str, digest: str, source: str, evidence: Evidence | None = None
    ) -> None:
        # The library in memory changes at COMMIT, while the writer is still held: no
        # import screens with the old one after this transaction.
        with self._db.write(on_commit=self._changed) as cur:
            if evidence is not None:  # the audit entry commits with the library
                evidence(cur)
            cur.execute("DELETE FROM tongyuan.rule_layers WHERE role = ?", [role])
            cur.execute(
                "INSERT INTO tongyuan.rule_layers (role, doc, digest, source, updated_at, "
                "since_seq) VALUES (?, ?, ?, ?, ?, (SELECT seq FROM tongyuan.head))",
                [role, doc, digest, source, datetime.now(UTC)],
            )

    def _changed(self) -> None:
        with self._lock:
            self._library = None
            self._screens.clear()
            self._broken.clear()
        self.generation += 1

    def applicability(self) -> list[dict[str, Any]]:
        """Every rule of the library, with where it comes from and whether it applies."""
        for entity in self._store.entities.values():
            self.screen(entity, None)  # trial-runs the rules (a broken one waits)
        found = []
        for layer, rule, why in applicable(self.library(), self._store.model):
            label = rule_label(layer, rule)
            if why is None and label in self._broken:
                why = f"does not run here: {self._broken[label]}"
            found.append(
                {
                    **rule.document(),
                    "layer": layer.label,
                    "origin": "local" if layer.local else layer.node,
                    "applies": why is None,
                    "waiting_because": why,
                }
            )
        return found

    def screen(self, entity: Entity, fields: Sequence[str] | None) -> Screen | None:
        """The entity's rules for rows carrying `fields`, compiled once per library and
        model. Each rule is first run over no rows: one that fails to run here (it cannot
        on real rows either) is left out and shown as waiting, so it never stops an
        import or a child's batches."""
        library = self.library()
        model = self._store.model
        carried = tuple(fields) if fields else None
        key = (entity.name, library.digest() + model.digest(), carried)
        with self._lock:
            if self._broken_for != model.digest():
                # Another model: rules may run now that did not (or the reverse).
                self._broken.clear()
                self._broken_for = model.digest()
            if key not in self._screens:
                full = compile_screen(library, model, entity, carried)
                for rule in full.rules if full is not None else ():
                    problem = self._trial(entity, rule)
                    if problem is not None:
                        self._broken[rule.label] = problem
                self._screens[key] = compile_screen(library, model, entity, carried, self._broken)
            return self._screens[key]

    def _trial(self, entity: Entity, rule: CompiledRule) -> str | None:
        with self._db.read() as cur:
            for name, table in self.relations().items():
                cur.register(name, table)
            try:
                cur.execute(trial_sql(entity, rule)).fetchall()
            except duckdb.Error as exc:
                return str(exc).splitlines()[0]
        return None

    # ----- screening (inside the writer's transaction) ---------------------------------

    def relations(self) -> dict[str, pa.Table]:
        """The Arrow relations screening reads, registered by the write transaction."""
        return {"model_codes": self._store.model_codes, "division_codes": division_codes_table()}

    @staticmethod
    def _evaluate(
        cur: duckdb.DuckDBPyConnection,
        screen: Screen,
        source: str,
        row_id: str,
        where: str,
        *,
        protected: bool = False,
    ) -> pa.Table | None:
        """The rows of `source` that failed a rule, registered as `quality_eval`
        (`_id`, `_blocking`, `_warning` lists of {rule, reason}); None when all passed.
        One statement when nothing fails, which is the common case of a small batch."""
        try:
            failures = arrow_of(cur, screen.select_sql(source, row_id, where, protected=protected))
        except duckdb.Error as exc:
            # Rules are trial-run when compiled, so this is not a rule that cannot run.
            raise UserError(
                f"the rule library could not be applied to {screen.entity} rows ({exc}); "
                "nothing was written: check the rules with `tongyuan quality rules show`"
            ) from None
        if failures.num_rows == 0:
            return None
        register_arrow(cur, _EVAL, failures)
        return failures

    @staticmethod
    def _done(cur: duckdb.DuckDBPyConnection, failures: pa.Table | None) -> None:
        if failures is not None:
            unregister_arrow(cur, _EVAL)

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
        """Screen `ingest_stage`. Held rows go to quarantine and into the temp table
        `ingest_held` (the caller leaves them out); warned rows are kept in
        `ingest_warned` for `flag_import`. With `releasing` (quarantine ids, one per
        staged row), rows that pass are marked released and rows that fail again stay
        held with their new reasons instead of being held twice."""
        cur.execute("CREATE OR REPLACE TEMP TABLE ingest_held (_row BIGINT)")
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE ingest_warned (_row BIGINT, rule VARCHAR, reason VARCHAR)"
        )
        screen = self.screen(entity, fields)
        if screen is None:
            self._settle_released(cur, releasing, [], now)
            return Screening()
        source = f"(SELECT *, {literal(origin_node)} AS origin_node FROM ingest_stage)"
        failures = self._evaluate(cur, screen, source, "_row", "true")
        if failures is None:
            self._settle_released(cur, releasing, [], now)
            return Screening()
        cur.execute(f"INSERT INTO ingest_held SELECT _id FROM {_EVAL} WHERE len(_blocking) > 0")
        cur.execute(
            "INSERT INTO ingest_warned SELECT _id, w.rule, w.reason FROM "
            f"(SELECT _id, unnest(_warning) AS w FROM {_EVAL} WHERE len(_blocking) = 0)"
        )
        held_rows = cur.execute("SELECT _row FROM ingest_held ORDER BY _row").fetchnumpy()["_row"]
        if releasing:
            self._settle_released(cur, releasing, held_rows, now)
        elif len(held_rows):
            self._hold_imported(
                cur, entity, fields, held_rows, origin_node, department, resource, batch_id,
                [f"{file_label} {locate(int(r))}" for r in held_rows], now,
            )  # fmt: skip
        by_rule = cur.execute(
            "SELECT r, count(*) FROM (SELECT unnest(list_transform(_blocking, lambda x: x.rule)) "
            f"AS r FROM {_EVAL}) GROUP BY r ORDER BY count(*) DESC, r"
        ).fetchall()
        self._done(cur, failures)
        return Screening(len(held_rows), 0, tuple((r, int(n)) for r, n in by_rule))

    def _hold_imported(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        fields: Sequence[str],
        held_rows: Any,
        origin_node: str,
        department: str,
        resource: str | None,
        batch_id: str,
        where: list[str],
        now: datetime,
    ) -> None:
        """Held rows of an import into quarantine: the same row imported again is held
        once, and another version of a held record (from the same resource) replaces the
        one waiting."""
        key = quote(entity.key)
        struct = ", ".join(f"{quote(f)} := s.{quote(f)}" for f in fields)
        located = pa.table(
            {"_row": pa.array(held_rows, pa.int64()), "_where": pa.array(where, pa.string())}
        )
        register_arrow(cur, "quality_where", located)
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE quality_new AS SELECT "
            f"CAST(s.{key} AS VARCHAR) AS record_key, w._where, "
            f"CAST(to_json(struct_pack({struct})) AS VARCHAR) AS row_json, "
            "list_transform(e._blocking, lambda x: x.rule) AS rules, "
            "list_transform(e._blocking, lambda x: x.reason) AS reasons "
            f"FROM {_EVAL} e JOIN ingest_stage s ON s._row = e._id "
            "JOIN quality_where w ON w._row = e._id WHERE len(e._blocking) > 0"
        )
        unregister_arrow(cur, "quality_where")
        waiting = (
            "q.state = 'held' AND q.entity = ? AND q.origin_node = ? AND q.received_from IS NULL "
            "AND q.origin_resource IS NOT DISTINCT FROM ? AND q.record_key = n.record_key"
        )
        scope = [entity.name, origin_node, resource]
        cur.execute(
            "UPDATE tongyuan.quarantine q SET state = 'superseded', settled_at = ? "
            f"FROM quality_new n WHERE {waiting} AND q.row_json <> n.row_json",
            [now, *scope],
        )
        cur.execute(
            f"INSERT INTO tongyuan.quarantine ({_QUARANTINE_COLUMNS}) SELECT "
            f"{_NEW_ID}, ?, n.record_key, ?, ?, NULL, ?, NULL, ?, n._where, ?, n.row_json, "
            "n.rules, n.reasons, ?, 'held' FROM quality_new n WHERE NOT EXISTS "
            f"(SELECT 1 FROM tongyuan.quarantine q WHERE {waiting} AND q.row_json = n.row_json)",
            [entity.name, origin_node, department, resource, batch_id, list(fields), now, *scope],
        )
        cur.execute("DROP TABLE quality_new")
        self._now_held(entity.name)

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
                "WHERE state = 'held' AND list_contains(?, id)",
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
            cur.execute(
                "UPDATE tongyuan.quarantine q SET "
                "rules = list_transform(e._blocking, lambda x: x.rule), "
                "reasons = list_transform(e._blocking, lambda x: x.reason), quarantined_at = ? "
                f"FROM quality_released r JOIN {_EVAL} e ON e._id = r._row + ? "
                "WHERE q.id = r.id",
                [now, offset],
            )
            unregister_arrow(cur, "quality_released")
        self._held_entities = None

    def flag_import(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        origin_node: str,
        resource: str | None,
        now: datetime,
    ) -> int:
        """After an import's write: flag the versions it wrote that failed a warning rule
        (returns how many), and supersede held rows of the records the import named or
        deleted (through the same resource): the file says what they are now."""
        key = quote(entity.key)
        if self.has_held(cur, entity.name):
            cur.execute(
                "UPDATE tongyuan.quarantine q SET state = 'superseded', settled_at = ? "
                f"FROM (SELECT {key} FROM ingest_stage WHERE _row NOT IN "
                f"(SELECT _row FROM ingest_held) UNION ALL SELECT {key} FROM ingest_gone) d "
                "WHERE q.state = 'held' AND q.entity = ? AND q.origin_node = ? "
                "AND q.received_from IS NULL AND q.origin_resource IS NOT DISTINCT FROM ? "
                f"AND q.record_key = CAST(d.{key} AS VARCHAR)",
                [now, entity.name, origin_node, resource],
            )
            self._held_entities = None
        (flagged,) = cur.execute(
            "SELECT count(DISTINCT w._row) FROM ingest_warned w "
            "JOIN ingest_delta d ON d._row = w._row"
        ).fetchall()[0]
        if flagged:
            cur.execute(
                f"INSERT INTO tongyuan.quality_flags ({_FLAG_COLUMNS}) SELECT ?, t.origin_node, "
                f"CAST(t.{key} AS VARCHAR), t.origin_seq, w.rule, w.reason, ? "
                "FROM ingest_warned w JOIN ingest_delta d ON d._row = w._row "
                f"JOIN {entity_table(entity)} t ON t.origin_node = ? AND t.{key} = d.{key}",
                [entity.name, now, origin_node],
            )
        return int(flagged)

    @staticmethod
    def drop_screening(cur: duckdb.DuckDBPyConnection) -> None:
        cur.execute("DROP TABLE IF EXISTS ingest_held")
        cur.execute("DROP TABLE IF EXISTS ingest_warned")

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
        when the entity has no rules. Held rows go to quarantine (once per version, however
        often it is delivered) and become feedback items for their owner; warned rows are
        flagged by version, so only the version that wins counts in scores."""
        screen = self.screen(entity, None)
        if screen is None:
            return None
        # Values a child pseudonymised or masked pass (they were checked at the source).
        failures = self._evaluate(cur, screen, source, "_ord", "NOT s._deleted", protected=True)
        if failures is None:
            if releasing:
                self._settle_released(cur, releasing, [], now, offset=1)
            return np.empty(0, dtype=np.int64)
        held = cur.execute(f"SELECT _id FROM {_EVAL} WHERE len(_blocking) > 0").fetchnumpy()["_id"]
        held = np.asarray(held, dtype=np.int64)
        if releasing:
            # `_ord` n is the n-th row released.
            self._settle_released(cur, releasing, [int(o) - 1 for o in held], now, offset=1)
        else:
            self._flag_incoming(cur, entity, source, now)
            if len(held):
                self._hold_incoming(cur, entity, source, child, now)
        self._done(cur, failures)
        return held

    def _flag_incoming(
        self, cur: duckdb.DuckDBPyConnection, entity: Entity, source: str, now: datetime
    ) -> None:
        key = quote(entity.key)
        cur.execute(
            f"INSERT INTO tongyuan.quality_flags ({_FLAG_COLUMNS}) SELECT DISTINCT ?, "
            f"i.origin_node, CAST(i.{key} AS VARCHAR), i.origin_seq, w.rule, w.reason, ? FROM "
            f"(SELECT _id, unnest(_warning) AS w FROM {_EVAL} WHERE len(_blocking) = 0) e "
            f"JOIN {source} i ON i._ord = e._id WHERE NOT EXISTS (SELECT 1 FROM "
            "tongyuan.quality_flags f WHERE f.entity = ? AND f.origin_node = i.origin_node "
            f"AND f.record_key = CAST(i.{key} AS VARCHAR) AND f.origin_seq = i.origin_seq "
            "AND f.rule = w.rule)",
            [entity.name, now, entity.name],
        )

    def _hold_incoming(
        self,
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        source: str,
        child: str,
        now: datetime,
    ) -> None:
        """Held versions into quarantine (not again when delivered again, nor when the
        store already holds that version or a newer one), each a feedback item."""
        key = quote(entity.key)
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE quality_new AS SELECT i.*, e._blocking "
            f"FROM {_EVAL} e JOIN {source} i ON i._ord = e._id WHERE len(e._blocking) > 0 "
            "AND NOT EXISTS (SELECT 1 FROM tongyuan.quarantine q WHERE q.entity = ? "
            "AND q.origin_node = i.origin_node AND q.origin_seq = i.origin_seq "
            f"AND q.record_key = CAST(i.{key} AS VARCHAR)) AND NOT EXISTS (SELECT 1 FROM "
            f"{entity_table(entity)} t WHERE t.origin_node = i.origin_node AND t.{key} = i.{key} "
            "AND t.origin_seq >= i.origin_seq)",
            [entity.name],
        )
        row = ", ".join(
            f"{quote(c)} := n.{quote(c)}" for c in (*entity.column_names, *_WIRE_LINEAGE)
        )
        cur.execute(
            f"INSERT INTO tongyuan.quarantine ({_QUARANTINE_COLUMNS}) SELECT {_NEW_ID}, ?, "
            f"CAST(n.{key} AS VARCHAR), n.origin_node, n.origin_dept, n.origin_seq, "
            "n.origin_resource, ?, n.origin_batch, ?, ?, "
            f"CAST(to_json(struct_pack({row})) AS VARCHAR), "
            "list_transform(n._blocking, lambda x: x.rule), "
            "list_transform(n._blocking, lambda x: x.reason), ?, 'held' FROM quality_new n",
            [entity.name, child, f"child {child}", list(entity.column_names), now],
        )
        # A newer held version replaces an older one still waiting.
        cur.execute(
            "UPDATE tongyuan.quarantine q SET state = 'superseded', settled_at = ? "
            "FROM quality_new n WHERE q.state = 'held' AND q.entity = ? "
            f"AND q.origin_node = n.origin_node AND q.record_key = CAST(n.{key} AS VARCHAR) "
            "AND q.origin_seq < n.origin_seq",
            [now, entity.name],
        )
        items = arrow_of(
            cur,
            "SELECT 'r' || left(md5(concat_ws('|', ?, origin_node, "
            f"CAST({key} AS VARCHAR), origin_seq)), 15) AS id, 'rule' AS kind, "
            f"? AS entity, origin_resource AS resource, CAST({key} AS VARCHAR) AS record_key, "
            "origin_node AS owner_node, origin_dept AS owner_dept, origin_seq AS record_seq, "
            "array_to_string(list_transform(_blocking, lambda x: x.rule || ': ' || x.reason), "
            "'; ') AS reason, ? AS raised_node, 'rule library' AS raised_by, "
            "?::TIMESTAMPTZ AS raised_at FROM quality_new",
            [entity.name, entity.name, self._code, now],
        )
        cur.execute("DROP TABLE quality_new")
        if items.num_rows:
            self._store.feedback.raise_in(cur, items.cast(FEEDBACK_SCHEMA))
        self._now_held(entity.name)

    def supersede_incoming(
        self, cur: duckdb.DuckDBPyConnection, entity: Entity, source: str, now: datetime
    ) -> None:
        """Held versions from children that a newer applied version replaced."""
        key = quote(entity.key)
        cur.execute(
            "UPDATE tongyuan.quarantine q SET state = 'superseded', settled_at = ? "
            f"FROM {source} i WHERE q.state = 'held' AND q.entity = ? "
            f"AND q.origin_node = i.origin_node AND q.record_key = CAST(i.{key} AS VARCHAR) "
            "AND i.origin_seq > q.origin_seq",
            [now, entity.name],
        )
        self._held_entities = None

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
        """Whether rows of `entity` may wait in quarantine (kept in memory: the apply path
        asks on every batch; read through the caller's transaction when unknown)."""
        known = self._held_entities
        if known is None:
            rows = cur.execute(
                "SELECT DISTINCT entity FROM tongyuan.quarantine WHERE state = 'held'"
            ).fetchall()
            known = self._held_entities = {str(r[0]) for r in rows}
        return entity in known

    def _now_held(self, entity: str) -> None:
        # A rolled-back hold leaves the entity listed: that costs one needless UPDATE.
        if self._held_entities is not None:
            self._held_entities.add(entity)

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
        self._held_entities = None
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

    def held_wire_rows(self, ids: Sequence[str], entity: Entity) -> pa.Table:
        """Quarantined rows from a child (`ids`, in that order) with their lineage, as the
        batch carried them."""
        columns = [(c.name, c.sql_type) for c in entity.columns]
        return self.held_rows(ids, [*columns, *_WIRE_LINEAGE.items()])

    def held_rows(self, ids: Sequence[str], columns: Sequence[tuple[str, str]]) -> pa.Table:
        """Quarantined rows `ids` (in that order) as a table of `columns` (name, SQL type),
        read back from their JSON."""
        select = ", ".join(
            f"TRY_CAST(json_extract_string(row_json, {literal('$.' + json.dumps(n))}) AS {t}) "
            f"AS {quote(n)}"
            for n, t in columns
        )
        order = pa.table(
            {"id": pa.array(ids, pa.string()), "_pos": pa.array(range(len(ids)), pa.int64())}
        )
        with self._db.read() as cur:
            cur.register("quality_wanted", order)
            return cur.sql(
                f"SELECT {select} FROM tongyuan.quarantine JOIN quality_wanted USING (id) "
                "ORDER BY _pos"
            ).to_arrow_table()
