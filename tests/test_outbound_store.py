"""Sharing enforced at the source, in the store: what a county's windows carry for each
sharing attribute and grade, on real DuckDB files through the real wire encoding."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from stores import StoreNode, closing_all

from node.catalog.entries import CatalogSettings
from node.config import CONFIG_FILE, load_config
from node.demo_data import fake_legal_entities, fake_people
from node.errors import ConfigError, UserError
from node.model import load_base_model
from node.quality.operations import QualityService
from node.quality.report import QualityReporter
from node.security import pki
from node.security.paths import read_federation_key
from node.security.sharing import SharingService
from node.store.outbound import (
    REDACTED,
    build_plan,
    federation_key,
    federation_key_scope,
    mask_sql,
    pseudonym,
    pseudonym_sql,
)
from node.store.protected import MASK_SHAPES, protected_form_sql

BASE_RULES = Path(__file__).resolve().parent.parent / "config" / "base-rules.toml"
CONDITIONS = "仅限政务部门履职使用"
PERSON: dict[str, Any] = {
    "code": "320102-GA-001",
    "name": "户籍人口信息",
    "summary": "户籍人口",
    "department": "公安局",
    "entity": "person",
    "update_frequency": "daily",
    "sharing": "conditional",
    "sharing_conditions": CONDITIONS,
    "fields": [
        {"name": "id_number", "sensitivity": "core"},
        {"name": "name", "sensitivity": "important"},
        {"name": "sex"},
        {"name": "birth_date"},
        {"name": "phone"},  # graded important by the base model: masked
        {"name": "address", "sensitivity": "general"},  # the entry's grade wins: clear
        {"name": "division_code"},
    ],
}
COMPANIES: dict[str, Any] = {
    "code": "320102-SC-001",
    "name": "企业登记信息",
    "summary": "企业",
    "department": "市场监管局",
    "entity": "legal_entity",
    "update_frequency": "daily",
    "sharing": "conditional",
    "sharing_conditions": CONDITIONS,
    "fields": [
        {"name": "uscc"},
        {"name": "name"},
        {"name": "legal_rep_id_number", "sensitivity": "core"},
        {"name": "registered_on"},
        {"name": "registered_capital"},
        {"name": "address", "sensitivity": "general"},
        {"name": "division_code"},
    ],
}
HOUSES: dict[str, Any] = {
    "code": "320102-ZJ-001",
    "name": "房屋信息",
    "summary": "房屋",
    "department": "住建局",
    "entity": "house",
    "update_frequency": "daily",
    "sharing": "not_shared",
    "fields": ["unit_code", "address", "usage"],
}
PARCELS: dict[str, Any] = {
    "code": "320102-ZR-001",
    "name": "宗地信息",
    "summary": "宗地",
    "department": "自然资源局",
    "entity": "land_parcel",
    "update_frequency": "daily",
    "sharing": "unconditional",
    "fields": ["parcel_code", "division_code", "land_use"],
}


def _text_rows(table: pa.Table) -> list[dict[str, str]]:
    return [{k: "" if v is None else str(v) for k, v in row.items()} for row in table.to_pylist()]


class Node(StoreNode):
    def __init__(self, base: Path, code: str) -> None:
        super().__init__(base, code, code)
        self.sharing = SharingService(self.config, self.store)

    def publish(self, *entries: dict[str, Any]) -> None:
        self.catalog.add([dict(e) for e in entries], "resources.toml", "tester", publish=True)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, Node]]:
    yield from closing_all({c: Node(tmp_path, c) for c in ("320102", "320100", "320000")})


@pytest.fixture
def county(nodes: dict[str, Node]) -> Node:
    """A county with 60 people, 25 companies represented by them, 3 houses (not shared)
    and 2 parcels (unconditional)."""
    node = nodes["320102"]
    node.publish(PERSON, COMPANIES, HOUSES, PARCELS)
    people = fake_people("320102", 60, seed=7)
    node.ingest(PERSON["code"], _text_rows(people))
    companies = fake_legal_entities("320102", 25, seed=7, representatives=people)
    node.ingest(COMPANIES["code"], _text_rows(companies))
    node.ingest(
        HOUSES["code"],
        [
            {"unit_code": f"320102001001GB00001F0000000{i}", "address": f"玄武区中山路{i}号",
             "usage": "11"}
            for i in range(1, 4)
        ],
    )  # fmt: skip
    node.ingest(
        PARCELS["code"],
        [
            {"parcel_code": f"320102001001GB0000{i}", "division_code": "320102", "land_use": "0701"}
            for i in range(1, 3)
        ],
    )
    return node


def _key(node: Node) -> bytes:
    key = read_federation_key(node.directory)
    assert key is not None
    return key


# ----- the pieces ----------------------------------------------------------------------------


def test_pseudonym_in_sql_is_hmac_sha256_with_the_federation_key() -> None:
    key = bytes(range(32))
    values = ["11010119900307123X", "张三", "", "a'b"]
    con = duckdb.connect()
    got = con.execute(
        f"SELECT {pseudonym_sql('v', key)} FROM unnest(?::VARCHAR[]) t(v)", [values]
    ).fetchall()
    for value, (out,) in zip(values, got, strict=True):
        expected = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]
        assert out == "ty1:" + expected == pseudonym(value, key)
    assert con.execute(f"SELECT {pseudonym_sql('NULL::VARCHAR', key)}").fetchone() == (None,)


@pytest.mark.parametrize(
    ("kind", "value", "masked"),
    [
        ("id_number", "32010219900307123X", "320102********123X"),
        ("name", "张三丰", "张**"),
        ("name", "李", "李*"),
        ("phone", "13812345678", "138****5678"),
        ("address", "江苏省南京市玄武区中山路1号", "江苏省南京市****"),
        ("other", "ABCDE", "A***E"),
        ("other", "AB", "**"),
    ],
)
def test_display_masks(kind: str, value: str, masked: str) -> None:
    con = duckdb.connect()
    got = con.execute(f"SELECT {mask_sql('v', kind)} FROM (SELECT ?::VARCHAR AS v)", [value])
    assert got.fetchone() == (masked,)


def test_the_strictest_treatment_of_an_attribute_wins_and_a_masked_key_is_pseudonymised() -> None:
    model = load_base_model()
    settings = CatalogSettings()
    entries = [
        {"code": "A", "entity": "person", "sharing_kind": "unconditional",
         "fields": [{"name": "id_number"}, {"name": "phone"}]},
        {"code": "B", "entity": "person", "sharing_kind": "conditional",
         "fields": [{"name": "id_number", "sensitivity": "important"}, {"name": "phone"},
                    {"name": "name", "sensitivity": "general"}]},
        {"code": "C", "entity": "house", "sharing_kind": "none",
         "fields": [{"name": "unit_code"}, {"name": "address"}]},
    ]  # fmt: skip
    plan = build_plan(entries, model, settings)
    person = plan.attributes["person"]
    assert person["id_number"].treatment == "pseudonymise"  # a key is never masked
    assert (person["phone"].treatment, person["phone"].mask) == ("mask", "phone")
    assert "name" not in person  # general: clear
    assert plan.attributes["house"] == {
        "address": plan.attributes["house"]["address"]
    }  # a not-shared resource's values are pseudonymised, its key is not
    assert plan.attributes["house"]["address"].treatment == "pseudonymise"
    assert plan.withheld_resources == {"C"}
    assert plan.kinds == {"unconditional": 1, "conditional": 1, "none": 1}


def test_grade_treatment_is_configured_and_checked(tmp_path: Path) -> None:
    node = tmp_path / "n"
    node.mkdir()
    base = (
        '[node]\ncode = "320102"\nname = "x"\nlisten = "127.0.0.1:0"\ndepartment = "d"\n[catalog]\n'
    )
    (node / CONFIG_FILE).write_text(base + 'grade_treatment = { core = "mask" }\n')
    assert load_config(node).catalog.grade_treatment == (("core", "mask"),)
    assert load_config(node).catalog.treatment_of("general") == "pseudonymise"
    (node / CONFIG_FILE).write_text(base + 'grade_treatment = { secret = "hide" }\n')
    with pytest.raises(ConfigError) as caught:
        load_config(node)
    assert "'secret' is not a grade" in str(caught.value)
    assert "'hide' is not one of clear, mask, pseudonymise" in str(caught.value)


def test_a_missing_federation_key_is_generated_locally_and_said_so(tmp_path: Path) -> None:
    assert federation_key_scope(tmp_path) == "none yet"
    assert federation_key(tmp_path, create=False) is None
    key = federation_key(tmp_path)
    assert key is not None and len(key) == 32
    path = tmp_path / "security" / "federation.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert federation_key(tmp_path) == read_federation_key(tmp_path) == key
    # The one reader: pki hands down what the sharing rules use.
    assert pki.read_federation_key(tmp_path) == key.hex()
    assert federation_key_scope(tmp_path) == "local only"
    # A key installed by `pki` replaces it: the federation's.
    path.write_text(bytes(range(32)).hex() + "\n")
    assert federation_key_scope(tmp_path) == "federation"
    for bad in ("not a key\n", key.hex().upper() + "\n", key.hex()[:-2] + "\n"):
        path.write_text(bad)
        with pytest.raises(UserError, match="64 lower-case hex digits"):
            federation_key(tmp_path)
        with pytest.raises(UserError, match="64 lower-case hex digits"):
            pki.read_federation_key(tmp_path)


# ----- windows leaving a county ----------------------------------------------------------------


def test_conditional_resources_leave_pseudonymised_and_masked(
    nodes: dict[str, Node], county: Node
) -> None:
    city = nodes["320100"]
    city.pull(county)
    key = _key(county)
    raw_people = county.rows("SELECT * FROM person ORDER BY id_number")
    city_people = city.rows("SELECT * FROM person")
    assert len(city_people) == len(raw_people) == 60
    assert {p["id_number"] for p in city_people} == {
        pseudonym(p["id_number"], key) for p in raw_people
    }
    by_pseudonym = {p["id_number"]: p for p in city_people}
    for raw in raw_people:
        seen = by_pseudonym[pseudonym(raw["id_number"], key)]
        assert seen["name"] == raw["name"][0] + "*" * max(len(raw["name"]) - 1, 1)
        assert seen["phone"] == raw["phone"][:3] + "****" + raw["phone"][-4:]
        assert seen["address"] == raw["address"]  # graded general by the entry
        # Graded important by the base model: a date cannot be masked, so it stays home.
        assert (seen["sex"], seen["birth_date"]) == (raw["sex"], None)
    # Companies: the representative's ID number under the same pseudonym, so joins agree.
    join = (
        "SELECT p.id_number AS rep, count(*) AS n FROM legal_entity l "
        "JOIN person p ON p.id_number = l.legal_rep_id_number GROUP BY ALL"
    )
    county_join = {pseudonym(r["rep"], key): r["n"] for r in county.rows(join)}
    assert county_join and {r["rep"]: r["n"] for r in city.rows(join)} == county_join
    raw_companies = county.rows("SELECT uscc, name FROM legal_entity ORDER BY uscc")
    assert city.rows("SELECT uscc, name FROM legal_entity ORDER BY uscc") == raw_companies
    # Not shared: no house leaves, its catalogue entry does. Unconditional: in clear.
    assert county.rows("SELECT count(*) AS n FROM house") == [{"n": 3}]
    assert city.rows("SELECT count(*) AS n FROM house") == [{"n": 0}]
    assert [e["code"] for e in city.store.catalog.entries("320102")] == sorted(
        e["code"] for e in (PERSON, COMPANIES, HOUSES, PARCELS)
    )
    parcels = "SELECT parcel_code, division_code, land_use FROM land_parcel ORDER BY 1"
    assert city.rows(parcels) == county.rows(parcels) != []


def test_the_parents_store_file_holds_no_raw_id_number(
    nodes: dict[str, Node], county: Node
) -> None:
    city = nodes["320100"]
    # Stored uncompressed, so a raw value would show in the file's bytes as it is.
    with city.store.db.write() as cur:
        cur.execute("SET force_compression = 'uncompressed'")
    with county.store.db.write() as cur:
        cur.execute("SET force_compression = 'uncompressed'")
    city.pull(county)
    raw = {r["id_number"] for r in county.rows("SELECT id_number FROM person")}
    raw |= {r["r"] for r in county.rows("SELECT legal_rep_id_number AS r FROM legal_entity")}
    names = {r["name"] for r in county.rows("SELECT name FROM person")}
    for node in (county, city):
        node.store.checkpoint()
        node.store.close()
    county_bytes = county.config.store_path.read_bytes()
    city_bytes = city.config.store_path.read_bytes()
    # The control: the county's own file does hold them.
    assert all(i.encode() in county_bytes for i in raw)
    assert [i for i in raw if i.encode() in city_bytes] == []
    assert [n for n in names if len(n) > 1 and n.encode() in city_bytes] == []


def test_rows_from_children_pass_a_parent_unchanged(nodes: dict[str, Node], county: Node) -> None:
    city, province = nodes["320100"], nodes["320000"]
    city.publish({**PERSON, "code": "320100-GA-001"})  # the city grades person too
    city.pull(county)
    province.pull(city)
    ids = "SELECT id_number, name FROM person WHERE origin_node = '320102' ORDER BY 1"
    assert province.rows(ids) == city.rows(ids)
    assert all(r["id_number"].startswith("ty1:") for r in province.rows(ids))


def test_a_catalogue_change_recompiles_what_leaves(nodes: dict[str, Node]) -> None:
    county, city = nodes["320102"], nodes["320100"]
    open_entry = {**PERSON, "sharing": "unconditional"}
    county.publish(open_entry)
    people = _text_rows(fake_people("320102", 4, seed=3))
    county.ingest(PERSON["code"], people[:2])
    city.pull(county)
    assert {r["id_number"] for r in city.rows("SELECT id_number FROM person")} == {
        p["id_number"] for p in people[:2]
    }
    county.catalog.edit(PERSON["code"], dict(PERSON), "resources.toml", "tester")
    county.catalog.publish(PERSON["code"], "tester")
    county.ingest(PERSON["code"], people[2:])
    city.pull(county)
    later = city.rows("SELECT id_number FROM person WHERE id_number LIKE 'ty1:%'")
    assert len(later) == 2


def test_a_childs_pseudonymised_ids_are_not_quarantined_by_the_base_rules(
    nodes: dict[str, Node], county: Node
) -> None:
    city = nodes["320100"]
    quality = QualityService(city.config, city.store, QualityReporter(city.config, city.store))
    quality.rules_local(str(BASE_RULES))
    city.pull(county)
    assert quality.quarantine_list()["rows"] == []
    assert city.rows("SELECT count(*) AS n FROM person") == [{"n": 60}]
    # A value in clear that fails its rule is still held: a company's credit code.
    company = _text_rows(fake_legal_entities("320102", 1, seed=12))[0]
    wrong = company["uscc"][:-1] + ("0" if company["uscc"][-1] != "0" else "1")
    county.ingest(COMPANIES["code"], [{**company, "uscc": wrong}])
    city.pull(county)
    held = quality.quarantine_list()["rows"]
    assert [(h["entity"], h["record_key"]) for h in held] == [("legal_entity", wrong)]


# ----- observations and exports -------------------------------------------------------------


def test_observations_leave_treated_like_their_attribute(nodes: dict[str, Node]) -> None:
    county, city = nodes["320102"], nodes["320100"]
    observing = {
        **PERSON,
        "code": "320102-MZ-001",
        "department": "民政局",
        "source_node": "320102",
        "source_department": "公安局",
        "fields": [{"name": "id_number", "sensitivity": "core"},
                   {"name": "name", "sensitivity": "important"}],
    }  # fmt: skip
    county.publish(observing)
    person = _text_rows(fake_people("320102", 1, seed=5))[0]
    county.ingest("320102-MZ-001", [{"id_number": person["id_number"], "name": person["name"]}])
    assert county.rows("SELECT count(*) AS n FROM tongyuan.rows_observations") != [{"n": 0}]
    city.pull(county)
    rows = city.rows("SELECT record_key, attribute, value FROM tongyuan.rows_observations")
    key = _key(county)
    assert rows and {r["record_key"] for r in rows} == {pseudonym(person["id_number"], key)}
    assert {r["attribute"]: r["value"] for r in rows}["name"].startswith(person["name"][0] + "*")
    assert not any(person["id_number"] in str(r) for r in rows)


def test_export_writes_what_would_leave_and_refuses_a_resource_not_shared(
    nodes: dict[str, Node], county: Node, tmp_path: Path
) -> None:
    target = tmp_path / "people.csv"
    result = county.sharing.export(PERSON["code"], str(target))
    assert (result["rows"], result["format"]) == (60, "csv")
    text = target.read_text(encoding="utf-8")
    raw = [r["id_number"] for r in county.rows("SELECT id_number FROM person")]
    assert not [i for i in raw if i in text]
    assert len(re.findall(r"ty1:[0-9a-f]{32}", text)) == 60
    with pytest.raises(UserError, match="is not shared"):
        county.sharing.export(HOUSES["code"], str(tmp_path / "houses.csv"))
    assert not (tmp_path / "houses.csv").exists()
    parquet = tmp_path / "parcels.parquet"
    assert county.sharing.export(PARCELS["code"], str(parquet))["rows"] == 2
    summary = county.sharing.summary()
    assert summary["resources"] == {"unconditional": 1, "conditional": 2, "none": 1}
    assert summary["protected_attributes"]["person.id_number"] == "pseudonymise"
    assert summary["federation_key"] == "local only"


def test_a_parent_does_not_call_a_masked_observation_a_discrepancy(tmp_path: Path) -> None:
    key = bytes(range(32))
    source, observer, city = (Node(tmp_path, c) for c in ("320102", "320104", "320100"))
    try:
        for node in (source, observer, city):  # one federation key, as pki installs it
            (node.directory / "security").mkdir()
            (node.directory / "security" / "federation.key").write_text(key.hex() + "\n")
        general = [
            {"name": "id_number", "sensitivity": "core"},
            {"name": "name", "sensitivity": "general"},
        ]
        source.publish({**PERSON, "fields": general})
        observer.publish(
            {
                **PERSON,
                "code": "320104-MZ-001",
                "department": "民政局",
                "source_node": "320102",
                "source_department": "公安局",
                "fields": [
                    {"name": "id_number", "sensitivity": "core"},
                    {"name": "name", "sensitivity": "important"},
                ],
            }
        )
        person = _text_rows(fake_people("320102", 1, seed=5))[0]
        row = {"id_number": person["id_number"], "name": person["name"]}
        source.ingest(PERSON["code"], [row])
        observer.ingest("320104-MZ-001", [row])
        city.pull(source)
        city.pull(observer)
        # The pair meets at the city (one pseudonym), one name in clear, one masked.
        pairs = city.rows(
            "SELECT o.value, p.name FROM tongyuan.rows_observations o "
            "JOIN person p ON p.id_number = o.record_key"
        )
        assert pairs == [{"value": person["name"][0] + "*" * max(len(person["name"]) - 1, 1),
                          "name": person["name"]}]  # fmt: skip
        city.store.sources.crosscheck()
        assert city.store.sources.counts()["open"] == 0
    finally:
        for node in (source, observer, city):
            node.store.close()


# ----- what a parent takes for protected -----------------------------------------------------


def _recognised(values: list[str | None]) -> list[bool]:
    con = duckdb.connect()
    sql = f"SELECT {protected_form_sql('v')} FROM unnest(?::VARCHAR[]) WITH ORDINALITY t(v, i)"
    return [r[0] for r in con.execute(sql + " ORDER BY i", [values]).fetchall()]


def test_every_form_outbound_makes_is_recognised_and_nothing_wider() -> None:
    con = duckdb.connect()
    key = bytes(range(32))
    values = ["李", "张三", "江苏省南京市玄武区中山路1号", "a*b", "3201021*990030712"]
    values += ["abcdefghijklmnopqrstuvwxyz"[:n] for n in range(1, 27)]
    made: list[str] = []
    for kind in MASK_SHAPES:
        made += [
            r[0]
            for r in con.execute(
                f"SELECT {mask_sql('v', kind)} FROM unnest(?::VARCHAR[]) t(v)", [values]
            ).fetchall()
        ]
    made += [pseudonym(v, key) for v in values]
    assert all(_recognised(made))  # masks of an empty value included ('' is no form)
    assert _recognised([None, "", "ty1:", "abc"]) == [False] * 4
    # A value in clear with a star somewhere is not a mask: it is screened like any other.
    evading = [
        "32010219900307123X*",  # an ID number then a star
        "*32010219900307123X",
        "3201021*990030712",  # 7 before the star
        "320102*99003071",  # 5 after the star
        "ty1:" + "A" * 32,  # upper-case digits
        "ty1:" + "0" * 31,
        "ty1:" + "0" * 33,
        "ty1:" + "g" * 32,
        "91320102MA*1XXXXXX",
    ]
    assert _recognised(evading) == [False] * len(evading)


def test_a_value_with_a_star_in_it_does_not_pass_the_parents_rules(
    nodes: dict[str, Node], county: Node
) -> None:
    city = nodes["320100"]
    quality = QualityService(city.config, city.store, QualityReporter(city.config, city.store))
    quality.rules_local(str(BASE_RULES))
    company = _text_rows(fake_legal_entities("320102", 1, seed=13))[0]
    starred = company["uscc"][:9] + "*" + company["uscc"][10:]
    county.ingest(COMPANIES["code"], [{**company, "uscc": starred}])
    city.pull(county)
    held = quality.quarantine_list()["rows"]
    assert [(h["entity"], h["record_key"]) for h in held] == [("legal_entity", starred)]


def test_a_protected_flag_is_computed_once_per_attribute_not_per_rule(
    nodes: dict[str, Node],
) -> None:
    city = nodes["320100"]
    quality = QualityService(city.config, city.store, QualityReporter(city.config, city.store))
    quality.rules_local(str(BASE_RULES))
    screen = city.store.quality.screen(city.store.entities["person"], None)
    assert screen is not None and len(screen.rules) >= 5
    sql = screen.select_sql("incoming_person", "_ord", protected=True)
    strings = [a for a, t in screen.types if t == "string"]
    # id_number is read by three rules, yet tested for a pseudonym's shape once.
    assert sql.count("starts_with(") == len(strings) and "id_number" in strings
    assert "starts_with(" not in screen.select_sql("incoming_person", "_ord")


# ----- a value that leaves empty ----------------------------------------------------------------

REQUIRED_BIRTH_DATE = """
name = "parent-checks"
version = "1.0.0"

