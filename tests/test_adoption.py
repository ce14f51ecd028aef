"""Moving a node's store to another model (`model adopt` / `model publish`), in-process on
real DuckDB files: local names become the standard ones with every value kept, a plan
says when a step may lose data, and data that does not fit the new model is refused
with nothing changed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from node.catalog.operations import CatalogService
from node.config import CONFIG_FILE, NodeConfig, load_config, render_initial_config
from node.errors import UserError
from node.model import base_model_path, load_base_model
from node.model.adoption import plan_adoption
from node.model.files import load_mapping, load_model
from node.model.operations import ModelService
from node.model.schema import EntityMapping, Model, NodeMapping
from node.store import Store
from node.store.model import delivery_digest

COUNTY, CITY = "320102", "320100"
RESOURCE = f"{COUNTY}-GA-001"

# 玄武区's own model, from before it joined: its names for the base model's `person`.
LOCAL_MODEL = """
name = "xuanwu"
version = "1.0.0"
description = "玄武区 local model"

[[entities]]
name = "natural_person"
key = "id_no"
description = "自然人 as 玄武区 names it"

[[entities.attributes]]
name = "id_no"
type = "string"
required = true

[[entities.attributes]]
name = "full_name"
type = "string"

[[entities.attributes]]
name = "gender"
type = "string"
{extra}
"""
NICKNAME = """
[[entities.attributes]]
name = "nickname"
type = "string"
"""
# The city's mapping of 玄武区's names, as `model publish --mapping` reads it.
MAPPING = """
[children."320102".person]
local_name = "natural_person"
attributes = { id_no = "id_number", full_name = "name", gender = "sex" }
"""
PEOPLE = {
    "id_no": ["320102199001011234", "320102198505052345"],
    "full_name": ["张三", "李四"],
    "gender": ["1", "2"],
}


class Node:
    """A county node directory as `tongyuan init` leaves it, with its store open."""

    def __init__(self, directory: Path, model: Model) -> None:
        directory.mkdir()
        (directory / CONFIG_FILE).write_text(
            render_initial_config(COUNTY, "玄武区", "127.0.0.1:0"), encoding="utf-8"
        )
        self.config: NodeConfig = load_config(directory)
        self.store = Store.create(
            self.config.store_path, code=COUNTY, name="玄武区", tier="county", model=model
        )
        self.models = ModelService(self.config, self.store)
        self.catalog = CatalogService(self.config, self.store)

    def register(self, entity: str, fields: list[str], code: str = RESOURCE, **more: str) -> None:
        entry = {
            "code": code,
            "name": "户籍人口信息",
            "summary": "本区户籍人口",
            "department": "公安局",
            "entity": entity,
            "update_frequency": "daily",
            "sharing": "unconditional",
            "fields": fields,
            **more,
        }
        self.catalog.add([entry], "people.toml", "tester", publish=True)

    def ingest(self, entity: str, columns: dict[str, list[str]], resource: str = RESOURCE) -> None:
        entry = self.catalog.tables.own_entry(resource)
        assert entry is not None
        observing = None
        if not self.catalog.is_authoritative(entry):
            observing = (entry.source_node, entry.source_department)
        self.store.ingest(
            self.store.entities[entity],
            pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()}),
            file_label="people.csv",
            locate=lambda i: f"row {i + 2}",
            origin_node=COUNTY,
            department=entry.department,
            snapshot=False,
            resource=resource,
            columns=list(columns),
            observing=observing,
        )

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return list(self.store.query(sql).to_pylist())

    def tables(self) -> dict[str, list[tuple[str, str]]]:
        """Every table of the store with its columns and types, as DuckDB describes them."""
        found: dict[str, list[tuple[str, str]]] = {}
        for row in self.rows(
            "SELECT table_schema || '.' || table_name AS t, column_name, data_type "
            "FROM information_schema.columns ORDER BY t, ordinal_position"
        ):
            found.setdefault(row["t"], []).append((row["column_name"], row["data_type"]))
        return found

    def offer(self, model: Model, mapping: NodeMapping) -> None:
        """What the city's link delivers: its model and its names for this county's."""
        self.store.models.receive_offer(CITY, model, mapping, delivery_digest(model, mapping))


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    opened: list[Node] = []
    yield opened
    for node in opened:
        node.store.close()


def local_model(tmp_path: Path, extra: str = "") -> Model:
    path = tmp_path / "xuanwu.toml"
    path.write_text(LOCAL_MODEL.format(extra=extra), encoding="utf-8")
    return load_model(path)


def city_model() -> Model:
    return replace(load_base_model(), published_by=CITY)


def city_mapping(tmp_path: Path) -> NodeMapping:
    path = tmp_path / "mapping.toml"
    path.write_text(MAPPING, encoding="utf-8")
    return load_mapping(path, city_model())[COUNTY]


def county(nodes: list[Node], tmp_path: Path, model: Model, people: dict[str, list[str]]) -> Node:
    node = Node(tmp_path / "county", model)
    nodes.append(node)
    node.register("natural_person", list(people))
    node.ingest("natural_person", people)
    return node


def test_adopting_the_base_model_renames_the_local_entity_and_keeps_every_value(
    nodes: list[Node], tmp_path: Path
) -> None:
    node = county(nodes, tmp_path, local_model(tmp_path), PEOPLE)
    node.offer(city_model(), city_mapping(tmp_path))
    plan = node.models.adopt(dry_run=True)
    assert plan["adopted"] is False
    steps = [s["step"] for s in plan["plan"]]
    assert "rename entity natural_person → person" in steps
    assert "rename attribute person.full_name → name" in steps
    assert not any(s["loses_data"] for s in plan["plan"])
    assert node.rows("SELECT count(*) AS n FROM natural_person") == [{"n": 2}], "dry run"

    assert node.models.adopt(actor="tester")["adopted"] is True
    assert node.store.model.label() == "base 1.0.0 (320100)"
    sql = (
        "SELECT id_number, name, sex, birth_date, origin_node, origin_dept, origin_resource "
        "FROM person ORDER BY id_number"
    )
    expected = [
        {
            "id_number": "320102198505052345",
            "name": "李四",
            "sex": "2",
            "birth_date": None,
            "origin_node": COUNTY,
            "origin_dept": "公安局",
            "origin_resource": RESOURCE,
        },
        {
            "id_number": "320102199001011234",
            "name": "张三",
            "sex": "1",
            "birth_date": None,
            "origin_node": COUNTY,
            "origin_dept": "公安局",
            "origin_resource": RESOURCE,
        },
    ]
    assert node.rows(sql) == expected
    assert set(node.rows("SELECT * FROM person")[0]) >= set(
        load_base_model().storage_entities()["person"].column_names
    )
    tables = node.tables()
    assert "main.natural_person" not in tables and "tongyuan.rows_natural_person" not in tables
    with pytest.raises(UserError, match="natural_person does not exist"):
        node.store.query("SELECT * FROM natural_person")
    # The resource that named the local entity is rewritten in the model's names, as its
    # next version, and keeps accepting imports.
    entry = node.catalog.show(RESOURCE)["entry"]
    assert entry["entity"] == "person"
    assert [f["name"] for f in entry["fields"]] == ["id_number", "name", "sex"]
    assert entry["version"] == 2 and entry["status"] == "published"
    node.ingest("person", {"id_number": ["320102200002293451"], "name": ["王五"], "sex": ["9"]})
    assert len(node.rows("SELECT * FROM person")) == 3
    # The adoption is in the store, not in this process: a reopened store works with it.
    path = node.config.store_path
    node.store.close()
    node.store = Store.open(path)
    assert node.store.model.label() == "base 1.0.0 (320100)"
    assert len(node.rows("SELECT * FROM person")) == 3
    # Adopting what is already adopted is a no-op.
    again = ModelService(node.config, node.store).adopt()
    assert (again["adopted"], again["plan"]) == (True, [])


def test_a_plan_dropping_an_attribute_loses_data_and_needs_consent(
    nodes: list[Node], tmp_path: Path
) -> None:
    people = {**PEOPLE, "nickname": ["小张", "小李"]}
    node = county(nodes, tmp_path, local_model(tmp_path, NICKNAME), people)
    mapping = city_mapping(tmp_path)
    plan = plan_adoption(node.store.model, city_model(), mapping)
    assert plan.loses_data
    lossy = [s.describe() for s in plan.steps if s.loses_data]
    assert lossy == ["drop attribute person.nickname and its values  [may lose data]"]
    # Without the nickname the same adoption keeps everything.
    assert not plan_adoption(local_model(tmp_path), city_model(), mapping).loses_data

    node.offer(city_model(), mapping)
    before = node.tables()
    with pytest.raises(UserError, match=r"would lose data \(drop attribute person\.nickname"):
        node.models.adopt()
    assert node.store.model.label() == "xuanwu 1.0.0"
    assert node.tables() == before
    assert node.models.adopt(allow_breaking=True)["adopted"] is True
    assert "nickname" not in dict(node.tables()["tongyuan.rows_person"])
    assert [r["name"] for r in node.rows("SELECT name FROM person ORDER BY name")] == [
        "张三",
        "李四",
    ]
    entry = node.catalog.show(RESOURCE)["entry"]
    assert [f["name"] for f in entry["fields"]] == ["id_number", "name", "sex"]


def test_widening_integer_to_double_keeps_every_value(nodes: list[Node], tmp_path: Path) -> None:
    text = LOCAL_MODEL.format(
        extra='\n[[entities.attributes]]\nname = "household_size"\ntype = "integer"\n'
    )
    (tmp_path / "v1.toml").write_text(text, encoding="utf-8")
    people = {**PEOPLE, "household_size": ["3", "12"]}
    node = county(nodes, tmp_path, load_model(tmp_path / "v1.toml"), people)
    wider = text.replace('version = "1.0.0"', 'version = "1.1.0"').replace(
        'type = "integer"', 'type = "double"'
    )
    (tmp_path / "v2.toml").write_text(wider, encoding="utf-8")
    answer = node.models.publish(str(tmp_path / "v2.toml"), actor="tester")
    assert answer["published"] == "xuanwu 1.1.0 (320102)"
    assert answer["breaking"] == 0
    assert [s["kind"] for s in answer["plan"]] == ["change_type"]
    assert ("household_size", "DOUBLE") in node.tables()["tongyuan.rows_natural_person"]
    sql = "SELECT id_no, household_size FROM natural_person ORDER BY id_no"
    assert node.rows(sql) == [
        {"id_no": "320102198505052345", "household_size": 12.0},
        {"id_no": "320102199001011234", "household_size": 3.0},
    ]
    # The resource's field takes the attribute's new type.
    entry = node.catalog.show(RESOURCE)["entry"]
    assert {f["name"]: f["type"] for f in entry["fields"]}["household_size"] == "double"


def test_data_outside_a_new_code_list_is_refused_and_nothing_changes(
    nodes: list[Node], tmp_path: Path
) -> None:
    # 玄武区 wrote sex as words; the base model's GB/T 2261.1 codes are 0, 1, 2, 9.
    people = {**PEOPLE, "gender": ["1", "男"]}
    node = county(nodes, tmp_path, local_model(tmp_path), people)
    node.offer(city_model(), city_mapping(tmp_path))
    before = node.tables()
    entry_before = node.catalog.show(RESOURCE)["entry"]
    with pytest.raises(UserError) as refused:
        node.models.adopt(allow_breaking=True)
    message = str(refused.value)
    assert "id_number='320102198505052345'" in message
    assert "attribute sex value '男' is not a code of GB/T 2261.1" in message
    assert "nothing was changed" in message
    assert node.store.model.label() == "xuanwu 1.0.0"
    assert node.tables() == before
    assert node.catalog.show(RESOURCE)["entry"] == entry_before
    assert node.rows("SELECT id_no, gender FROM natural_person ORDER BY id_no") == [
        {"id_no": "320102198505052345", "gender": "男"},
        {"id_no": "320102199001011234", "gender": "1"},
    ]
    # The same holds after a restart: the store itself stayed on the local model.
    path = node.config.store_path
    node.store.close()
    node.store = Store.open(path)
    assert node.store.model.label() == "xuanwu 1.0.0"
    assert "tongyuan.rows_person" not in node.tables()


def test_observations_of_a_renamed_entity_take_the_standard_names(
    nodes: list[Node], tmp_path: Path
) -> None:
    node = county(nodes, tmp_path, local_model(tmp_path), PEOPLE)
    # 人社局 keeps its own copy of names whose source is 公安局 of the same node.
    observer = f"{COUNTY}-RS-001"
    node.register(
        "natural_person",
        ["id_no", "full_name"],
        code=observer,
        department="人社局",
        source_department="公安局",
    )
    node.ingest("natural_person", {"id_no": [PEOPLE["id_no"][0]], "full_name": ["张叁"]}, observer)
    node.offer(city_model(), city_mapping(tmp_path))
    node.models.adopt()
    assert node.rows("SELECT entity, attribute, value FROM observations") == [
        {"entity": "person", "attribute": "name", "value": "张叁"}
    ]
    node.store.sources.crosscheck()
    found = node.store.sources.discrepancies()
    assert [(d["attribute"], d["authoritative_value"], d["observed_value"]) for d in found] == [
        ("name", "张三", "张叁")
    ]


def test_a_local_entity_may_be_renamed_over_one_the_plan_drops(
    nodes: list[Node], tmp_path: Path
) -> None:
    other_person = '\n[[entities]]\nname = "person"\nkey = "pid"\n\n' + (
        '[[entities.attributes]]\nname = "pid"\ntype = "string"\nrequired = true\n'
    )
    node = county(nodes, tmp_path, local_model(tmp_path, other_person), PEOPLE)
    node.offer(city_model(), city_mapping(tmp_path))
    lossy = [s["step"] for s in node.models.adopt(dry_run=True)["plan"] if s["loses_data"]]
    assert lossy == ["drop entity person and every record in it  [may lose data]"]
    try:
        node.models.adopt(allow_breaking=True)
    except UserError:  # refused with a message is acceptable too
        assert node.store.model.label() == "xuanwu 1.0.0"
    else:
        names = node.rows("SELECT name FROM person ORDER BY name")
        assert [r["name"] for r in names] == ["张三", "李四"]


def test_swapped_names_and_own_renames_keep_values_and_a_key_keeps_its_type(
    nodes: list[Node], tmp_path: Path
) -> None:
    node = Node(tmp_path / "county", load_base_model())
    nodes.append(node)
    node.register("person", ["id_number", "name", "address"])
    node.ingest(
        "person",
        {"id_number": ["320102199001011234"], "name": ["玄武区1号"], "address": ["张三"]},
    )
    # A swap (a county that filled name and address the wrong way round) renames through
    # temporary names instead of failing on "column already exists".
    swapped = NodeMapping(
        {"person": EntityMapping("person", (("address", "name"), ("name", "address")))}
    )
    plan = plan_adoption(node.store.model, city_model(), swapped)
    assert not plan.loses_data
    node.offer(city_model(), swapped)
    node.models.adopt(actor="tester")
    assert node.rows("SELECT name, address FROM person") == [
        {"name": "张三", "address": "玄武区1号"}
    ]
    # Two local names for one standard attribute cannot both be kept.
    doubled = NodeMapping(
        {"natural_person": EntityMapping("natural_person", (("gender", "full_name"),))}
    )
    with pytest.raises(ValueError, match="would both become full_name"):
        plan_adoption(local_model(tmp_path), replace(local_model(tmp_path)), doubled)

    # A node's own rename (a mapping entry under its own code) keeps the values.
    base = load_base_model()
    text = (
        base_model_path()
        .read_text(encoding="utf-8")
        .replace('version = "1.0.0"', 'version = "2.0.0"', 1)
    )
    person = text.index('name = "person"')
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(
        text[:person] + text[person:].replace('name = "phone"', 'name = "mobile"', 1),
        encoding="utf-8",
    )
    node.ingest("person", {"id_number": ["320102199001011234"], "phone": ["13800000001"]})
    own = tmp_path / "own.toml"
    own.write_text(
        f'[children."{COUNTY}".person]\nattributes = {{ phone = "mobile" }}\n', encoding="utf-8"
    )
    result = node.models.publish(str(renamed), str(own), allow_breaking=True, actor="tester")
    assert "rename attribute person.phone → mobile" in [s["step"] for s in result["plan"]]
    assert node.rows("SELECT mobile FROM person WHERE id_number = '320102199001011234'") == [
        {"mobile": "13800000001"}
    ]

    # A key that would change type (so '007' and '7' become one record) is refused.
    typed = replace(
        base,
        entities=tuple(
            replace(
                e,
                attributes=tuple(
                    replace(a, type="integer") if a.name == "uscc" else a for a in e.attributes
                ),
            )
            if e.name == "legal_entity"
            else e
            for e in base.entities
        ),
    )
    with pytest.raises(ValueError, match="key uscc would change type"):
        plan_adoption(base, typed, NodeMapping())
