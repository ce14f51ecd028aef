"""The resource catalogue across real node processes: harvest up county → city → province
with edits, retirements and removals; search; standard items going down and coverage
coming back; freshness as time passes; DCAT/CSV exchange; and every refusal a user meets.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.csv as pacsv
import tomlkit
from conftest import ROOT, Cluster, Node, wait_until
from rdflib import Graph, Namespace
from rdflib.namespace import RDF

from node.catalog.entries import build_entry
from node.config import load_config
from node.demo_data import fake_people
from node.model import load_base_model
from node.store import Store

# Plain namespaces: rdflib's closed DCAT predates DCAT 3.
DCAT = Namespace("http://www.w3.org/ns/dcat#")
DCTERMS = Namespace("http://purl.org/dc/terms/")

T = TypeVar("T")
DAY = 24 * 3600
CLOCK_SKEW = "TONGYUAN_CLOCK_SKEW_SECONDS"
CODE = "320102-GA-001"
PATH_TO_XUANWU = [
    {"code": "320000", "name": "江苏省"},
    {"code": "320100", "name": "南京市"},
    {"code": "320102", "name": "玄武区"},
]
# The county's resource as a department writes it: Chinese text, described fields.
# "手机" appears only in the description of the phone field.
XUANWU_ENTRY: dict[str, Any] = {
    "code": CODE,
    "name": "玄武区户籍人口信息",
    "summary": "辖区户籍人口的身份与联系信息，由公安分局每日更新。",
    "department": "玄武区公安分局",
    "entity": "person",
    "update_frequency": "daily",
    "sharing": "conditional",
    "sharing_conditions": "仅限政务服务事项办理使用",
    "keywords": ["人口", "户籍"],
    "fields": [
        {
            "name": "id_number",
            "type": "string",
            "description": "公民身份号码",
            "sensitivity": "core",
        },
        {"name": "name", "description": "姓名", "sensitivity": "important"},
        {"name": "phone", "description": "本人手机号码", "sensitivity": "important"},
    ],
}


# ----- helpers ---------------------------------------------------------------------------


def write_toml(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def people_file(path: Path, division: str, count: int, seed: int = 0) -> Path:
    pacsv.write_csv(fake_people(division, count, seed=seed), path)
    return path


def cli_with_env(node: Node, env: dict[str, str], *args: str) -> str:
    """`tongyuan --dir NODE ARGS` with extra environment variables; returns stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "node", "--dir", str(node.directory), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **env},
        cwd=ROOT,
    )
    assert result.returncode == 0, f"tongyuan {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def listed(node: Node) -> dict[str, dict[str, Any]]:
    """The node's `catalog list --json`, by resource code."""
    entries = json.loads(node.cli("catalog", "list", "--json").stdout)
    return {e["code"]: e for e in entries}


def refused(node: Node, *args: str, says: tuple[str, ...]) -> str:
    """Run a command that must be refused: exit 1, one `error: …` line naming `says`."""
    result = node.cli(*args, check=False)
    assert result.returncode == 1, f"{args} was not refused:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in says:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]


def poll(fetch: Callable[[], T], check: Callable[[T], bool], what: str, timeout: float = 30) -> T:
    """Call `fetch` until `check` holds for what it returns; returns that value."""
    seen: list[T] = []

    def ready() -> bool:
        seen[:] = [fetch()]
        return check(seen[0])

    wait_until(ready, timeout=timeout, what=what)
    return seen[0]


def start(*nodes: Node) -> None:
    """Start several nodes at once and wait until each serves."""
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_serving()


def chain(cluster: Cluster) -> tuple[Node, Node, Node]:
    """玄武区 under 南京市 under 江苏省, all serving and attached; (province, city, county)."""
    county = cluster.node("320102", "xuanwu")
    city = cluster.node("320100", "nanjing")
    province = cluster.node("320000", "jiangsu")
    start(county, city, province)
    city.cli("children", "add", county.code, county.address)
    province.cli("children", "add", city.code, city.address)
    return province, city, county


