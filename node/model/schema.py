"""The entity-relationship model (数据实体关系模型) as data: entities with a key and typed
attributes, code lists, relations, a semantic version, and the mapping that turns a
child's local names into the standard ones.

A model travels as a canonical JSON document (sorted keys), so two nodes holding the
same model hold the same digest. Files are parsed and checked in `node.model.files`;
this module only says what a checked model is.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.entities import Column, Entity

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
CARDINALITIES = ("one-to-one", "many-to-one", "one-to-many", "many-to-many")
# Identifier schemes an attribute may declare; quality rules check them by declaration,
# never by guessing from a value.
IDENTIFIER_SCHEMES = ("GB 11643", "GB 32100")
# Code lists whose values the node knows without the model listing them.
EXTERNAL_CODE_LISTS = ("GB/T 2260",)


def parse_version(text: str) -> tuple[int, int, int]:
    match = SEMVER.match(text)
    if not match:
        raise ValueError(f"version {text!r} is not a semantic version MAJOR.MINOR.PATCH")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@dataclass(frozen=True)
class CodeList:
    """Allowed codes for an attribute: listed here (code → label) or an external list."""

    name: str
    values: tuple[tuple[str, str], ...] = ()
    # An entry of EXTERNAL_CODE_LISTS when the values come from elsewhere (GB/T 2260).
    external: str | None = None
    description: str = ""

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(code for code, _ in self.values)


@dataclass(frozen=True)
class Attribute:
    name: str
    type: str  # a node.entities.COLUMN_TYPES name
    required: bool = False
    code_list: str | None = None  # a CodeList name of the same model
    identifier: str | None = None  # one of IDENTIFIER_SCHEMES
    sensitivity: str | None = None
    description: str = ""


@dataclass(frozen=True)
class ModelEntity:
    name: str
    key: str
    attributes: tuple[Attribute, ...]
    description: str = ""

    def attribute(self, name: str) -> Attribute | None:
        return next((a for a in self.attributes if a.name == name), None)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    def to_entity(self) -> Entity:
        """The storage shape of this entity (one column per attribute)."""
        columns = tuple(Column(a.name, a.type) for a in self.attributes)
        return Entity(
            name=self.name,
            key=self.key,
            columns=columns,
            description=self.description,
            required=tuple(a.name for a in self.attributes if a.required),
        )


@dataclass(frozen=True)
class Relation:
    """`source` --name--> `target`, e.g. person resides_in house (many-to-one via an attribute)."""

    name: str
    source: str
    target: str
    cardinality: str
    # How it is recorded: `via` names the source attribute holding the target's key;
    # `through` names a link entity with attributes named like both keys (many-to-many).
    via: str | None = None
    through: str | None = None
    description: str = ""


@dataclass(frozen=True)
class EntityMapping:
    """How one child names a standard entity: its local entity name and local attribute
    names (local → standard). Unlisted attributes keep their names."""

    local_name: str
    attributes: tuple[tuple[str, str], ...] = ()

    def standard_name(self, local: str) -> str:
        return dict(self.attributes).get(local, local)


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    entities: tuple[ModelEntity, ...]
    relations: tuple[Relation, ...] = ()
    code_lists: tuple[CodeList, ...] = ()
    description: str = ""
    # The node that published this version (empty for a model file not yet published).
    published_by: str = ""

    def entity(self, name: str) -> ModelEntity | None:
        return next((e for e in self.entities if e.name == name), None)

    def code_list(self, name: str) -> CodeList | None:
        return next((c for c in self.code_lists if c.name == name), None)

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        return parse_version(self.version)

    def storage_entities(self) -> dict[str, Entity]:
        return {e.name: e.to_entity() for e in self.entities}

    def label(self) -> str:
        by = f" ({self.published_by})" if self.published_by else ""
        return f"{self.name} {self.version}{by}"

    # ----- documents ---------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """The canonical JSON-able form (what the store keeps and the wire carries)."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "published_by": self.published_by,
            "entities": [
                {
                    "name": e.name,
                    "key": e.key,
                    "description": e.description,
                    "attributes": [_attribute_doc(a) for a in e.attributes],
                }
                for e in self.entities
            ],
            "relations": [
                {
                    "name": r.name,
                    "source": r.source,
                    "target": r.target,
                    "cardinality": r.cardinality,
                    "via": r.via,
                    "through": r.through,
                    "description": r.description,
                }
                for r in self.relations
            ],
            "code_lists": [
                {
                    "name": c.name,
                    "values": [list(v) for v in c.values],
                    "external": c.external,
                    "description": c.description,
                }
                for c in self.code_lists
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.document(), ensure_ascii=False, sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _attribute_doc(a: Attribute) -> dict[str, Any]:
    return {
        "name": a.name,
        "type": a.type,
        "required": a.required,
        "code_list": a.code_list,
        "identifier": a.identifier,
        "sensitivity": a.sensitivity,
        "description": a.description,
    }


def model_from_document(doc: Mapping[str, Any]) -> Model:
    """Rebuild a model from `Model.document()` output (store or wire); the document was
    checked when it was published, so a malformed one raises ValueError."""
    try:
        return Model(
            name=str(doc["name"]),
            version=str(doc["version"]),
            description=str(doc.get("description", "")),
            published_by=str(doc.get("published_by", "")),
            entities=tuple(
                ModelEntity(
                    name=e["name"],
                    key=e["key"],
                    description=e.get("description", ""),
                    attributes=tuple(Attribute(**a) for a in e["attributes"]),
                )
                for e in doc["entities"]
            ),
            relations=tuple(Relation(**r) for r in doc.get("relations", [])),
            code_lists=tuple(
                CodeList(
                    name=c["name"],
                    values=tuple((str(k), str(v)) for k, v in c.get("values", [])),
                    external=c.get("external"),
                    description=c.get("description", ""),
                )
                for c in doc.get("code_lists", [])
            ),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a model document: {exc}") from exc


def model_from_json(text: str) -> Model:
    return model_from_document(json.loads(text))


@dataclass(frozen=True)
class NodeMapping:
    """A child's local names for the standard model, by standard entity name."""

    entities: Mapping[str, EntityMapping] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {
            name: {"local_name": m.local_name, "attributes": dict(m.attributes)}
            for name, m in sorted(self.entities.items())
        }

    def for_entity(self, standard: str) -> EntityMapping:
        return self.entities.get(standard) or EntityMapping(local_name=standard)


def mapping_from_document(doc: Mapping[str, Any]) -> NodeMapping:
    return NodeMapping(
        {
            str(name): EntityMapping(
                local_name=str(m.get("local_name", name)),
                attributes=tuple(
                    sorted((str(k), str(v)) for k, v in m.get("attributes", {}).items())
                ),
            )
            for name, m in doc.items()
        }
    )
