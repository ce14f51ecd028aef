"""One model for the province, on real node processes: two counties that name Person
differently, calibration at the city, a published model adopted below, data arriving at
the province in one shape; and one source per attribute, where a non-authoritative
value becomes an observation whose discrepancy reaches the source and is cleared at
every tier by the source's correction."""

from __future__ import annotations

import csv
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import grpc
from conftest import Cluster, Node, wait_until

from node._gen.tongyuan.v1 import federation_pb2, federation_pb2_grpc
from node.model import base_model_path, load_base_model
from node.model.schema import NodeMapping, model_from_document
from node.store.model import delivery_digest

BASE = base_model_path().read_text(encoding="utf-8")
COLUMNS = ["id_number", "name", "sex", "birth_date", "phone", "address", "division_code"]


LOCAL_MODEL = """
# Qinhuai's own model from its pilot: Person keyed by id_no, with full_name and gender.
name = "qinhuai-local"
version = "0.3.0"

[[code_lists]]
name = "GB/T 2261.1"
values = { "0" = "未知的性别", "1" = "男性", "2" = "女性", "9" = "未说明的性别" }

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
code_list = "GB/T 2261.1"
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
"""


def local_model(path: Path) -> Path:
    path.write_text(LOCAL_MODEL, encoding="utf-8")
    return path


def city_model(path: Path) -> Path:
    """The base model at 1.1.0 with one more Person attribute (a compatible addition)."""
    text = BASE.replace('version = "1.0.0"', 'version = "1.1.0"', 1)
    anchor = text.index('name = "division_code"', text.index('name = "person"'))
    insert = text.rfind("[[entities.attributes]]", 0, anchor)
    extra = (
        '[[entities.attributes]]\nname = "nationality"\ntype = "string"\ndescription = "国籍"\n\n'
    )
    path.write_text(text[:insert] + extra + text[insert:], encoding="utf-8")
    return path