def dcat_datasets(graph: Graph) -> dict[str, Any]:
    """Check the DCAT-AP mandatory properties; returns dataset identifier → node."""
    (catalog,) = graph.subjects(RDF.type, DCAT.Catalog)
    assert graph.value(catalog, DCTERMS.publisher) is not None
    assert list(graph.objects(catalog, DCAT.dataset))
    datasets = {}
    for dataset in graph.objects(catalog, DCAT.dataset):
        assert (dataset, RDF.type, DCAT.Dataset) in graph
        assert str(graph.value(dataset, DCTERMS.title) or "")
        assert str(graph.value(dataset, DCTERMS.description) or "")
        distributions = list(graph.objects(dataset, DCAT.distribution))
        assert distributions
        for distribution in distributions:
            assert graph.value(distribution, DCAT.accessURL) is not None
        datasets[str(graph.value(dataset, DCTERMS.identifier))] = dataset
    assert set(graph.subjects(RDF.type, DCAT.Dataset)) == set(datasets.values())
    return datasets


# ----- harvesting ------------------------------------------------------------------------


def test_entries_are_harvested_up_two_tiers_searched_versioned_retired_and_removed(
    cluster: Cluster, tmp_path: Path
) -> None:
    # The county registers and publishes alone, before any parent exists.
    county = cluster.node("320102", "xuanwu")
    county.cli(
        "catalog", "add", str(write_toml(tmp_path / "hukou.toml", XUANWU_ENTRY)), "--publish"
    )
    county.cli(
        "catalog", "add", "--code", "320102-GA-DRAFT", "--name", "草稿资源",
        "--summary", "尚未发布", "--department", "玄武区公安分局", "--entity", "person",
        "--frequency", "daily", "--sharing", "unconditional",
    )  # fmt: skip
    city = cluster.node("320100", "nanjing")
    province = cluster.node("320000", "jiangsu")
    start(county, city, province)
    city.cli("children", "add", county.code, county.address)
    province.cli("children", "add", city.code, city.address)

    def at_province(check: Callable[[dict[str, dict[str, Any]]], bool], what: str) -> Any:
        return poll(lambda: listed(province), check, what)

    entry = at_province(lambda e: CODE in e, "the entry at the province")[CODE]
    assert entry["status"] == "published" and entry["version"] == 1
    assert entry["origin_node"] == "320102"
    assert entry["path"] == PATH_TO_XUANWU
    assert entry["name"] == "玄武区户籍人口信息"
    assert [f["description"] for f in entry["fields"]] == ["公民身份号码", "姓名", "本人手机号码"]
    assert entry["sharing_conditions"] == "仅限政务服务事项办理使用"
    shown = province.cli("catalog", "show", CODE).stdout
    assert "江苏省 320000 › 南京市 320100 › 玄武区 320102" in shown

    # An edit is a draft of version 2: nothing changes above until it is published.
    county.cli("catalog", "edit", CODE, "--name", "玄武区户籍人口基本信息")
    marker = county.resource(
        "person", "玄武区公安分局"
    )  # a later published change, to know the link caught up
    entries = at_province(lambda e: marker in e, "the later resource at the province")
    assert entries[CODE]["version"] == 1 and entries[CODE]["name"] == "玄武区户籍人口信息"

    # Search at the province: "手机" is only in one field's description of one resource.
    hits = json.loads(province.cli("catalog", "search", "手机", "--json").stdout)
    assert [(h["code"], h["path"]) for h in hits] == [(CODE, PATH_TO_XUANWU)]
    assert json.loads(province.cli("catalog", "search", "手机", "法人", "--json").stdout) == []

    county.cli("catalog", "publish", CODE)
    entry = at_province(lambda e: e[CODE]["version"] == 2, "version 2 at the province")[CODE]
    assert entry["name"] == "玄武区户籍人口基本信息" and entry["status"] == "published"
    assert [f["description"] for f in entry["fields"]] == ["公民身份号码", "姓名", "本人手机号码"]

    county.cli("catalog", "retire", CODE, "--reason", "并入市级资源")
    entry = at_province(lambda e: e[CODE]["status"] == "retired", "the retirement above")[CODE]
    assert entry["version"] == 2

    county.cli("catalog", "remove", CODE)
    province_entries = at_province(lambda e: CODE not in e, "the removal at the province")
    city_entries = listed(city)
    assert CODE not in city_entries
    # The draft never travelled; the other published resource did and stays.
    for entries in (city_entries, province_entries):
        assert set(entries) == {marker}


# ----- standard items and coverage -------------------------------------------------------


