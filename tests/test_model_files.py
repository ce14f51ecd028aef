"""Model and mapping files: the shipped base model, TOML and YAML, and every mistake an
admin can make reported with the file and the line to fix."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from node.entities import Column, Entity
from node.errors import UserError
from node.model import base_model_path, load_base_model
from node.model.files import ModelFileError, load_mapping, load_model, mapping_toml
from node.model.schema import EntityMapping, NodeMapping, model_from_document

REPO = Path(__file__).resolve().parent.parent

# The storage shape every node's tables had before models existed; the base model must
# keep it column for column.
PERSON = Entity(
    name="person",
    key="id_number",
    description="Natural person (自然人), keyed by citizen ID number (GB 11643).",
    required=("id_number", "name"),
    columns=(
        Column("id_number", "string"),
        Column("name", "string"),
        Column("sex", "string"),
        Column("birth_date", "date"),
        Column("phone", "string"),
        Column("address", "string"),
        Column("division_code", "string"),
    ),
)
LEGAL_ENTITY = Entity(
    name="legal_entity",
    key="uscc",
    description="Legal entity (法人), keyed by unified social credit code (GB 32100).",
    required=("uscc", "name"),
    columns=(
        Column("uscc", "string"),
        Column("name", "string"),
        Column("legal_rep_id_number", "string"),
        Column("registered_on", "date"),
        Column("registered_capital", "decimal"),
        Column("address", "string"),
        Column("division_code", "string"),
    ),
)

GOOD = """\
name = "people"
version = "1.2.0"
description = "test model"

[[code_lists]]
name = "GB/T 2261.1"
values = { "1" = "男性", "2" = "女性" }

[[entities]]
name = "person"
key = "id_number"

[[entities.attributes]]
name = "id_number"
type = "string"
required = true
identifier = "GB 11643"

[[entities.attributes]]
name = "sex"
type = "string"
code_list = "GB/T 2261.1"

[[entities]]
name = "house"
key = "unit_code"

[[entities.attributes]]
name = "unit_code"
type = "string"
required = true

[[entities.attributes]]
name = "owner_id"
type = "string"

[[entities]]
name = "residence"
key = "record_no"

[[entities.attributes]]
name = "record_no"
type = "string"
required = true

[[entities.attributes]]
name = "id_number"
type = "string"

[[entities.attributes]]
name = "unit_code"
type = "string"

[[relations]]
name = "resides_in"
source = "person"
target = "house"
cardinality = "many-to-one"
through = "residence"