[[rules]]
id = "person.birth_date.required"
entity = "person"
attribute = "birth_date"
check = "required"
description = "出生日期 is required"
"""


def test_a_withheld_date_is_not_held_for_a_required_rule_at_the_parent(
    nodes: dict[str, Node], county: Node, tmp_path: Path
) -> None:
    city = nodes["320100"]
    other = Node(tmp_path, "320104")  # an unconditional source with an empty date
    try:
        rules = tmp_path / "rules.toml"
        rules.write_text(REQUIRED_BIRTH_DATE, encoding="utf-8")
        quality = QualityService(city.config, city.store, QualityReporter(city.config, city.store))
        quality.rules_local(str(rules))
        # The first window carries the catalogue and the rows together.
        city.pull(county)
        assert city.rows("SELECT count(*) AS n FROM person WHERE birth_date IS NULL") == [{"n": 60}]
        assert quality.quarantine_list()["rows"] == []
        other.publish({**PERSON, "code": "320104-GA-001", "sharing": "unconditional"})
        person = _text_rows(fake_people("320104", 1, seed=9))[0]
        other.ingest("320104-GA-001", [{**person, "birth_date": ""}])
        city.pull(other)
        held = quality.quarantine_list()["rows"]
        assert [(h["origin_node"], h["record_key"]) for h in held] == [
            ("320104", person["id_number"])
        ]
    finally:
        other.store.close()


# ----- no key in error text; a new key applies at once ------------------------------------------


def _pad_pieces(key: bytes) -> list[str]:
    padded = key.ljust(64, b"\0")
    pads = [bytes(b ^ x for b in padded).hex() for x in (0x36, 0x5C)]
    return [p[i : i + 6] for p in pads for i in range(0, len(p) - 5)]


def test_an_error_in_outbound_sql_never_quotes_the_keys_pads(county: Node) -> None:
    county.store.read_window(0, 10)  # compiles, generating the key
    key = _key(county)
    compiled = county.store.outbound._compiled()
    columns = compiled.columns["person"]
    assert isinstance(columns, dict)
    # An expression that does not parse just after a pad: DuckDB quotes the query there.
    assert "') || encode(" in columns["id_number"]
    columns["id_number"] = columns["id_number"].replace("') || encode(", "') || encode( FROM ", 1)
    with pytest.raises(duckdb.Error) as caught:
        county.store.read_window(0, 10_000)
    text = str(caught.value)
    assert "LINE 1" in text and REDACTED in text
    assert [p for p in _pad_pieces(key) if p in text] == []
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    # The same through an export, and with a column gone from the table.
    with pytest.raises(duckdb.Error) as caught:
        county.sharing.export(PERSON["code"], "/tmp/never-written.csv")
    assert [p for p in _pad_pieces(key) if p in str(caught.value)] == []
    county.store.outbound._cache = None
    with county.store.db.write() as cur:
        cur.execute("ALTER TABLE tongyuan.rows_legal_entity DROP COLUMN legal_rep_id_number")
    with pytest.raises(duckdb.Error) as caught:
        county.store.read_window(0, 10_000)
    assert [p for p in _pad_pieces(key) if p in str(caught.value)] == []


def test_redact_removes_pad_fragments_and_keeps_the_rest(county: Node) -> None:
    county.store.read_window(0, 10)
    key = _key(county)
    inner = bytes(b ^ 0x36 for b in key.ljust(64, b"\0")).hex()
    text = f"Parser Error: LINE 1: ...{inner[7:41]}') || encode(x)) near 'ty1:{'ab' * 16}'"
    redacted = county.store.outbound.redact(text)
    assert inner[7:41] not in redacted and "ab" * 16 in redacted
    assert redacted.startswith("Parser Error: LINE 1: ...<redacted>')")


def test_a_replaced_federation_key_applies_without_a_restart(county: Node) -> None:
    def ids() -> set[str]:
        window = county.store.read_window(0, 10_000)
        return set(window.tables["person"].column("id_number").to_pylist())

    raw = {r["id_number"] for r in county.rows("SELECT id_number FROM person")}
    first = ids()
    assert first == {pseudonym(i, _key(county)) for i in raw}
    new_key = bytes(range(1, 33))
    pki.write_private(county.directory / "security" / "federation.key", new_key.hex().encode())
    assert ids() == {pseudonym(i, new_key) for i in raw} != first


# ----- exports ------------------------------------------------------------------------------------


def test_a_jsonl_export_is_made_by_duckdb_one_object_a_line(county: Node, tmp_path: Path) -> None:
    _, reader, cur = county.store.outbound.export_batches(PERSON["code"], json_lines=True)
    try:
        assert reader.schema.names == ["line"]
    finally:
        cur.close()
    target = tmp_path / "people.jsonl"
    result = county.sharing.export(PERSON["code"], str(target), batch_rows=7)
    assert (result["rows"], result["format"]) == (60, "jsonl")
    text = target.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "\\u" not in text  # UTF-8 as it is
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 60
    assert list(records[0]) == [f["name"] for f in PERSON["fields"]] + ["origin_node"]
    key = _key(county)
    raw = county.rows("SELECT id_number, name, address FROM person")
    assert {r["id_number"] for r in records} == {pseudonym(r["id_number"], key) for r in raw}
    assert {r["address"] for r in records} == {r["address"] for r in raw}
    assert all(r["birth_date"] is None and r["name"][1] == "*" for r in records)


def test_a_starred_value_in_clear_is_still_a_discrepancy(tmp_path: Path) -> None:
    key = bytes(range(32))
    source, observer, city = (Node(tmp_path, c) for c in ("320102", "320104", "320100"))
    try:
        for node in (source, observer, city):
            (node.directory / "security").mkdir()
            (node.directory / "security" / "federation.key").write_text(key.hex() + "\n")
        fields = [{"name": "id_number"}, {"name": "name"}]
        source.publish({**PERSON, "sharing": "unconditional", "fields": fields})
        observer.publish(
            {
                **PERSON,
                "code": "320104-MZ-001",
                "department": "民政局",
                "sharing": "unconditional",
                "source_node": "320102",
                "source_department": "公安局",
                "fields": fields,
            }
        )
        person = _text_rows(fake_people("320102", 1, seed=5))[0]
        source.ingest(PERSON["code"], [{"id_number": person["id_number"], "name": "张三丰"}])
        # Not a mask's shape (7 characters before the star): compared like any value.
        starred = "某某某某某某某*某"
        observer.ingest("320104-MZ-001", [{"id_number": person["id_number"], "name": starred}])
        city.pull(source)
        city.pull(observer)
        city.store.sources.crosscheck()
        assert city.store.sources.counts()["open"] == 1
    finally:
        for node in (source, observer, city):
            node.store.close()