def test_a_standard_item_reaches_a_county_two_tiers_down_and_coverage_follows_the_mapping(
    cluster: Cluster, tmp_path: Path
) -> None:
    province, city, county = chain(cluster)
    # A second county under the city never provides the item.
    qinhuai = cluster.node("320104", "qinhuai").start()
    city.cli("children", "add", qinhuai.code, qinhuai.address)
    county.cli(
        "catalog", "add", str(write_toml(tmp_path / "hukou.toml", XUANWU_ENTRY)), "--publish"
    )
    std = "320000-STD-1"
    province.cli(
        "catalog", "standard", "add", "--code", std, "--name", "人口基础信息",
        "--entity", "person", "--fields", "id_number,name", "--frequency", "daily",
    )  # fmt: skip

    def county_items() -> dict[str, dict[str, Any]]:
        items = json.loads(county.cli("catalog", "standard", "list", "--json").stdout)
        return {i["code"]: i for i in items}

    def coverage_rows() -> dict[str, dict[str, Any]]:
        coverage = json.loads(province.cli("catalog", "coverage", "--json").stdout)
        assert [i["code"] for i in coverage["items"]] == [std]
        return {r["code"]: r for r in coverage["nodes"]}

    item = poll(county_items, lambda i: std in i, "the standard item at the county")[std]
    assert item["origin_node"] == "320000" and item["received_from"] == "320100"
    assert item["fields"] == ["id_number", "name"] and item["provided_by"] == []

    rows = poll(coverage_rows, lambda r: {"320102", "320104"} <= set(r), "both counties")
    assert rows["320100"]["depth"] == 0 and rows["320102"]["depth"] == 1
    assert rows["320102"]["cells"] == {std: "missing"}
    assert rows["320104"]["cells"] == {std: "missing"}
    assert rows["320100"]["rollup"] == {std: {"missing": 2}}

    county.cli("catalog", "map", CODE, std)
    assert county_items()[std]["provided_by"] == [CODE]
    rows = poll(
        coverage_rows,
        lambda r: r["320102"]["cells"] == {std: "provided"},
        "provided at the province",
    )
    assert rows["320100"]["rollup"] == {std: {"provided": 1, "missing": 1}}
    # Three days on, by the province's clock, the county's daily delivery is overdue
    # (a stopped node: the CLI judges with its own, skewed, clock).
    province.stop()
    skewed = json.loads(
        cli_with_env(province, {CLOCK_SKEW: str(3 * DAY)}, "catalog", "coverage", "--json")
    )
    later = {r["code"]: r for r in skewed["nodes"]}
    assert later["320102"]["cells"] == {std: "stale"}
    assert later["320100"]["rollup"] == {std: {"stale": 1, "missing": 1}}

    province.start()
    province.cli("catalog", "standard", "withdraw", std)
    poll(county_items, lambda i: i == {}, "the withdrawal at the county")
    assert json.loads(city.cli("catalog", "standard", "list", "--json").stdout) == []


# ----- freshness -------------------------------------------------------------------------


def test_freshness_turns_late_then_stale_as_time_passes(cluster: Cluster, tmp_path: Path) -> None:
    county = cluster.node("320102", "xuanwu")
    code = county.resource("person")
    county.ingest(code, people_file(tmp_path / "p.csv", "320102", 20))

    entry = listed(county)[code]
    assert entry["freshness"] == "fresh" and entry["last_change_at"] is not None
    assert county.status()["catalog"]["freshness"] == {"fresh": 1, "late": 0, "stale": 0}

    for days, state in ((1.5, "late"), (3, "stale")):
        skew = {CLOCK_SKEW: str(days * DAY)}
        entries = json.loads(cli_with_env(county, skew, "catalog", "list", "--json"))
        assert [(e["code"], e["freshness"]) for e in entries] == [(code, state)]
        summary = json.loads(cli_with_env(county, skew, "status", "--json"))["catalog"]
        assert summary["freshness"] == {"fresh": 0, "late": 0, "stale": 0, state: 1}
        assert summary["by_node"] == [
            {"code": "320102", "name": "玄武区", "fresh": 0, "late": 0, "stale": 0, state: 1}
        ]
        assert [(e["code"], e["freshness"]) for e in summary["not_fresh"]] == [(code, state)]


# ----- interchange -----------------------------------------------------------------------


