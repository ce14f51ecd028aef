"""The storage shape of an entity: one table of records keyed by one column.

Which entities a node holds is its model's business (`node.model`); here is only what
the store and the wire need. Column types are a small fixed vocabulary so that every
tier agrees on the wire schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from node.errors import ConfigError

# Column type name → (DuckDB type, Arrow type).
COLUMN_TYPES: dict[str, tuple[str, pa.DataType]] = {
    "string": ("VARCHAR", pa.string()),
    "integer": ("BIGINT", pa.int64()),
    "double": ("DOUBLE", pa.float64()),
    "decimal": ("DECIMAL(18,2)", pa.decimal128(18, 2)),
    "boolean": ("BOOLEAN", pa.bool_()),
    "date": ("DATE", pa.date32()),
    "timestamp": ("TIMESTAMP", pa.timestamp("us")),
}

# Columns every stored record carries besides its attributes; they keep its lineage.
LINEAGE_COLUMNS: tuple[str, ...] = (
    "origin_node",
    "origin_seq",
    "origin_dept",
    "origin_batch",
    "origin_time",
    # The catalogue resource whose import last wrote the record.
    "origin_resource",
)
RESERVED_PREFIXES = ("origin_", "_")
RESERVED_NAMES = frozenset({"applied_at", "seq"})
# Tables the node keeps in its change log for itself (catalogue, node tree, observations,
# answers to feedback).
INTERNAL_NAMES = frozenset({"catalog", "federation_nodes", "observations", "feedback_responses"})
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Column:
    name: str
    type: str

    @property
    def sql_type(self) -> str:
        return COLUMN_TYPES[self.type][0]

    @property
    def arrow_type(self) -> pa.DataType:
        return COLUMN_TYPES[self.type][1]


@dataclass(frozen=True)
class Entity:
    """A kind of record (Person, LegalEntity, …) with its key column and attribute columns."""

    name: str
    key: str
    columns: tuple[Column, ...]
    description: str = ""
    # Attributes the model requires (a row from a child lacking one is refused).
    required: tuple[str, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def wire_schema(self) -> pa.Schema:
        """Arrow schema of this entity's changes on the wire between nodes."""
        fields = [pa.field(c.name, c.arrow_type) for c in self.columns]
        fields += [
            pa.field("_deleted", pa.bool_()),
            pa.field("origin_node", pa.string()),
            pa.field("origin_seq", pa.int64()),
            pa.field("origin_dept", pa.string()),
            pa.field("origin_batch", pa.string()),
            pa.field("origin_time", pa.timestamp("us", tz="UTC")),
            pa.field("origin_resource", pa.string()),
        ]
        return pa.schema(fields)


def _check_identifier(name: str, what: str, where: str) -> None:
    if not _IDENTIFIER.match(name):
        raise ConfigError(
            f"{where}: {what} {name!r} must be lower-case letters, digits and underscores, "
            "starting with a letter"
        )
    if name.startswith(RESERVED_PREFIXES) or name in RESERVED_NAMES:
        raise ConfigError(f"{where}: {what} {name!r} is reserved for lineage columns")
