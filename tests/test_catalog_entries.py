"""Catalogue entries, freshness and standard items as plain functions: every check a
person's entry file goes through, and the freshness boundaries."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from node.catalog.entries import CatalogSettings, SharingAttribute, build_entry
from node.catalog.files import load_entries
from node.catalog.freshness import freshness
from node.catalog.standards import build_standard, digest, mapping_problem
from node.config import CONFIG_FILE, load_config, render_initial_config
from node.errors import ConfigError, UserError
from node.model import load_base_model

ENTITIES = load_base_model().storage_entities()
SETTINGS = CatalogSettings()


def entry(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "code": "320102-GA-001",
        "name": "户籍人口信息",
        "summary": "本区户籍人口",
        "department": "公安局",
        "entity": "person",
        "update_frequency": "daily",
        "sharing": "unconditional",
        "fields": [
            {"name": "id_number", "description": "公民身份号码", "sensitivity": "core"},
            {"name": "name", "type": "string"},
        ],
    }
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


def build(raw: dict[str, Any], settings: CatalogSettings = SETTINGS) -> Any:
    return build_entry(
        raw, node_code="320102", entities=ENTITIES, settings=settings, where="people.toml"
    )


def test_a_complete_entry_builds_with_defaults_filled_in() -> None:
    built = build(entry())
    assert built.status == "draft" and built.version == 1
    assert built.source_node == "320102" and built.source_department == "公安局"
    assert built.sharing_kind == "unconditional"
    assert built.format == "database" and built.open_attribute == "closed"
    assert built.sensitivity == "general"
    assert [(f.name, f.type) for f in built.fields] == [("id_number", "string"), ("name", "string")]
    assert built.fields[0].description == "公民身份号码"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": None, "summary": None}, "mandatory metadata missing: name, summary"),
        ({"code": "320104-GA-001"}, "outside this node's prefix"),
        ({"code": "320102-人口"}, "after '320102-' use letters"),
        ({"entity": "vehicle"}, "entity 'vehicle' is not in this node's model"),
        ({"fields": [{"name": "id_number", "type": "geometry"}]}, "type 'geometry'"),
        ({"fields": [{"name": "id_number", "type": "date"}]}, "holds it as 'string'"),
        ({"fields": [{"name": "id_number"}, {"name": "shoe_size"}]}, "'shoe_size' is not an"),
        ({"fields": [{"name": "name"}]}, "must include the key 'id_number'"),
        ({"fields": None}, "fields (information items) are missing"),
        ({"fields": [{"name": "name"}, {"name": "name"}]}, "listed twice"),
        ({"update_frequency": "fortnightly"}, "update_frequency 'fortnightly'"),
        ({"sharing": "open_to_all"}, "sharing 'open_to_all' is not a sharing attribute"),
        ({"sharing": "conditional"}, "state its sharing_conditions"),
        ({"sensitivity": "secret"}, "sensitivity 'secret'"),
        ({"colour": "blue"}, "unknown key(s) colour"),
        ({"source_node": "999999"}, "source_node"),
    ],
)
def test_each_problem_is_named_with_file_and_resource(
    changes: dict[str, Any], expected: str
) -> None:
    with pytest.raises(UserError) as caught:
        build(entry(**changes))
    message = str(caught.value)
    assert message.startswith("people.toml (resource ")
    assert expected in message


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(UserError) as caught:
        build(entry(code="999-x", update_frequency="never", sharing="x"))
    message = str(caught.value)
    for part in ("outside this node's prefix", "'never'", "sharing 'x'"):
        assert part in message


def test_sharing_attributes_come_from_configuration() -> None:
    zhejiang = CatalogSettings(
        sharing=(SharingAttribute("free", "无条件共享类", "unconditional"),),
        sensitivity_grades=("L1", "L2", "L3", "L4"),
    )
    fields = [{"name": "id_number", "sensitivity": "L4"}]
    built = build(entry(sharing="free", sensitivity="L3", fields=fields), zhejiang)
    assert (built.sharing, built.sharing_kind, built.sensitivity) == ("free", "unconditional", "L3")
    with pytest.raises(UserError, match="configured: free"):
        build(entry(), zhejiang)


def test_catalog_config_section_is_checked(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE
    base = render_initial_config("320102", "玄武区", "127.0.0.1:0")
    path.write_text(base, encoding="utf-8")
    assert load_config(tmp_path).catalog == CatalogSettings()
    bad = base.replace('kind = "none"', 'kind = "sometimes"')
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sharing #3: kind 'sometimes'"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("age", "state"),
    [
        (timedelta(hours=23), "fresh"),
        (timedelta(days=1), "fresh"),
        (timedelta(days=1, seconds=1), "late"),
        (timedelta(days=2), "late"),
        (timedelta(days=2, seconds=1), "stale"),
    ],
)
def test_freshness_boundaries_for_a_daily_resource(age: timedelta, state: str) -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert freshness("daily", now - age, None, now) == state


def test_freshness_without_changes_counts_from_publication() -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert freshness("weekly", None, date(2026, 11, 20), now) == "fresh"
    assert freshness("weekly", None, date(2026, 11, 1), now) == "stale"
    assert freshness("weekly", None, None, now) is None
    assert freshness("realtime", now - timedelta(minutes=6), None, now) == "late"


def test_entry_files_hold_one_entry_or_several(tmp_path: Path) -> None:
    one = tmp_path / "one.toml"
    one.write_text('code = "320102-A"\nname = "甲"\n[[fields]]\nname = "id_number"\n', "utf-8")
    assert load_entries(one) == [
        {"code": "320102-A", "name": "甲", "fields": [{"name": "id_number"}]}
    ]
    many = tmp_path / "many.yaml"
    many.write_text("resource:\n  - code: 320102-A\n  - code: 320102-B\n", "utf-8")
    assert [e["code"] for e in load_entries(many)] == ["320102-A", "320102-B"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("code: [unclosed\n", "utf-8")
    with pytest.raises(UserError, match=r"broken.yaml: not valid YAML at line 2"):
        load_entries(broken)
    (tmp_path / "entry.json").write_text("{}", "utf-8")
    with pytest.raises(UserError, match=r"use a .toml or .yaml file"):
        load_entries(tmp_path / "entry.json")


def test_standard_items_check_their_fields_and_mapping() -> None:
    item = build_standard(
        {
            "code": "320000-STD-1",
            "name": "人口基础信息",
            "entity": "person",
            "fields": "id_number,name,birth_date",
            "update_frequency": "daily",
        },
        node_code="320000",
        entities=ENTITIES,
        where="std.toml",
    )
    assert item.fields == ("id_number", "name", "birth_date") and item.origin_node == "320000"
    provider = build(entry())
    assert "lacks field(s) birth_date" in (mapping_problem(provider, item) or "")
    companies = build(entry(code="320102-SC-1", entity="legal_entity", fields=[{"name": "uscc"}]))
    assert "is about 'person'" in (mapping_problem(companies, item) or "")
    assert digest([item]) == digest([item]) != digest([])
    with pytest.raises(UserError, match="'height' is not an attribute"):
        build_standard(
            {**item.document(), "fields": ["height"], "origin_node": None, "version": None}
            | {"origin_node": None},
            node_code="320000",
            entities=ENTITIES,
            where="std.toml",
        )