def test_dcat_and_csv_exports_and_importing_them_back(cluster: Cluster, tmp_path: Path) -> None:
    city = cluster.node("320100", "nanjing")
    xuanwu = cluster.node("320102", "xuanwu")
    qinhuai = cluster.node("320104", "qinhuai")
    start(city, xuanwu, qinhuai)
    city.cli("children", "add", xuanwu.code, xuanwu.address)
    city.cli("children", "add", qinhuai.code, qinhuai.address)
    xuanwu.cli(
        "catalog", "add", str(write_toml(tmp_path / "hukou.toml", XUANWU_ENTRY)), "--publish"
    )
    qinhuai.cli(
        "catalog", "add", "--code", "320104-SC-001", "--name", "秦淮区市场主体登记信息",
        "--summary", "辖区企业登记信息", "--department", "秦淮区市场监管局",
        "--entity", "legal_entity", "--frequency", "weekly", "--sharing", "unconditional",
        "--publish",
    )  # fmt: skip
    poll(lambda: listed(city), lambda e: len(e) == 2, "both counties' entries at the city")

    own = tmp_path / "xuanwu.jsonld"
    xuanwu.cli("catalog", "export", "--format", "dcat", "-o", str(own))
    own_graph = Graph().parse(own, format="json-ld")
    (dataset,) = dcat_datasets(own_graph).values()
    assert str(own_graph.value(dataset, DCTERMS.title)) == "玄武区户籍人口信息"

    subtree = tmp_path / "nanjing.jsonld"
    city.cli("catalog", "export", "--scope", "subtree", "-o", str(subtree))
    assert set(dcat_datasets(Graph().parse(subtree, format="json-ld"))) == {CODE, "320104-SC-001"}

    table = tmp_path / "nanjing.csv"
    city.cli("catalog", "export", "--format", "csv", "--scope", "subtree", "-o", str(table))
    with open(table, encoding="utf-8-sig", newline="") as f:
        rows = {r["code"]: r for r in csv.DictReader(f)}
    assert set(rows) == {CODE, "320104-SC-001"}
    assert rows[CODE]["name"] == "玄武区户籍人口信息"
    assert rows[CODE]["department"] == "玄武区公安分局"
    assert rows[CODE]["fields"] == "id_number:string; name:string; phone:string"
    assert rows["320104-SC-001"]["name"] == "秦淮区市场主体登记信息"
    assert rows["320104-SC-001"]["origin_node"] == "320104"

    # 玄武区's codes are 玄武区's: another county cannot adopt them, and writes nothing.
    refused(
        qinhuai, "catalog", "import", str(own),
        says=(CODE, "outside this node's prefix", "'320104-'"),
    )  # fmt: skip
    qinhuai_entries = listed(qinhuai).values()
    assert [(e["code"], e["status"]) for e in qinhuai_entries] == [("320104-SC-001", "published")]

    # A rebuilt 玄武区 node (a fresh directory for the same code) takes them back as drafts.
    rebuilt = cluster.node("320102", "xuanwu-rebuilt")
    rebuilt.cli("catalog", "import", str(own))
    (draft,) = listed(rebuilt).values()
    assert draft["code"] == CODE and draft["status"] == "draft" and draft["version"] == 1
    assert draft["name"] == XUANWU_ENTRY["name"] and draft["summary"] == XUANWU_ENTRY["summary"]
    assert draft["sharing_conditions"] == "仅限政务服务事项办理使用"
    assert draft["keywords"] == ["人口", "户籍"]
    assert [(f["name"], f["description"], f["sensitivity"]) for f in draft["fields"]] == [
        ("id_number", "公民身份号码", "core"),
        ("name", "姓名", "important"),
        ("phone", "本人手机号码", "important"),
    ]


# ----- refusals --------------------------------------------------------------------------


