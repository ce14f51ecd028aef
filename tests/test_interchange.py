"""Catalogue interchange: DCAT-AP 3.0 JSON-LD out and back, foreign imports, CSV export.

Exports are read back with rdflib itself (not our own parser), so the checks see what a
harvester sees.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from typing import Any

import pytest
from rdflib import Graph, Literal, Namespace, URIRef
from rdflib.collection import Collection
from rdflib.namespace import RDF
from rdflib.term import Node

from node.catalog.entries import ENTRY_KEYS, CatalogSettings, Entry, build_entry
from node.catalog.interchange import CSV_COLUMNS, from_dcat, to_csv, to_dcat
from node.errors import UserError
from node.model import load_base_model

NODE = "320100"
ENTITIES = load_base_model().storage_entities()
SETTINGS = CatalogSettings()
# Plain namespaces: rdflib's closed DCAT predates DCAT 3 (no dcat:version).
DCAT = Namespace("http://www.w3.org/ns/dcat#")
DCTERMS = Namespace("http://purl.org/dc/terms/")
FOAF = Namespace("http://xmlns.com/foaf/0.1/")
XSD = Namespace("http://www.w3.org/2001/XMLSchema#")
TY = Namespace("https://tongyuan.example/ns#")
EU_FREQUENCY = "http://publications.europa.eu/resource/authority/frequency/"
EU_ACCESS = "http://publications.europa.eu/resource/authority/access-right/"
ISSUED = datetime(2024, 6, 1, 8, 30, tzinfo=UTC)

RAW_ENTRIES: list[dict[str, Any]] = [
    {
        "code": "320100-GA-001",
        "name": "南京市人口基础信息",
        "summary": "全市户籍人口的身份、住址信息，每日由公安局更新。",
        "department": "南京市公安局",
        "entity": "person",
        "update_frequency": "daily",
        "sharing": "conditional",
        "sharing_conditions": "仅限政务服务事项办理使用，须经数据局审批",
        "open_attribute": "closed",
        "sensitivity": "important",
        "keywords": ["人口", "户籍"],
        "provides": "按身份证号查询",
        "fields": [
            {
                "name": "id_number",
                "type": "string",
                "description": "公民身份号码",
                "sensitivity": "core",
            },
            {"name": "name", "description": "姓名", "sensitivity": "important"},
            {"name": "birth_date", "type": "date", "description": "出生日期"},
            {"name": "address", "description": "住址，含门牌号"},
        ],
    },
    {
        "code": "320100-SC-002",
        "name": "企业登记信息",
        "summary": '玄武区登记的企业，含"注册资本"、法定代表人,\n每月汇总一次。',
        "department": "南京市市场监督管理局",
        "source_node": "320102",
        "source_department": "玄武区市场监督管理局",
        "entity": "legal_entity",
        "update_frequency": "monthly",
        "sharing": "unconditional",
        "open_attribute": "open",
        "format": "spreadsheet",
        # A keyword equal to the entity name must survive the round trip.
        "keywords": ["企业", "legal_entity", "登记"],
        "fields": [
            {"name": "uscc", "description": "统一社会信用代码", "code_list": "GB 32100"},
            {"name": "name", "description": "企业名称"},
            {"name": "registered_capital", "type": "decimal", "description": "注册资本（万元）"},
        ],
    },
    {
        "code": "320100-MZ-003",
        "name": "低保对象实时名单",
        "summary": "最低生活保障对象名单，不予共享。",
        "department": "南京市民政局",
        "entity": "person",
        "update_frequency": "realtime",
        "sharing": "not_shared",
        "sensitivity": "core",
        "fields": ["id_number", "name", "division_code"],
    },
]


def _entries() -> list[Entry]:
    built = [
        build_entry(raw, node_code=NODE, entities=ENTITIES, settings=SETTINGS, where="test")
        for raw in RAW_ENTRIES
    ]
    return [
        built[0].with_changes(
            version=3,
            status="published",
            published_on=date(2024, 1, 15),
            last_change_at=datetime(2024, 5, 31, 23, 0, tzinfo=UTC),
        ),
        built[1].with_changes(version=2, status="published", published_on=date(2023, 11, 2)),
        built[2],
    ]


def _documents(entries: list[Entry]) -> list[dict[str, Any]]:
    docs = [e.document() for e in entries]
    docs[0].update(origin_node=NODE, path=["南京市"], freshness="fresh")
    docs[1].update(origin_node="320102", path=["南京市", "玄武区"], freshness="stale")
    return docs


def _export() -> tuple[list[Entry], str]:
    entries = _entries()
    catalog = to_dcat(_documents(entries), node_code=NODE, node_name="南京市", issued=ISSUED)
    return entries, json.dumps(catalog, ensure_ascii=False)


def _graph(text: str) -> Graph:
    return Graph().parse(data=text, format="json-ld")


def _dataset(graph: Graph, code: str) -> URIRef:
    found = [
        s
        for s in graph.subjects(DCTERMS.identifier, Literal(code))
        if (s, RDF.type, DCAT.Dataset) in graph
    ]
    assert len(found) == 1, f"{code}: {found}"
    subject = found[0]
    assert isinstance(subject, URIRef)
    return subject


def _rdf_list(graph: Graph, subject: URIRef, predicate: URIRef) -> list[Node]:
    head = graph.value(subject, predicate)
    assert head is not None, f"{subject} has no {predicate}"
    return list(Collection(graph, head))


def _catalogued(entry: Entry) -> Entry:
    """The entry without what the catalogue's lifecycle (not its content) sets."""
    return entry.with_changes(
        version=1,
        status="draft",
        published_on=None,
        last_change_at=None,
        updated_by="",
        updated_at=None,
    )


