"""Catalogue entries (GB/T 21063 core metadata) and the checks every entry passes.

An entry describes one data resource: who provides it, which entity and fields it
carries, how often it changes, how it may be shared. Entries are written by people
(TOML/YAML files, command flags, DCAT imports), so every check collects all problems
and reports them together, naming the file and the entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from node.divisions import lookup_division
from node.entities import COLUMN_TYPES, Entity
from node.errors import UserError

# Update frequency → (period, Chinese label, EU frequency authority code).
FREQUENCIES: dict[str, tuple[timedelta, str, str]] = {
    "realtime": (timedelta(minutes=5), "实时", "UPDATE_CONT"),
    "hourly": (timedelta(hours=1), "每小时", "HOURLY"),
    "daily": (timedelta(days=1), "每日", "DAILY"),
    "weekly": (timedelta(days=7), "每周", "WEEKLY"),
    "monthly": (timedelta(days=31), "每月", "MONTHLY"),
    "quarterly": (timedelta(days=92), "每季度", "QUARTERLY"),
    "yearly": (timedelta(days=366), "每年", "ANNUAL"),
}
# Resource formats of GB/T 21063.3 (信息资源格式).
FORMATS: dict[str, str] = {
    "database": "数据库",
    "spreadsheet": "电子表格",
    "document": "电子文件",
    "image": "图形图像",
    "stream": "流媒体",
    "self_describing": "自描述格式",
    "other": "其他",
}
# Open attribute (是否向社会开放).
OPEN_ATTRIBUTES: dict[str, str] = {
    "open": "无条件开放",
    "conditional": "有条件开放",
    "closed": "不予开放",
}
SHARING_KINDS = ("unconditional", "conditional", "none")
# What a sensitivity grade may do to an attribute leaving the node (node/store/outbound.py).
TREATMENTS = ("clear", "mask", "pseudonymise")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class SharingAttribute:
    """One of the province's sharing attributes; `kind` is what enforcement acts on."""

    id: str
    label: str
    kind: str


@dataclass(frozen=True)
class CatalogSettings:
    """Vocabularies a province names its own way, from the `[catalog]` config section."""

    sharing: tuple[SharingAttribute, ...] = (
        SharingAttribute("unconditional", "无条件共享", "unconditional"),
        SharingAttribute("conditional", "有条件共享", "conditional"),
        SharingAttribute("not_shared", "不予共享", "none"),
    )
    sensitivity_grades: tuple[str, ...] = ("general", "important", "core")
    # What a grade does to an attribute of a conditional resource as it leaves the node
    # (clear, mask or pseudonymise; see node/store/outbound.py), as (grade, treatment).
    grade_treatment: tuple[tuple[str, str], ...] = (
        ("general", "clear"),
        ("important", "mask"),
        ("core", "pseudonymise"),
    )

    def sharing_attribute(self, sharing_id: str) -> SharingAttribute | None:
        return next((s for s in self.sharing if s.id == sharing_id), None)

    def treatment_of(self, grade: str) -> str:
        """A grade's treatment; a grade the config does not name is pseudonymised (the
        safe side: a model may grade with names this province does not use)."""
        return dict(self.grade_treatment).get(grade, "pseudonymise")


@dataclass(frozen=True)
class Field:
    """One information item (信息项) of a resource."""

    name: str
    type: str
    description: str = ""
    code_list: str = ""
    sensitivity: str = ""


@dataclass(frozen=True)
class Entry:
    code: str
    name: str
    summary: str
    department: str
    source_node: str
    source_department: str
    entity: str
    fields: tuple[Field, ...]
    format: str
    update_frequency: str
    sharing: str
    sharing_kind: str
    sharing_conditions: str
    open_attribute: str
    sensitivity: str
    keywords: tuple[str, ...] = ()
    provides: str = ""
    version: int = 1
    status: str = "draft"
    published_on: date | None = None
    published_at: datetime | None = None
    last_change_at: datetime | None = None
    updated_by: str = ""
    updated_at: datetime | None = None

    def document(self) -> dict[str, Any]:
        """Plain JSON-able form (dates as ISO strings), the shape every layer exchanges."""
        doc = asdict(self)
        doc["fields"] = [asdict(f) for f in self.fields]
        doc["keywords"] = list(self.keywords)
        for key in ("published_on", "published_at", "last_change_at", "updated_at"):
            value = doc[key]
            doc[key] = value.isoformat() if value is not None else None
        return doc

    def with_changes(self, **changes: Any) -> Entry:
        return replace(self, **changes)


