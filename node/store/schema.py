"""The store's schema: named, recorded migrations for the node's own tables, and one
table per entity that is at once the current records and the compacted change log.

Each entity table `tongyuan.rows_<entity>` holds one row per identity
(origin_node, key): its latest version, or a tombstone (`_deleted`) if deleted. `_seq` is
the local change-log sequence of that version, so "changes since N" is
`WHERE _seq > N` and the log never holds intermediate versions. There is deliberately
no key constraint: DuckDB's keyed upserts are 20–60× slower than set-based
delete-and-insert, so uniqueness is kept by the apply logic and checked by tests.
A view `main.<entity>` shows the live records with their lineage.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from node.entities import LINEAGE_COLUMNS, Entity
from node.errors import ConfigError

MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "0001_core",
        (
            "CREATE TABLE tongyuan.meta (key VARCHAR NOT NULL, value VARCHAR)",
            "CREATE TABLE tongyuan.head (seq BIGINT NOT NULL)",
            "INSERT INTO tongyuan.head VALUES (0)",
            """CREATE TABLE tongyuan.links (
                child_code VARCHAR NOT NULL,
                checkpoint BIGINT NOT NULL DEFAULT 0,
                child_head BIGINT,
                last_pull TIMESTAMPTZ,
                caught_up_at TIMESTAMPTZ,
                rows_applied BIGINT NOT NULL DEFAULT 0,
                batches_applied BIGINT NOT NULL DEFAULT 0,
                last_error VARCHAR,
                last_error_at TIMESTAMPTZ
            )""",
            """CREATE TABLE tongyuan.parents (
                parent_code VARCHAR NOT NULL,
                acked_seq BIGINT NOT NULL,
                first_seen TIMESTAMPTZ NOT NULL,
                last_seen TIMESTAMPTZ NOT NULL
            )""",
            """CREATE TABLE tongyuan.ingest_batches (
                batch_id VARCHAR NOT NULL,
                entity VARCHAR NOT NULL,
                file VARCHAR NOT NULL,
                department VARCHAR,
                snapshot BOOLEAN NOT NULL,
                rows_read BIGINT NOT NULL,
                inserted BIGINT NOT NULL,
                updated BIGINT NOT NULL,
                deleted BIGINT NOT NULL,
                first_seq BIGINT,
                last_seq BIGINT,
                finished_at TIMESTAMPTZ NOT NULL
            )""",
        ),
    ),
    (
        "0002_link_child_node_id",
        # The child store a link pulls from: a replaced store restarts its sequence.
        ("ALTER TABLE tongyuan.links ADD COLUMN child_node_id VARCHAR",),
    ),
    (
        "0003_catalog",
        (
            # The resource an import went into (catalogue code).
            "ALTER TABLE tongyuan.ingest_batches ADD COLUMN resource VARCHAR",
            # Drafts stay local: only published entries enter the change log.
            """CREATE TABLE tongyuan.catalog_drafts (
                code VARCHAR NOT NULL,
                version BIGINT NOT NULL,
                doc VARCHAR NOT NULL,
                updated_by VARCHAR NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL
            )""",
            # Who did what to each of this node's entries, and when.
            """CREATE TABLE tongyuan.catalog_history (
                code VARCHAR NOT NULL,
                version BIGINT NOT NULL,
                action VARCHAR NOT NULL,
                actor VARCHAR NOT NULL,
                happened_at TIMESTAMPTZ NOT NULL,
                note VARCHAR
            )""",
            # Standard items: defined here (received_from NULL) or received from a parent.
            """CREATE TABLE tongyuan.standard_items (
                code VARCHAR NOT NULL,
                origin_node VARCHAR NOT NULL,
                received_from VARCHAR,
                doc VARCHAR NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL
            )""",
            # The digest of the set each parent last delivered, so it resends only changes.
            """CREATE TABLE tongyuan.received_sets (
                parent_code VARCHAR NOT NULL,
                digest VARCHAR NOT NULL,
                received_at TIMESTAMPTZ NOT NULL
            )""",
        ),
    ),
    (
        "0004_lag_samples",
        # Each child's lag, sampled on a timer, so operators see its recent course.
        (
            """CREATE TABLE tongyuan.lag_samples (
                child_code VARCHAR NOT NULL,
                sampled_at TIMESTAMPTZ NOT NULL,
                lag_seq BIGINT,
                lag_seconds DOUBLE
            )""",
        ),
    ),
    (
        "0005_model_sources",
        (
            # The model this node works with (role 'active') and the one its parent
            # offers ('offered', with the parent's mapping of this node's local names).
            """CREATE TABLE tongyuan.model_state (
                role VARCHAR NOT NULL,
                doc VARCHAR NOT NULL,
                digest VARCHAR NOT NULL,
                mapping VARCHAR,
                source VARCHAR,
                updated_at TIMESTAMPTZ NOT NULL
            )""",
            """CREATE TABLE tongyuan.model_history (
                name VARCHAR NOT NULL,
                version VARCHAR NOT NULL,
                digest VARCHAR NOT NULL,
                action VARCHAR NOT NULL,
                actor VARCHAR NOT NULL,
                happened_at TIMESTAMPTZ NOT NULL,
                note VARCHAR
            )""",
            # This node's mapping of each child's local names to its model.
            "CREATE TABLE tongyuan.model_mappings (child_code VARCHAR NOT NULL, doc VARCHAR)",
            # Each child's model as last pulled (its proposal), for calibration.
            """CREATE TABLE tongyuan.child_models (
                child_code VARCHAR NOT NULL,
                doc VARCHAR NOT NULL,
                digest VARCHAR NOT NULL,
                fetched_at TIMESTAMPTZ NOT NULL
            )""",
            # Where an observation disagrees with its authoritative source: found here
            # (received_from NULL) or delivered by the parent (received_from its code).
            """CREATE TABLE tongyuan.discrepancies (
                id VARCHAR NOT NULL,
                entity VARCHAR NOT NULL,
                record_key VARCHAR NOT NULL,
                attribute VARCHAR NOT NULL,
                authoritative_value VARCHAR,
                observed_value VARCHAR,
                source_node VARCHAR NOT NULL,
                source_dept VARCHAR,
                source_key VARCHAR,
                source_resource VARCHAR,
                observer_node VARCHAR NOT NULL,
                observer_dept VARCHAR,
                observer_resource VARCHAR,
                found_by VARCHAR NOT NULL,
                found_at TIMESTAMPTZ NOT NULL,
                state VARCHAR NOT NULL,
                resolution VARCHAR,
                resolved_at TIMESTAMPTZ,
                received_from VARCHAR
            )""",
            # What this node's operators did about a discrepancy (a correction, a confirmation).
            """CREATE TABLE tongyuan.discrepancy_actions (
                id VARCHAR NOT NULL,
                action VARCHAR NOT NULL,
                value VARCHAR,
                actor VARCHAR NOT NULL,
                acted_at TIMESTAMPTZ NOT NULL,
                note VARCHAR
            )""",
            # The change-log sequence up to which observations have been cross-checked.
            "CREATE TABLE tongyuan.crosscheck (watermark BIGINT NOT NULL)",
            "INSERT INTO tongyuan.crosscheck VALUES (0)",
            # The digest of the discrepancy set each parent last delivered.
            """CREATE TABLE tongyuan.received_discrepancies (
                parent_code VARCHAR NOT NULL,
                digest VARCHAR NOT NULL
            )""",
        ),
    ),
    (
        "0006_quality",
        (
            # The rule library in layers: 'received' (the parent's published library, all
            # its layers), 'published' (this node's own, passed down with the received
            # ones) and 'local' (this node's own, applied here only).
            """CREATE TABLE tongyuan.rule_layers (
                role VARCHAR NOT NULL,
                doc VARCHAR NOT NULL,
                digest VARCHAR NOT NULL,
                source VARCHAR NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL,
                -- The change-log head when the layer took effect: rows after it were
                -- screened with it.
                since_seq BIGINT NOT NULL
            )""",
            # Rows held back by a blocking rule, from an import (received_from NULL) or
            # from a child: the whole row as JSON so release can re-validate and apply it.
            """CREATE TABLE tongyuan.quarantine (
                id VARCHAR NOT NULL,
                entity VARCHAR NOT NULL,
                record_key VARCHAR,
                origin_node VARCHAR NOT NULL,
                origin_dept VARCHAR,
                origin_seq BIGINT,
                origin_resource VARCHAR,
                received_from VARCHAR,
                batch_id VARCHAR NOT NULL,
                source VARCHAR NOT NULL,
                fields VARCHAR[] NOT NULL,
                row_json VARCHAR NOT NULL,
                rules VARCHAR[] NOT NULL,
                reasons VARCHAR[] NOT NULL,
                quarantined_at TIMESTAMPTZ NOT NULL,
                state VARCHAR NOT NULL,
                settled_at TIMESTAMPTZ,
                settled_by VARCHAR
            )""",
            # Warnings: the version of a record (origin_node, key, origin_seq) that was
            # applied although a warning rule failed on it.
            """CREATE TABLE tongyuan.quality_flags (
                entity VARCHAR NOT NULL,
                origin_node VARCHAR NOT NULL,
                record_key VARCHAR NOT NULL,
                origin_seq BIGINT NOT NULL,
                rule VARCHAR NOT NULL,
                reason VARCHAR NOT NULL,
                flagged_at TIMESTAMPTZ NOT NULL
            )""",
            # Questionable records sent back to the node and department owning them:
            # raised here (received_from NULL) or delivered by the parent.
            """CREATE TABLE tongyuan.feedback (
                id VARCHAR NOT NULL,
                kind VARCHAR NOT NULL,
                entity VARCHAR NOT NULL,
                resource VARCHAR,
                record_key VARCHAR NOT NULL,
                owner_node VARCHAR NOT NULL,
                owner_dept VARCHAR,
                record_seq BIGINT,
                reason VARCHAR NOT NULL,
                raised_node VARCHAR NOT NULL,
                raised_by VARCHAR NOT NULL,
                raised_at TIMESTAMPTZ NOT NULL,
                received_from VARCHAR
            )""",
            """CREATE TABLE tongyuan.received_feedback (
                parent_code VARCHAR NOT NULL,
                digest VARCHAR NOT NULL
            )""",
            # Each child's quality report as last pulled.
            """CREATE TABLE tongyuan.child_quality (
                child_code VARCHAR NOT NULL,
                doc VARCHAR NOT NULL,
                digest VARCHAR NOT NULL,
                fetched_at TIMESTAMPTZ NOT NULL
            )""",
        ),
    ),
    (
        "0007_grants",
        (
            # Requests this node made to its parent for return flows, the parent's decision
            # on each as last delivered, how far the returned slice is held (the parent's
            # sequence), and the purge when the grant ended (node/store/grants.py).
            """CREATE TABLE tongyuan.grant_requests (
                id VARCHAR NOT NULL,
                parent_code VARCHAR NOT NULL,
                resource VARCHAR NOT NULL,
                entity VARCHAR NOT NULL,
                filters VARCHAR NOT NULL,
                purpose VARCHAR NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL,
                requested_by VARCHAR NOT NULL,
                requested_at TIMESTAMPTZ NOT NULL,
                state VARCHAR NOT NULL,
                granted_expires_at TIMESTAMPTZ,
                decided_by VARCHAR,
                decided_at TIMESTAMPTZ,
                reason VARCHAR,
                checkpoint BIGINT NOT NULL,
                ended VARCHAR,
                purged_at TIMESTAMPTZ,
                rows_purged BIGINT
            )""",
            # Grants this node decides for its children: each request as first pulled
            # (never changed afterwards) and the decision on it.
            """CREATE TABLE tongyuan.grants (
                id VARCHAR NOT NULL,
                child_code VARCHAR NOT NULL,
                resource VARCHAR NOT NULL,
                entity VARCHAR NOT NULL,
                filters VARCHAR NOT NULL,
                purpose VARCHAR NOT NULL,
                requested_expires_at TIMESTAMPTZ,
                requested_by VARCHAR NOT NULL,
                requested_at TIMESTAMPTZ,
                state VARCHAR NOT NULL,
                expires_at TIMESTAMPTZ,
                decided_by VARCHAR,
                decided_at TIMESTAMPTZ,
                reason VARCHAR,
                received_at TIMESTAMPTZ NOT NULL
            )""",
            # Digests: a child's requests as last pulled (role 'requests', peer the child)
            # and the grant set a parent last delivered (role 'grants', peer the parent).
            """CREATE TABLE tongyuan.grant_digests (
                role VARCHAR NOT NULL,
                peer VARCHAR NOT NULL,
                digest VARCHAR NOT NULL
            )""",
            # At the parent, per grant: the records delivered to the child (origin node,
            # key as stored here, key as it was sent), a superset of what the child holds,
            # so a departure names only a key the child holds, in the form it holds it.
            """CREATE TABLE tongyuan.grant_sent (
                grant_id VARCHAR NOT NULL,
                origin_node VARCHAR NOT NULL,
                record_key VARCHAR NOT NULL,
                sent_key VARCHAR NOT NULL
            )""",
        ),
    ),
    (
        "0008_audit",
        (
            # The audit chain (node/store/audit.py): append-only, each entry hashing the
            # previous one and signed; `recorded_at` is text so the hash is recomputed exactly.
            """CREATE TABLE tongyuan.audit_chain (
                seq BIGINT NOT NULL,
                recorded_at VARCHAR NOT NULL,
                node VARCHAR NOT NULL,
                kind VARCHAR NOT NULL,
                actor VARCHAR NOT NULL,
                detail VARCHAR NOT NULL,
                prev_hash VARCHAR NOT NULL,
                hash VARCHAR NOT NULL,
                signature VARCHAR NOT NULL
            )""",
            "CREATE TABLE tongyuan.audit_head (seq BIGINT NOT NULL, hash VARCHAR NOT NULL)",
            # A parent's watch over each child's chain (node/security/audit.py): the key it
            # pinned at first sight, where it verified through (the next fetch links to it),
            # its last anchor, the hash of every child entry it verified (with the flaw
            # found in it, if any), its anchors (the child heads it recorded in its own
            # chain) and the first problem found.
            """CREATE TABLE tongyuan.audit_children (
                child VARCHAR NOT NULL,
                public_key VARCHAR NOT NULL,
                pinned_at TIMESTAMPTZ NOT NULL,
                problem VARCHAR,
                problem_seq BIGINT,
                problem_at TIMESTAMPTZ,
                checked_at TIMESTAMPTZ,
                full_checked_at TIMESTAMPTZ,
                verified_seq BIGINT NOT NULL DEFAULT 0,
                verified_hash VARCHAR NOT NULL DEFAULT repeat('0', 64),
                anchored_seq BIGINT NOT NULL DEFAULT 0,
                anchored_hash VARCHAR NOT NULL DEFAULT repeat('0', 64),
                anchored_at TIMESTAMPTZ,
                anchors BIGINT NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE tongyuan.audit_child_entries (
                child VARCHAR NOT NULL,
                seq BIGINT NOT NULL,
                hash VARCHAR NOT NULL,
                flaw VARCHAR,
                flaw_detail VARCHAR
            )""",
            """CREATE TABLE tongyuan.audit_anchors (
                child VARCHAR NOT NULL,
                seq BIGINT NOT NULL,
                hash VARCHAR NOT NULL,
                anchored_at TIMESTAMPTZ NOT NULL,
                own_seq BIGINT NOT NULL
            )""",
        ),
    ),
)


def quote(identifier: str) -> str:
    """Quote an identifier that has already been checked against the entity name rules."""
    return '"' + identifier.replace('"', '""') + '"'


def entity_table(entity: Entity) -> str:
    return f"tongyuan.{quote('rows_' + entity.name)}"


def stored_columns(entity: Entity) -> str:
    """Every column of an entity table by name: INSERTs name them, since columns a config
    added later sit after the lineage columns."""
    names = [quote(c) for c in entity.column_names]
    names += ["_deleted", *LINEAGE_COLUMNS, "_seq", "_via", "_applied_at"]
    return ", ".join(names)


# What travels with each change besides its attributes: the delete flag and its origin.
WIRE_LINEAGE = ", ".join(("_deleted", *LINEAGE_COLUMNS))


def apply_migrations(cur: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations not yet recorded, in order; returns the names applied."""
    cur.execute("CREATE SCHEMA IF NOT EXISTS tongyuan")
    cur.execute(
        "CREATE TABLE IF NOT EXISTS tongyuan.migrations "
        "(name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    done = {row[0] for row in cur.execute("SELECT name FROM tongyuan.migrations").fetchall()}
    applied = []
    for name, statements in MIGRATIONS:
        if name in done:
            continue
        for statement in statements:
            cur.execute(statement)
        cur.execute("INSERT INTO tongyuan.migrations (name) VALUES (?)", [name])
        applied.append(name)
    return applied


def existing_entity_tables(cur: duckdb.DuckDBPyConnection) -> set[str]:
    rows = cur.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'tongyuan' AND table_name LIKE 'rows_%'"
    ).fetchall()
    return {str(r[0]) for r in rows}


def _existing_columns(cur: duckdb.DuckDBPyConnection, table_name: str) -> dict[str, str]:
    rows = cur.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'tongyuan' AND table_name = ? ORDER BY ordinal_position",
        [table_name],
    ).fetchall()
    return {name: type_ for name, type_ in rows}