# --- export ------------------------------------------------------------------------------


def test_catalog_has_the_dcat_ap_mandatory_properties() -> None:
    _, text = _export()
    assert '"@context": {' in text  # inline, not a URL
    graph = _graph(text)
    rows = list(
        graph.query(
            """
            SELECT ?catalog ?title ?description ?name ?issued WHERE {
                ?catalog a dcat:Catalog ;
                    dct:title ?title ;
                    dct:description ?description ;
                    dct:issued ?issued ;
                    dct:modified ?modified ;
                    dct:publisher ?publisher .
                ?publisher a foaf:Agent ; foaf:name ?name .
            }
            """,
            initNs={"dcat": DCAT, "dct": DCTERMS, "foaf": FOAF},
        )
    )
    assert len(rows) == 1
    catalog, title, description, name, issued = rows[0]  # type: ignore[misc]
    assert title == Literal("南京市政务数据资源目录", lang="zh")
    assert "320100" in str(description)
    assert name == Literal("南京市", lang="zh")
    assert issued == Literal(ISSUED.isoformat(), datatype=XSD.dateTime)
    datasets = set(graph.objects(catalog, DCAT.dataset))
    assert datasets == {
        _dataset(graph, "320100-GA-001"),
        _dataset(graph, "320100-SC-002"),
        _dataset(graph, "320100-MZ-003"),
    }


def test_every_dataset_has_title_description_publisher_and_an_access_url() -> None:
    entries, text = _export()
    graph = _graph(text)
    for entry in entries:
        ds = _dataset(graph, entry.code)
        assert graph.value(ds, DCTERMS.title) == Literal(entry.name, lang="zh")
        assert graph.value(ds, DCTERMS.description) == Literal(entry.summary, lang="zh")
        publisher = graph.value(ds, DCTERMS.publisher)
        assert publisher is not None
        assert (publisher, RDF.type, FOAF.Agent) in graph
        assert graph.value(publisher, FOAF.name) == Literal(entry.department, lang="zh")
        assert graph.value(ds, DCAT.version) == Literal(str(entry.version))
        distributions = list(graph.objects(ds, DCAT.distribution))
        assert len(distributions) == 1
        assert (distributions[0], RDF.type, DCAT.Distribution) in graph
        access = graph.value(distributions[0], DCAT.accessURL)
        assert isinstance(access, URIRef)
    ga = _dataset(graph, "320100-GA-001")
    assert ga == URIRef("urn:tongyuan:320100:dataset:320100-GA-001")
    sc = _dataset(graph, "320100-SC-002")
    assert sc == URIRef("urn:tongyuan:320102:dataset:320100-SC-002")  # owned by the county
    sc_distribution = graph.value(sc, DCAT.distribution)
    assert graph.value(sc_distribution, DCAT.accessURL) == URIRef(
        "urn:tongyuan:320102:resource:320100-SC-002"
    )