[[relations]]
name = "owned_by"
source = "house"
target = "person"
cardinality = "many-to-one"
via = "owner_id"
"""


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the `occurrence`-th line containing `needle`."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} not in the text {occurrence} time(s)"
    return hits[occurrence - 1]


def edit(old: str, new: str, text: str = GOOD) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once"
    return text.replace(old, new)


def problems(tmp_path: Path, text: str, name: str = "people-model.toml") -> list[tuple[int, str]]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    error = caught.value
    assert isinstance(error, UserError)
    message = str(error)
    assert "\n" not in message
    for problem in error.problems:
        assert f"{name}:{problem.line}: {problem.message}" in message
    return [(p.line, p.message) for p in error.problems]


# ----- the base model -------------------------------------------------------------------


def test_base_model_keeps_the_storage_entities_every_node_has() -> None:
    model = load_base_model()
    assert (model.name, model.version) == ("base", "1.0.0")
    storage = model.storage_entities()
    assert storage["person"] == PERSON
    assert storage["legal_entity"] == LEGAL_ENTITY
    assert list(storage) == [
        "person",
        "legal_entity",
        "house",
        "land_parcel",
        "residence",
        "employment",
    ]


def test_base_model_attributes_codes_and_relations() -> None:
    model = load_base_model()
    person = model.entity("person")
    assert person is not None
    id_number = person.attribute("id_number")
    assert id_number is not None
    assert (id_number.required, id_number.identifier, id_number.sensitivity) == (
        True,
        "GB 11643",
        "core",
    )
    assert [(a.name, a.code_list) for a in person.attributes if a.code_list] == [
        ("sex", "GB/T 2261.1"),
        ("division_code", "GB/T 2260"),
    ]
    legal = model.entity("legal_entity")
    assert legal is not None
    assert [a.identifier for a in legal.attributes if a.identifier] == ["GB 32100", "GB 11643"]
    house = model.entity("house")
    assert house is not None
    assert [(a.name, a.type) for a in house.attributes] == [
        ("unit_code", "string"),
        ("address", "string"),
        ("division_code", "string"),
        ("land_parcel_code", "string"),
        ("building_area", "double"),
        ("usage", "string"),
        ("floors", "integer"),
    ]
    parcel = model.entity("land_parcel")
    assert parcel is not None
    assert parcel.key == "parcel_code"
    assert parcel.attribute_names == (
        "parcel_code",
        "division_code",
        "area",
        "land_use",
        "right_type",
    )
    sex = model.code_list("GB/T 2261.1")
    assert sex is not None and sex.values == (
        ("0", "未知的性别"),
        ("1", "男性"),
        ("2", "女性"),
        ("9", "未说明的性别"),
    )
    divisions = model.code_list("GB/T 2260")
    assert divisions is not None and divisions.external == "GB/T 2260" and not divisions.values
    land_use = model.code_list("GB/T 21010-2017")
    assert land_use is not None
    assert len(land_use.values) == 73  # every second-level class of the 2017 edition
    assert dict(land_use.values)["0701"] == "城镇住宅用地"
    assert dict(land_use.values)["0702"] == "农村宅基地"
    assert {
        (r.name, r.source, r.target, r.cardinality, r.via, r.through) for r in model.relations
    } == {
        (
            "legal_representative",
            "legal_entity",
            "person",
            "many-to-one",
            "legal_rep_id_number",
            None,
        ),
        ("resides_in", "person", "house", "many-to-one", None, "residence"),
        ("employed_by", "person", "legal_entity", "many-to-many", None, "employment"),
        ("stands_on", "house", "land_parcel", "many-to-one", "land_parcel_code", None),
    }


def test_base_model_ships_in_the_package_and_config_links_to_it() -> None:
    path = base_model_path()
    assert path.name == "base.toml" and path.is_file()
    link = REPO / "config" / "base-model.toml"
    assert link.is_symlink()
    assert link.resolve() == path
    assert load_model(link) == load_base_model()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "model/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["node"]


def test_base_model_document_round_trips() -> None:
    model = load_base_model()
    assert model_from_document(json.loads(model.to_json())) == model


def test_yaml_gives_the_same_model_as_toml(tmp_path: Path) -> None:
    document = tomllib.loads(base_model_path().read_text(encoding="utf-8"))
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    assert load_model(path) == load_base_model()
    yml = tmp_path / "base.yml"
    yml.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_model(yml) == load_base_model()


def test_yaml_codes_stay_as_written(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: m\nversion: 1.0.0\ncode_lists:\n  - name: land\n    values:\n"
        "      0701: 城镇住宅用地\n      010: x\n"
        "entities:\n  - name: parcel\n    key: code\n    attributes:\n"
        "      - {name: code, type: string, required: true}\n"
        "      - {name: use, type: string, code_list: land}\n",
        encoding="utf-8",
    )
    model = load_model(path)
    land = model.code_list("land")
    assert land is not None and land.codes == ("0701", "010")


# ----- mistakes, each at its line ---------------------------------------------------------


def test_good_model_loads(tmp_path: Path) -> None:
    path = tmp_path / "people-model.toml"
    path.write_text(GOOD, encoding="utf-8")
    model = load_model(path)
    assert [e.name for e in model.entities] == ["person", "house", "residence"]
    assert [r.name for r in model.relations] == ["resides_in", "owned_by"]


def test_file_that_does_not_parse(tmp_path: Path) -> None:
    text = edit('version = "1.2.0"', "version = 1.2.0")
    [(line, message)] = problems(tmp_path, text)
    assert line == 2
    assert message.startswith("not valid TOML:")


def test_yaml_that_does_not_parse(tmp_path: Path) -> None:
    [(line, message)] = problems(tmp_path, "name: m\nversion: [1.0.0\n", "m.yaml")
    assert line == 3
    assert message.startswith("not valid YAML:")


def test_unknown_keys(tmp_path: Path) -> None:
    text = edit('code_list = "GB/T 2261.1"', 'code_list = "GB/T 2261.1"\ncolour = "red"')
    text = edit('description = "test model"', 'description = "test model"\nowner = "me"', text)
    found = problems(tmp_path, text)
    assert [line for line, _ in found] == [line_of(text, "owner ="), line_of(text, "colour =")]
    assert found[0][1].startswith("unknown key 'owner' in the model file")
    assert found[1][1].startswith("unknown key 'colour' in attribute of entity 'person'")


def test_missing_name_and_version(tmp_path: Path) -> None:
    text = edit('name = "people"\nversion = "1.2.0"\n', "")
    assert problems(tmp_path, text) == [
        (1, 'the model has no name (name = "…" at the top)'),
        (1, 'the model has no version (version = "1.0.0" at the top)'),
    ]


def test_version_not_semver(tmp_path: Path) -> None:
    text = edit('version = "1.2.0"', 'version = "1.2"')
    assert problems(tmp_path, text) == [
        (2, "version '1.2' is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.0.0)")
    ]


def test_entity_without_key(tmp_path: Path) -> None:
    text = edit('key = "unit_code"\n', "")
    assert problems(tmp_path, text) == [
        (line_of(text, 'name = "house"'), "entity 'house' has no key (name its key attribute)")
    ]


def test_key_not_an_attribute(tmp_path: Path) -> None:
    text = edit('key = "unit_code"', 'key = "unit_no"')
    assert problems(tmp_path, text) == [
        (
            line_of(text, 'key = "unit_no"'),
            "key 'unit_no' of entity 'house' is not one of its attributes",
        )
    ]


def test_key_attribute_must_be_required(tmp_path: Path) -> None:
    text = edit(
        'name = "id_number"\ntype = "string"\nrequired = true',
        'name = "id_number"\ntype = "string"\nrequired = false',
    )
    assert problems(tmp_path, text) == [
        (
            line_of(text, "required = false"),
            "key attribute 'id_number' of entity 'person' must be required",
        )
    ]
    # Left out altogether: the attribute's name line.
    text = edit(
        'name = "unit_code"\ntype = "string"\nrequired = true\n',
        'name = "unit_code"\ntype = "string"\n',
    )
    assert problems(tmp_path, text) == [
        (
            line_of(text, 'name = "unit_code"'),
            "key attribute 'unit_code' of entity 'house' must be required",
        )
    ]


def test_duplicate_names(tmp_path: Path) -> None:
    text = (
        GOOD
        + '\n[[code_lists]]\nname = "GB/T 2261.1"\nexternal = "GB/T 2260"\n'
        + '\n[[entities]]\nname = "house"\nkey = "k"\n[[entities.attributes]]\nname = "k"\n'
        + 'type = "string"\nrequired = true\n[[entities.attributes]]\nname = "k"\ntype = "string"\n'
        + '\n[[relations]]\nname = "owned_by"\nsource = "house"\ntarget = "person"\n'
        + 'cardinality = "many-to-one"\nvia = "owner_id"\n'
    )
    assert problems(tmp_path, text) == [
        (line_of(text, 'name = "GB/T 2261.1"', 2), "duplicate code list 'GB/T 2261.1'"),
        (line_of(text, 'name = "house"', 2), "duplicate entity 'house'"),
        (line_of(text, 'name = "k"', 2), "entity 'house': duplicate attribute 'k'"),
        (line_of(text, 'name = "owned_by"', 2), "duplicate relation 'owned_by'"),
    ]


def test_unknown_type_code_list_and_identifier(tmp_path: Path) -> None:
    text = edit('name = "sex"\ntype = "string"', 'name = "sex"\ntype = "text"')
    text = edit('code_list = "GB/T 2261.1"', 'code_list = "GB/T 9999"', text)
    text = edit('identifier = "GB 11643"', 'identifier = "GB 99999"', text)
    assert problems(tmp_path, text) == [
        (
            line_of(text, 'identifier = "GB 99999"'),
            "attribute 'id_number' of entity 'person' has unknown identifier scheme 'GB 99999'; "
            "use one of GB 11643, GB 32100",
        ),
        (
            line_of(text, 'type = "text"'),
            "attribute 'sex' of entity 'person' has unknown type 'text'; use one of string, "
            "integer, double, decimal, boolean, date, timestamp",
        ),
        (
            line_of(text, 'code_list = "GB/T 9999"'),
            "attribute 'sex' of entity 'person' names unknown code list 'GB/T 9999' "
            "(code lists: GB/T 2261.1)",
        ),
    ]


def test_identifier_needs_a_string(tmp_path: Path) -> None:
    text = edit(
        'name = "id_number"\ntype = "string"\nrequired = true',
        'name = "id_number"\ntype = "integer"\nrequired = true',
    )
    found = problems(tmp_path, text)
    assert found[0] == (
        line_of(text, 'identifier = "GB 11643"'),
        "attribute 'id_number' of entity 'person' declares identifier 'GB 11643', so its type "
        "must be string",
    )


def test_code_lists_empty_external_and_duplicate_codes(tmp_path: Path) -> None:
    text = edit('values = { "1" = "男性", "2" = "女性" }', "values = {}")
    assert problems(tmp_path, text) == [
        (
            line_of(text, 'name = "GB/T 2261.1"'),
            "code list 'GB/T 2261.1' is empty: list its values or name an external list",
        )
    ]
    text = edit('values = { "1" = "男性", "2" = "女性" }', "")
    assert problems(tmp_path, text)[0][0] == line_of(text, 'name = "GB/T 2261.1"')
    text = edit('values = { "1" = "男性", "2" = "女性" }', 'external = "GB/T 4754"')
    assert problems(tmp_path, text) == [
        (
            line_of(text, "external ="),
            "code list 'GB/T 2261.1': external list 'GB/T 4754' is not one the node knows; "
            "known: GB/T 2260",
        )
    ]
    text = edit(
        'values = { "1" = "男性", "2" = "女性" }',
        'values = [\n  ["1", "男性"],\n  ["2", "女性"],\n  ["1", "男"],\n]',
    )
    assert problems(tmp_path, text) == [
        (line_of(text, '["1", "男"]'), "code list 'GB/T 2261.1': duplicate code '1'")
    ]
    # A TOML table cannot hold a key twice: tomllib refuses the file at that line.
    text = edit(
        'values = { "1" = "男性", "2" = "女性" }', '[code_lists.values]\n"1" = "男性"\n"1" = "男"'
    )
    [(line, message)] = problems(tmp_path, text)
    assert message.startswith("not valid TOML")
    assert line == line_of(text, '"1" = "男"')


def test_yaml_duplicate_codes_at_their_line(tmp_path: Path) -> None:
    text = (
        "name: m\nversion: 1.0.0\ncode_lists:\n  - name: sex\n    values:\n"
        "      '1': 男性\n      '2': 女性\n      '1': 男\n"
    )
    assert problems(tmp_path, text, "m.yaml") == [(8, "duplicate key '1'")]


def test_relation_targets_unknown_entity(tmp_path: Path) -> None:
    text = edit('target = "house"', 'target = "hous"')
    assert problems(tmp_path, text) == [
        (line_of(text, 'target = "hous"'), "relation 'resides_in' targets unknown entity 'hous'")
    ]
    line = line_of(text, 'target = "hous"')
    path = tmp_path / "people-model.toml"
    with pytest.raises(
        UserError, match=rf"people-model\.toml:{line}: relation 'resides_in' targets"
    ):
        load_model(path)


def test_relation_unknown_source_and_cardinality(tmp_path: Path) -> None:
    text = edit('source = "person"', 'source = "persons"')
    text = edit('cardinality = "many-to-one"\nthrough', 'cardinality = "many"\nthrough', text)
    assert problems(tmp_path, text) == [
        (
            line_of(text, 'source = "persons"'),
            "relation 'resides_in' starts from unknown entity 'persons'",
        ),
        (
            line_of(text, 'cardinality = "many"'),
            "relation 'resides_in' has cardinality 'many'; use one of one-to-one, many-to-one, "
            "one-to-many, many-to-many",
        ),
    ]


def test_relation_via(tmp_path: Path) -> None:
    text = edit('via = "owner_id"', 'via = "owner"')
    assert problems(tmp_path, text) == [
        (
            line_of(text, 'via = "owner"'),
            "relation 'owned_by': via 'owner' is not an attribute of 'house'",
        )
    ]
    text = edit('name = "owner_id"\ntype = "string"', 'name = "owner_id"\ntype = "integer"')
    assert problems(tmp_path, text) == [
        (
            line_of(text, 'via = "owner_id"'),
            "relation 'owned_by': via house.owner_id is integer but the key "
            "person.id_number is string",
        )
    ]
    text = edit('cardinality = "many-to-one"\nvia', 'cardinality = "many-to-many"\nvia')
    assert problems(tmp_path, text) == [
        (
            line_of(text, 'cardinality = "many-to-many"'),
            "relation 'owned_by' is many-to-many but via holds one target per house; "
            "record it through a link entity",
        )
    ]


def test_relation_through(tmp_path: Path) -> None:
    text = edit('through = "residence"', 'through = "residences"')
    assert problems(tmp_path, text) == [
        (
            line_of(text, "through ="),
            "relation 'resides_in' goes through unknown entity 'residences'",
        )
    ]
    text = edit(
        '\n[[entities.attributes]]\nname = "unit_code"\ntype = "string"\n\n[[relations]]',
        "\n[[relations]]",
    )
    assert problems(tmp_path, text) == [
        (
            line_of(text, "through ="),
            "relation 'resides_in': link entity 'residence' lacks attribute 'unit_code' "
            "(the key of 'house')",
        )
    ]


def test_relation_needs_exactly_one_of_via_and_through(tmp_path: Path) -> None:
    message = (
        "relation 'resides_in' needs exactly one of via (an attribute of the source) or "
        "through (a link entity)"
    )
    text = edit('through = "residence"', "")
    assert problems(tmp_path, text) == [(line_of(text, 'name = "resides_in"'), message)]
    text = edit('through = "residence"', 'through = "residence"\nvia = "sex"')
    found = problems(tmp_path, text)
    assert found[0] == (line_of(text, 'name = "resides_in"'), message)


def test_names_follow_the_node_rules(tmp_path: Path) -> None:
    text = edit('name = "house"', 'name = "catalog"')
    text = edit('key = "unit_code"', 'key = "Unit"', text)
    text = edit('name = "owner_id"', 'name = "origin_owner"', text)
    text = edit(
        'name = "unit_code"\ntype = "string"\nrequired',
        'name = "Unit"\ntype = "string"\nrequired',
        text,
    )
    found = problems(tmp_path, text)
    assert (
        line_of(text, 'name = "catalog"'),
        "entity name 'catalog' is reserved for the node's own tables",
    ) in found
    assert (
        line_of(text, 'name = "Unit"'),
        "attribute name 'Unit' must be lower-case letters, digits and underscores, starting "
        "with a letter",
    ) in found
    assert (
        line_of(text, 'name = "origin_owner"'),
        "attribute name 'origin_owner' is reserved for lineage columns",
    ) in found


def test_all_problems_in_line_order(tmp_path: Path) -> None:
    text = edit('target = "house"', 'target = "hous"')
    text = edit('version = "1.2.0"', 'version = "v1"', text)
    message = str(problems_error(tmp_path, text))
    first, second = message.split("; ")
    assert first.endswith(
        "people-model.toml:2: version 'v1' is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.0.0)"
    )
    line = line_of(text, 'target = "hous"')
    assert f"people-model.toml:{line}: relation 'resides_in'" in second


def problems_error(tmp_path: Path, text: str) -> ModelFileError:
    path = tmp_path / "people-model.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    return caught.value


def test_yaml_problems_name_their_line(tmp_path: Path) -> None:
    document = tomllib.loads(GOOD)
    document["relations"][0]["target"] = "hous"
    text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    assert problems(tmp_path, text, "people-model.yaml") == [
        (line_of(text, "target: hous"), "relation 'resides_in' targets unknown entity 'hous'")
    ]


def test_inline_toml_arrays_are_located(tmp_path: Path) -> None:
    text = (
        'name = "m"\nversion = "1.0.0"\nentities = [\n'
        '  { name = "p", key = "k", attributes = [\n'
        '    { name = "k", type = "string", required = true },\n'
        '    { name = "x", type = "blob" },\n'
        "  ] },\n]\n"
    )
    assert problems(tmp_path, text) == [
        (
            6,
            "attribute 'x' of entity 'p' has unknown type 'blob'; use one of string, integer, "
            "double, decimal, boolean, date, timestamp",
        )
    ]


def test_empty_missing_and_unsupported_files(tmp_path: Path) -> None:
    assert problems(tmp_path, "") == [
        (1, "the model file is empty; it needs name, version and [[entities]]")
    ]
    assert problems(tmp_path, 'name = "m"\nversion = "1.0.0"\n') == [
        (1, "the model declares no entities ([[entities]])")
    ]
    with pytest.raises(UserError, match="no such file"):
        load_model(tmp_path / "absent.toml")
    other = tmp_path / "model.json"
    other.write_text("{}", encoding="utf-8")
    with pytest.raises(UserError, match=r"use a \.toml, \.yaml or \.yml file"):
        load_model(other)


# ----- mappings -----------------------------------------------------------------------------


def test_mapping_round_trip(tmp_path: Path) -> None:
    model = load_base_model()
    mappings = {
        "320104": NodeMapping(
            {
                "person": EntityMapping(
                    local_name="natural_person",
                    attributes=(("full_name", "name"), ("gender", "sex")),
                ),
                "legal_entity": EntityMapping(
                    local_name="legal_entity", attributes=(("tyshxydm", "uscc"),)
                ),
            }
        ),
        "320102": NodeMapping({"house": EntityMapping(local_name="fangwu")}),
    }
    text = mapping_toml(mappings, comment="from a test")
    assert text.startswith("# Tongyuan model mapping")
    assert "# from a test" in text
    assert '[children."320104".person]' in text
    assert 'attributes = { full_name = "name", gender = "sex" }' in text
    path = tmp_path / "mapping.toml"
    path.write_text(text, encoding="utf-8")
    assert load_mapping(path, model) == mappings


def test_mapping_file_as_written_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "mapping.toml"
    path.write_text(
        "# children's local names → standard names\n"
        '[children."320104".person]\n'
        'local_name = "natural_person"\n'
        'attributes = { full_name = "name", gender = "sex" }\n',
        encoding="utf-8",
    )
    mapping = load_mapping(path, load_base_model())["320104"]
    person = mapping.for_entity("person")
    assert person.local_name == "natural_person"
    assert person.standard_name("gender") == "sex"
    assert person.standard_name("phone") == "phone"
    yaml_path = tmp_path / "mapping.yaml"
    yaml_path.write_text(
        "children:\n  '320104':\n    person:\n      local_name: natural_person\n"
        "      attributes: {full_name: name, gender: sex}\n",
        encoding="utf-8",
    )
    assert load_mapping(yaml_path, load_base_model()) == {"320104": mapping}


def mapping_problems(tmp_path: Path, text: str) -> list[tuple[int, str]]:
    path = tmp_path / "mapping.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelFileError) as caught:
        load_mapping(path, load_base_model())
    assert f"mapping.toml:{caught.value.problems[0].line}:" in str(caught.value)
    return [(p.line, p.message) for p in caught.value.problems]


def test_mapping_mistakes(tmp_path: Path) -> None:
    text = (
        '[children."32010".person]\n'
        'attributes = { xm = "name" }\n'
        "\n"
        '[children."320104".people]\n'
        'attributes = { xm = "name" }\n'
        "\n"
        '[children."320104".person]\n'
        'attributes = { xm = "full_name" }\n'
        "\n"
        '[children."320105".person]\n'
        'local_name = "Natural"\n'
        "attributes = {\n"  # not valid TOML 1.0 inline tables span one line
    )
    assert mapping_problems(tmp_path, text)[0][1].startswith("not valid TOML")
    text = text.replace(
        'local_name = "Natural"\nattributes = {\n', 'local_name = "Natural"\ncolour = 1\n'
    )
    text += '\n[children."320106".person]\nattributes = { xm = "name", full_name = "name" }\n'
    assert mapping_problems(tmp_path, text) == [
        (1, "child code '32010' is not a 6-digit division code"),
        (4, "child 320104: 'people' is not an entity of model base 1.0.0"),
        (
            8,
            "child 320104 entity 'person': 'xm' maps to 'full_name', which is not an attribute "
            "of 'person' (id_number, name, sex, birth_date, phone, address, division_code)",
        ),
        (
            11,
            "child 320105 entity 'person': local entity name 'Natural' must be lower-case "
            "letters, digits and underscores, starting with a letter",
        ),
        (
            12,
            "unknown key 'colour' in child 320105 entity 'person'; expected local_name, attributes",
        ),
        (
            15,
            "child 320106 entity 'person': local names 'xm' and 'full_name' both map to "
            "standard attribute 'name'",
        ),
    ]