def test_every_bad_change_is_refused_with_what_to_fix_and_nothing_written(
    cluster: Cluster, tmp_path: Path
) -> None:
    county = cluster.node("320102", "xuanwu").start()
    flags = (
        "--name", "测试资源", "--summary", "测试", "--department", "玄武区公安分局",
        "--entity", "person", "--frequency", "daily",
    )  # fmt: skip
    county.cli("catalog", "add", "--code", "320102-DRAFT", *flags, "--sharing", "unconditional")
    county.cli(
        "catalog", "add", "--code", "320102-OLD", *flags, "--sharing", "unconditional", "--publish"
    )
    people = people_file(tmp_path / "p.csv", "320102", 10)
    county.ingest("320102-OLD", people)
    county.cli("catalog", "retire", "320102-OLD", "--reason", "停用")
    published = county.resource("person")
    before = listed(county)
    rows_before = county.fetch("SELECT count(*) AS n FROM person")

    def entry(**changes: Any) -> dict[str, Any]:
        doc = {**XUANWU_ENTRY, **changes}
        return {k: v for k, v in doc.items() if v is not None}

    def file(name: str, doc: dict[str, Any]) -> str:
        return str(write_toml(tmp_path / name, doc))

    refused(
        county, "catalog", "add", file("no-summary.toml", entry(summary=None)),
        says=("mandatory metadata missing: summary", CODE),
    )  # fmt: skip
    refused(
        county, "catalog", "add", "--code", "320104-GA-001", *flags, "--sharing", "unconditional",
        says=("320104-GA-001", "outside this node's prefix", "'320102-'"),
    )  # fmt: skip
    geometry = [{"name": "id_number"}, {"name": "address", "type": "geometry"}]
    refused(
        county, "catalog", "add", file("geometry.toml", entry(fields=geometry)),
        says=("'address'", "'geometry'", "model does not know"),
    )  # fmt: skip
    blood = [{"name": "id_number"}, {"name": "blood_type", "description": "血型"}]
    refused(
        county, "catalog", "add", file("blood.toml", entry(fields=blood)),
        says=("'blood_type' is not an attribute of entity 'person'",),
    )  # fmt: skip
    refused(
        county, "ingest", "320102-DRAFT", str(people),
        says=("320102-DRAFT", "draft", "catalog publish 320102-DRAFT"),
    )  # fmt: skip
    refused(
        county, "ingest", "320102-OLD", str(people),
        says=("320102-OLD", "retired", "keeps its history"),
    )  # fmt: skip
    second_bad = {"resource": [entry(), entry(code="320102-GA-002", update_frequency="sometimes")]}
    refused(
        county, "catalog", "add", file("two.toml", second_bad),
        says=("entry #2", "320102-GA-002", "'sometimes'"),
    )  # fmt: skip
    refused(
        county, "catalog", "add", file("secret.toml", entry(sharing="secret")),
        says=("sharing 'secret' is not a sharing attribute", "not_shared"),
    )  # fmt: skip
    refused(
        county, "catalog", "add", file("conditional.toml", entry(sharing_conditions=None)),
        says=("conditional", "sharing_conditions"),
    )  # fmt: skip
    refused(
        county, "catalog", "standard", "add", "--code", "320102-STD-1", "--name", "人口",
        "--entity", "person", "--fields", "id_number", "--frequency", "daily",
        says=("320102", "county node"),
    )  # fmt: skip
    refused(
        county, "catalog", "map", published, "320000-STD-9",
        says=("standard item '320000-STD-9' is not known at node 320102",),
    )  # fmt: skip

    assert listed(county) == before
    assert county.fetch("SELECT count(*) AS n FROM person") == rows_before
    assert json.loads(county.cli("catalog", "standard", "list", "--json").stdout) == []
    history = json.loads(county.cli("catalog", "show", "320102-OLD", "--json").stdout)["history"]
    assert [h["action"] for h in history] == ["created and published version 1", "retired"]


def test_a_child_sending_an_entry_for_a_resource_it_does_not_own_is_refused(
    cluster: Cluster,
) -> None:
    county = cluster.node("320102", "xuanwu")
    # The product refuses such an entry at `catalog add`; write it straight into the store
    # of the stopped county, as a corrupted or tampered node would hold it.
    config = load_config(county.directory)
    foreign = build_entry(
        {**XUANWU_ENTRY, "code": "320104-GA-009", "name": "秦淮区人口信息"},
        node_code="320104",
        entities=load_base_model().storage_entities(),
        settings=config.catalog,
        where="test",
    ).with_changes(status="published")
    store = Store.open(config.store_path)
    try:
        store.catalog.write_entries([foreign], "intruder", "published version 1")
    finally:
        store.close()
    city = cluster.node("320100", "nanjing")
    start(county, city)
    city.cli("children", "add", county.code, county.address)

    def link_error() -> str:
        (child,) = json.loads(city.cli("children", "list", "--json").stdout)
        return str(child["error"] or "")

    error = poll(link_error, lambda e: "320104-GA-009" in e, "the refusal on the city's link")
    assert "320102" in error and "does not own" in error
    assert "320104-GA-009" not in listed(city)