def test_frequency_access_rights_and_dates_use_the_eu_vocabularies() -> None:
    _, text = _export()
    graph = _graph(text)
    expected = {
        "320100-GA-001": ("DAILY", "RESTRICTED"),
        "320100-SC-002": ("MONTHLY", "PUBLIC"),
        "320100-MZ-003": ("UPDATE_CONT", "NON_PUBLIC"),
    }
    for code, (frequency, access) in expected.items():
        ds = _dataset(graph, code)
        assert graph.value(ds, DCTERMS.accrualPeriodicity) == URIRef(EU_FREQUENCY + frequency)
        assert graph.value(ds, DCTERMS.accessRights) == URIRef(EU_ACCESS + access)
    ga = _dataset(graph, "320100-GA-001")
    assert graph.value(ga, DCTERMS.issued) == Literal("2024-01-15", datatype=XSD.date)
    assert graph.value(ga, DCTERMS.modified) == Literal(
        "2024-05-31T23:00:00+00:00", datatype=XSD.dateTime
    )
    mz = _dataset(graph, "320100-MZ-003")
    assert graph.value(mz, DCTERMS.issued) is None  # a draft has no publication date


def test_keywords_include_the_entity_name() -> None:
    _, text = _export()
    graph = _graph(text)
    keywords = {
        code: {str(k) for k in graph.objects(_dataset(graph, code), DCAT.keyword)}
        for code in ("320100-GA-001", "320100-SC-002", "320100-MZ-003")
    }
    assert keywords == {
        "320100-GA-001": {"人口", "户籍", "person"},
        "320100-SC-002": {"企业", "legal_entity", "登记"},
        "320100-MZ-003": {"person"},
    }
    ga = _dataset(graph, "320100-GA-001")
    assert Literal("人口", lang="zh") in set(graph.objects(ga, DCAT.keyword))


def test_what_dcat_cannot_say_is_under_the_ty_namespace() -> None:
    _, text = _export()
    graph = _graph(text)
    ga = _dataset(graph, "320100-GA-001")
    assert graph.value(ga, TY.entity) == Literal("person")
    assert graph.value(ga, TY.sharing) == Literal("conditional")
    assert graph.value(ga, TY.sharingConditions) == Literal(
        "仅限政务服务事项办理使用，须经数据局审批", lang="zh"
    )
    assert graph.value(ga, TY.sensitivity) == Literal("important")
    assert graph.value(ga, TY.freshness) == Literal("fresh")
    assert graph.value(ga, TY.status) == Literal("published")
    fields = _rdf_list(graph, ga, TY.fields)
    assert [str(graph.value(f, TY.name)) for f in fields] == [
        "id_number",
        "name",
        "birth_date",
        "address",
    ]
    assert graph.value(fields[0], TY.sensitivity) == Literal("core")
    assert graph.value(fields[0], TY.description) == Literal("公民身份号码", lang="zh")
    sc = _dataset(graph, "320100-SC-002")
    assert [str(p) for p in _rdf_list(graph, sc, TY.path)] == ["南京市", "玄武区"]
    assert graph.value(sc, TY.originNode) == Literal("320102")
    assert graph.value(sc, TY.sourceDepartment) == Literal("玄武区市场监督管理局")
    assert graph.value(sc, TY.openAttribute) == Literal("open")


# --- import ------------------------------------------------------------------------------


def test_round_trip_gives_the_same_entries() -> None:
    entries, text = _export()
    raws = from_dcat(text, source="nanjing.jsonld")
    assert [r["code"] for r in raws] == sorted(e.code for e in entries)
    for raw in raws:
        assert set(raw) <= ENTRY_KEYS
    rebuilt = {
        raw["code"]: build_entry(
            raw, node_code=NODE, entities=ENTITIES, settings=SETTINGS, where="nanjing.jsonld"
        )
        for raw in raws
    }
    for entry in entries:
        assert _catalogued(rebuilt[entry.code]) == _catalogued(entry)
    # Order-sensitive parts, checked explicitly so a failure says which.
    assert rebuilt["320100-SC-002"].keywords == ("企业", "legal_entity", "登记")
    assert rebuilt["320100-MZ-003"].keywords == ()
    assert [f.name for f in rebuilt["320100-GA-001"].fields] == [
        "id_number",
        "name",
        "birth_date",
        "address",
    ]