# Metadata an entry must have (the rest have defaults).
MANDATORY = ("code", "name", "summary", "department", "entity", "update_frequency", "sharing")
# Keys an entry file may use; anything else is a typo worth reporting.
ENTRY_KEYS = frozenset(
    {
        "code",
        "name",
        "summary",
        "department",
        "source_node",
        "source_department",
        "entity",
        "fields",
        "format",
        "update_frequency",
        "sharing",
        "sharing_conditions",
        "open_attribute",
        "sensitivity",
        "keywords",
        "provides",
    }
)
FIELD_KEYS = frozenset({"name", "type", "description", "code_list", "sensitivity"})


@dataclass
class _Problems:
    where: str
    items: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.items.append(message)

    def raise_if_any(self) -> None:
        if len(self.items) == 1:
            raise UserError(f"{self.where}: {self.items[0]}")
        if self.items:
            raise UserError(f"{self.where}: " + "; ".join(self.items))


def _text(raw: Mapping[str, Any], key: str, problems: _Problems) -> str:
    value = raw.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str | int) or isinstance(value, bool):
        problems.add(f"{key} must be text, got {value!r}")
        return ""
    return str(value).strip()


def check_resource_code(code: str, node_code: str) -> str | None:
    """Why `code` cannot be a resource code of node `node_code`, or None if it can."""
    prefix = node_code + "-"
    if not code.startswith(prefix):
        return (
            f"resource code {code!r} is outside this node's prefix: codes here start with "
            f"{prefix!r} (e.g. {prefix}GA-001)"
        )
    if not _LOCAL_PART.match(code[len(prefix) :]):
        return (
            f"resource code {code!r}: after {prefix!r} use letters, digits, '-', '_' or '.' "
            "(at most 64)"
        )
    return None


def _fields(
    raw: object, entity: Entity | None, settings: CatalogSettings, problems: _Problems
) -> tuple[Field, ...]:
    if raw is None or raw == []:
        problems.add("fields (information items) are missing: list at least the entity's key")
        return ()
    specs: list[Mapping[str, Any]] = []
    if isinstance(raw, str):
        specs = [{"name": part.strip()} for part in raw.split(",") if part.strip()]
    elif isinstance(raw, Sequence):
        for item in raw:
            specs.append({"name": item} if isinstance(item, str) else item)
    else:
        problems.add("fields must be a list of field tables or names")
        return ()
    if not specs:
        problems.add("fields (information items) are missing: list at least the entity's key")
        return ()
    result: list[Field] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs, start=1):
        if not isinstance(spec, Mapping):
            problems.add(f"field #{i} must be a table with a name")
            continue
        unknown = sorted(set(spec) - FIELD_KEYS)
        if unknown:
            problems.add(f"field #{i}: unknown key(s) {', '.join(unknown)}")
        name = _text(spec, "name", problems)
        if not name:
            problems.add(f"field #{i} has no name")
            continue
        if name in seen:
            problems.add(f"field {name!r} is listed twice")
        seen.add(name)
        declared = _text(spec, "type", problems)
        attribute_type = None
        if entity is not None:
            try:
                attribute_type = entity.column(name).type
            except KeyError:
                problems.add(
                    f"field {name!r} is not an attribute of entity {entity.name!r} "
                    f"(its attributes: {', '.join(entity.column_names)})"
                )
        if declared and declared not in COLUMN_TYPES:
            problems.add(
                f"field {name!r} has type {declared!r}, which the model does not know "
                f"(known types: {', '.join(COLUMN_TYPES)})"
            )
        elif declared and attribute_type and declared != attribute_type:
            problems.add(
                f"field {name!r} is declared {declared!r} but entity {entity.name!r} "  # type: ignore[union-attr]
                f"holds it as {attribute_type!r}"
            )
        sensitivity = _text(spec, "sensitivity", problems)
        if sensitivity and sensitivity not in settings.sensitivity_grades:
            problems.add(
                f"field {name!r} has sensitivity {sensitivity!r}; grades here: "
                f"{', '.join(settings.sensitivity_grades)}"
            )
        result.append(
            Field(
                name=name,
                type=declared or attribute_type or "string",
                description=_text(spec, "description", problems),
                code_list=_text(spec, "code_list", problems),
                sensitivity=sensitivity,
            )
        )
    if entity is not None and result and entity.key not in seen:
        problems.add(f"fields must include the key {entity.key!r} of entity {entity.name!r}")
    return tuple(result)


def _choice(
    raw: Mapping[str, Any], key: str, choices: Sequence[str], default: str, problems: _Problems
) -> str:
    value = _text(raw, key, problems) or default
    if value and value not in choices:
        problems.add(f"{key} {value!r} is not one of: {', '.join(choices)}")
    return value


