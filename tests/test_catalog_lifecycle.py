"""Catalogue lifecycle edge cases at one node, and the federation's guards on catalogue
traffic: what a retirement does to a pending draft, what survives between an edit and
its publication, two resources of one entity, and deliveries or batches that lie."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from conftest import Cluster, Node

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node._gen.tongyuan.v1 import federation_pb2_grpc as pb_grpc
from node.catalog.standards import StandardItem, digest
from node.client import NodeAPI, open_node
from node.errors import UserError
from node.model import load_base_model
from node.store.catalog import CATALOG, NODES
from node.wire import BatchRejected, decode_batch, encode_table, standard_to_message

ME = "root"

PERSON = load_base_model().storage_entities()["person"]


@pytest.fixture
def county(cluster: Cluster) -> Node:
    return cluster.node("320102", "county")


@pytest.fixture
def api(county: Node) -> Iterator[NodeAPI]:
    """The county's own operations in-process, on its store (the node is not serving)."""
    handle = open_node(county.directory, write=True)
    try:
        yield handle
    finally:
        handle.close()


def add(api: NodeAPI, code: str, fields: str, department: str, publish: bool = True) -> None:
    raw = {
        "code": code,
        "name": f"{department}人口",
        "summary": "测试",
        "department": department,
        "entity": "person",
        "fields": fields,
        "update_frequency": "daily",
        "sharing": "unconditional",
    }
    api.call("catalog.add", {"entries": [raw], "source": "test", "actor": ME, "publish": publish})