def test_without_the_keyword_list_the_added_entity_keyword_is_dropped() -> None:
    entries = _entries()
    catalog = to_dcat(_documents(entries), node_code=NODE, node_name="南京市", issued=ISSUED)
    for dataset in catalog["dcat:dataset"]:
        del dataset["ty:keywords"]  # as a tool that keeps only what it understands would
    raws = {r["code"]: r for r in from_dcat(json.dumps(catalog), source="trimmed.jsonld")}
    assert raws["320100-GA-001"]["keywords"] == ["人口", "户籍"]
    assert "keywords" not in raws["320100-MZ-003"]


FOREIGN = {
    "@context": {
        "dcat": "http://www.w3.org/ns/dcat#",
        "dct": "http://purl.org/dc/terms/",
        "foaf": "http://xmlns.com/foaf/0.1/",
        "title": {"@id": "dct:title", "@container": "@language"},
        "description": {"@id": "dct:description", "@container": "@language"},
        "keyword": {"@id": "dcat:keyword", "@container": "@language"},
        "accrualPeriodicity": {"@id": "dct:accrualPeriodicity", "@type": "@id"},
    },
    "@id": "https://data.example.gov/catalog",
    "@type": "dcat:Catalog",
    "title": {"en": "Example open data portal"},
    "dcat:dataset": [
        {
            "@id": "https://data.example.gov/dataset/wj-9",
            "@type": "dcat:Dataset",
            "dct:identifier": "320100-WJ-009",
            "title": {"en": "Hospital beds", "zh": "医院床位统计"},
            "description": {"en": "Beds per hospital.", "zh": "各医院核定床位数。"},
            "keyword": {"en": ["health", "beds"], "zh": ["卫生", "床位"]},
            "accrualPeriodicity": "http://publications.europa.eu/resource/authority/frequency/MONTHLY",
            "dct:publisher": {
                "@type": "foaf:Agent",
                "foaf:name": [
                    {"@value": "Health Commission", "@language": "en"},
                    {"@value": "南京市卫生健康委员会", "@language": "zh"},
                ],
            },
            "dcat:distribution": {
                "@type": "dcat:Distribution",
                "dcat:accessURL": {"@id": "https://data.example.gov/download/wj-9.csv"},
            },
        }
    ],
}


def test_a_foreign_dataset_imports_with_chinese_text_and_its_frequency() -> None:
    raws = from_dcat(json.dumps(FOREIGN, ensure_ascii=False), source="foreign.jsonld")
    assert raws == [
        {
            "code": "320100-WJ-009",
            "name": "医院床位统计",
            "summary": "各医院核定床位数。",
            "department": "南京市卫生健康委员会",
            "update_frequency": "monthly",
            "keywords": ["卫生", "床位"],
        }
    ]
    # DCAT lacks the entity, fields and sharing attribute: building reports them missing ...
    with pytest.raises(UserError, match=r"mandatory metadata missing: entity, sharing"):
        build_entry(raws[0], node_code=NODE, entities=ENTITIES, settings=SETTINGS, where="f")
    # ... and once the caller fills them in, the rest of the foreign metadata stands.
    entry = build_entry(
        {**raws[0], "entity": "person", "sharing": "unconditional", "fields": ["id_number"]},
        node_code=NODE,
        entities=ENTITIES,
        settings=SETTINGS,
        where="foreign.jsonld",
    )
    assert (entry.name, entry.department, entry.update_frequency) == (
        "医院床位统计",
        "南京市卫生健康委员会",
        "monthly",
    )


def test_a_foreign_dataset_without_chinese_keeps_its_english_text() -> None:
    foreign = json.loads(json.dumps(FOREIGN))
    dataset = foreign["dcat:dataset"][0]
    dataset["title"] = {"en": "Hospital beds"}
    dataset["keyword"] = {"en": ["health", "beds"]}
    del dataset["accrualPeriodicity"]
    [raw] = from_dcat(json.dumps(foreign), source="foreign.jsonld")
    assert raw["name"] == "Hospital beds"
    assert raw["keywords"] == ["beds", "health"]
    assert "update_frequency" not in raw


