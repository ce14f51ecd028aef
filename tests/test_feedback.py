"""Feedback to the source on real node processes: an objection raised at the province
about a county's record travels down to the county, the county's acknowledgement and its
correction travel up, and the item is closed at all three tiers. A discrepancy the city
finds reaches the county as an item too, answered with `discrepancies resolve`."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from conftest import Cluster, Node, wait_until

from node.client import open_node

COLUMNS = ["id_number", "name", "sex", "birth_date", "phone", "address", "division_code"]
ZHANG = ["320102199001011234", "张三", "1", "1990-01-01", "13800000001", "玄武区1号", "320102"]
LI = ["32010219850505234X", "李四", "2", "1985-05-05", "13800000002", "玄武区2号", "320102"]


def write_people(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


def items(node: Node) -> dict[str, dict[str, Any]]:
    """Every feedback item the node knows, closed ones too, through its admin API (as
    `feedback list --all --json` shows them; in-process, so polling stays cheap)."""
    api = open_node(node.directory, write=False)
    try:
        found = api.call("feedback.list", {"include_closed": True})
    finally:
        api.close()
    return {i["id"]: i for i in found}


def state(node: Node, item_id: str) -> str | None:
    found = items(node).get(item_id)
    return found["state"] if found else None


def test_an_objection_is_corrected_at_the_county_and_a_discrepancy_reaches_it_too(
    cluster: Cluster, tmp_path: Path
) -> None:
    province, city, county = (
        cluster.node(code, name, init=False)
        for code, name in (("320000", "province"), ("320100", "city"), ("320102", "xuanwu"))
    )
    # Three nodes set up and started at once (the suite's time budget).
    with ThreadPoolExecutor() as pool:
        list(pool.map(lambda node: node.init().start(wait=False), (province, city, county)))
        for node in (province, city, county):
            node.wait_serving()
        attached = [
            pool.submit(province.cli, "children", "add", city.code, city.address),
            pool.submit(city.cli, "children", "add", county.code, county.address),
        ]
        resource = county.resource("person")
        for done in attached:
            done.result()
    county.ingest(resource, write_people(tmp_path / "people.csv", [ZHANG, LI]))
    wait_until(
        lambda: len(province.fetch("SELECT id_number FROM person")) == 2,
        what="the county's people at the province",
    )

    # At the province, an operator objects to Li Si's record, as `catalog list` names it.
    raised = province.cli(
        "objection", "raise", resource, LI[0].lower(), "--reason", "住址与不动产登记不符",
        "--by", "省大数据局王五",
    )  # fmt: skip
    assert "travels down to node 320102 (its owner, 公安局)" in raised.stdout
    (item,) = items(province).values()
    assert item == item | {
        "kind": "objection",
        "entity": "person",
        "resource": resource,
        "record_key": LI[0],
        "owner_node": county.code,
        "owner_dept": "公安局",
        "raised_node": province.code,
        "raised_by": "省大数据局王五",
        "state": "open",
    }

    # It reaches the county through the city. Only the owner answers it.
    with ThreadPoolExecutor() as pool:
        elsewhere = pool.submit(province.cli, "feedback", "acknowledge", item["id"], check=False)
        wait_until(lambda: state(county, item["id"]) == "open", what="the item at the county")
        refused = elsewhere.result()
    assert refused.returncode == 1
    assert "about a record of node 320102 (公安局): answer it there" in refused.stderr
    (at_county,) = json.loads(county.cli("feedback", "list", "--json").stdout)
    assert at_county["id"] == item["id"] and at_county["received_from"] == city.code
    assert at_county["reason"] == "住址与不动产登记不符" and at_county["at_owner"]
    assert state(city, item["id"]) == "open"

    # The county acknowledges; its answer travels up.
    county.cli("feedback", "acknowledge", item["id"], "--note", "核实中", "--by", "张警官")
    wait_until(
        lambda: state(province, item["id"]) == "acknowledged", what="acknowledged at province"
    )
    (response,) = items(province)[item["id"]]["responses"]
    assert (response["actor"], response["node"], response["note"]) == ("张警官", "320102", "核实中")

    # The county corrects the record by importing a fixed file: closed at all three tiers.
    fixed = [*LI[:5], "玄武区新街口8号", LI[6]]
    county.ingest(resource, write_people(tmp_path / "fixed.csv", [ZHANG, fixed]))

    def corrected(node: Node) -> bool:
        return state(node, item["id"]) == "corrected"

    for node in (county, city, province):
        wait_until(partial(corrected, node), what=f"the item corrected at {node.code}")
        assert items(node)[item["id"]]["corrected_at"] is not None
    listed = province.cli("feedback", "list", "--all").stdout
    assert item["id"] in listed and "corrected (new version" in listed
    api = open_node(province.directory, write=False)
    try:
        assert api.call("feedback.list", {}) == [], "closed: not listed without --all"
    finally:
        api.close()

    # The city keeps a 人社局 copy of the county's people; its address for Zhang San
    # disagrees. The city's cross-check finds it, and it reaches the county as an item.
    city.cli(
        "catalog", "add", "--code", "320100-RS-001", "--name", "参保人员信息",
        "--summary", "人口", "--department", "人社局", "--entity", "person",
        "--source-node", county.code, "--source-department", "公安局",
        "--frequency", "daily", "--sharing", "unconditional", "--publish",
    )  # fmt: skip
    observed = [*ZHANG[:5], "玄武区一号", ZHANG[6]]
    city.cli("ingest", "320100-RS-001", str(write_people(tmp_path / "copy.csv", [observed])))

    def discrepancy() -> dict[str, Any] | None:
        found = [i for i in items(county).values() if i["kind"] == "discrepancy"]
        return found[0] if found else None

    wait_until(lambda: discrepancy() is not None, what="the discrepancy at the county")
    found = discrepancy()
    assert found is not None
    assert found == found | {
        "entity": "person",
        "record_key": ZHANG[0],
        "owner_node": county.code,
        "owner_dept": "公安局",
        "reason": "address: source says '玄武区1号', 320100 人社局 observed '玄武区一号'",
        "raised_node": city.code,
        "received_from": city.code,
        "state": "open",
        "at_owner": True,
    }
    listed = county.cli("feedback", "list").stdout
    assert "discrepancy" in listed and "resolve here" in listed
    assert "resolve with `tongyuan discrepancies resolve ID`" in listed
    refused = county.cli("feedback", "confirm", found["id"], check=False)
    assert refused.returncode == 1
    assert f"`tongyuan discrepancies resolve {found['id']}`" in refused.stderr
