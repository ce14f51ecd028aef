"""One source per attribute (一数一源) in the store: observations, the cross-check, and
discrepancy records.

An import into a resource that names another node or department as its authoritative
source never writes the entity's records: each value becomes an observation in
`tongyuan.rows_observations`, an entity table in the change log, so observations
travel upward like data. Every node cross-checks the observations it holds against
the authoritative records it holds — matching keys in a normalised form — and keeps a
discrepancy wherever they disagree. Discrepancies travel down the links to the
authoritative node; when the source corrects its value (or the observer withdraws
its copy) the next cross-check at each tier resolves them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from node.divisions import Tier, tier_of
from node.entities import Column, Entity
from node.store.protected import incomparable_sql
from node.store.schema import entity_table, quote

if TYPE_CHECKING:
    from node.store.audit import Evidence
    from node.store.store import Store

OBSERVATIONS = Entity(
    name="observations",
    key="obs_id",
    description="Values a non-authoritative source holds for an attribute of a record.",
    columns=tuple(
        Column(name, "string")
        for name in (
            "obs_id",
            "entity",
            "record_key",
            "norm_key",
            "attribute",
            "value",
            "source_node",
            "source_dept",
        )
    ),
)

# Pairs of values no comparison can judge (see node/store/protected.py).
_INCOMPARABLE = incomparable_sql("p.authoritative_value", "p.observed_value")
# Full-width digits and letters (as typed on Chinese keyboards) and their ASCII forms.
_FULL_WIDTH = "".join(chr(c) for c in range(0xFF10, 0xFF1A)) + "".join(
    chr(c) for c in (*range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B))
)
_ASCII = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def norm_key_sql(expression: str) -> str:
    """SQL for the normalised form of a key, by which sources are matched: full-width
    characters made ASCII, upper case (a lower-case x in ID numbers), no whitespace or
    Unicode space separators (ideographic and no-break spaces included)."""
    return (
        f"upper(regexp_replace(translate(CAST({expression} AS VARCHAR), '{_FULL_WIDTH}', "
        f"'{_ASCII}'), '[\\s\\p{{Z}}]+', '', 'g'))"
    )


def subtree_condition(column: str, node: str) -> str:
    """SQL: `column` names `node` or a node below it (by the division code's shape)."""
    tier = tier_of(node)
    if tier is Tier.PROVINCE:
        return f"left({column}, 2) = '{node[:2]}'"
    if tier is Tier.CITY:
        return f"left({column}, 4) = '{node[:4]}'"
    return f"{column} = '{node}'"


_DISCREPANCY_COLUMNS = (
    "id",
    "entity",
    "record_key",
    "attribute",
    "authoritative_value",
    "observed_value",
    "source_node",
    "source_dept",
    "source_key",
    "source_resource",
    "observer_node",
    "observer_dept",
    "observer_resource",
    "found_by",
    "found_at",
    "state",
    "resolution",
    "resolved_at",
)
DISCREPANCY_SCHEMA = pa.schema(
    [
        pa.field(name, pa.timestamp("us", tz="UTC") if name.endswith("_at") else pa.string())
        for name in _DISCREPANCY_COLUMNS
    ]
)


class SourcesStore:
    """Observation staging, the cross-check and the discrepancy records."""

    def __init__(self, store: Store, node_code: str) -> None:
        self._store = store
        self._db = store.db
        self.node_code = node_code
        # Bumped whenever the discrepancies change, so links deliver them again.
        self.generation = 0

    # ----- observations (inside an import) ----------------------------------------------

    @staticmethod
    def stage_observations(
        cur: duckdb.DuckDBPyConnection,
        entity: Entity,
        fields: Sequence[str],
        *,
        resource: str,
        source_node: str,
        source_dept: str,
    ) -> None:
        """Turn the validated `ingest_stage` (one row per record) into one row per
        non-empty attribute value, shaped like the observations entity."""
        attributes = [f for f in fields if f != entity.key]
        if not attributes:
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE observation_stage AS SELECT 0::BIGINT AS _row, "
                + ", ".join(f"NULL::VARCHAR AS {c}" for c in OBSERVATIONS.column_names)
                + " WHERE false"
            )
        else:
            values = ", ".join(f"CAST({quote(a)} AS VARCHAR) AS {quote(a)}" for a in attributes)
            names = ", ".join(quote(a) for a in attributes)
            key = f"CAST({quote(entity.key)} AS VARCHAR)"
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE observation_stage AS "
                "SELECT row_number() OVER (ORDER BY _row, attribute) AS _row, "
                "substr(md5(concat_ws(chr(31), ?, record_key, attribute, ?)), 1, 16) AS obs_id, "
                f"?::VARCHAR AS entity, record_key, {norm_key_sql('record_key')} AS norm_key, "
                "attribute, value, ?::VARCHAR AS source_node, ?::VARCHAR AS source_dept "
                f"FROM (SELECT _row, {key} AS record_key, {values} FROM ingest_stage) "
                f"UNPIVOT (value FOR attribute IN ({names}))",
                [entity.name, resource, entity.name, source_node, source_dept],
            )
        cur.execute("DROP TABLE ingest_stage")
        cur.execute("ALTER TABLE observation_stage RENAME TO ingest_stage")

    def rename_for_model(
        self,
        cur: duckdb.DuckDBPyConnection,
        renames: Sequence[tuple[str, str, Sequence[tuple[str, str]]]],
    ) -> list[str]:
        """Inside a model migration: this node's observations (and the discrepancies it
        found) of a renamed entity or attribute take the new names; the observations as
        new versions in the log, so the parent's copies follow."""
        observations = entity_table(OBSERVATIONS)
        written = False
        for old, new, attributes in renames:
            if old == new and not attributes:
                continue
            renamed = (
                "CASE attribute "
                + "".join(f"WHEN '{a}' THEN '{b}' " for a, b in attributes)
                + "ELSE attribute END"
            )
            (count,) = cur.execute(
                f"SELECT count(*) FROM {observations} WHERE origin_node = ? AND entity = ? "
                "AND NOT _deleted",
                [self.node_code, old],
            ).fetchone()  # type: ignore[misc]
            if count:
                base, _ = self._store.reserve_seqs(cur, int(count))
                cur.execute(
                    f"UPDATE {observations} SET entity = ?, attribute = {renamed}, "
                    "_seq = ? + n, origin_seq = ? + n FROM (SELECT obs_id AS id, "
                    f"row_number() OVER (ORDER BY obs_id) AS n FROM {observations} "
                    "WHERE origin_node = ? AND entity = ? AND NOT _deleted) numbered "
                    "WHERE obs_id = numbered.id AND origin_node = ?",
                    [new, base, base, self.node_code, old, self.node_code],
                )
                written = True
            cur.execute(
                f"UPDATE tongyuan.discrepancies SET entity = ?, attribute = {renamed} "
                "WHERE entity = ? AND received_from IS NULL",
                [new, old],
            )
        return [OBSERVATIONS.name] if written else []

    # ----- the cross-check ------------------------------------------------------------------

    def has_observations(self) -> bool:
        with self._db.read() as cur:
            row = cur.execute(f"SELECT 1 FROM {entity_table(OBSERVATIONS)} LIMIT 1").fetchone()
        return row is not None

    def crosscheck(self) -> int:
        """Compare what changed since the last run (observations or authoritative records)
        with the other side; returns how many discrepancies opened, changed or closed.

        The comparison (the expensive part: keys normalised and joined) reads a snapshot
        without holding the writer, so imports and link applies go on meanwhile; only the
        resulting discrepancy changes take the writer, briefly."""
        if not self.has_observations():
            return 0
        with self._db.read() as cur:
            cur.execute("BEGIN TRANSACTION")  # one snapshot for the head and the pairs
            ((watermark, head),) = cur.execute(
                "SELECT c.watermark, h.seq FROM tongyuan.crosscheck c, tongyuan.head h"
            ).fetchall()
            if head <= watermark:
                cur.execute("COMMIT")
                return 0
            pairs = [
                cur.sql(sql, params=params).to_arrow_table()
                for sql, params in (
                    self._pairs_sql(entity, int(watermark))
                    for entity in self._store.entities.values()
                    if any(c.name != entity.key for c in entity.columns)
                )
            ]
            withdrawn = cur.sql(
                f"SELECT obs_id AS id FROM {entity_table(OBSERVATIONS)} "
                f"WHERE _deleted AND _seq > {int(watermark)}"
            ).to_arrow_table()
            cur.execute("COMMIT")
        found = pa.concat_tables(pairs) if pairs else pa.table({})
        now = datetime.now(UTC)
        arrow = {"crosscheck_pairs": found, "crosscheck_withdrawn": withdrawn}
        with self._db.write(arrow=arrow) as cur:
            (current,) = cur.execute("SELECT watermark FROM tongyuan.crosscheck").fetchone()  # type: ignore[misc]
            if current != watermark:
                return 0  # another run got there first
            changed = self._record_pairs(cur, now) if found.num_rows else 0
            # An observation withdrawn (deleted) closes its discrepancy.
            (closed,) = cur.execute(
                "UPDATE tongyuan.discrepancies SET state = 'resolved', resolution = 'withdrawn', "
                "resolved_at = ? WHERE received_from IS NULL AND state = 'open' AND id IN "
                "(SELECT id FROM crosscheck_withdrawn)",
                [now],
            ).fetchone()  # type: ignore[misc]
            changed += int(closed)
            cur.execute("UPDATE tongyuan.crosscheck SET watermark = ?", [head])
        if changed:
            self.generation += 1
        return changed

    @staticmethod
    def _pairs_sql(entity: Entity, watermark: int) -> tuple[str, dict[str, Any]]:
        """Each observation of `entity` paired with its source's record, where either side
        changed after `watermark` (one row per observation, a live record first)."""
        observations = entity_table(OBSERVATIONS)
        records = entity_table(entity)
        attributes = [c for c in entity.columns if c.name != entity.key]
        authoritative = (
            "CASE o.attribute "
            + " ".join(
                f"WHEN '{c.name}' THEN CAST(r.{quote(c.name)} AS VARCHAR)" for c in attributes
            )
            + " END"
        )
        # The observed text as the attribute's type writes it (an observation made before
        # a widening, 1990-01-01, equals the timestamp 1990-01-01 00:00:00).
        observed = (
            "CASE o.attribute "
            + " ".join(
                f"WHEN '{c.name}' THEN COALESCE(CAST(TRY_CAST(o.value AS {c.sql_type}) "
                "AS VARCHAR), o.value)"
                for c in attributes
                if c.type != "string"
            )
            + " ELSE o.value END"
        )
        names = ", ".join(f"'{c.name}'" for c in attributes)
        key = quote(entity.key)
        pair = (
            f"SELECT o.obs_id AS id, o.entity, o.record_key, o.attribute, "
            f"{observed} AS observed_value, {authoritative} AS authoritative_value, "
            f"o.source_node, o.source_dept, CAST(r.{key} AS VARCHAR) AS source_key, "
            "r.origin_resource AS source_resource, r._deleted AS record_deleted, "
            "o.origin_node AS observer_node, o.origin_dept AS observer_dept, "
            "o.origin_resource AS observer_resource "
        )
        normalised = f"(SELECT *, {norm_key_sql('r0.' + key)} AS _norm FROM {records} r0"
        sql = (
            f"SELECT DISTINCT ON (id) * FROM ("
            f"{pair} FROM (SELECT * FROM {observations} WHERE entity = $entity "
            f"AND attribute IN ({names}) AND NOT _deleted AND _seq > $watermark) o "
            f"JOIN {normalised}) r ON r.origin_node = o.source_node AND r._norm = o.norm_key "
            "UNION ALL "
            f"{pair} FROM (SELECT * FROM {observations} WHERE entity = $entity "
            f"AND attribute IN ({names}) AND NOT _deleted) o "
            f"JOIN {normalised} WHERE r0._seq > $watermark) r "
            "ON r.origin_node = o.source_node AND r._norm = o.norm_key"
            ") ORDER BY id, record_deleted"
        )
        return sql, {"entity": entity.name, "watermark": watermark}

    def _record_pairs(self, cur: duckdb.DuckDBPyConnection, now: datetime) -> int:
        """Discrepancies from the pairs: new disagreements open, open ones whose values
        changed are refreshed (keeping when they were found), resolved ones disagreeing
        again reopen; agreement or a deleted record closes them."""
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE crosscheck_open AS SELECT p.*, "
            "COALESCE(d.found_at, $now) AS found_at FROM crosscheck_pairs p "
            "LEFT JOIN tongyuan.discrepancies d ON d.id = p.id AND d.received_from IS NULL "
            "AND d.state = 'open' "
            "WHERE NOT p.record_deleted "
            "AND p.authoritative_value IS DISTINCT FROM p.observed_value "
            # A child's masked or pseudonymised value is no evidence of a disagreement.
            f"AND NOT (({_INCOMPARABLE}) AND (p.observer_node <> $node OR p.source_node <> $node)) "
            "AND (d.id IS NULL OR d.authoritative_value IS DISTINCT FROM p.authoritative_value "
            "OR d.observed_value IS DISTINCT FROM p.observed_value)",
            {"now": now, "node": self.node_code},
        )
        cur.execute(
            "DELETE FROM tongyuan.discrepancies WHERE received_from IS NULL "
            "AND id IN (SELECT id FROM crosscheck_open)"
        )
        (opened,) = cur.execute(
            "INSERT INTO tongyuan.discrepancies SELECT id, entity, record_key, attribute, "
            "authoritative_value, observed_value, source_node, source_dept, source_key, "
            "source_resource, observer_node, observer_dept, observer_resource, $node, found_at, "
            "'open', NULL, NULL, NULL FROM crosscheck_open",
            {"node": self.node_code},
        ).fetchone()  # type: ignore[misc]
        cur.execute("DROP TABLE crosscheck_open")
        (agreed,) = cur.execute(
            "UPDATE tongyuan.discrepancies SET state = 'resolved', resolution = 'agreed', "
            "resolved_at = $now, authoritative_value = p.authoritative_value "
            "FROM crosscheck_pairs p WHERE discrepancies.id = p.id "
            "AND discrepancies.received_from IS NULL AND discrepancies.state = 'open' "
            "AND NOT p.record_deleted "
            "AND p.authoritative_value IS NOT DISTINCT FROM p.observed_value",
            {"now": now},
        ).fetchone()  # type: ignore[misc]
        # The source deleted its record: nothing is left to disagree with.
        (gone,) = cur.execute(
            "UPDATE tongyuan.discrepancies SET state = 'resolved', resolution = 'record deleted', "
            "resolved_at = $now FROM crosscheck_pairs p WHERE discrepancies.id = p.id "
            "AND discrepancies.received_from IS NULL AND discrepancies.state = 'open' "
            "AND p.record_deleted",
            {"now": now},
        ).fetchone()  # type: ignore[misc]
        return int(opened) + int(agreed) + int(gone)

    # ----- discrepancies --------------------------------------------------------------------

    def discrepancies(self, *, include_resolved: bool = False) -> list[dict[str, Any]]:
        """One row per discrepancy (this node's own finding first, else the parent's), with
        the tiers that found it and this node's last action on it."""
        where = "" if include_resolved else "WHERE state = 'open'"
        cols = ", ".join(f"d.{c}" for c in _DISCREPANCY_COLUMNS)
        with self._db.read() as cur:
            result = cur.execute(
                f"SELECT {cols}, d.received_from, f.found_at_nodes, a.action, a.value, a.actor, "
                "a.acted_at, a.note FROM (SELECT DISTINCT ON (id) * FROM tongyuan.discrepancies "
                "ORDER BY id, received_from NULLS FIRST) d "
                "JOIN (SELECT id, list(DISTINCT found_by ORDER BY found_by) AS found_at_nodes "
                "FROM tongyuan.discrepancies GROUP BY id) f USING (id) "
                "LEFT JOIN (SELECT DISTINCT ON (id) * FROM tongyuan.discrepancy_actions "
                "ORDER BY id, acted_at DESC) a USING (id) "
                f"{where.replace('state', 'd.state')} ORDER BY d.found_at, d.id"
            )
            names = [c[0] for c in result.description]
            rows = result.fetchall()
        return [dict(zip(names, r, strict=True)) for r in rows]

    def discrepancy(self, discrepancy_id: str) -> dict[str, Any] | None:
        for row in self.discrepancies(include_resolved=True):
            if row["id"] == discrepancy_id:
                return row
        return None

    def record_action(
        self, discrepancy_id: str, action: str, value: str | None, actor: str, note: str
    ) -> None:
        with self._db.write() as cur:
            cur.execute(
                "INSERT INTO tongyuan.discrepancy_actions VALUES (?, ?, ?, ?, ?, ?)",
                [discrepancy_id, action, value, actor, datetime.now(UTC), note],
            )

    def counts(self) -> dict[str, int]:
        with self._db.read() as cur:
            open_, resolved = cur.execute(
                "SELECT count(*) FILTER (state = 'open'), count(*) FILTER (state <> 'open') "
                "FROM (SELECT DISTINCT ON (id) state FROM tongyuan.discrepancies "
                "ORDER BY id, received_from NULLS FIRST)"
            ).fetchone()  # type: ignore[misc]
            (observations,) = cur.execute(
                f"SELECT count(*) FROM {entity_table(OBSERVATIONS)} WHERE NOT _deleted"
            ).fetchone()  # type: ignore[misc]
        return {"open": int(open_), "resolved": int(resolved), "observations": int(observations)}

    # ----- downward delivery ----------------------------------------------------------------

    def downward_set(self, child: str) -> tuple[str, pa.Table]:
        """Every discrepancy this node knows whose source is `child` or below it, with a
        digest, for delivery to that child.

        A discrepancy found here whose observer is this node carries this node's own
        observation: its value, record key and id leave as that observation would
        (`OutboundStore.observation_sql`); the rest came from the child or was treated at
        its source already."""
        outbound = self._store.outbound
        own = f"received_from IS NULL AND observer_node = '{self.node_code}'"
        treated = outbound.observation_sql(
            own, value="observed_value", record_key="record_key", obs_id="id"
        )
        renamed = {"id": treated["obs_id"], "record_key": treated["record_key"]}
        renamed["observed_value"] = treated["value"]
        cols = ", ".join(
            c if renamed.get(c, c) == c else f"{renamed[c]} AS {c}" for c in _DISCREPANCY_COLUMNS
        )
        with self._db.read() as cur, outbound.without_secrets():
            table = cur.sql(
                f"SELECT * FROM (SELECT {cols} FROM (SELECT DISTINCT ON (id) * "
                "FROM tongyuan.discrepancies ORDER BY id, received_from NULLS FIRST) "
                f"WHERE {subtree_condition('source_node', child)}) ORDER BY id, found_by"
            ).to_arrow_table()
        table = table.cast(DISCREPANCY_SCHEMA)
        return delivery_digest(table), table

    def received_digest(self, parent: str) -> str:
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT digest FROM tongyuan.received_discrepancies WHERE parent_code = ?",
                [parent],
            ).fetchone()
        return str(row[0]) if row else ""

    def replace_received(
        self, parent: str, table: pa.Table, digest: str, evidence: Evidence | None = None
    ) -> None:
        """The parent's set replaces what it delivered before, in one transaction (with
        its audit entry, `evidence`)."""
        cols = ", ".join(_DISCREPANCY_COLUMNS)
        with self._db.write(arrow={"delivered": table}) as cur:
            if evidence is not None:
                evidence(cur)
            cur.execute("DELETE FROM tongyuan.discrepancies WHERE received_from = ?", [parent])
            cur.execute(
                f"INSERT INTO tongyuan.discrepancies ({cols}, received_from) "
                f"SELECT {cols}, ? FROM delivered",
                [parent],
            )
            cur.execute(
                "DELETE FROM tongyuan.received_discrepancies WHERE parent_code = ?", [parent]
            )
            cur.execute(
                "INSERT INTO tongyuan.received_discrepancies VALUES (?, ?)", [parent, digest]
            )
        self.generation += 1


def delivery_digest(table: pa.Table) -> str:
    """A digest of a delivery's rows (ordered by id), checked on receipt."""
    digest = hashlib.sha256()
    for row in table.to_pylist():
        digest.update(repr(sorted(row.items())).encode())
    return digest.hexdigest()[:16]
