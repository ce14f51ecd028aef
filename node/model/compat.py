"""Is a new model version compatible with the old one? (schema-registry style)

Children adopt what their province publishes; a change that could reject or lose data
they already hold must not arrive as a minor version. `diff` lists every change with
its class, `required_bump` says which part of the version it needs, and
`check_version` refuses a version number that understates the change.

Classes: "addition" (something new, nothing existing affected), "widening" (existing
data stays valid, more is accepted), "breaking" (existing data or consumers may break)
and "cosmetic" (descriptions, labels, sensitivity grades).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from node.model.schema import (
    Attribute,
    CodeList,
    Model,
    ModelEntity,
    Relation,
    parse_version,
)

KINDS = ("addition", "widening", "breaking", "cosmetic")
# (old type, new type) pairs where every old value converts without loss.
WIDER_TYPES = frozenset(
    {
        ("integer", "double"),
        ("integer", "decimal"),
        ("decimal", "double"),
        ("date", "timestamp"),
    }
)
# Cardinality widenings: the new one admits every pairing the old one did.
WIDER_CARDINALITIES = frozenset(
    {
        ("one-to-one", "many-to-one"),
        ("one-to-one", "one-to-many"),
        ("one-to-one", "many-to-many"),
        ("many-to-one", "many-to-many"),
        ("one-to-many", "many-to-many"),
    }
)


@dataclass(frozen=True)
class Change:
    kind: str  # "addition" | "widening" | "breaking" | "cosmetic"
    subject: str  # e.g. "person.sex", "relation resides_in", "code list GB/T 2261.1"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


def diff(old: Model, new: Model) -> list[Change]:
    """Every change from `old` to `new`: model, then code lists, entities and relations,
    each in the old model's order followed by what the new one adds."""
    changes: list[Change] = []
    if old.name != new.name:
        changes.append(Change("breaking", "model", f"renamed from {old.name!r} to {new.name!r}"))
    if old.description != new.description:
        changes.append(Change("cosmetic", "model", "description changed"))
    changes += _code_list_changes(old, new)
    for name in _merged([e.name for e in old.entities], [e.name for e in new.entities]):
        before, after = old.entity(name), new.entity(name)
        if before is None and after is not None:
            changes.append(Change("addition", f"entity {name}", "entity added"))
        elif after is None:
            changes.append(Change("breaking", f"entity {name}", "entity removed"))
        elif before is not None:
            changes += _entity_changes(old, new, before, after)
    old_relations = {r.name: r for r in old.relations}
    new_relations = {r.name: r for r in new.relations}
    for name in _merged(list(old_relations), list(new_relations)):
        subject = f"relation {name}"
        if name not in old_relations:
            changes.append(Change("addition", subject, "relation added"))
        elif name not in new_relations:
            changes.append(Change("breaking", subject, "relation removed"))
        else:
            changes += _relation_changes(subject, old_relations[name], new_relations[name])
    return changes


def _merged(old: Sequence[str], new: Sequence[str]) -> list[str]:
    """Old names in their order, then names only the new model has, in its order."""
    return [*old, *(n for n in new if n not in old)]


def _code_list_changes(old: Model, new: Model) -> list[Change]:
    changes: list[Change] = []
    names = _merged([c.name for c in old.code_lists], [c.name for c in new.code_lists])
    for name in names:
        before, after = old.code_list(name), new.code_list(name)
        subject = f"code list {name}"
        if before is None:
            changes.append(Change("addition", subject, "code list added"))
        elif after is None:
            changes.append(Change("breaking", subject, "code list removed"))
        else:
            changes += _code_values_changes(subject, before, after)
    return changes


def _code_values_changes(subject: str, before: CodeList, after: CodeList) -> list[Change]:
    changes: list[Change] = []
    if before.external != after.external:
        changes.append(
            Change(
                "breaking",
                subject,
                f"external list changed from {before.external or 'none'} "
                f"to {after.external or 'none'}",
            )
        )
    old_values, new_values = dict(before.values), dict(after.values)
    removed = [c for c in old_values if c not in new_values]
    added = [c for c in new_values if c not in old_values]
    relabelled = [c for c in old_values if c in new_values and old_values[c] != new_values[c]]
    if removed:
        changes.append(
            Change("breaking", subject, f"changed code values: removed {', '.join(removed)}")
        )
    if added:
        changes.append(Change("addition", subject, f"codes added: {', '.join(added)}"))
    if relabelled:
        changes.append(
            Change(
                "cosmetic",
                subject,
                "labels changed: "
                + ", ".join(f"{c} {old_values[c]} → {new_values[c]}" for c in relabelled),
            )
        )
    if before.description != after.description:
        changes.append(Change("cosmetic", subject, "description changed"))
    return changes


