"""Standard catalogue items (基础目录): defined once by an upper tier, provided below.

A standard item names an entity, the fields every provider must carry and how often
they must change. It reaches every node below on the next connection; each node maps
one of its resources to it, and coverage shows who provides it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from node.catalog.entries import FREQUENCIES, Entry, _Problems, _text, check_resource_code
from node.entities import Entity

STANDARD_KEYS = frozenset({"code", "name", "summary", "entity", "fields", "update_frequency"})


@dataclass(frozen=True)
class StandardItem:
    code: str
    name: str
    summary: str
    entity: str
    fields: tuple[str, ...]
    update_frequency: str
    origin_node: str
    version: int = 1

    def document(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["fields"] = list(self.fields)
        return doc


def standard_from_document(doc: Mapping[str, Any]) -> StandardItem:
    values = {k: v for k, v in doc.items() if k in StandardItem.__dataclass_fields__}
    values["fields"] = tuple(values.get("fields") or ())
    return StandardItem(**values)


def build_standard(
    raw: Mapping[str, Any], *, node_code: str, entities: Mapping[str, Entity], where: str
) -> StandardItem:
    """Check a raw standard item (file or flags); raises UserError listing every problem."""
    problems = _Problems(f"{where} (standard item {raw.get('code') or raw.get('name') or '?'})")
    unknown = sorted(set(raw) - STANDARD_KEYS)
    if unknown:
        problems.add(f"unknown key(s) {', '.join(unknown)}")
    values = {k: _text(raw, k, problems) for k in ("code", "name", "entity", "update_frequency")}
    missing = [k for k, v in values.items() if not v]
    if missing:
        problems.add(f"mandatory metadata missing: {', '.join(missing)}")
    if values["code"]:
        wrong = check_resource_code(values["code"], node_code)
        if wrong:
            problems.add(wrong.replace("resource code", "standard item code"))
    entity = entities.get(values["entity"]) if values["entity"] else None
    if values["entity"] and entity is None:
        problems.add(
            f"entity {values['entity']!r} is not in this node's model "
            f"(known: {', '.join(sorted(entities))})"
        )
    raw_fields = raw.get("fields") or []
    if isinstance(raw_fields, str):
        raw_fields = [f.strip() for f in raw_fields.split(",") if f.strip()]
    if not isinstance(raw_fields, list) or not all(isinstance(f, str) for f in raw_fields):
        problems.add("fields must be a list of attribute names")
        raw_fields = []
    if not raw_fields:
        problems.add("fields: list the attributes every provider must carry")
    if entity is not None:
        for name in raw_fields:
            if name not in entity.column_names:
                problems.add(
                    f"field {name!r} is not an attribute of entity {entity.name!r} "
                    f"(its attributes: {', '.join(entity.column_names)})"
                )
    if values["update_frequency"] and values["update_frequency"] not in FREQUENCIES:
        problems.add(
            f"update_frequency {values['update_frequency']!r} is not one of: "
            f"{', '.join(FREQUENCIES)}"
        )
    problems.raise_if_any()
    return StandardItem(
        code=values["code"],
        name=values["name"],
        summary=_text(raw, "summary", problems),
        entity=values["entity"],
        fields=tuple(raw_fields),
        update_frequency=values["update_frequency"],
        origin_node=node_code,
    )


def mapping_problem(entry: Entry, item: StandardItem) -> str | None:
    """Why `entry` cannot provide `item`, or None if it can."""
    if entry.entity != item.entity:
        return (
            f"resource {entry.code} carries entity {entry.entity!r} but standard item "
            f"{item.code} ({item.name}) is about {item.entity!r}"
        )
    have = {f.name for f in entry.fields}
    lacking = [f for f in item.fields if f not in have]
    if lacking:
        return (
            f"resource {entry.code} lacks field(s) {', '.join(lacking)} that standard item "
            f"{item.code} ({item.name}) requires; add them with `catalog edit` first"
        )
    if FREQUENCIES[entry.update_frequency][0] > FREQUENCIES[item.update_frequency][0]:
        return (
            f"resource {entry.code} is updated {entry.update_frequency} but standard item "
            f"{item.code} ({item.name}) must be updated {item.update_frequency}"
        )
    return None


def digest(items: Iterable[StandardItem]) -> str:
    """Content hash of a set of standard items: equal sets, equal digests, in any order."""
    canonical = sorted(json.dumps(i.document(), sort_keys=True, ensure_ascii=False) for i in items)
    return hashlib.sha256("\n".join(canonical).encode()).hexdigest()
