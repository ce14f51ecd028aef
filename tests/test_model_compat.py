"""Version compatibility of models: every kind of change gets its class, and a version
number that understates the change is refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from node.model import load_base_model
from node.model.compat import Change, bumped, check_version, diff, required_bump
from node.model.compat import breaking as breaking_changes
from node.model.schema import Attribute, CodeList, Model, ModelEntity, Relation

BASE = load_base_model()


def with_entity(model: Model, name: str, **changes: Any) -> Model:
    entities = tuple(
        dataclasses.replace(e, **changes) if e.name == name else e for e in model.entities
    )
    return dataclasses.replace(model, entities=entities)


def with_attribute(model: Model, entity: str, attribute: str, **changes: Any) -> Model:
    found = model.entity(entity)
    assert found is not None and found.attribute(attribute) is not None
    attributes = tuple(
        dataclasses.replace(a, **changes) if a.name == attribute else a for a in found.attributes
    )
    return with_entity(model, entity, attributes=attributes)


def with_attributes(model: Model, entity: str, attributes: tuple[Attribute, ...]) -> Model:
    return with_entity(model, entity, attributes=attributes)


def with_code_list(model: Model, name: str, **changes: Any) -> Model:
    lists = tuple(
        dataclasses.replace(c, **changes) if c.name == name else c for c in model.code_lists
    )
    return dataclasses.replace(model, code_lists=lists)


def with_relation(model: Model, name: str, **changes: Any) -> Model:
    relations = tuple(
        dataclasses.replace(r, **changes) if r.name == name else r for r in model.relations
    )
    return dataclasses.replace(model, relations=relations)


def person(model: Model = BASE) -> ModelEntity:
    found = model.entity("person")
    assert found is not None
    return found


def only(old: Model, new: Model) -> tuple[str, str, str]:
    [change] = diff(old, new)
    return change.kind, change.subject, change.detail


def test_same_model_has_no_changes() -> None:
    assert diff(BASE, BASE) == []
    assert required_bump([]) == "patch"


def test_entities_added_and_removed() -> None:
    vehicle = ModelEntity(
        name="vehicle", key="plate", attributes=(Attribute("plate", "string", required=True),)
    )
    bigger = dataclasses.replace(BASE, entities=(*BASE.entities, vehicle))
    assert only(BASE, bigger) == ("addition", "entity vehicle", "entity added")
    assert only(bigger, BASE) == ("breaking", "entity vehicle", "entity removed")


def test_attributes_added_and_removed() -> None:
    email = Attribute("email", "string")
    optional = with_attributes(BASE, "person", (*person().attributes, email))
    assert only(BASE, optional) == ("addition", "person.email", "optional attribute added")
    required = with_attributes(
        BASE, "person", (*person().attributes, dataclasses.replace(email, required=True))
    )
    assert diff(BASE, required)[0].kind == "breaking"
    assert diff(BASE, required)[0].subject == "person.email"
    assert only(optional, BASE) == ("breaking", "person.email", "attribute removed")


def test_key_change_is_breaking() -> None:
    rekeyed = with_attribute(BASE, "person", "phone", required=True)
    rekeyed = with_entity(rekeyed, "person", key="phone")
    changes = diff(BASE, rekeyed)
    assert [(c.kind, c.subject) for c in changes] == [
        ("breaking", "entity person"),
        ("breaking", "person.phone"),
    ]
    assert changes[0].detail == "key changed from id_number to phone"


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        ("integer", "double", "widening"),
        ("integer", "decimal", "widening"),
        ("decimal", "double", "widening"),
        ("date", "timestamp", "widening"),
        ("integer", "string", "widening"),
        ("date", "string", "widening"),
        ("boolean", "string", "widening"),
        ("string", "integer", "breaking"),
        ("double", "integer", "breaking"),
        ("double", "decimal", "breaking"),
        ("timestamp", "date", "breaking"),
        ("boolean", "integer", "breaking"),
    ],
)
def test_type_changes(old: str, new: str, kind: str) -> None:
    before = with_attribute(BASE, "person", "phone", type=old)
    after = with_attribute(BASE, "person", "phone", type=new)
    change_kind, subject, detail = only(before, after)
    assert (change_kind, subject) == (kind, "person.phone")
    assert detail.startswith(f"type {old} → {new}")


def test_required_changes() -> None:
    required = with_attribute(BASE, "person", "phone", required=True)
    assert only(BASE, required) == ("breaking", "person.phone", "now required")
    assert only(required, BASE) == ("widening", "person.phone", "no longer required")


def test_code_values_added_removed_relabelled() -> None:
    sex = BASE.code_list("GB/T 2261.1")
    assert sex is not None
    more = with_code_list(BASE, "GB/T 2261.1", values=(*sex.values, ("5", "女性改（变）为男性")))
    assert only(BASE, more) == ("addition", "code list GB/T 2261.1", "codes added: 5")
    assert only(more, BASE) == (
        "breaking",
        "code list GB/T 2261.1",
        "changed code values: removed 5",
    )
    relabelled = with_code_list(
        BASE,
        "GB/T 2261.1",
        values=tuple((c, "男" if c == "1" else label) for c, label in sex.values),
    )
    assert only(BASE, relabelled) == (
        "cosmetic",
        "code list GB/T 2261.1",
        "labels changed: 1 男性 → 男",
    )


def test_code_lists_added_and_removed() -> None:
    extra = CodeList("GB/T 4761", values=(("01", "户主"),))
    bigger = dataclasses.replace(BASE, code_lists=(*BASE.code_lists, extra))
    assert only(BASE, bigger) == ("addition", "code list GB/T 4761", "code list added")
    assert only(bigger, BASE) == ("breaking", "code list GB/T 4761", "code list removed")


def test_attribute_switches_code_list() -> None:
    sex = BASE.code_list("GB/T 2261.1")
    assert sex is not None
    wider = CodeList("sex-wide", values=(*sex.values, ("5", "其他")))
    narrower = CodeList("sex-narrow", values=(("1", "男"), ("2", "女")))
    model = dataclasses.replace(BASE, code_lists=(*BASE.code_lists, wider, narrower))
    to_wider = with_attribute(model, "person", "sex", code_list="sex-wide")
    to_narrower = with_attribute(model, "person", "sex", code_list="sex-narrow")
    assert only(model, to_wider)[:2] == ("widening", "person.sex")
    assert only(model, to_narrower)[:2] == ("breaking", "person.sex")
    assert only(model, to_narrower)[2] == "code list GB/T 2261.1 → sex-narrow, which lacks codes"
    # A list added where there was none narrows; dropping one widens.
    free = with_attribute(BASE, "person", "sex", code_list=None)
    assert only(free, BASE)[:2] == ("breaking", "person.sex")
    assert only(BASE, free)[:2] == ("widening", "person.sex")


def test_identifier_sensitivity_description() -> None:
    other = with_attribute(BASE, "person", "id_number", identifier="GB 32100")
    assert only(BASE, other) == (
        "breaking",
        "person.id_number",
        "identifier scheme GB 11643 → GB 32100",
    )
    added = with_attribute(BASE, "person", "phone", identifier="GB 11643")
    assert only(BASE, added)[0] == "breaking"
    dropped = with_attribute(BASE, "person", "id_number", identifier=None)
    assert only(BASE, dropped)[0] == "widening"
    graded = with_attribute(BASE, "person", "phone", sensitivity="core")
    assert only(BASE, graded) == ("cosmetic", "person.phone", "sensitivity important → core")
    described = with_attribute(BASE, "person", "phone", description="手机")
    assert only(BASE, described) == ("cosmetic", "person.phone", "description changed")
    assert only(BASE, with_entity(BASE, "house", description="x")) == (
        "cosmetic",
        "entity house",
        "description changed",
    )
    assert only(BASE, dataclasses.replace(BASE, description="x")) == (
        "cosmetic",
        "model",
        "description changed",
    )


def test_relations() -> None:
    owns = Relation("owns", "person", "house", "one-to-many", through="residence")
    bigger = dataclasses.replace(BASE, relations=(*BASE.relations, owns))
    assert only(BASE, bigger) == ("addition", "relation owns", "relation added")
    assert only(bigger, BASE) == ("breaking", "relation owns", "relation removed")


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        ("one-to-one", "many-to-one", "widening"),
        ("one-to-one", "one-to-many", "widening"),
        ("one-to-many", "many-to-many", "widening"),
        ("many-to-one", "many-to-many", "widening"),
        ("many-to-one", "one-to-one", "breaking"),
        ("many-to-many", "one-to-many", "breaking"),
        ("many-to-one", "one-to-many", "breaking"),
    ],
)
def test_cardinality_changes(old: str, new: str, kind: str) -> None:
    before = with_relation(BASE, "resides_in", cardinality=old)
    after = with_relation(BASE, "resides_in", cardinality=new)
    assert only(before, after) == (kind, "relation resides_in", f"cardinality {old} → {new}")


def test_relation_recording_changes_are_breaking() -> None:
    assert only(BASE, with_relation(BASE, "resides_in", through="employment")) == (
        "breaking",
        "relation resides_in",
        "through residence → employment",
    )
    assert only(BASE, with_relation(BASE, "stands_on", via="address"))[0] == "breaking"
    assert only(BASE, with_relation(BASE, "employed_by", target="house"))[0] == "breaking"


def test_diff_order_is_deterministic() -> None:
    new = with_attribute(BASE, "person", "phone", required=True)
    new = with_attribute(new, "house", "floors", type="double")
    new = with_relation(new, "stands_on", description="x")
    new = with_code_list(new, "GB/T 2261.1", description="x")
    subjects = [c.subject for c in diff(BASE, new)]
    assert subjects == [
        "code list GB/T 2261.1",
        "person.phone",
        "house.floors",
        "relation stands_on",
    ]
    assert diff(BASE, new) == diff(BASE, new)


def test_required_bump_and_breaking() -> None:
    cosmetic = Change("cosmetic", "person.phone", "description changed")
    addition = Change("addition", "person.email", "optional attribute added")
    widening = Change("widening", "house.floors", "type integer → double")
    broken = Change("breaking", "person.phone", "now required")
    assert required_bump([cosmetic]) == "patch"
    assert required_bump([cosmetic, addition]) == "minor"
    assert required_bump([widening]) == "minor"
    assert required_bump([addition, broken]) == "major"
    assert breaking_changes([cosmetic, broken, addition]) == [broken]
    assert bumped("1.4.2", "major") == "2.0.0"
    assert bumped("1.4.2", "minor") == "1.5.0"
    assert bumped("1.4.2", "patch") == "1.4.3"


def versioned(model: Model, version: str) -> Model:
    return dataclasses.replace(model, version=version)


def test_check_version() -> None:
    old = versioned(BASE, "1.4.2")
    addition = with_attributes(
        old, "person", (*person(old).attributes, Attribute("email", "string"))
    )
    removal = with_attributes(old, "person", person(old).attributes[:-1])
    cosmetic = with_attribute(old, "person", "phone", description="手机")

    def problem(new: Model, version: str) -> str | None:
        new = versioned(new, version)
        return check_version(old, new, diff(old, new))

    assert problem(cosmetic, "1.4.2") == "version 1.4.2 is not greater than 1.4.2"
    assert problem(cosmetic, "1.3.9") == "version 1.3.9 is not greater than 1.4.2"
    assert problem(cosmetic, "1.4.3") is None
    assert problem(addition, "1.4.3") == (
        "additions need at least a minor version (1.5.0, not 1.4.3); first: person.email: "
        "optional attribute added"
    )
    assert problem(addition, "1.5.0") is None
    assert problem(addition, "2.0.0") is None
    assert problem(removal, "1.5.0") == (
        "1 breaking change(s) need a new major version (at least 2.0.0, not 1.5.0); first: "
        "person.division_code: attribute removed"
    )
    assert problem(removal, "2.0.0") is None