def _entity_changes(
    old: Model, new: Model, before: ModelEntity, after: ModelEntity
) -> list[Change]:
    changes: list[Change] = []
    entity = before.name
    if before.key != after.key:
        changes.append(
            Change("breaking", f"entity {entity}", f"key changed from {before.key} to {after.key}")
        )
    if before.description != after.description:
        changes.append(Change("cosmetic", f"entity {entity}", "description changed"))
    for name in _merged(before.attribute_names, after.attribute_names):
        was, now = before.attribute(name), after.attribute(name)
        subject = f"{entity}.{name}"
        if was is None and now is not None:
            if now.required:
                detail = "required attribute added; existing records and sources lack it"
                changes.append(Change("breaking", subject, detail))
            else:
                changes.append(Change("addition", subject, "optional attribute added"))
        elif now is None:
            changes.append(Change("breaking", subject, "attribute removed"))
        elif was is not None:
            changes += _attribute_changes(old, new, subject, was, now)
    common_before = [n for n in before.attribute_names if after.attribute(n) is not None]
    common_after = [n for n in after.attribute_names if before.attribute(n) is not None]
    if common_before != common_after:
        changes.append(Change("cosmetic", f"entity {entity}", "attribute order changed"))
    return changes


def _attribute_changes(
    old: Model, new: Model, subject: str, was: Attribute, now: Attribute
) -> list[Change]:
    changes: list[Change] = []
    if was.type != now.type:
        wider = now.type == "string" or (was.type, now.type) in WIDER_TYPES
        changes.append(
            Change(
                "widening" if wider else "breaking",
                subject,
                f"type {was.type} → {now.type}" + ("" if wider else " (narrowed)"),
            )
        )
    if was.required != now.required:
        if now.required:
            changes.append(Change("breaking", subject, "now required"))
        else:
            changes.append(Change("widening", subject, "no longer required"))
    if was.code_list != now.code_list:
        changes.append(_code_list_switch(old, new, subject, was.code_list, now.code_list))
    if was.identifier != now.identifier:
        if now.identifier is None:
            detail = f"identifier scheme {was.identifier} dropped"
            changes.append(Change("widening", subject, detail))
        else:
            detail = f"identifier scheme {was.identifier or 'none'} → {now.identifier}"
            changes.append(Change("breaking", subject, detail))
    if was.sensitivity != now.sensitivity:
        detail = f"sensitivity {was.sensitivity or 'none'} → {now.sensitivity or 'none'}"
        changes.append(Change("cosmetic", subject, detail))
    if was.description != now.description:
        changes.append(Change("cosmetic", subject, "description changed"))
    return changes


def _code_list_switch(
    old: Model, new: Model, subject: str, before: str | None, after: str | None
) -> Change:
    if after is None:
        return Change("widening", subject, f"code list {before} dropped; any value accepted")
    if before is None:
        return Change("breaking", subject, f"code list {after} added; values now restricted")
    was, now = old.code_list(before), new.code_list(after)
    if was is not None and now is not None and _covers(now, was):
        return Change("widening", subject, f"code list {before} → {after}, which has every code")
    return Change("breaking", subject, f"code list {before} → {after}, which lacks codes")


def _covers(wide: CodeList, narrow: CodeList) -> bool:
    if narrow.external or wide.external:
        return narrow.external == wide.external and not narrow.values
    return set(narrow.codes) <= set(wide.codes)


def _relation_changes(subject: str, was: Relation, now: Relation) -> list[Change]:
    changes: list[Change] = []
    for field in ("source", "target", "via", "through"):
        before, after = getattr(was, field), getattr(now, field)
        if before != after:
            changes.append(
                Change("breaking", subject, f"{field} {before or 'none'} → {after or 'none'}")
            )
    if was.cardinality != now.cardinality:
        wider = (was.cardinality, now.cardinality) in WIDER_CARDINALITIES
        changes.append(
            Change(
                "widening" if wider else "breaking",
                subject,
                f"cardinality {was.cardinality} → {now.cardinality}",
            )
        )
    if was.description != now.description:
        changes.append(Change("cosmetic", subject, "description changed"))
    return changes


def breaking(changes: Iterable[Change]) -> list[Change]:
    return [c for c in changes if c.kind == "breaking"]


def required_bump(changes: Iterable[Change]) -> str:
    """ "major" for any breaking change, "minor" for additions or widenings, else "patch"."""
    kinds = {c.kind for c in changes}
    if "breaking" in kinds:
        return "major"
    if kinds & {"addition", "widening"}:
        return "minor"
    return "patch"


def bumped(version: str, bump: str) -> str:
    """The smallest version after `version` with the given bump (1.4.2 + minor = 1.5.0)."""
    major, minor, patch = parse_version(version)
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def check_version(old: Model, new: Model, changes: Sequence[Change]) -> str | None:
    """Why `new`'s version number does not fit `changes` since `old`, or None if it does."""
    was, now = old.version_tuple, new.version_tuple
    if now <= was:
        return f"version {new.version} is not greater than {old.version}"
    need = required_bump(changes)
    if need == "major" and now[0] == was[0]:
        first = breaking(changes)[0]
        return (
            f"{len(breaking(changes))} breaking change(s) need a new major version "
            f"(at least {bumped(old.version, 'major')}, not {new.version}); first: "
            f"{first.subject}: {first.detail}"
        )
    if need == "minor" and now[:2] == was[:2]:
        first = next(c for c in changes if c.kind in ("addition", "widening"))
        return (
            f"additions need at least a minor version ({bumped(old.version, 'minor')}, "
            f"not {new.version}); first: {first.subject}: {first.detail}"
        )
    return None
