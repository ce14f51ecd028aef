"""Calibration: a city compares its counties' models with the standard and with each
other, and gets the renamings as a mapping file it can load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from node.model import load_base_model
from node.model.calibrate import CalibrationRow, Disagreement, calibrate
from node.model.files import load_mapping, load_model
from node.model.schema import Attribute, EntityMapping, Model, ModelEntity, NodeMapping

BASE = load_base_model()

# A county that built its own system: its own names, sex coded M/F, keyed by id_no.
COUNTY_A = """\
name = "county-a"
version = "0.3.0"

[[code_lists]]
name = "sex-local"
values = { M = "男", F = "女" }

[[code_lists]]
name = "GB/T 2260"
external = "GB/T 2260"

[[entities]]
name = "person"
key = "id_no"

[[entities.attributes]]
name = "id_no"
type = "string"
required = true
identifier = "GB 11643"

[[entities.attributes]]
name = "full_name"
type = "string"
required = true

[[entities.attributes]]
name = "gender"
type = "string"
code_list = "sex-local"

[[entities.attributes]]
name = "birth_date"
type = "date"

[[entities.attributes]]
name = "phone"
type = "string"

[[entities.attributes]]
name = "address"
type = "string"

[[entities.attributes]]
name = "division_code"
type = "string"
code_list = "GB/T 2260"
"""


def county_a(tmp_path: Path) -> Model:
    path = tmp_path / "county-a.toml"
    path.write_text(COUNTY_A, encoding="utf-8")
    return load_model(path)


def person_only(model: Model) -> Model:
    """`model` restricted to person, so tests can focus on one entity."""
    entity = model.entity("person")
    assert entity is not None
    return child_with(entity)


def child_with(entity: ModelEntity) -> Model:
    """A child model holding only `entity` (and the base code lists)."""
    return dataclasses.replace(BASE, name="child", entities=(entity,), relations=())


def standard_person() -> ModelEntity:
    entity = BASE.entity("person")
    assert entity is not None
    return entity


def test_a_child_matching_the_standard_yields_no_rows() -> None:
    report = calibrate(BASE, {"320102": BASE})
    assert report.rows == []
    assert report.disagreements == []
    assert report.suggested_mappings() == {}


def test_two_conflicting_counties(tmp_path: Path) -> None:
    report = calibrate(BASE, {"320104": county_a(tmp_path), "320102": BASE})
    person_rows = [r for r in report.rows if r.entity == "person"]
    assert [(r.kind, r.child, r.standard, r.local) for r in person_rows] == [
        ("name", "320104", "id_number", "id_no"),
        ("name", "320104", "name", "full_name"),
        ("name", "320104", "sex", "gender"),
        ("code_list", "320104", "GB/T 2261.1: 0, 1, 2, 9", "sex-local: F, M"),
    ]
    assert [r.suggestion for r in person_rows] == [
        "map id_no → id_number",
        "map full_name → name",
        "map gender → sex",
        "translate codes M → 1 (男性), F → 2 (女性)",
    ]
    assert person_rows[3].detail == "only in the standard: 0, 1, 2, 9; only in the child: F, M"
    # County A has none of the other entities; the matching county has no rows at all.
    assert [(r.kind, r.entity) for r in report.rows if r.entity != "person"] == [
        ("entity", "legal_entity"),
        ("entity", "house"),
        ("entity", "land_parcel"),
        ("entity", "residence"),
        ("entity", "employment"),
    ]
    assert report.rows_for("320102") == []
    assert report.suggested_mappings() == {
        "320104": NodeMapping(
            {
                "person": EntityMapping(
                    local_name="person",
                    attributes=(("full_name", "name"), ("gender", "sex"), ("id_no", "id_number")),
                )
            }
        )
    }


def test_children_disagreeing_among_themselves(tmp_path: Path) -> None:
    report = calibrate(BASE, {"320104": county_a(tmp_path), "320102": BASE})
    person = [d for d in report.disagreements if d.entity == "person"]
    assert person == [
        Disagreement(
            "person", "", "key", "id_number", (("320102", "id_number"), ("320104", "id_no"))
        ),
        Disagreement(
            "person",
            "id_number",
            "name",
            "id_number",
            (("320102", "id_number"), ("320104", "id_no")),
        ),
        Disagreement(
            "person", "name", "name", "name", (("320102", "name"), ("320104", "full_name"))
        ),
        Disagreement("person", "sex", "name", "sex", (("320102", "sex"), ("320104", "gender"))),
        Disagreement(
            "person",
            "sex",
            "code_list",
            "0, 1, 2, 9",
            (("320102", "0, 1, 2, 9"), ("320104", "F, M")),
        ),
    ]
    house = [d for d in report.disagreements if d.entity == "house"]
    assert house == [
        Disagreement("house", "", "entity", "house", (("320102", "house"), ("320104", "(missing)")))
    ]


def test_suggested_mapping_file_loads_back(tmp_path: Path) -> None:
    report = calibrate(BASE, {"320104": county_a(tmp_path), "320102": BASE})
    path = tmp_path / "suggested.toml"
    path.write_text(report.mapping_file(), encoding="utf-8")
    assert "Suggested by calibration against base 1.0.0" in path.read_text(encoding="utf-8")
    assert load_mapping(path, BASE) == report.suggested_mappings()


def test_entity_found_by_key_or_synonym() -> None:
    renamed = dataclasses.replace(standard_person(), name="natural_person")
    report = calibrate(person_only(BASE), {"320105": child_with(renamed)})
    assert report.rows == [
        CalibrationRow(
            "person",
            "entity",
            "320105",
            "person",
            "natural_person",
            "map entity natural_person → person",
            "matched by its key",
        )
    ]
    assert report.suggested_mappings() == {
        "320105": NodeMapping({"person": EntityMapping(local_name="natural_person")})
    }
    # Key renamed as well: found through the key's synonym (sfzh = 身份证号).
    attributes = tuple(
        dataclasses.replace(a, name="sfzh") if a.name == "id_number" else a
        for a in standard_person().attributes
    )
    other = dataclasses.replace(renamed, name="ziranren", key="sfzh", attributes=attributes)
    report = calibrate(person_only(BASE), {"320105": child_with(other)})
    assert [(r.kind, r.local, r.detail) for r in report.rows] == [
        ("entity", "ziranren", "matched by a known synonym"),
        ("name", "sfzh", "sfzh is the standard's id_number (the key)"),
    ]


def test_missing_entity() -> None:
    nothing = dataclasses.replace(
        BASE, entities=(ModelEntity("vehicle", "plate", (Attribute("plate", "string", True),)),)
    )
    report = calibrate(person_only(BASE), {"320105": nothing})
    assert [(r.kind, r.standard, r.local) for r in report.rows] == [("entity", "person", "")]
    assert report.suggested_mappings() == {}


def test_types_missing_extra_and_other_key() -> None:
    attributes = (
        Attribute("id_number", "string", required=True),
        Attribute("name", "string", required=True),
        Attribute("sex", "integer"),  # no code list either
        Attribute("birth_dt", "string"),  # similar spelling
        Attribute("shouji", "string", description="联系电话"),  # same Chinese term
        Attribute("email", "string"),
        Attribute("serial", "integer", required=True),
    )
    child = child_with(ModelEntity("person", "serial", attributes))
    report = calibrate(person_only(BASE), {"320105": child})
    assert [(r.kind, r.standard, r.local) for r in report.rows] == [
        ("key", "id_number", "serial"),
        ("type", "string", "integer"),
        ("code_list", "GB/T 2261.1: 0, 1, 2, 9", "no code list"),
        ("name", "birth_date", "birth_dt"),
        ("type", "date", "string"),
        ("name", "phone", "shouji"),
        ("missing", "address", ""),
        ("missing", "division_code", ""),
        ("extra", "", "email"),
        ("extra", "", "serial"),
    ]
    rows = report.rows
    assert rows[0].suggestion == (
        "key records by id_number; the child keys them by serial (an attribute the standard lacks)"
    )
    assert rows[1].suggestion == "convert sex from integer to string"
    assert rows[2].suggestion == "check sex's values against GB/T 2261.1"
    assert rows[4].detail == "check that every value converts"
    assert rows[6].suggestion == "add address (string) or map the child's field"


def test_extras_disagreeing_between_children() -> None:
    def with_email(type_: str) -> Model:
        entity = standard_person()
        extra = Attribute("email", type_)
        return child_with(dataclasses.replace(entity, attributes=(*entity.attributes, extra)))

    report = calibrate(
        person_only(BASE), {"320105": with_email("string"), "320106": with_email("integer")}
    )
    assert report.disagreements == [
        Disagreement("person", "email", "type", "", (("320105", "string"), ("320106", "integer")))
    ]
    assert [(r.kind, r.child, r.local) for r in report.rows] == [
        ("extra", "320105", "email"),
        ("extra", "320106", "email"),
    ]


def test_report_is_deterministic_and_json(tmp_path: Path) -> None:
    child = county_a(tmp_path)
    one = calibrate(BASE, {"320104": child, "320102": BASE, "320105": person_only(child)})
    two = calibrate(BASE, {"320105": person_only(child), "320102": BASE, "320104": child})
    assert one.document() == two.document()
    assert one.children == ("320102", "320104", "320105")
    document = json.loads(json.dumps(one.document(), ensure_ascii=False))
    assert document["standard"] == {"name": "base", "version": "1.0.0"}
    assert document["suggested_mappings"]["320104"] == {
        "person": {
            "local_name": "person",
            "attributes": {"full_name": "name", "gender": "sex", "id_no": "id_number"},
        }
    }
    assert {row["kind"] for row in document["rows"]} == {"name", "code_list", "entity"}
