"""Entities a node holds: the two base entities every node knows, plus any a config declares.

An entity is one table of records keyed by one column. Column types are a small fixed
vocabulary so that every tier agrees on the wire schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
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
# Tables the node keeps in its change log for itself (catalogue, node tree).
INTERNAL_NAMES = frozenset({"catalog", "federation_nodes"})
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


def _columns(spec: Iterable[tuple[str, str]]) -> tuple[Column, ...]:
    return tuple(Column(name, type_) for name, type_ in spec)


PERSON = Entity(
    name="person",
    key="id_number",
    description="Natural person (自然人), keyed by citizen ID number (GB 11643).",
    columns=_columns(
        [
            ("id_number", "string"),
            ("name", "string"),
            ("sex", "string"),
            ("birth_date", "date"),
            ("phone", "string"),
            ("address", "string"),
            ("division_code", "string"),
        ]
    ),
)

LEGAL_ENTITY = Entity(
    name="legal_entity",
    key="uscc",
    description="Legal entity (法人), keyed by unified social credit code (GB 32100).",
    columns=_columns(
        [
            ("uscc", "string"),
            ("name", "string"),
            ("legal_rep_id_number", "string"),
            ("registered_on", "date"),
            ("registered_capital", "decimal"),
            ("address", "string"),
            ("division_code", "string"),
        ]
    ),
)

BASE_ENTITIES: tuple[Entity, ...] = (PERSON, LEGAL_ENTITY)


def _check_identifier(name: str, what: str, where: str) -> None:
    if not _IDENTIFIER.match(name):
        raise ConfigError(
            f"{where}: {what} {name!r} must be lower-case letters, digits and underscores, "
            "starting with a letter"
        )
    if name.startswith(RESERVED_PREFIXES) or name in RESERVED_NAMES:
        raise ConfigError(f"{where}: {what} {name!r} is reserved for lineage columns")


def entity_from_config(spec: Mapping[str, object], where: str) -> Entity:
    """Build an entity from a `[[entities]]` table of the config file, checking every part."""
    name = spec.get("name")
    key = spec.get("key")
    columns = spec.get("columns")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: entity needs a string 'name'")
    where = f"{where} entity {name!r}"
    _check_identifier(name, "entity name", where)
    if not isinstance(key, str):
        raise ConfigError(f"{where}: needs a string 'key' naming its key column")
    if not isinstance(columns, Mapping) or not columns:
        raise ConfigError(f"{where}: needs a 'columns' table of name = type")
    parsed: list[Column] = []
    for col_name, col_type in columns.items():
        _check_identifier(str(col_name), "column", where)
        if col_type not in COLUMN_TYPES:
            raise ConfigError(
                f"{where}: column {col_name!r} has unknown type {col_type!r}; "
                f"use one of {', '.join(COLUMN_TYPES)}"
            )
        parsed.append(Column(str(col_name), str(col_type)))
    if key not in {c.name for c in parsed}:
        raise ConfigError(f"{where}: key {key!r} is not one of its columns")
    description = spec.get("description", "")
    return Entity(name=name, key=key, columns=tuple(parsed), description=str(description))


def entity_catalog(extra: Iterable[Entity]) -> dict[str, Entity]:
    """The base entities plus configured ones, by name; a name may not be declared twice."""
    result = {e.name: e for e in BASE_ENTITIES}
    for entity in extra:
        if entity.name in INTERNAL_NAMES:
            raise ConfigError(
                f"entity name {entity.name!r} is reserved for the node's own tables; "
                "choose another name"
            )
        if entity.name in result:
            raise ConfigError(
                f"entity {entity.name!r} is declared twice (or shadows a base entity)"
            )
        result[entity.name] = entity
    return result