def build_entry(
    raw: Mapping[str, Any],
    *,
    node_code: str,
    entities: Mapping[str, Entity],
    settings: CatalogSettings,
    where: str,
) -> Entry:
    """Check a raw entry (from a file, flags or an import) and build it as a draft.

    Raises UserError listing every problem, prefixed with `where` (file and entry).
    """
    label = raw.get("code") or raw.get("name") or "?"
    problems = _Problems(f"{where} (resource {label})")
    unknown = sorted(set(raw) - ENTRY_KEYS)
    if unknown:
        problems.add(
            f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(ENTRY_KEYS))})"
        )
    values = {key: _text(raw, key, problems) for key in MANDATORY}
    missing = [key for key in MANDATORY if not values[key]]
    if missing:
        problems.add(f"mandatory metadata missing: {', '.join(missing)}")
    code = values["code"]
    if code:
        wrong = check_resource_code(code, node_code)
        if wrong:
            problems.add(wrong)
    entity = entities.get(values["entity"]) if values["entity"] else None
    if values["entity"] and entity is None:
        problems.add(
            f"entity {values['entity']!r} is not in this node's model "
            f"(known: {', '.join(sorted(entities))})"
        )
    fields = _fields(raw.get("fields"), entity, settings, problems)
    frequency = values["update_frequency"]
    if frequency and frequency not in FREQUENCIES:
        problems.add(f"update_frequency {frequency!r} is not one of: {', '.join(FREQUENCIES)}")
    sharing = settings.sharing_attribute(values["sharing"]) if values["sharing"] else None
    if values["sharing"] and sharing is None:
        problems.add(
            f"sharing {values['sharing']!r} is not a sharing attribute of this province "
            f"(configured: {', '.join(s.id for s in settings.sharing)})"
        )
    conditions = _text(raw, "sharing_conditions", problems)
    if sharing is not None and sharing.kind == "conditional" and not conditions:
        problems.add(f"sharing {sharing.id!r} is conditional: state its sharing_conditions")
    source_node = _text(raw, "source_node", problems) or node_code
    try:
        lookup_division(source_node)
    except UserError as exc:
        problems.add(f"source_node: {exc}")
    keywords_raw = raw.get("keywords", [])
    if isinstance(keywords_raw, str):
        keywords_raw = [k for k in re.split(r"[,，;；]", keywords_raw)]
    if not isinstance(keywords_raw, Sequence) or not all(isinstance(k, str) for k in keywords_raw):
        problems.add("keywords must be a list of words")
        keywords_raw = []
    grades = settings.sensitivity_grades
    entry = Entry(
        code=code,
        name=values["name"],
        summary=values["summary"],
        department=values["department"],
        source_node=source_node,
        source_department=_text(raw, "source_department", problems) or values["department"],
        entity=values["entity"],
        fields=fields,
        format=_choice(raw, "format", list(FORMATS), "database", problems),
        update_frequency=frequency,
        sharing=values["sharing"],
        sharing_kind=sharing.kind if sharing else "",
        sharing_conditions=conditions,
        open_attribute=_choice(raw, "open_attribute", list(OPEN_ATTRIBUTES), "closed", problems),
        sensitivity=_choice(raw, "sensitivity", grades, grades[0], problems),
        keywords=tuple(k.strip() for k in keywords_raw if k.strip()),
        provides=_text(raw, "provides", problems),
    )
    problems.raise_if_any()
    return entry


def editable_fields(entry: Entry) -> dict[str, Any]:
    """The entry as an entry file would state it: what `edit` starts from."""
    doc = entry.document()
    return {key: doc[key] for key in ENTRY_KEYS if doc.get(key) not in (None, "", [])}


def entry_from_document(doc: Mapping[str, Any]) -> Entry:
    """Rebuild an entry from its stored document (already checked when it was written)."""
    values = dict(doc)
    values["fields"] = tuple(Field(**f) for f in values.get("fields") or ())
    values["keywords"] = tuple(values.get("keywords") or ())
    for key, parse in (
        ("published_on", date.fromisoformat),
        ("published_at", datetime.fromisoformat),
        ("last_change_at", datetime.fromisoformat),
        ("updated_at", datetime.fromisoformat),
    ):
        value = values.get(key)
        if isinstance(value, str):
            values[key] = parse(value)
    known = {f for f in Entry.__dataclass_fields__}
    return Entry(**{k: v for k, v in values.items() if k in known})