def write_people(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def register(node: Node, code: str, entity: str, fields: list[str], *extra: str) -> str:
    node.cli(
        "catalog", "add", "--code", code, "--name", code, "--summary", "test resource",
        "--department", extra[1] if extra and extra[0] == "--department" else "公安局",
        "--entity", entity, "--fields", ",".join(fields), "--frequency", "daily",
        "--sharing", "unconditional", "--publish",
        *(extra[2:] if extra and extra[0] == "--department" else extra),
    )  # fmt: skip
    return code


def as_json(node: Node, *args: str) -> Any:
    return json.loads(node.cli(*args, "--json").stdout)


def child_error(node: Node, code: str) -> str:
    for child in node.fetch_status()["children"]:
        if child["code"] == code:
            return str(child["error"] or "")
    return ""


XUANWU = [
    ["320102199001011234", "张三", "1", "1990-01-01", "13800000001", "玄武区1号", "320102"],
    ["32010219850505234X", "李四", "2", "1985-05-05", "13800000002", "玄武区2号", "320102"],
]
QINHUAI = [
    ["320104199202023456", "王五", "1", "1992-02-02", "13900000001", "秦淮区1号", "320104"],
]


def test_calibrate_publish_adopt_and_data_arrives_in_one_shape(
    cluster: Cluster, tmp_path: Path
) -> None:
    province = cluster.node("320000", "province").start()
    city = cluster.node("320100", "city").start()
    xuanwu = cluster.node("320102", "xuanwu").start()
    qinhuai = cluster.node("320104", "qinhuai", init=False)
    qinhuai.init("--model", str(local_model(tmp_path / "qinhuai.toml"))).start()

    register(xuanwu, "320102-GA-001", "person", COLUMNS)
    xuanwu.ingest("320102-GA-001", write_people(tmp_path / "x.csv", COLUMNS, XUANWU))
    local = ["id_no", "full_name", "gender", "birth_date", "phone", "address", "division_code"]
    register(qinhuai, "320104-GA-001", "person", local)
    qinhuai.ingest("320104-GA-001", write_people(tmp_path / "q.csv", local, QINHUAI))

    province.cli("children", "add", city.code, city.address)
    city.cli("children", "add", xuanwu.code, xuanwu.address)
    city.cli("children", "add", qinhuai.code, qinhuai.address)

    # Xuanwu works with the base model like the city: its people arrive. Qinhuai's do not
    # fit, and the link says why instead of storing them in another shape.
    wait_until(lambda: len(province.fetch("SELECT * FROM person")) == 2, what="xuanwu's people")
    wait_until(lambda: "adopt" in child_error(city, qinhuai.code), what="qinhuai refused")
    assert "id_no" in child_error(city, qinhuai.code) or "full_name" in child_error(
        city, qinhuai.code
    )
    assert city.fetch("SELECT * FROM person WHERE origin_node = '320104'") == []

    # Calibration at the city lists each conflict, with a suggested mapping.
    wait_until(
        lambda: len(as_json(city, "model", "show")["summary"]["children"]) == 2,
        what="both counties' models pulled",
    )
    mapping_file = tmp_path / "mapping.toml"
    report = as_json(city, "model", "calibrate", "--write-mapping", str(mapping_file))
    conflicts = {
        (row["child"], row["kind"], row["standard"], row["local"])
        for row in report["rows"]
        if row["entity"] == "person"
    }
    assert ("320104", "name", "name", "full_name") in conflicts, conflicts
    assert ("320104", "name", "sex", "gender") in conflicts, conflicts
    assert ("320104", "name", "id_number", "id_no") in conflicts, conflicts
    assert not any(child == "320102" for child, *_ in conflicts), "xuanwu matches the standard"
    suggested = tomllib.loads(mapping_file.read_text(encoding="utf-8"))
    assert suggested["children"]["320104"]["person"]["attributes"] == {
        "full_name": "name",
        "gender": "sex",
        "id_no": "id_number",
    }

    # The city model (1.1.0 adds an attribute) goes up to the province, which publishes it
    # for the whole province; the city adopts it, then both counties.
    model_file = city_model(tmp_path / "city-model.toml")
    published = as_json(city, "model", "publish", str(model_file), "--mapping", str(mapping_file))
    assert published["required_bump"] == "minor" and published["breaking"] == 0
    province.cli("model", "publish", str(model_file))

    def offered(node: Node, parent: str) -> bool:
        summary = as_json(node, "model", "show")["summary"]
        return bool(summary["offered"]) and summary["offered"]["parent"] == parent

    wait_until(lambda: offered(city, "320000"), what="the province's model at the city")
    city.cli("model", "adopt")
    for county in (xuanwu, qinhuai):
        wait_until(
            lambda county=county: (
                offered(county, "320100")
                and as_json(county, "model", "show")["summary"]["offered"]["label"].endswith(
                    "(320000)"
                )
            ),
            what=f"the model offered at {county.code}",
        )
    status = qinhuai.fetch_status()
    assert status["model"]["offered"]["adopted"] is False, "status says it has not adopted"
    plan = as_json(qinhuai, "model", "adopt", "--dry-run")
    steps = " | ".join(step["step"] for step in plan["plan"])
    assert "rename attribute person.full_name → name" in steps, steps
    assert not any(step["loses_data"] for step in plan["plan"])
    xuanwu.cli("model", "adopt")
    qinhuai.cli("model", "adopt")
    assert qinhuai.fetch_status()["model"]["offered"]["adopted"] is True

    # Qinhuai's data now arrives at the province in the standard shape.
    sql = "SELECT id_number, name, sex, origin_node FROM person ORDER BY id_number"
    wait_until(lambda: len(province.fetch(sql)) == 3, timeout=30, what="all people")
    assert {"id_number": QINHUAI[0][0], "name": "王五", "sex": "1", "origin_node": "320104"} in (
        province.fetch(sql)
    )
    # The county's resource now names the standard attributes, and new imports use them.
    entry = as_json(qinhuai, "catalog", "show", "320104-GA-001")
    assert [f["name"] for f in entry["entry"]["fields"]][:3] == ["id_number", "name", "sex"]
    nationality = province.fetch("SELECT nationality FROM person LIMIT 1")
    assert nationality == [{"nationality": None}]


def test_one_source_observation_discrepancy_and_correction_at_every_tier(
    cluster: Cluster, tmp_path: Path
) -> None:
    province = cluster.node("320000", "province").start()
    city = cluster.node("320100", "city").start()
    xuanwu = cluster.node("320102", "xuanwu").start()
    qinhuai = cluster.node("320104", "qinhuai").start()
    province.cli("children", "add", city.code, city.address)
    city.cli("children", "add", xuanwu.code, xuanwu.address)
    city.cli("children", "add", qinhuai.code, qinhuai.address)

    source = register(xuanwu, "320102-GA-001", "person", COLUMNS)
    xuanwu.ingest(source, write_people(tmp_path / "x.csv", COLUMNS, XUANWU))

    # One source per attribute: a second department at Xuanwu cannot also be the source of
    # person.address; naming the police as source makes its resource an observing one.
    refused = xuanwu.cli(
        "catalog", "add", "--code", "320102-MZ-001", "--name", "n", "--summary", "s",
        "--department", "民政局", "--entity", "person", "--fields", "id_number,address",
        "--frequency", "daily", "--sharing", "unconditional", "--publish", check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "one source per attribute" in refused.stderr
    assert "Traceback" not in refused.stderr

    # Qinhuai's social security bureau holds Li Si's address as it knows it; the police in
    # Xuanwu are its source. Its key is typed with a lower-case x and full-width digits.
    observing = register(
        qinhuai, "320104-RS-001", "person", ["id_number", "address"],
        "--department", "人社局", "--source-node", "320102", "--source-department", "公安局",
    )  # fmt: skip
    li_si = XUANWU[1][0]
    typed = "３２０１０２" + li_si[6:-1] + "x"
    result = qinhuai.ingest(
        observing,
        write_people(
            tmp_path / "rs.csv",
            ["id_number", "address"],
            [[typed, "秦淮区新址9号"], [XUANWU[0][0], "玄武区1号"]],
        ),
    )
    assert result["observed_source"] == ["320102", "公安局"]
    assert qinhuai.fetch("SELECT * FROM person") == [], "an observation never writes the record"
    assert xuanwu.fetch(f"SELECT address FROM person WHERE id_number = '{li_si}'") == [
        {"address": "玄武区2号"}
    ]

    def discrepancies(node: Node, *extra: str) -> list[dict[str, Any]]:
        return list(as_json(node, "discrepancies", "list", *extra))

    # Found where both sides meet (the city, and the province above it), and delivered
    # down to the authoritative county. Zhang San's matching address raises nothing.
    wait_until(lambda: len(discrepancies(xuanwu)) == 1, timeout=30, what="discrepancy at 320102")
    found = discrepancies(xuanwu)[0]
    assert found["entity"] == "person" and found["attribute"] == "address"
    assert found["authoritative_value"] == "玄武区2号"
    assert found["observed_value"] == "秦淮区新址9号"
    assert (found["source_node"], found["source_dept"]) == ("320102", "公安局")
    assert (found["observer_node"], found["observer_dept"]) == ("320104", "人社局")
    assert found["source_key"] == li_si and found["record_key"] == typed
    wait_until(lambda: len(discrepancies(province)) == 1, what="discrepancy at the province")
    assert discrepancies(city)[0]["id"] == found["id"] == discrepancies(province)[0]["id"]
    assert "320100" in found["found_at_nodes"]

    # Only the source can resolve it; the correction travels like any change.
    elsewhere = city.cli("discrepancies", "resolve", found["id"], "--accept-observed", check=False)
    assert elsewhere.returncode == 1 and "resolve it there" in elsewhere.stderr
    xuanwu.cli("discrepancies", "resolve", found["id"], "--accept-observed", "--by", "张警官")
    assert xuanwu.fetch(f"SELECT address FROM person WHERE id_number = '{li_si}'") == [
        {"address": "秦淮区新址9号"}
    ]
    for node in (province, city, xuanwu):
        wait_until(
            lambda node=node: discrepancies(node) == [],
            timeout=30,
            what=f"discrepancy cleared at {node.code}",
        )
        resolved = discrepancies(node, "--all")
        assert [(d["id"], d["state"], d["resolution"]) for d in resolved] == [
            (found["id"], "resolved", "agreed")
        ]
    assert re.fullmatch(r"[0-9a-f]{16}", found["id"])


def test_a_delivered_model_is_checked_like_a_file_and_only_a_parent_may_deliver(
    cluster: Cluster,
) -> None:
    county = cluster.node("320102", "xuanwu").start()
    model = load_base_model()
    mapping = NodeMapping()

    def deliver(parent: str, doc: dict[str, Any]) -> grpc.RpcError:
        delivered = model_from_document(doc)
        with grpc.insecure_channel(county.address) as channel:
            stub = federation_pb2_grpc.FederationStub(channel)
            try:
                stub.DeliverModel(
                    federation_pb2.ModelDelivery(
                        parent_code=parent,
                        model_json=json.dumps(doc, ensure_ascii=False),
                        mapping_json="{}",
                        digest=delivery_digest(delivered, mapping),
                    ),
                    timeout=10,
                )
            except grpc.RpcError as exc:
                return exc
        raise AssertionError("the delivery was accepted")

    hostile = model.document()
    hostile["entities"][0]["attributes"][1]["name"] = "name'; DROP TABLE x; --"
    refused = deliver("320100", hostile)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be lower-case letters" in str(refused.details())
    stranger = deliver("320500", model.document())  # Suzhou is not above Xuanwu
    assert stranger.code() == grpc.StatusCode.PERMISSION_DENIED
    assert as_json(county, "model", "show")["summary"]["offered"] is None