def test_a_catalogue_in_a_named_graph_is_read() -> None:
    named = {"@context": FOREIGN["@context"], "@id": "urn:graph", "@graph": [FOREIGN]}
    [raw] = from_dcat(json.dumps(named), source="named.jsonld")
    assert (raw["code"], raw["name"]) == ("320100-WJ-009", "医院床位统计")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"bad\.jsonld: not JSON \(.*line 1 column 2\)"),
        ('"just a string"', r"bad\.jsonld: not JSON-LD: expected an object"),
        (
            json.dumps({"@context": "https://example.org/dcat-ap.jsonld", "@type": "x"}),
            r"bad\.jsonld: .*'https://example\.org/dcat-ap\.jsonld'.*inline the context",
        ),
        (
            json.dumps(
                {
                    "@context": [{"dct": "http://purl.org/dc/terms/"}, "https://ex.org/c"],
                    "@id": "urn:x",
                }
            ),
            r"bad\.jsonld: .*'https://ex\.org/c'.*inline the context",
        ),
        (
            json.dumps({"@context": {"@import": "https://ex.org/i"}, "@id": "urn:x"}),
            r"bad\.jsonld: .*'https://ex\.org/i'.*inline the context",
        ),
        (
            json.dumps({"@graph": [{"@id": "urn:x", "@context": "https://ex.org/nested"}]}),
            r"bad\.jsonld: .*'https://ex\.org/nested'.*inline the context",
        ),
        (
            json.dumps({"@context": {"dcat": {"@id": 7}}, "@id": "urn:x"}),
            r"bad\.jsonld: not JSON-LD that rdflib can read",
        ),
        (
            json.dumps(
                {
                    "@context": {"dcat": "http://www.w3.org/ns/dcat#"},
                    "@id": "urn:c",
                    "@type": "dcat:Catalog",
                }
            ),
            r"bad\.jsonld: no dcat:Dataset found",
        ),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "remote-context",
        "remote-context-in-list",
        "context-import",
        "nested-remote-context",
        "unreadable-json-ld",
        "no-dataset",
    ],
)
def test_unreadable_files_are_refused_naming_the_source(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        from_dcat(text, source="bad.jsonld")


def test_an_unknown_frequency_is_refused_naming_the_dataset() -> None:
    foreign = json.loads(json.dumps(FOREIGN))
    foreign["dcat:dataset"][0]["accrualPeriodicity"] = EU_FREQUENCY + "BIWEEKLY"
    with pytest.raises(UserError) as caught:
        from_dcat(json.dumps(foreign), source="foreign.jsonld")
    message = str(caught.value)
    assert message.startswith("foreign.jsonld: dataset '320100-WJ-009': ")
    assert EU_FREQUENCY + "BIWEEKLY" in message


# --- CSV ---------------------------------------------------------------------------------


def test_csv_has_one_row_per_entry_with_chinese_text_intact(tmp_path: Any) -> None:
    entries = _entries()
    docs = _documents(entries)
    text = to_csv(docs)
    path = tmp_path / "catalog.csv"
    path.write_text(text, encoding="utf-8-sig", newline="")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert [r["code"] for r in rows] == [e.code for e in entries]
    ga, sc, mz = rows
    assert ga["name"] == "南京市人口基础信息"
    assert ga["sharing_conditions"] == "仅限政务服务事项办理使用，须经数据局审批"
    assert ga["fields"] == "id_number:string; name:string; birth_date:date; address:string"
    assert ga["keywords"] == "人口; 户籍"
    assert (ga["version"], ga["status"], ga["published_on"]) == ("3", "published", "2024-01-15")
    assert ga["last_change_at"] == "2024-05-31T23:00:00+00:00"
    assert (ga["origin_node"], ga["freshness"]) == ("320100", "fresh")
    # Commas, quotes and a newline inside Chinese text survive quoting.
    assert sc["summary"] == '玄武区登记的企业，含"注册资本"、法定代表人,\n每月汇总一次。'
    assert (sc["source_node"], sc["source_department"]) == ("320102", "玄武区市场监督管理局")
    assert mz["sharing"] == "not_shared"
    assert (mz["keywords"], mz["freshness"], mz["origin_node"]) == ("", "", "")


def test_csv_cells_that_look_like_formulas_are_defused() -> None:
    doc = _entries()[0].document()
    doc["name"] = '=HYPERLINK("http://evil")'
    doc["summary"] = "-1+2"
    [row] = list(csv.DictReader(io.StringIO(to_csv([doc]))))
    assert row["name"] == '\'=HYPERLINK("http://evil")'
    assert row["summary"] == "'-1+2"
    assert row["code"] == "320100-GA-001"  # ordinary cells untouched
