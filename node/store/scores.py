"""Quality measures of this node's resources, and its children's reports as last pulled.

The scores (完整性 completeness, 有效性 validity, 唯一性 uniqueness, 一致性 consistency,
及时性 timeliness) are judged where the data is born: each node measures only the
resources it is the authoritative source of, over the records those resources wrote,
and its parent pulls the resulting report instead of re-measuring its children's rows.
So a province never scans what its counties hold to score them, the county and the
province see the same numbers, and a score always belongs to one department's resource.

The counts come from set-based SQL: one scan of the entity's table per resource (its
live records of this node that it wrote), joined with the small sets of warning flags and
open discrepancies where there are any, plus one look at the quarantine. A parent pulls
the report every few seconds while the counts change only with imports, so they are kept
with a fingerprint of what they depend on, read cheaply in the same snapshot, and the scan
runs again only when that changed (about 2 s for 5 million records on two cores, against
10 ms for the fingerprint). Turning counts into scores (and the time-dependent
timeliness) is `node.quality.report`'s business.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import duckdb

from node.entities import Entity
from node.store.schema import entity_table, quote
from node.store.sources import norm_key_sql

if TYPE_CHECKING:
    from node.store.store import Store


@dataclass(frozen=True)
class _Resource:
    """What the measures need of one catalogue entry."""

    code: str
    name: str
    department: str
    entity: str
    fields: tuple[str, ...]
    update_frequency: str
    last_change_at: datetime | None
    published_at: datetime | None
    published_on: date | None


@dataclass(frozen=True)
class _State:
    """What the counts depend on, read cheaply: its fingerprint decides whether to scan."""

    fingerprint: tuple[Any, ...]
    held: dict[str, int]
    flagged_entities: frozenset[str]
    discrepant_entities: frozenset[str]


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _parse_date(value: object) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and value:
        return date.fromisoformat(value[:10])
    return None


# A key of printable ASCII without lower-case letters or spaces is its own normalised form,
# and one of printable ASCII without spaces is its upper case: only the other keys pay for
# the full normalisation (a regexp replacement per value, which at millions of keys costs
# ten times the rest of the measures together).
_NORMAL_ALREADY = "[\\x21-\\x60\\x7B-\\x7E]*"
_PRINTABLE_ASCII = "[\\x21-\\x7E]*"


def normalised_key_sql(expression: str) -> str:
    """SQL for the same value as `norm_key_sql(expression)`, computed cheaply where it can."""
    text = f"CAST({expression} AS VARCHAR)"
    return (
        f"CASE WHEN regexp_full_match({text}, '{_NORMAL_ALREADY}') THEN {text} "
        f"WHEN regexp_full_match({text}, '{_PRINTABLE_ASCII}') THEN upper({text}) "
        f"ELSE {norm_key_sql(expression)} END"
    )


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


class ScoresStore:
    """Counts behind the quality scores, and the children's quality reports."""

    def __init__(self, store: Store, node_code: str) -> None:
        self._store = store
        self._db = store.db
        self._code = node_code
        # (fingerprint, counts by resource) of the last measurement.
        self._lock = threading.Lock()
        self._cached: tuple[tuple[Any, ...], dict[str, dict[str, int]]] | None = None

    # ----- this node's resources ------------------------------------------------------

    def _own_resources(self) -> list[_Resource]:
        """This node's published resources that write records: those naming this node and
        their own department as the source (an observing resource writes observations,
        measured by the cross-check instead)."""
        resources = []
        for doc in self._store.catalog.entries(self._code):
            if doc.get("status") != "published" or doc.get("source_node") != self._code:
                continue
            if (doc.get("source_department") or doc.get("department")) != doc.get("department"):
                continue
            resources.append(
                _Resource(
                    code=str(doc["code"]),
                    name=str(doc.get("name") or ""),
                    department=str(doc.get("department") or ""),
                    entity=str(doc.get("entity") or ""),
                    fields=tuple(str(f["name"]) for f in doc.get("fields") or ()),
                    update_frequency=str(doc.get("update_frequency") or ""),
                    last_change_at=_parse_time(doc.get("last_change_at")),
                    published_at=_parse_time(doc.get("published_at")),
                    published_on=_parse_date(doc.get("published_on")),
                )
            )
        return resources

    def resource_measures(self) -> list[dict[str, Any]]:
        """One dict per own published resource (ordered by code): its live `records`, the
        counts behind each score and the scores that need no clock — `completeness`,
        `validity`, `uniqueness`, `consistency` (None when the resource has no data) — plus
        `update_frequency`, `last_change_at`, `published_at` and `published_on` for
        timeliness.

        - completeness: filled cells / (records × attributes the resource carries, key
          excluded);
        - validity: 1 − questionable / (records + held), questionable = rows held in
          quarantine + live records whose current version carries a warning flag;
        - uniqueness: distinct normalised keys / records;
        - consistency: 1 − records with an open discrepancy / records.

        The counts are kept with a fingerprint of what they depend on (this node's own
        rows, the quarantine, the flags, the discrepancies, the model and the resources'
        fields), read in the same snapshot: while it holds, nothing is scanned again.
        """
        resources = self._own_resources()
        with self._db.read() as cur:
            cur.execute("BEGIN TRANSACTION")  # one snapshot for the fingerprint and the counts
            try:
                state = self._state(cur, resources)
                with self._lock:
                    cached = self._cached
                if cached is not None and cached[0] == state.fingerprint:
                    counts = cached[1]
                else:
                    counts = {
                        r.code: self._resource_counts(cur, r, state)
                        for r in resources
                        if r.entity in self._store.entities
                    }
                    with self._lock:
                        self._cached = (state.fingerprint, counts)
            finally:
                cur.execute("ROLLBACK")
        return [
            self._measures(resource, counts.get(resource.code, {}), state.held)
            for resource in sorted(resources, key=lambda r: r.code)
        ]

    def _measures(
        self, resource: _Resource, found: dict[str, int], held_by_resource: dict[str, int]
    ) -> dict[str, Any]:
        entity = self._store.entities.get(resource.entity)
        attributes = self._attributes(entity, resource.fields) if entity else []
        records = found.get("records", 0)
        held = held_by_resource.get(resource.code, 0)
        filled = sum(found.get(f"filled:{a}", 0) for a in attributes)
        cells = records * len(attributes)
        flagged = found.get("flagged", 0)
        questionable = held + flagged
        distinct = found.get("distinct_keys", 0)
        discrepant = found.get("discrepant", 0)
        # A resource carrying only the key misses nothing.
        completeness = _ratio(filled, cells) if attributes else (1.0 if records else None)
        return {
            "code": resource.code,
            "name": resource.name,
            "department": resource.department,
            "entity": resource.entity,
            "records": records,
            "attributes": len(attributes),
            "filled_cells": filled,
            "cells": cells,
            "held": held,
            "flagged": flagged,
            "questionable": questionable,
            "distinct_keys": distinct,
            "discrepant": discrepant,
            "completeness": completeness,
            # Rows held back count against validity even when none got through.
            "validity": _ratio(records + held - questionable, records + held),
            "uniqueness": _ratio(distinct, records),
            "consistency": _ratio(records - discrepant, records),
            "update_frequency": resource.update_frequency,
            "last_change_at": resource.last_change_at,
            "published_at": resource.published_at,
            "published_on": resource.published_on,
        }

    @staticmethod
    def _attributes(entity: Entity, fields: Sequence[str]) -> list[str]:
        """The attributes a resource carries that completeness counts (key excluded)."""
        columns = set(entity.column_names)
        return [f for f in dict.fromkeys(fields) if f in columns and f != entity.key]

    def _state(self, cur: duckdb.DuckDBPyConnection, resources: Sequence[_Resource]) -> _State:
        """Cheap reads of everything the scanned counts depend on: the flags and the
        discrepancies in full (as order-independent hashes), the entity tables by their last
        own sequence; and the held rows per resource, which need no scan."""
        code = self._code
        held = {
            str(resource): int(n)
            for resource, n in cur.execute(
                "SELECT origin_resource, count(*) FROM tongyuan.quarantine "
                "WHERE state = 'held' AND origin_node = ? AND origin_resource IS NOT NULL "
                "GROUP BY origin_resource",
                [code],
            ).fetchall()
        }
        flags = {
            str(entity): (int(n), int(h))
            for entity, n, h in cur.execute(
                "SELECT entity, count(*), bit_xor(hash(record_key, origin_seq, rule)) "
                "FROM tongyuan.quality_flags WHERE origin_node = ? GROUP BY entity",
                [code],
            ).fetchall()
        }
        discrepancies = {
            str(entity): (int(n), int(h))
            for entity, n, h in cur.execute(
                "SELECT entity, count(*) FILTER (state = 'open'), "
                "bit_xor(hash(id, state, received_from, source_key)) "
                "FROM tongyuan.discrepancies WHERE source_node = ? GROUP BY entity",
                [code],
            ).fetchall()
        }
        heads = []
        for name in sorted({r.entity for r in resources}):
            entity = self._store.entities.get(name)
            if entity is not None:
                row = cur.execute(
                    f"SELECT max(_seq), count(*) FROM {entity_table(entity)} WHERE origin_node = ?",
                    [code],
                ).fetchone()
                heads.append((name, row))
        fingerprint = (
            self._store.model_digest,
            tuple(sorted((r.code, r.entity, r.fields) for r in resources)),
            tuple(heads),
            tuple(sorted(flags.items())),
            tuple(sorted(discrepancies.items())),
        )
        return _State(
            fingerprint=fingerprint,
            held=held,
            flagged_entities=frozenset(e for e, (n, _) in flags.items() if n),
            discrepant_entities=frozenset(e for e, (n, _) in discrepancies.items() if n),
        )

    def _resource_counts(
        self, cur: duckdb.DuckDBPyConnection, resource: _Resource, state: _State
    ) -> dict[str, int]:
        """The counts of one resource in one scan of its entity's table, over the live
        records of this node the resource wrote; the warning flags and open discrepancies
        are joined only where the entity has any."""
        entity = self._store.entities[resource.entity]
        key = quote(entity.key)
        attributes = [
            c for c in entity.columns if c.name in self._attributes(entity, resource.fields)
        ]
        # An import stores a blank cell as NULL (trimmed); '' is counted empty all the same.
        filled = [
            f"count(NULLIF(r.{quote(c.name)}, ''))"
            if c.type == "string"
            else f"count(r.{quote(c.name)})"
            for c in attributes
        ]
        joins, flagged, discrepant = "", "0", "0"
        if entity.name in state.flagged_entities:
            # A flag marks one version (origin_seq) of a record: only the current one counts.
            joins += (
                " LEFT JOIN (SELECT DISTINCT record_key, origin_seq FROM tongyuan.quality_flags "
                "WHERE entity = $entity AND origin_node = $node) f "
                f"ON f.record_key = CAST(r.{key} AS VARCHAR) AND f.origin_seq = r.origin_seq"
            )
            flagged = "count(f.record_key)"
        if entity.name in state.discrepant_entities:
            # One row per discrepancy (this node's own finding before the parent's copy),
            # then the authoritative records (by their key as stored) with an open one.
            joins += (
                " LEFT JOIN (SELECT DISTINCT source_key FROM (SELECT DISTINCT ON (id) "
                "source_key, state FROM tongyuan.discrepancies WHERE entity = $entity "
                "AND source_node = $node ORDER BY id, received_from NULLS FIRST) "
                "WHERE state = 'open' AND source_key IS NOT NULL) d "
                f"ON d.source_key = CAST(r.{key} AS VARCHAR)"
            )
            discrepant = "count(d.source_key)"
        sql = (
            f"SELECT count(*), count(DISTINCT {normalised_key_sql('r.' + key)}), "
            f"{flagged}, {discrepant}"
            + "".join(f", {expression}" for expression in filled)
            + f" FROM {entity_table(entity)} r{joins} "
            "WHERE NOT r._deleted AND r.origin_node = $node AND r.origin_resource = $resource"
        )
        params = {"node": self._code, "resource": resource.code}
        if joins:
            params["entity"] = entity.name
        row = cur.execute(sql, params).fetchone()
        assert row is not None
        records, distinct, flagged_n, discrepant_n, *filled_n = row
        counts = {
            "records": int(records),
            "distinct_keys": int(distinct),
            "flagged": int(flagged_n),
            "discrepant": int(discrepant_n),
        }
        counts.update(
            {f"filled:{c.name}": int(n) for c, n in zip(attributes, filled_n, strict=True)}
        )
        return counts

    # ----- the children's reports ------------------------------------------------------

    def save_child_report(self, child: str, report_json: str, digest: str) -> None:
        """Keep `child`'s report (already checked) in place of the one pulled before."""
        with self._db.write() as cur:
            cur.execute("DELETE FROM tongyuan.child_quality WHERE child_code = ?", [child])
            cur.execute(
                "INSERT INTO tongyuan.child_quality VALUES (?, ?, ?, ?)",
                [child, report_json, digest, datetime.now(UTC)],
            )

    def child_report_digest(self, child: str) -> str:
        """The digest of the report last pulled from `child` ("" if none)."""
        with self._db.read() as cur:
            row = cur.execute(
                "SELECT digest FROM tongyuan.child_quality WHERE child_code = ?", [child]
            ).fetchone()
        return str(row[0]) if row else ""

    def child_reports(self) -> dict[str, dict[str, Any]]:
        """Every child's report as last pulled, parsed, by child code."""
        with self._db.read() as cur:
            rows = cur.execute(
                "SELECT child_code, doc FROM tongyuan.child_quality ORDER BY child_code"
            ).fetchall()
        return {str(code): json.loads(doc) for code, doc in rows}

    def forget_child(self, child: str) -> None:
        with self._db.write() as cur:
            cur.execute("DELETE FROM tongyuan.child_quality WHERE child_code = ?", [child])