def csv_file(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def entry(api: NodeAPI, code: str) -> dict[str, Any]:
    return dict(api.call("catalog.show", {"code": code})["entry"])


def test_retiring_drops_a_pending_draft_so_nothing_brings_the_resource_back(
    api: NodeAPI,
) -> None:
    add(api, "320102-A", "id_number,name", "公安局")
    api.call("catalog.edit", {"code": "320102-A", "changes": {"summary": "v2"}, "source": "t",
                              "actor": ME})  # fmt: skip
    api.call("catalog.retire", {"code": "320102-A", "actor": ME, "reason": "replaced"})
    shown = api.call("catalog.show", {"code": "320102-A"})
    assert shown["entry"]["status"] == "retired" and shown["draft"] is None
    for method, args in (
        ("catalog.publish", {"code": "320102-A", "actor": ME}),
        (
            "catalog.edit",
            {"code": "320102-A", "changes": {"name": "x"}, "source": "t", "actor": ME},
        ),
    ):
        with pytest.raises(UserError, match="retired"):
            api.call(method, args)
    assert [h["action"] for h in shown["history"]] == [
        "created and published version 1",
        "new version drafted",
        "retired",
    ]


def test_publishing_a_draft_keeps_what_happened_since_it_was_drafted(
    cluster: Cluster, tmp_path: Path
) -> None:
    city = cluster.node("320100", "city")
    api = open_node(city.directory, write=True)
    try:
        api.call(
            "catalog.standard_add",
            {"items": [{"code": "320100-STD", "name": "人口", "entity": "person",
                        "fields": "id_number,name", "update_frequency": "daily"}],
             "source": "t"},
        )  # fmt: skip
        add(api, "320100-A", "id_number,name", "公安局")
        api.call("catalog.edit", {"code": "320100-A", "changes": {"summary": "第二版"},
                                  "source": "t", "actor": ME})  # fmt: skip
        api.ingest("320100-A", csv_file(tmp_path / "p.csv", "id_number,name", "11,张三"))
        changed = entry(api, "320100-A")["last_change_at"]
        assert changed is not None
        api.call("catalog.map", {"code": "320100-A", "standard": "320100-STD", "actor": ME})
        api.call("catalog.publish", {"code": "320100-A", "actor": ME})
        published = entry(api, "320100-A")
        assert (published["version"], published["summary"]) == (2, "第二版")
        assert published["last_change_at"] == changed
        assert published["provides"] == "320100-STD"
    finally:
        api.close()


def test_two_resources_of_one_entity_keep_each_others_attributes_and_records(
    api: NodeAPI, tmp_path: Path
) -> None:
    # One source per attribute: the telecom bureau is the source of phone, the police of name.
    add(api, "320102-PHONE", "id_number,phone", "通信管理局")
    add(api, "320102-NAME", "id_number,name", "公安局")
    phones = csv_file(
        tmp_path / "phones.csv", "id_number,phone", "11,13900000011", "22,13900000022"
    )
    names = csv_file(tmp_path / "names.csv", "id_number,name", "11,张三", "33,王五")
    assert api.ingest("320102-PHONE", phones)["inserted"] == 2
    result = api.ingest("320102-NAME", names)
    # 张三 gains a name; 王五 is new. Nobody's phone is touched.
    assert (result["inserted"], result["updated"], result["unchanged"]) == (1, 1, 0)
    for resource, path in (("320102-PHONE", phones), ("320102-NAME", names)):
        assert api.ingest(resource, path)["changes"] == 0, resource
    renamed = csv_file(tmp_path / "renamed.csv", "id_number,name", "11,张叁", "33,王五")
    assert api.ingest("320102-NAME", renamed)["updated"] == 1
    sql = "SELECT id_number, name, phone, origin_resource FROM person ORDER BY id_number"
    assert [tuple(r.values()) for r in api.query(sql).to_pylist()] == [
        ("11", "张叁", "13900000011", "320102-NAME"),
        ("22", None, "13900000022", "320102-PHONE"),
        ("33", "王五", None, "320102-NAME"),
    ]
    # Both cannot be the source of the same attribute.
    with pytest.raises(UserError, match="one source per attribute"):
        add(api, "320102-BOTH", "id_number,name,phone", "民政局")
    # An empty snapshot of one resource deletes only the records it last wrote.
    empty = csv_file(tmp_path / "empty.csv", "id_number,name")
    from node.service import IngestOptions

    gone = api.ingest("320102-NAME", empty, IngestOptions(snapshot=True, allow_empty=True))
    assert gone["deleted"] == 2
    assert [r["id_number"] for r in api.query("SELECT id_number FROM person").to_pylist()] == ["22"]


def test_add_and_publish_is_all_or_none_and_empty_fields_are_missing(api: NodeAPI) -> None:
    with pytest.raises(UserError, match=r"fields \(information items\) are missing"):
        add(api, "320102-A", "", "公安局")
    good = {
        "code": "320102-B",
        "name": "甲",
        "summary": "甲",
        "department": "公安局",
        "entity": "person",
        "update_frequency": "daily",
        "sharing": "unconditional",
    }
    second = {**good, "code": "320102-C", "sharing": "secret"}
    with pytest.raises(UserError, match="entry #2"):
        api.call(
            "catalog.add",
            {"entries": [good, second], "source": "f.toml", "actor": ME, "publish": True,
             "fill_defaults": True},
        )  # fmt: skip
    assert api.call("catalog.list", {}) == []


def test_a_resource_published_a_minute_ago_is_fresh_whatever_its_frequency(
    api: NodeAPI,
) -> None:
    raw = {
        "code": "320102-RT",
        "name": "实时定位",
        "summary": "实时",
        "department": "公安局",
        "entity": "person",
        "fields": "id_number",
        "update_frequency": "realtime",
        "sharing": "unconditional",
    }
    api.call("catalog.add", {"entries": [raw], "source": "t", "actor": ME, "publish": True})
    assert entry(api, "320102-RT")["freshness"] == "fresh"


def test_search_matches_what_people_wrote_not_the_json_around_it(api: NodeAPI) -> None:
    add(api, "320102-A", "id_number,name", "公安局")
    assert api.call("catalog.search", {"text": "description"}) == []
    assert api.call("catalog.search", {"text": "string"}) == []
    assert [e["code"] for e in api.call("catalog.search", {"text": "id_number"})] == ["320102-A"]


def test_the_standard_items_digest_ignores_order() -> None:
    a = StandardItem("320000-A", "甲", "", "person", ("id_number",), "daily", "320000")
    b = StandardItem("320000-B", "乙", "", "person", ("id_number",), "daily", "320000")
    assert digest([a, b]) == digest([b, a])
    assert digest([a]) != digest([a, b]) != digest([])


# ----- the federation's guards ------------------------------------------------------------


def deliver(node: Node, parent: str, items: list[StandardItem], claimed: str | None = None) -> Any:
    with grpc.insecure_channel(node.address) as channel:
        stub = pb_grpc.FederationStub(channel)
        return stub.DeliverStandards(
            pb.StandardsDelivery(
                parent_code=parent,
                digest=claimed if claimed is not None else digest(items),
                items=[standard_to_message(i) for i in items],
            ),
            timeout=10,
        )


def test_standard_items_are_taken_only_from_above_and_only_as_sent(county: Node) -> None:
    county.start()
    own = StandardItem("320100-S", "人口", "", "person", ("id_number",), "daily", "320100")
    cases = [
        ("330100", [own], None, grpc.StatusCode.PERMISSION_DENIED),  # not above 320102
        ("320102", [own], None, grpc.StatusCode.PERMISSION_DENIED),  # itself
        ("320000", [own], None, grpc.StatusCode.INVALID_ARGUMENT),  # defined below the sender
        ("320100", [own], "0" * 64, grpc.StatusCode.DATA_LOSS),  # altered on the way
    ]
    for parent, items, claimed, expected in cases:
        with pytest.raises(grpc.RpcError) as caught:
            deliver(county, parent, items, claimed)
        assert caught.value.code() == expected, (parent, caught.value.details())
    listed = json.loads(county.cli("catalog", "standard", "list", "--json").stdout)
    assert listed == []
    deliver(county, "320100", [own])
    # A delivery from the province (the county moved to direct reporting) replaces the
    # city's set: a node holds one parent's set at a time.
    provincial = StandardItem("320000-S", "法人", "", "legal_entity", ("uscc",), "daily", "320000")
    deliver(county, "320000", [provincial])
    listed = json.loads(county.cli("catalog", "standard", "list", "--json").stdout)
    assert [(i["code"], i["received_from"]) for i in listed] == [("320000-S", "320000")]


def _batch(entity: Any, rows: list[dict[str, Any]]) -> pb.ChangeBatch:
    lineage = {
        "_deleted": False,
        "origin_seq": 1,
        "origin_dept": None,
        "origin_batch": None,
        "origin_time": None,
        "origin_resource": None,
    }
    full = [{**dict.fromkeys(entity.column_names), **lineage, **row} for row in rows]
    table = pa.Table.from_pylist(full, schema=entity.wire_schema())
    return pb.ChangeBatch(
        after_seq=0,
        last_seq=1,
        head_seq=1,
        sent_at_us=time.time_ns() // 1000,
        entities=[pb.EntityChanges(entity=entity.name, arrow_ipc=encode_table(table), rows=1)],
    )


@pytest.mark.parametrize(
    ("entity", "row", "what"),
    [
        (CATALOG, {"code": "320104-X", "origin_node": "320102"}, "does not own it"),
        (CATALOG, {"code": "320102-X", "origin_node": "320104"}, "not inside child"),
        (NODES, {"code": "320102", "parent_code": "320102", "origin_node": "320102"}, "child"),
        (
            NODES,
            {"code": "320102", "parent_code": "320000", "origin_node": "320100"},
            "records only its own children",
        ),
    ],
)
def test_a_child_speaks_only_for_its_own_subtree(
    entity: Any, row: dict[str, Any], what: str
) -> None:
    child = "320100" if entity is NODES and row["origin_node"] == "320100" else "320102"
    entities = {e.name: e for e in (CATALOG, NODES)}
    with pytest.raises(BatchRejected, match=what):
        decode_batch(_batch(entity, [row]), entities, child)


def test_a_foreign_dcat_file_imports_once_told_what_only_tongyuan_records(
    api: NodeAPI,
) -> None:
    from node.catalog.interchange import from_dcat

    source = Path(__file__).with_name("foreign_dcat.jsonld")
    entries = from_dcat(source.read_text(encoding="utf-8"), source=source.name)
    args = {"entries": entries, "source": source.name, "actor": ME}
    with pytest.raises(UserError, match="--entity ENTITY --sharing SHARING"):
        api.call("catalog.import", args)
    assert api.call("catalog.list", {}) == []
    defaults = {"entity": "person", "sharing": "unconditional"}
    (draft,) = api.call("catalog.import", {**args, "defaults": defaults})
    assert (draft["code"], draft["name"], draft["department"]) == (
        "320102-EXT-1",
        "常住人口",
        "统计局",
    )
    assert draft["update_frequency"] == "monthly" and draft["status"] == "draft"
    # Fields default to every attribute of the entity, as with command flags.
    assert tuple(f["name"] for f in draft["fields"]) == PERSON.column_names


def test_a_stream_of_imports_stamps_the_resource_at_most_once_a_minute(
    api: NodeAPI, tmp_path: Path
) -> None:
    """Each stamp is a change every tier applies; one a minute keeps freshness exact
    enough (periods are minutes at least) without doubling small imports' latency."""
    add(api, "320102-A", "id_number,name", "公安局")
    api.ingest("320102-A", csv_file(tmp_path / "1.csv", "id_number,name", "11,张三"))
    stamped = entry(api, "320102-A")["last_change_at"]
    version = "SELECT _seq FROM tongyuan.rows_catalog"  # the entry's place in the log
    before = api.query(version).to_pylist()
    api.ingest("320102-A", csv_file(tmp_path / "2.csv", "id_number,name", "11,张叁"))
    assert entry(api, "320102-A")["last_change_at"] == stamped
    assert api.query(version).to_pylist() == before, "no second version of the entry"
    assert api.query("SELECT name FROM person").to_pylist() == [{"name": "张叁"}]