def ensure_entity_tables(cur: duckdb.DuckDBPyConnection, entities: Sequence[Entity]) -> None:
    """Create each entity's table and view; add columns a config gained (never drop)."""
    for entity in entities:
        table = entity_table(entity)
        existing = _existing_columns(cur, "rows_" + entity.name)
        if not existing:
            columns = ", ".join(f"{quote(c.name)} {c.sql_type}" for c in entity.columns)
            cur.execute(
                f"CREATE TABLE {table} ({columns}, _deleted BOOLEAN NOT NULL, "
                "origin_node VARCHAR NOT NULL, origin_seq BIGINT NOT NULL, origin_dept VARCHAR, "
                "origin_batch VARCHAR, origin_time TIMESTAMPTZ, origin_resource VARCHAR, "
                "_seq BIGINT NOT NULL, "
                "_via VARCHAR NOT NULL, _applied_at TIMESTAMPTZ NOT NULL)"
            )
        else:
            if "origin_resource" not in existing:  # a store from before the catalogue
                cur.execute(f"ALTER TABLE {table} ADD COLUMN origin_resource VARCHAR")
            for column in entity.columns:
                have = existing.get(column.name)
                if have is None:
                    cur.execute(
                        f"ALTER TABLE {table} ADD COLUMN {quote(column.name)} {column.sql_type}"
                    )
                elif have != column.sql_type:
                    raise ConfigError(
                        f"entity {entity.name!r}: column {column.name!r} is {have} in the store "
                        f"but {column.sql_type} in the config; changing a type needs a model "
                        "migration"
                    )
        select = ", ".join(quote(c.name) for c in entity.columns)
        cur.execute(
            f"CREATE OR REPLACE VIEW main.{quote(entity.name)} AS SELECT {select}, origin_node, "
            "origin_seq, origin_dept, origin_batch, origin_time, origin_resource, "
            "_applied_at AS applied_at "
            f"FROM {table} WHERE NOT _deleted"
        )
